"""Leave-one-out and subset removal: what actually happens when points are deleted and the model
is retrained. Changes are reported as f_q(after removal) - f_q(full data), in measurement units,
averaged over seeds; the score convention predicts them as -sum of the removed points' scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..datasets import Split
from ..errors import SettingError, check_choice
from ..grads import measurements
from ..recipe import seed_of
from ..training import Run
from .retrain import retrain, retrain_reweighted


def _full_and_removed(run: Run, query: Split, removed: list[Tensor], seeds: int, seed: int,
                      progress: bool) -> tuple[Tensor, Tensor]:
    """Retrain R seeds on all points and on each 'removed' variant: (f_full [R, Q], f_removed [J, R, Q])."""
    n, J = run.num_train, len(removed)
    keep = torch.ones(seeds * (J + 1), n, dtype=torch.bool)
    init_seeds, order_seeds = [], []
    for r in range(seeds):
        for j in range(J + 1):
            row = r * (J + 1) + j
            if j < J:
                keep[row, removed[j]] = False
            init_seeds.append(seed_of("init", seed, r))
            # the full-data models must not depend on how many variants are asked for
            order_seeds.append(seed_of("removal-order", seed, r, j if j < J else "full"))
    theta = retrain(run, keep, init_seeds, order_seeds, progress=progress, desc="removal")
    f = measurements(run.model, run.task, theta, query.to(theta.dtype)).view(seeds, J + 1, -1)
    return f[:, J], f[:, :J].transpose(0, 1)


Protocol = Literal["fresh", "same"]  # how a deletion is retrained: new seeds, or the recorded trajectory
PROTOCOLS: tuple[str, ...] = ("fresh", "same")


def retrained_measurements(run: Run, query: Split, removed: Sequence[int] | Tensor, protocol: Protocol = "fresh",
                           seeds: int = 5, seed: int = 0, progress: bool = False,
                           on_step: Callable[[float], object] | None = None) -> Tensor:
    """f_q after deleting the training points ``removed`` and retraining, in measurement units.

    protocol="fresh": R = ``seeds`` new models (seed r: its own initialisation and batch order, the same for any
    ``removed``, so that differences between deletions are paired): [R, Q]. protocol="same": the recorded
    trajectory (the run's initialisation and batch order) rerun with w_i = 0 for the removed points, the
    counterfactual exact unrolling linearises: [1, Q]. An empty ``removed`` gives the full-data reference.
    on_step(models / T) after every training step (progress bars; an exception raised there stops the work)."""
    check_choice("protocol", protocol, Protocol)
    removed = _check_points(removed, run.num_train)
    if protocol == "same":
        weights = run.weights.detach().clone().to(run.final.dtype)[None]
        weights[0, removed] = 0.0
        theta = retrain_reweighted(run, weights, progress=progress, on_step=on_step)
    else:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise SettingError(f"seeds must be a whole number >= 1, got {seeds!r}")
        keep = torch.ones(seeds, run.num_train, dtype=torch.bool)
        keep[:, removed] = False
        theta = retrain(run, keep, [seed_of("init", seed, r) for r in range(seeds)],
                        [seed_of("what-if order", seed, r) for r in range(seeds)], progress=progress,
                        desc="retrain without the points", on_step=on_step)
    return measurements(run.model, run.task, theta, query.to(theta.dtype))


def _check_points(points: Sequence[int] | Tensor, n: int) -> Tensor:
    points = torch.as_tensor(points, dtype=torch.long).reshape(-1)
    if len(points) and (points.min() < 0 or points.max() >= n):
        raise SettingError(f"training point indices must lie in 0..{n - 1}")
    return points


def leave_one_out(run: Run, query: Split, points: Sequence[int], seeds: int = 5,
                  trajectory_specific: bool = False, seed: int = 0, progress: bool = True) -> Tensor:
    """Change of every query's measurement when each of ``points`` is removed: [len(points), Q].

    trajectory_specific: rerun the recorded trajectory (same init and batch order) with w_i = 0,
    the exact counterfactual that the unrolled derivative linearises; otherwise retrain ``seeds``
    fresh models on N - 1 points (and on all N) and average.
    """
    points = _check_points(points, run.num_train)
    if trajectory_specific:  # the run's own weights (it may already leave points out), each point set to 0
        weights = run.weights.detach().cpu().to(torch.float64).expand(len(points) + 1, -1).clone()
        weights[torch.arange(len(points)), points] = 0.0
        theta = retrain_reweighted(run, weights, progress=progress)
        f = measurements(run.model, run.task, theta, query.to(theta.dtype))
        return f[:-1] - f[-1]
    full, removed = _full_and_removed(run, query, [p[None] for p in points], seeds, seed, progress)
    return (removed - full).mean(1)


@dataclass
class Removal:
    """ks [K]; change [K, Q]: mean measurement change after removing each query's top-k points (or k
    random points); before [Q] and after [K, Q]: seed-mean measurements."""

    ks: list[int]
    change: Tensor
    before: Tensor
    after: Tensor

    def flipped(self) -> Tensor:
        """For a margin measurement: per k, the fraction of the queries classified correctly before
        (seed-mean margin > 0) whose seed-mean margin is <= 0 after the removal: [K]."""
        correct = self.before > 0
        if not correct.any():
            return torch.zeros(len(self.ks))
        return (self.after[:, correct] <= 0).double().mean(1)


def most_harmful_to_remove(scores: Tensor, k: int, higher_is_better: bool) -> Tensor:
    """Per query, the k points whose removal is predicted to hurt most: [Q, k] indices.

    Removal changes f by -score; it hurts when that lowers a margin or raises an error."""
    harm = scores if higher_is_better else -scores
    return harm.topk(k, dim=1).indices


def subset_removal(run: Run, query: Split, scores, ks: Sequence[int], seeds: int = 3, seed: int = 0,
                   progress: bool = True) -> Removal:
    """Remove each query's top-k points by ``scores`` (Scores or [Q, N]), retrain, measure."""
    values = scores if isinstance(scores, Tensor) else scores.values
    ks = [int(k) for k in ks]
    if max(ks) >= run.num_train or min(ks) < 1:
        raise SettingError(f"k must lie in 1..{run.num_train - 1} (there are {run.num_train} points), got {ks}")
    picks = {k: most_harmful_to_remove(values, k, run.task.higher_is_better) for k in ks}
    removed = [picks[k][q] for k in ks for q in range(len(query))]
    full, after = _full_and_removed(run, query, removed, seeds, seed, progress)
    after = after.mean(1).view(len(ks), len(query), len(query))
    after = torch.diagonal(after, dim1=1, dim2=2)  # model for query q, measured on query q
    before = full.mean(0)
    return Removal(ks, after - before, before, after)


def random_removal(run: Run, query: Split, ks: Sequence[int], seeds: int = 3, seed: int = 0,
                   progress: bool = True) -> Removal:
    """The baseline: remove k random points (one draw per k, shared by all queries and seeds)."""
    ks = [int(k) for k in ks]
    if max(ks) >= run.num_train or min(ks) < 1:
        raise SettingError(f"k must lie in 1..{run.num_train - 1} (there are {run.num_train} points), got {ks}")
    g = torch.Generator().manual_seed(seed_of("random-removal", seed))
    removed = [torch.randperm(run.num_train, generator=g)[:k] for k in ks]
    full, after = _full_and_removed(run, query, removed, seeds, seed, progress)
    before = full.mean(0)
    return Removal(ks, after.mean(1) - before, before, after.mean(1))
