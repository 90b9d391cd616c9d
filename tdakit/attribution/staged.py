"""Attribution through a multi-stage pipeline (``tdakit.stages``): scores for the points of every stage.

Training weights are per stage: w^(s)_i weights point i of stage s, and every score is
d f_q(theta_final) / d w^(s)_i, in the measurement's units (docs/conventions.md).

- SOURCE treats stage boundaries as segment boundaries. One query-side walk from the last segment of
  the last stage to the first segment of the first: a point of stage s is credited only through the
  segments of its own stage (with that stage's N), and its effect is propagated through every later
  segment's Sbar.
- Exact unrolling runs backwards through every stage and hands the adjoint of a stage's initial
  parameters to the stage before.
- TracIn sums over each stage's own checkpoints (it forgets nothing, so nothing propagates).
- The influence function is computed as a practitioner would: at the final parameters, with the
  curvature of all stages' data pooled, as if the pipeline were one training run on the union.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import curvature as curv
from ..datasets import Split
from ..grads import measurement_grads
from ..stages import StagedRun
from .influence import check_damping, damped_inverse
from .products import Plan, Term
from .refine import Refine, refined_solve
from .source import segments_of, source_walk
from .tracin import tracin_plan
from .trajectory import Trajectory
from .unroll import unrolled_adjoint


def staged_source(staged: StagedRun, query: Split, segments: int | Sequence[int] = 3,
                  curvature: curv.CurvatureSpec = "ekfac", form: str = "exp", fast: bool = False,
                  refine: int | Refine = 0, progress: bool = True) -> list[Plan]:
    """SOURCE over all stages, last to first: one plan per stage."""
    for run in staged.runs:
        segments_of(run, segments)
    dtype = staged.final.dtype
    v = measurement_grads(staged.model, staged.task, staged.final, query.to(dtype))
    plans: list[Plan] = [None] * len(staged.runs)  # type: ignore[list-item]
    for s in reversed(range(len(staged.runs))):
        plans[s], v = source_walk(staged.runs[s], v, segments, curvature, form, fast, propagate=s > 0,
                                  progress=progress, queries=len(query), refine=refine)
    return plans


def staged_unrolled(staged: StagedRun, query: Split, dtype: torch.dtype | None = None, query_chunk: int = 128,
                    written_out: bool = True, keep_every: int | str = "auto", progress: bool = True) -> list[Tensor]:
    """Exact unrolling through every stage: [Q, N_s] for every stage s. The query gradients are taken at the
    replayed final parameters (in ``dtype``), so a pipeline of one stage is ``unrolled_scores``."""
    dtype = dtype or staged.final.dtype
    last = staged.runs[-1]
    thetas = Trajectory(last, dtype, keep_every)
    v = measurement_grads(staged.model, staged.task, thetas.final, query.to(dtype))
    out: list[Tensor] = [None] * len(staged.runs)  # type: ignore[list-item]
    for s in reversed(range(len(staged.runs))):
        replayed = thetas if s == len(out) - 1 else None  # the last stage's trajectory is replayed already
        out[s], v = unrolled_adjoint(staged.runs[s], v, dtype, query_chunk, progress, replayed, written_out,
                                     keep_every)
    return out


def staged_tracin(staged: StagedRun, query: Split, progress: bool = True) -> list[Plan]:
    """TracIn over each stage's own checkpoints, measuring the last stage's task."""
    return [tracin_plan(run, query, query_task=staged.task, progress=progress) for run in staged.runs]


def staged_influence(staged: StagedRun, query: Split, damping: float | str = "implied",
                     curvature: curv.CurvatureSpec = "ekfac", theta: Tensor | None = None, refine: int | Refine = 0,
                     progress: bool = True) -> list[Plan]:
    """A practitioner's influence function: final parameters (or ``theta``), curvature of the pooled data,
    N = all points; "implied" damping is 1 / (the summed effective rate of every stage). For a pipeline of one
    stage this is ``influence_plan``."""
    check_damping(damping)
    theta = staged.final if theta is None else theta
    runs = staged.runs
    pooled = Split(torch.cat([r.train.to(theta.dtype).x for r in runs]),
                   torch.cat([r.train.y.to(theta.dtype) if r.train.y.is_floating_point() else r.train.y for r in runs]))
    weights = torch.cat([r.weights.to(theta.dtype) for r in runs])
    last = runs[-1]
    H = curv.fit(curvature, staged.model, staged.task, theta[None], pooled, last.recipe.weight_decay,
                 weights=weights, progress=progress)
    v = measurement_grads(staged.model, staged.task, theta, query.to(theta.dtype))
    total_rate = float(sum(r.effective_lrs.sum() for r in runs))
    solve = refined_solve(H, damped_inverse(H, damping, last, total_rate=total_rate), v, staged.model, staged.task,
                          theta, pooled, weights, Refine.of(refine))
    n = len(pooled)
    diagnostics = {"residuals": solve.history} if solve.history else {}
    term = Term(theta, solve.x, -1.0 / n, iterates=solve.iterates or None)
    return [Plan(r.model, r.task, r.train, [term], len(query), diagnostics) for r in runs]
