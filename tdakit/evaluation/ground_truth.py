"""Ground truth for the linear datamodeling score: retrain on random subsets, measure the queries.

M random subsets, each of round(fraction * N) points; R seeds on each (seed r gives model r its
initialisation on every subset, a common random number that makes subsets comparable; each (subset,
seed) gets its own batch order). values[m, r, q] = f_q after retraining. Work is chunked and each chunk
is cached atomically, so an interrupted computation resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import store
from ..datasets import Split
from ..grads import measurements
from ..training import Run, seed_of
from .retrain import retrain


@dataclass
class GroundTruth:
    """masks: bool [M, N] (kept points); values: [M, R, Q] measurements after retraining."""

    masks: Tensor
    values: Tensor

    @property
    def mean(self) -> Tensor:
        """Seed-averaged measurement per subset and query: [M, Q]."""
        return self.values.mean(1)

    @property
    def num_seeds(self) -> int:
        return self.values.shape[1]


def random_subsets(n: int, subsets: int, fraction: float, seed: int) -> Tensor:
    """bool [subsets, n], each row keeping round(fraction * n) points."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed_of("subsets", seed))
    keep = max(1, round(fraction * n))
    masks = torch.zeros(subsets, n, dtype=torch.bool)
    for m in range(subsets):
        masks[m, torch.randperm(n, generator=g)[:keep]] = True
    return masks


def run_key(run: Run) -> tuple:
    """What identifies a run's recipe and data (not its trained values)."""
    return (run.model.describe(), run.task, run.recipe, run.train.fingerprint(), str(run.final.dtype))


def groundtruth(run: Run, query: Split, subsets: int = 100, fraction: float = 0.5, seeds: int = 5,
                seed: int = 0, chunk: int = 250, cache=None, progress: bool = True) -> GroundTruth:
    """Retrain subsets x seeds models with the run's recipe; see the module docstring."""
    masks = random_subsets(run.num_train, subsets, fraction, seed)
    jobs = [(m, r) for r in range(seeds) for m in range(subsets)]
    # chunks are keyed by the (subset, seed) jobs they hold, and jobs run seed by seed: asking again
    # with more seeds reuses every chunk already computed
    base_key = store.key_of("groundtruth", run_key(run), query.fingerprint(), subsets, fraction, seed)
    values = torch.empty(subsets, seeds, len(query), dtype=run.final.dtype)
    bar = tqdm(total=len(jobs), desc="ground truth (models)", disable=not progress)
    for start in range(0, len(jobs), chunk):
        part = jobs[start:start + chunk]

        def compute(part=part) -> dict:
            theta = retrain(run, masks[[m for m, _ in part]],
                            init_seeds=[seed_of("init", seed, r) for _, r in part],
                            order_seeds=[seed_of("order", seed, m, r) for m, r in part],
                            progress=False)
            return {"values": measurements(run.model, run.task, theta, query.to(device=theta.device)).cpu()}

        got = store.cached(cache, "groundtruth", store.key_of(base_key, part), compute)["values"]
        for (m, r), row in zip(part, got, strict=True):
            values[m, r] = row
        bar.update(len(part))
    bar.close()
    return GroundTruth(masks, values)
