"""SOURCE: segmented stationary unrolling (Bae et al., NeurIPS 2024).

Split the T steps into L segments. In segment l (K_l steps, mean effective rate eta_l) replace the
minibatch Hessians by their average Hbar_l over the segment's checkpoints and a point's gradient by
its average gbar_l(i). Then, with v = grad f_q(theta_T),

    score[q, i] = -(1/N) v^T sum_l (Sbar_L ... Sbar_{l+1}) Fbar_l gbar_l(i)
    Sbar_l = exp(-eta_l K_l Hbar_l),  Fbar_l = (I - exp(-eta_l K_l Hbar_l)) Hbar_l^{-1}

computed as the query-side walk: for l = L..1, u = Fbar_l v, scores += u . gbar_l(i), v = Sbar_l v.
``form="power"`` uses (I - eta H)^K and sum_j (I - eta H)^j eta instead (exact unrolling for full-batch
GD with one-step segments). ``fast=True`` (Fast-SOURCE) fits curvature and gradients once per segment,
at the mean of its checkpoints. Units: the measurement's; removal of S predicts -sum_{i in S} score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import curvature as curv
from ..datasets import Split
from ..grads import gradient_products, measurement_grads
from ..training import Run


@dataclass(frozen=True)
class Segment:
    """Steps [start, stop) with the indices of the run's checkpoints that fall inside."""

    start: int
    stop: int
    checkpoints: tuple[int, ...]

    @property
    def steps(self) -> int:
        return self.stop - self.start


def segments_of(run: Run, segments: int | Sequence[int]) -> list[Segment]:
    """Parse a segment spec: L (equal segments) or boundaries [0, b_1, ..., T], strictly increasing.

    A checkpoint taken after s updates belongs to the segment with start <= s < stop (the final
    parameters, s = T, to the last one). Every segment needs at least one checkpoint.
    """
    T = run.num_steps
    if isinstance(segments, int):
        if not 1 <= segments <= T:
            raise ValueError(f"segments must be between 1 and the number of steps ({T}), got {segments}")
        bounds = [round(l * T / segments) for l in range(segments + 1)]
    else:
        bounds = [int(b) for b in segments]
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != T or any(
                a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"segment boundaries must increase strictly from 0 to the run's {T} steps, "
                             f"got {bounds}")
    steps = run.checkpoint_steps.tolist()
    out = []
    for l, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        last = l == len(bounds) - 2
        inside = tuple(c for c, s in enumerate(steps) if a <= s < b or (last and s == b))
        if not inside:
            raise ValueError(
                f"segment {l} (steps {a}..{b}) contains no checkpoint (checkpoints at steps {steps}); "
                "record more with train(..., checkpoints=...) or use fewer segments")
        out.append(Segment(a, b, inside))
    return out


def source_scores(run: Run, query: Split, segments: int | Sequence[int] = 3, curvature: str | curv.Kronecker = "ggn",
                  form: str = "exp", fast: bool = False, progress: bool = False) -> Tensor:
    """SOURCE scores [Q, N] from the run's checkpoints (see the module docstring)."""
    parts = segments_of(run, segments)
    dtype = run.final.dtype
    data, query = run.train.to(dtype), query.to(dtype)
    v = measurement_grads(run.model, run.task, run.final, query)
    scores = torch.zeros(len(query), len(data), dtype=torch.float64, device=v.device)
    rates = run.effective_lrs
    for seg in tqdm(parts[::-1], desc="SOURCE segments", disable=not progress, leave=False):
        thetas = run.checkpoints[list(seg.checkpoints)]
        if fast:
            thetas = thetas.mean(0, keepdim=True)
        eta = float(rates[seg.start:seg.stop].mean())
        H = curv.fit(curvature, run.model, run.task, thetas, data, run.recipe.weight_decay)
        learn, forget = curv.functions.learn(eta, seg.steps, form), curv.functions.forget(eta, seg.steps, form)
        if seg is parts[0]:  # the earliest segment: nothing before it to propagate to
            u = H.apply(learn, v)
        elif hasattr(H, "apply_many"):  # one rotation into the eigenbasis for both functions
            u, v = H.apply_many([learn, forget], v)
        else:
            u, v = H.apply(learn, v), H.apply(forget, v)
        scores += gradient_products(run.model, run.task, thetas, data, u)  # u . gbar_l(i)
    return (-scores / run.num_train).to(dtype)
