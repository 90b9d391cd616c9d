"""Rank correlation, the linear datamodeling score (LDS) and the ground truth's reliability."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .ground_truth import GroundTruth, chaotic, jitter_text, too_few


def rankdata(x: Tensor) -> Tensor:
    """Ranks 1..M along the last dimension, ties given their average rank (as scipy.stats.rankdata)."""
    x = x.double()
    ordered = x.sort(-1).values
    left = torch.searchsorted(ordered.contiguous(), x.contiguous(), side="left")
    right = torch.searchsorted(ordered.contiguous(), x.contiguous(), side="right")
    return (left + right + 1).double() / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation along the last dimension: [..., M] x [..., M] -> [...]; 0 where either
    side is constant (no ranking to compare)."""
    if a.shape != b.shape:
        raise InputError(f"cannot correlate shapes {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    denom = ra.norm(dim=-1) * rb.norm(dim=-1)
    return torch.where(denom > 0, (ra * rb).sum(-1) / denom.clamp(min=1e-300), torch.zeros_like(denom))


@dataclass
class Interval:
    """A mean over queries with its 95% bootstrap interval; per_query [Q]."""

    value: float
    low: float
    high: float
    per_query: Tensor

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(per_query: Tensor, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of per_query [Q] with a percentile bootstrap 95% interval over queries."""
    g = torch.Generator().manual_seed(seed)
    q = len(per_query)
    means = per_query[torch.randint(q, (resamples, q), generator=g)].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return Interval(float(per_query.mean()), low, high, per_query)


def predictions(scores: Tensor, masks: Tensor) -> Tensor:
    """Predicted measurement (up to a constant) of each subset model: sum of kept points' scores, [M, Q]."""
    return masks.to(scores.device, scores.dtype) @ scores.T


def lds(scores, truth: GroundTruth, seed: int = 0) -> Interval:
    """Linear datamodeling score: mean over queries of the Spearman correlation, across the M subsets,
    between predicted and retrained measurements. ``scores``: Scores or Tensor [Q, N]."""
    values = scores if isinstance(scores, Tensor) else scores.values
    if values.shape != (truth.values.shape[2], truth.masks.shape[1]):
        raise InputError(f"scores {tuple(values.shape)} do not match the ground truth's "
                         f"{truth.values.shape[2]} queries x {truth.masks.shape[1]} training points")
    per_query = spearman(predictions(values.detach().double().cpu(), truth.masks).T, truth.mean.double().T)
    warning = too_few(truth.masks.shape[0], truth.values.shape[2])
    if warning:
        warnings.warn(f"lds: ground truth {warning}", UserWarning, stacklevel=2)
    return bootstrap(per_query, seed=seed)


@dataclass
class Reliability:
    """How repeatable the ground truth is. ``reliability``: split-half Spearman correlation of seed
    means across subsets, Spearman-Brown corrected to all R seeds (mean over queries). ``ceiling``:
    mean over queries of sqrt(reliability), about the highest LDS an exact predictor of the expected
    retrained measurement could reach against this noisy ground truth."""

    reliability: float
    ceiling: float
    seeds: int
    protocol: str = "fresh"  # "same": 1 by construction (one deterministic retraining per subset), not measured
    jitter_share: float | None = None  # "same": GroundTruth.jitter_share and jitter_asymmetry
    jitter_asymmetry: float | None = None

    def text(self, digits: int = 3) -> str:
        if self.protocol == "same":
            unstable = chaotic(self.jitter_share, self.jitter_asymmetry)
            return ("reliability 1 by construction (same trajectory: retraining is deterministic), LDS ceiling 1"
                    + ("; but chaotic training: "
                       f"{jitter_text(self.jitter_share, self.jitter_asymmetry)}" if unstable else ""))
        return f"reliability {self.reliability:.{digits}f} (R = {self.seeds}), LDS ceiling ~{self.ceiling:.{digits}f}"

    def __str__(self) -> str:
        return self.text()


def reliability(truth: GroundTruth, splits: int = 20, seed: int = 0) -> Reliability:
    """Split the R seeds in random halves ``splits`` times; see ``Reliability``. A same-trajectory ground truth
    (``protocol="same"``) is repeatable by construction: its reliability is 1, said rather than measured."""
    if truth.protocol == "same":
        return Reliability(1.0, 1.0, truth.num_seeds, "same", truth.jitter_share,
                           truth.jitter_asymmetry)
    R = truth.num_seeds
    if R < 2:
        raise InputError("reliability needs at least 2 seeds per subset; make the ground truth with seeds=2 or more")
    warning = too_few(truth.masks.shape[0], truth.values.shape[2])
    if warning:
        warnings.warn(f"reliability: ground truth {warning}", UserWarning, stacklevel=2)
    g = torch.Generator().manual_seed(seed)
    per_query = []
    for _ in range(splits):
        perm = torch.randperm(R, generator=g)
        a, b = truth.values[:, perm[: R // 2]].mean(1), truth.values[:, perm[R // 2:]].mean(1)
        per_query.append(spearman(a.T.double(), b.T.double()))
    half = torch.stack(per_query).mean(0).clamp(min=0)
    full = 2 * half / (1 + half)
    return Reliability(float(full.mean()), float(full.sqrt().mean()), R)


def paired_difference(a: Interval, b: Interval, seed: int = 0) -> Interval:
    """a - b on the same queries (paired), with a bootstrap 95% interval: is a really ahead of b?"""
    if a.per_query.shape != b.per_query.shape:
        raise InputError("paired_difference needs two results on the same queries")
    return bootstrap(a.per_query - b.per_query, seed=seed)
