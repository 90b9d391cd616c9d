"""Multi-stage training: pretraining then fine-tuning, or continual learning over a sequence of tasks.

A pipeline is a list of ``Stage``s, each with its own data, recipe and (optionally) task. Stage s starts
from the final parameters of stage s-1 (the momentum buffer restarts at zero, as with a new optimiser)
and is recorded as an ordinary ``Run``; ``StagedRun`` keeps them in order. Training weights are per
stage: w^(s)_i weights point i of stage s, and every score is d f_q(theta_final) / d w^(s)_i, in the
measurement's units, in the convention of DESIGN.md section 1.

Attribution (``staged_scores``): SOURCE treats stage boundaries as segment boundaries. One query-side
walk from the last segment of the last stage to the first segment of the first: a point of stage s
is credited only through the segments of its own stage (with that stage's N), and its effect is
propagated through every later segment's Sbar. Exact unrolling runs backwards through every stage and
hands the adjoint of a stage's initial parameters to the stage before. TracIn sums over each stage's own
checkpoints. The influence function is computed as a practitioner would: at the final parameters, with
the curvature of all stages' data pooled, as if the pipeline were one training run on the union.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import curvature as curv
from .attribution.source import source_walk
from .attribution.tracin import tracin_scores
from .datasets import Split
from .grads import gradient_products, measurement_grads
from .models import FlatModel
from .task import Task
from .training import Recipe, Run, _as_flat, batch_order, models_per_chunk, seed_of, train, train_many


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline: its training data, recipe and (default: the pipeline's) task."""

    data: Split
    recipe: Recipe
    task: Task | None = None
    name: str = ""
    model: nn.Module | FlatModel | None = field(default=None, compare=False)


@dataclass
class StagedRun:
    """The recorded runs of every stage, in order; ``runs[s].init`` is ``runs[s-1].final``."""

    runs: list[Run]
    names: list[str]

    @property
    def final(self) -> Tensor:
        return self.runs[-1].final

    @property
    def model(self) -> FlatModel:
        return self.runs[-1].model

    @property
    def task(self) -> Task:
        return self.runs[-1].task

    def stage(self, name_or_index: str | int) -> int:
        """The index of a stage given its name or index."""
        if isinstance(name_or_index, int):
            if not 0 <= name_or_index < len(self.runs):
                raise ValueError(f"stage {name_or_index} out of range: the pipeline has {len(self.runs)} stages")
            return name_or_index
        if name_or_index not in self.names:
            raise ValueError(f"no stage named {name_or_index!r}; stages: {self.names}")
        return self.names.index(name_or_index)


def _check_stages(model: nn.Module | FlatModel, stages: Sequence[Stage]) -> FlatModel:
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    flat = _as_flat(model)
    for s, stage in enumerate(stages):
        label = f"stage {s}" + (f" ({stage.name})" if stage.name else "")
        if len(stage.data) == 0:
            raise ValueError(f"{label} has no training data; remove the stage or give it data")
        if stage.model is not None:
            other = _as_flat(stage.model)
            if other.shapes != flat.shapes or other.names != flat.names:
                raise ValueError(f"{label}'s model does not match the pipeline's: parameters "
                                 f"{list(zip(other.names, other.shapes, strict=False))} vs "
                                 f"{list(zip(flat.names, flat.shapes, strict=False))}; every stage trains the same "
                                 "parameters (build heads of every stage into one model)")
    return flat


def train_stages(model: nn.Module | FlatModel, stages: Sequence[Stage], task: Task | None = None,
                 checkpoints: int | Sequence[int] = 6, dtype: torch.dtype = torch.float32,
                 progress: bool = True, cache=None) -> StagedRun:
    """Train the stages in order, each from the previous stage's final parameters; stage 0 starts from
    the model's initialisation seeded by its recipe's seed. checkpoints: per stage."""
    flat = _check_stages(model, stages)
    runs, theta = [], None
    for s, stage in enumerate(stages):
        stage_task = stage.task or task
        if stage_task is None:
            raise ValueError(f"stage {s} has no task; pass task= to train_stages or Stage(task=...)")
        run = train(flat, stage.data, stage.recipe, stage_task, checkpoints=checkpoints, dtype=dtype,
                    progress=progress, cache=cache, init=theta)
        runs.append(run)
        theta = run.final
    return StagedRun(runs, [st.name or f"stage {s}" for s, st in enumerate(stages)])


def reseeded(stages: Sequence[Stage], seed: int) -> list[Stage]:
    """The same pipeline with every stage's recipe seed (so the initialisation and every batch order)
    derived from ``seed``: one independently trained member of a pipeline ensemble."""
    return [dataclasses.replace(st, recipe=dataclasses.replace(st.recipe,
                                                               seed=seed_of("pipeline", seed, st.recipe.seed)))
            for st in stages]


def train_stages_ensemble(model: nn.Module | FlatModel, stages: Sequence[Stage], task: Task | None = None,
                          seeds: Sequence[int] = (1, 2, 3, 4), checkpoints: int | Sequence[int] = 6,
                          dtype: torch.dtype = torch.float32, progress: bool = True, cache=None) -> list[StagedRun]:
    """Independently trained pipelines, one per seed (``reseeded(stages, seed)``): list of ``StagedRun``."""
    return [train_stages(model, reseeded(stages, int(seed)), task, checkpoints, dtype, progress=progress, cache=cache)
            for seed in tqdm(seeds, desc="pipeline ensemble", disable=not progress)]


def staged_ensemble(members: Sequence[StagedRun], query: Split, method: str = "source",
                    **settings) -> list[Tensor]:
    """``staged_scores`` averaged over independently trained pipelines: [Q, N_s] for every stage s."""
    if not members:
        raise ValueError("staged_ensemble needs at least one pipeline; train some with train_stages_ensemble")
    total = None
    for staged in members:
        scores = staged_scores(staged, query, method, **settings)
        total = scores if total is None else [a + b for a, b in zip(total, scores, strict=True)]
    return [t / len(members) for t in total]


def _source_walk(staged: StagedRun, query: Split, segments: int | Sequence[int], curvature, form: str,
                 fast: bool, progress: bool) -> list[Tensor]:
    """SOURCE over all stages, last to first: scores [Q, N_s] for every stage s."""
    dtype = staged.final.dtype
    v = measurement_grads(staged.model, staged.task, staged.final, query.to(dtype))
    out: list[Tensor] = [None] * len(staged.runs)  # type: ignore[list-item]
    for s in tqdm(reversed(range(len(staged.runs))), total=len(staged.runs), desc="SOURCE stages",
                  disable=not progress, leave=False):
        scores, v = source_walk(staged.runs[s], v, segments, curvature, form, fast, propagate=s > 0)
        out[s] = scores.to(dtype)
    return out


def _unrolled_walk(staged: StagedRun, query: Split, dtype: torch.dtype | None, progress: bool) -> list[Tensor]:
    from .unroll import unrolled_adjoint

    dtype = dtype or staged.final.dtype
    v = None
    out: list[Tensor] = [None] * len(staged.runs)  # type: ignore[list-item]
    for s in reversed(range(len(staged.runs))):
        run = staged.runs[s]
        if v is None:
            v = measurement_grads(staged.model, staged.task, staged.final.to(dtype), query.to(dtype))
        out[s], v = unrolled_adjoint(run, v, dtype, progress=progress)
    return out


def _influence_pooled(staged: StagedRun, query: Split, damping, curvature) -> list[Tensor]:
    """A practitioner's influence function: final parameters, curvature of the pooled data, N = all points."""
    from .attribution.influence import damped_inverse

    theta = staged.final
    pooled = Split(torch.cat([r.train.x.to(theta.dtype) for r in staged.runs]),
                   torch.cat([r.train.y.to(theta.dtype) if r.train.y.is_floating_point() else r.train.y
                              for r in staged.runs]))
    last = staged.runs[-1]
    total_rate = float(sum(r.effective_lrs.sum() for r in staged.runs))
    if damping == "implied":
        damping = 1.0 / total_rate
    H = curv.fit(curvature, staged.model, staged.task, theta[None], pooled, last.recipe.weight_decay)
    v = measurement_grads(staged.model, staged.task, theta, query.to(theta.dtype))
    u = H.apply(damped_inverse(H, damping, last), v)
    n = len(pooled)
    return [(-gradient_products(r.model, r.task, theta, r.train, u) / n).to(theta.dtype) for r in staged.runs]


STAGED_METHODS = ("source", "fast_source", "tracin", "unrolled", "influence")


def staged_scores(staged: StagedRun, query: Split, method: str = "source", segments: int | Sequence[int] = 3,
                  curvature="ekfac", form: str = "exp", damping: float | str = "implied",
                  dtype: torch.dtype | None = None, progress: bool = False) -> list[Tensor]:
    """Scores [Q, N_s] for the points of every stage s (a list, in stage order).

    method: "source" / "fast_source" (segments per stage), "tracin", "unrolled" (exact, small models) or
    "influence" (final parameters, pooled curvature; see the module docstring)."""
    if method in ("source", "fast_source"):
        return _source_walk(staged, query, segments, curvature, form, method == "fast_source", progress)
    if method == "tracin":  # each stage's own checkpoints; nothing propagates (TracIn forgets nothing)
        return [tracin_scores(run, query, measure=staged.task) for run in staged.runs]
    if method == "unrolled":
        return _unrolled_walk(staged, query, dtype, progress)
    if method == "influence":
        return _influence_pooled(staged, query, damping, curvature)
    raise ValueError(f"unknown method {method!r} for a staged run; available: {', '.join(STAGED_METHODS)}")


def retrain_stages(staged: StagedRun, stage: int, keep: Tensor, init_seeds: Sequence[int],
                   order_seeds: Sequence[int], progress: bool = False) -> Tensor:
    """Rerun the whole pipeline J times with only ``keep`` [J, N_stage] of one stage's points (the other
    stages keep all theirs): final parameters [J, P]. Each job j starts from the initialisation seeded by
    init_seeds[j] and draws fresh batch orders for every stage from order_seeds[j]."""
    keep = torch.as_tensor(keep, dtype=torch.bool)
    n_stage = staged.runs[stage].num_train
    if keep.dim() != 2 or keep.shape[1] != n_stage:
        raise ValueError(f"keep must be a bool mask [J, {n_stage}] over stage {stage}'s points, got "
                         f"{tuple(keep.shape)}")
    if (keep.sum(1) == 0).any():
        raise ValueError(f"a retraining would keep none of stage {stage}'s points; remove fewer points")
    model, dtype = staged.model, staged.final.dtype
    device = staged.final.device
    out = torch.empty(len(keep), model.num_params, dtype=dtype, device=device)
    counts = keep.sum(1)
    chunk = models_per_chunk(model.num_params, dtype)
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero()[:, 0].tolist()
        for a in range(0, len(rows), chunk):
            part = rows[a:a + chunk]
            theta = torch.stack([model.init(int(init_seeds[j]), dtype) for j in part]).to(device)
            for s, run in enumerate(staged.runs):
                r = run.recipe
                orders = torch.stack([
                    batch_order(keep[j].nonzero()[:, 0] if s == stage else torch.arange(run.num_train), r.batch_size,
                                r.epochs, seed_of("stage order", int(order_seeds[j]), s)) for j in part])
                theta = train_many(model, run.train, r, run.task, theta, orders, progress=progress,
                                   desc=f"pipeline stage {s}")
            out[part] = theta
    return out


def groundtruth_stages(staged: StagedRun, query: Split, stage: int | str, subsets: int = 100, fraction: float = 0.5,
                       seeds: int = 5, seed: int = 0, chunk: int = 250, cache=None, progress: bool = True):
    """LDS ground truth for one stage's points: M random subsets of that stage's data, the whole pipeline
    rerun R seeds on each (other stages keep all their data). values[m, r, q]; cached per chunk."""
    from .evaluation.ground_truth import collect, random_subsets, run_key
    from .grads import measurements
    from .store import key_of

    s = staged.stage(stage)
    masks = random_subsets(staged.runs[s].num_train, subsets, fraction, seed)

    def retrain_jobs(keep: Tensor, init_seeds: list[int], order_seeds: list[int]) -> Tensor:
        return retrain_stages(staged, s, keep, init_seeds, order_seeds)

    key = key_of("groundtruth-stages", [run_key(r) for r in staged.runs], s, query.fingerprint(), subsets, fraction,
                 seed)
    return collect(masks, seeds, seed, retrain_jobs,
                   lambda theta: measurements(staged.model, staged.task, theta, query.to(device=theta.device)),
                   key, chunk, cache, progress, f"ground truth, stage {s} (pipelines)")
