"""SOURCE: segmented stationary unrolling (Bae et al., NeurIPS 2024; docs/maths.md, section 4).

Split the T steps into L segments. In segment l (K_l steps, mean effective rate eta_l) replace the
minibatch Hessians by their average Hbar_l over the segment's checkpoints and a point's gradient by
its average gbar_l(i). Then, with v = grad f_q(theta_T),

    score[q, i] = -(1/N) v^T sum_l (Sbar_L ... Sbar_{l+1}) Fbar_l gbar_l(i)
    Sbar_l = exp(-eta_l K_l Hbar_l),  Fbar_l = (I - exp(-eta_l K_l Hbar_l)) Hbar_l^{-1}

computed as the query-side walk: for l = L..1, u = Fbar_l v, scores += u . gbar_l(i), v = Sbar_l v.
``form="power"`` uses (I - eta H)^K and sum_j (I - eta H)^j eta instead (exact unrolling for full-batch
GD without momentum, with one-step segments whose checkpoint is the parameters each step starts from).
``fast=True`` (Fast-SOURCE) fits curvature and gradients once per segment, at the mean of its checkpoints.
Units: the measurement's; removal of S predicts -sum_{i in S} score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor
from tqdm.auto import tqdm

from .. import curvature as curv
from ..datasets import Split
from ..errors import ResultError, SettingError
from ..grads import measurement_grads
from ..training import Run
from .products import Plan, Term, evaluate
from .refine import Refine, refined_solve


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

    A checkpoint belongs to the segment holding the updates it stands for (``Run.checkpoint_placement``):
    with "middle" (the default) and "start", start <= s < stop (the final parameters, s = T, go to the
    last segment); with "end" a checkpoint after s updates belongs to the segment with start < s <= stop,
    so a segment's last checkpoint can be its end. Every segment needs at least one checkpoint.
    """
    T = run.num_steps
    if isinstance(segments, bool) or not isinstance(segments, int | Sequence | Tensor):
        raise SettingError(f"segments must be a whole number L or a list of boundaries [0, ..., {T}], "
                         f"got {segments!r}")
    if isinstance(segments, int):
        if not 1 <= segments <= T:
            raise SettingError(f"segments must be between 1 and the number of steps ({T}), got {segments}")
        bounds = [round(l * T / segments) for l in range(segments + 1)]
    else:
        if any(isinstance(b, float) and not float(b).is_integer() for b in segments):
            raise SettingError(f"segment boundaries must be whole step numbers, got {list(segments)}")
        bounds = [int(b) for b in segments]
        if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != T or any(
                a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            raise SettingError(f"segment boundaries must increase strictly from 0 to the run's {T} steps, "
                             f"got {bounds}")
    steps = run.checkpoint_steps.tolist()
    ends = run.checkpoint_placement == "end"
    out = []
    for l, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        first, last = l == 0, l == len(bounds) - 2
        if ends:
            inside = tuple(c for c, s in enumerate(steps) if a < s <= b or (first and s == a))
        else:
            inside = tuple(c for c, s in enumerate(steps) if a <= s < b or (last and s == b))
        if not inside:
            raise SettingError(
                f"segment {l} (steps {a}..{b}) contains no checkpoint (checkpoints at steps {steps}); "
                "record more with train(..., checkpoints=...) or use fewer segments")
        out.append(Segment(a, b, inside))
    return out


def check_curvature(H: curv.Curvature, form: str, segment: int) -> None:
    """SOURCE's exp form needs a positive semi-definite curvature (see docs/curvature.md)."""
    if form != "exp":
        return
    values = H.eigenvalues
    low, high = float(values.min()), float(values.abs().max())
    if H.num_params > values.numel():
        low = min(low, H.floor)
    if low < -1e-9 * max(high, 1e-300):
        raise ResultError(
            f"segment {segment}'s curvature has a negative eigenvalue ({low:.3g}); SOURCE assumes the curvature is "
            "stationary within a segment, and exp(-eta K s) then grows without bound in that direction (real "
            "training never does: the curvature moves away from it). Use a positive semi-definite curvature: "
            "curvature='hessian_clipped' (negative eigenvalues set to 0), 'ggn', 'ekfac' or 'kfac'; "
            "form='power' keeps the raw Hessian for exact full-batch identities")


def segment_step(H: curv.Curvature, eta: float, steps: float, v: Tensor, form: str = "exp",
                 carry: bool = True) -> tuple[Tensor, Tensor]:
    """One segment of the query-side walk: (Fbar v, Sbar v) with Fbar, Sbar the segment's learn and forget
    functions of H at rate eta over ``steps`` steps; v [Q, P]. carry=False skips Sbar v (nothing before the
    earliest segment needs it) and returns v unchanged in its place."""
    fns = [curv.functions.learn(eta, steps, form)]
    if carry:
        fns.append(curv.functions.forget(eta, steps, form))
    u, *rest = H.apply_many(fns, v)  # one rotation into the eigenbasis for both functions
    return u, (rest[0] if rest else v)


def source_walk(run: Run, v: Tensor, segments: int | Sequence[int] = 3, curvature: curv.CurvatureSpec = "ggn",
                form: str = "exp", fast: bool = False, propagate: bool = False, progress: bool = True,
                queries: int | None = None, horizon: float = 1.0,
                fit: Callable[[Segment, Tensor], curv.Curvature] | None = None,
                refine: int | Refine = 0) -> tuple[Plan, Tensor | None]:
    """The query-side walk over one run's segments, last to first (docs/maths.md, section 4; the paper's
    query-side computation of its equation for SOURCE).

    v: [Q, P] query gradients at the run's final parameters (for a stage of a pipeline: already carried
    back through every later stage). Returns (the plan of gradient-product terms: for segment l and each
    of its checkpoints c, u_l = Fbar_l Sbar_{l+1} ... Sbar_L v with scale -1/(N C_l), part l and checkpoint c;
    Sbar_1 ... Sbar_L v [Q, P], the query carried back to the run's initialisation, when ``propagate`` else
    None). horizon: every segment's eta K multiplied by it (1: the run as trained; the IF-to-SOURCE explorer
    moves it). fit(segment, thetas [C, P]) -> curvature replaces ``curv.fit(curvature, ...)`` (a caller that
    keeps its fits). refine: iterations (or ``Refine``) that refine each segment's u_l toward the exact solve
    (G_l + 1/(eta_l K_l))^{-1} v, G_l the Gauss-Newton averaged over the segment's checkpoints, starting from the
    Kronecker answer (``refine.py``); the propagation keeps the curvature's Sbar. The plan's diagnostics hold
    each segment's residuals, last segment first."""
    refine = Refine.of(refine)
    histories: list[list[float]] = []
    parts = segments_of(run, segments)
    data = run.train
    rates = run.effective_lrs
    terms: list[Term] = []
    for index, seg in tqdm(list(enumerate(parts))[::-1], desc="SOURCE segments", disable=not progress, leave=False):
        thetas = run.checkpoints[list(seg.checkpoints)]
        which: list[int | None] = list(seg.checkpoints)
        if fast:
            thetas, which = thetas.mean(0, keepdim=True), [None]
        eta = float(rates[seg.start:seg.stop].mean())
        H = fit(seg, thetas) if fit is not None else curv.fit(
            curvature, run.model, run.task, thetas, data, run.recipe.weight_decay, weights=run.weights,
            progress=progress)
        check_curvature(H, form, index)
        carried = v
        u, v = segment_step(H, eta, horizon * seg.steps, v, form, carry=propagate or index > 0)
        iterates = None
        if refine.iterations or refine.record:
            solve = refined_solve(H, curv.functions.inverse(1.0 / (eta * horizon * seg.steps)), carried, run.model,
                                  run.task, thetas, data, run.weights, refine, start=u)
            u, iterates = solve.x, solve.iterates or None
            if solve.history:
                histories.append(solve.history)
        scale = -1.0 / (run.num_train * len(thetas))
        # u . gbar_l(i)
        terms += [Term(theta, u, scale, index, c, iterates) for theta, c in zip(thetas, which, strict=True)]
    plan = Plan(run.model, run.task, data, terms, len(v) if queries is None else queries,
                {"residuals": histories} if histories else {})
    return plan, (v if propagate else None)


def source_plan(run: Run, query: Split, segments: int | Sequence[int] = 3, curvature: curv.CurvatureSpec = "ggn",
                form: str = "exp", fast: bool = False, refine: int | Refine = 0, progress: bool = True) -> Plan:
    """SOURCE's gradient-product terms from the run's checkpoints (see the module docstring)."""
    segments_of(run, segments)  # a bad spec fails before any gradient is computed
    dtype = run.final.dtype
    v = measurement_grads(run.model, run.task, run.final, query.to(dtype))
    return source_walk(run, v, segments, curvature, form, fast, progress=progress, refine=refine)[0]


def segment_scores(run: Run, query: Split, segments: int | Sequence[int] = 3, curvature: curv.CurvatureSpec = "ggn",
                   form: str = "exp", fast: bool = False, progress: bool = True) -> list[Tensor]:
    """Each segment's share of SOURCE's scores, first segment first: [Q, N] per segment (they add up to
    ``attribute(run, query, "source", ...)``). Shows where along training the attribution comes from."""
    plan = source_plan(run, query, segments, curvature, form, fast, progress)
    parts = sorted({t.part for t in plan.terms})
    pieces = [Plan(plan.model, plan.task, plan.data, [t for t in plan.terms if t.part == p], plan.queries)
              for p in parts]
    return [values.to(run.final.dtype) for values in evaluate(pieces, progress=progress)]
