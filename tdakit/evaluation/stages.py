"""Ground truth for pipelines: rerun every stage of a ``StagedRun`` without part of one stage's data."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import store
from ..attribution.methods import check_query
from ..datasets import Split
from ..errors import InputError
from ..grads import measurements
from ..recipe import batch_order, seed_of
from ..stacking import even_chunks, retraining_chunk
from ..stages import StagedRun
from ..training import train_many
from .ground_truth import GroundTruth, check_counts, collect, random_subsets, renamed_chunk, retraining_key


def _share(on_step: Callable[[float], object], parts: int) -> Callable[[float], object]:
    """A pipeline job passes through every stage: each stage's steps count for 1/parts of the job."""
    return lambda models: on_step(models / parts)


def retrain_stages(staged: StagedRun, stage: int, keep: Tensor, init_seeds: Sequence[int],
                   order_seeds: Sequence[int], progress: bool = False,
                   on_step: Callable[[float], object] | None = None) -> Tensor:
    """Rerun the whole pipeline J times with only ``keep`` [J, N_stage] of one stage's points (the other
    stages keep all theirs): final parameters [J, P]. Each job j starts from the initialisation seeded by
    init_seeds[j] and draws fresh batch orders for every stage from order_seeds[j]."""
    keep = torch.as_tensor(keep, dtype=torch.bool)
    n_stage = staged.runs[stage].num_train
    if keep.dim() != 2 or keep.shape[1] != n_stage:
        raise InputError(f"keep must be a bool mask [J, {n_stage}] over stage {stage}'s points, got "
                         f"{tuple(keep.shape)}")
    if (keep.sum(1) == 0).any():
        raise InputError(f"a retraining would keep none of stage {stage}'s points; remove fewer points")
    model, dtype = staged.model, staged.final.dtype
    device = staged.final.device
    out = torch.empty(len(keep), model.num_params, dtype=dtype, device=device)
    counts = keep.sum(1)
    chunk = retraining_chunk(model, staged.task, staged.runs[stage].train, staged.runs[stage].recipe.batch_size,
                             dtype, device)
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero()[:, 0].tolist()
        size = even_chunks(len(rows), chunk)
        for a in range(0, len(rows), size):
            part = rows[a:a + size]
            theta = torch.stack([model.init(int(init_seeds[j]), dtype) for j in part]).to(device)
            for s, run in enumerate(staged.runs):
                r = run.recipe
                orders = torch.stack([
                    batch_order(keep[j].nonzero()[:, 0] if s == stage else torch.arange(run.num_train), r.batch_size,
                                r.epochs, seed_of("stage order", int(order_seeds[j]), s)) for j in part])
                theta = train_many(model, run.train, r, run.task, theta, orders, progress=progress,
                                   desc=f"pipeline stage {s}",
                                   on_step=None if on_step is None else _share(on_step, len(staged.runs)))
            out[part] = theta
    return out


def groundtruth_stages(staged: StagedRun, query: Split, stage: int | str, subsets: int = 100, fraction: float = 0.5,
                       seeds: int = 5, seed: int = 0, models_per_chunk: int | None = None,
                       cache: store.CacheSpec = True, progress: bool = True,
                       chunk: int | None = None) -> GroundTruth:
    """LDS ground truth for one stage's points: M random subsets of that stage's data, the whole pipeline
    rerun R seeds on each (other stages keep all their data). values[m, r, q]; cached per chunk of
    ``models_per_chunk`` pipelines (default: one vmap batch; ``chunk``: tdakit 0.2's name for it)."""
    models_per_chunk = renamed_chunk(models_per_chunk, chunk, "groundtruth_stages")
    check_query(staged.runs[-1], query)  # the queries are measured on the last stage's model and task
    check_counts(subsets, seeds)
    s = staged.stage(stage)
    masks = random_subsets(staged.runs[s].num_train, subsets, fraction, seed)

    def retrain_jobs(keep: Tensor, init_seeds: list[int], order_seeds: list[int], on_step) -> Tensor:
        return retrain_stages(staged, s, keep, init_seeds, order_seeds, on_step=on_step)

    chunk = models_per_chunk or retraining_chunk(staged.model, staged.task, staged.runs[s].train,
                                                 staged.runs[s].recipe.batch_size, staged.final.dtype,
                                                 staged.final.device)
    key = store.key_of("groundtruth-stages", [retraining_key(r) for r in staged.runs], s, query.fingerprint(), subsets,
                       fraction, seed)
    return collect(masks, seeds, len(query), staged.final.dtype, seed, retrain_jobs,
                   lambda theta: measurements(staged.model, staged.task, theta, query.to(device=theta.device)),
                   key, chunk, cache, progress, f"ground truth, stage {s} (pipelines)")
