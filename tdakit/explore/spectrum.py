"""From influence functions to SOURCE, one knob at a time (docs/maths.md, sections 3-4).

SOURCE gives a curvature direction of eigenvalue s the gain (1 - exp(-eta K s)) / s per segment: about
eta K (a plain gradient product) where eta K s << 1, and 1/s (the undamped influence function) where
eta K s >> 1; a later segment forgets what earlier ones learned by exp(-eta K s). ``Spectrum`` recomputes
SOURCE on a run with every segment's eta K multiplied by a ``horizon`` factor (1 = the run as trained) and
influence with any damping, so one can watch SOURCE turn into influence as the horizon grows (exactly, for L
segments whose last one holds only the final parameters, at ``matching_damping``), and judge both against
exact unrolling and a ground truth:

    sp = Spectrum(run, data.query, truth=truth, reference=unrolled_scores)
    sp.source(segments=3, horizon=1.0)      # [Q, N], equals attribute(run, query, "source", segments=3)
    sp.view(3, 1.0, damping=1e-3)           # both methods' scores, LDS and agreement with unrolling
    sp.refinement(damping=1e-3)             # EK-FAC influence refined toward that exact solve, by iteration

The refinement shows the other road from an approximation to the exact influence function: EK-FAC's answer at
the same damping, refined by preconditioned Gauss-Newton iterations (``attribution.refine``), with the residual
and the LDS at every recorded iteration; its end point is the exact solve this class computes as ``influence``.

Curvature is fitted once per segment layout and reused for every horizon and damping; each setting's
scores are kept, so moving a slider back is immediate. Units and sign: the convention of docs/conventions.md.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import curvature as curv
from ..attribution import Scores
from ..attribution.influence import check_damping, implied_damping
from ..attribution.products import Plan, Term, evaluate
from ..attribution.refine import Refine, refined_solve
from ..attribution.source import segments_of, source_walk
from ..concurrency import compute_lock
from ..datasets import Split
from ..errors import SettingError
from ..evaluation import GroundTruth, lds
from ..evaluation.metrics import Interval, spearman
from ..grads import loss_grads, measurement_grads
from ..training import Run


@dataclass(frozen=True)
class View:
    """One setting: scores [Q, N] of SOURCE and influence, their LDS (None without a ground truth) and mean
    per-query Spearman agreement with the reference (exact unrolling; None without one)."""

    segments: int
    horizon: float
    damping: float
    source: Tensor
    influence: Tensor
    lds_source: Interval | None
    lds_influence: Interval | None
    agreement_source: float | None
    agreement_influence: float | None


@dataclass(frozen=True)
class Refinement:
    """EK-FAC influence at one damping refined toward the exact damped Gauss-Newton solve: the recorded
    iterations [0, ..., max]; residuals[t]: the relative residual |r_t| / |v| before iteration t (minibatch, mean
    over queries); scores[t] [Q, N]; lds[t] (None without a ground truth); agreement[t]: mean per-query Spearman
    with this class's exact-curvature influence at the same damping, the solve's target."""

    damping: float
    iterations: list[int]
    residuals: list[float]
    scores: dict[int, Tensor]
    lds: dict[int, Interval | None]
    agreement: dict[int, float]

    def at(self, iteration: int) -> int:
        """The recorded iteration nearest ``iteration``."""
        return min(self.iterations, key=lambda t: abs(t - iteration))


EXPLORER_REFINE = Refine(iterations=100, record=tuple(range(0, 101, 10)))  # the explorer's: every 10th kept
GRADIENT_BUDGET = 2**27  # keep per-example gradients of every checkpoint when N x P x (C + 1) is at most this
DENSE_PARAMS = 4096  # below this many parameters, dense curvature is fitted once per checkpoint and averaged


class Spectrum:
    """SOURCE with a scaled horizon and influence with any damping on one run (see the module docstring).

    curvature: a registered backend name or options object (SOURCE's exp form needs it positive
    semi-definite). reference: scores [Q, N] (or Scores) to agree with, normally exact unrolling.
    keep_gradients: hold every checkpoint's per-example gradients [N, P] so that a new setting costs a few
    matrix products (default: when they fit ``GRADIENT_BUDGET`` elements); otherwise they are recomputed
    for every new setting. refine: the settings of ``refinement`` (default: 100 iterations, every 10th kept)."""

    def __init__(self, run: Run, query: Split, curvature: curv.CurvatureSpec = "ggn", truth: GroundTruth | None = None,
                 reference: Scores | Tensor | None = None, progress: bool = False, keep_gradients: bool | None = None,
                 refine: Refine = EXPLORER_REFINE):
        with compute_lock:
            self._setup(run, query, curvature, truth, reference, progress, keep_gradients)
            self.refine_settings = refine
            self._refinements: dict[float, Refinement] = {}
            self._kronecker: curv.Curvature | None = None

    def _setup(self, run, query, curvature, truth, reference, progress, keep_gradients) -> None:
        if len(run.checkpoints) == 0:
            raise SettingError("SOURCE needs checkpoints, and this run has none; train with checkpoints=6 (or more)")
        self.run, self.query, self.curvature, self.truth, self.progress = run, query, curvature, truth, progress
        self.reference = reference.values if isinstance(reference, Scores) else reference
        if self.reference is not None and tuple(self.reference.shape) != (len(query), run.num_train):
            raise SettingError(f"reference scores must be [{len(query)}, {run.num_train}] (queries x training "
                             f"points), got {tuple(self.reference.shape)}")
        self.v = measurement_grads(run.model, run.task, run.final, query.to(run.final.dtype))
        self.implied_damping = implied_damping(run)
        self.total_rate = float(run.effective_lrs.sum())  # sum_k eta_k / (1 - momentum): the run's eta K
        self._views: dict[tuple, View] = {}
        self._dense: dict[int, Tensor] = {}  # checkpoint index -> its dense curvature [P, P] (small models)
        last = len(run.checkpoints) - 1
        self._fits: dict[tuple[int, ...], curv.Curvature] = {}  # checkpoints -> their averaged curvature
        if torch.equal(run.checkpoints[last], run.final):  # placement "end": reuse the last checkpoint's fit
            self.final_curvature = self.segment_curvature((last,))
        else:
            self.final_curvature = curv.fit(curvature, run.model, run.task, run.final[None], run.train,
                                            run.recipe.weight_decay, weights=run.weights, progress=progress)
        size = run.num_train * run.model.num_params * (len(run.checkpoints) + 1)
        self._grads: dict[int, Tensor] | None = None
        if keep_gradients or (keep_gradients is None and size <= GRADIENT_BUDGET):
            data = run.train.to(run.final.dtype)
            self._grads = {c: loss_grads(run.model, run.task, theta, data) for c, theta in enumerate(run.checkpoints)}
            final = len(run.checkpoints)  # the index influence's term uses
            same = torch.equal(run.checkpoints[last], run.final)
            self._grads[final] = self._grads[last] if same else loss_grads(run.model, run.task, run.final, data)

    @property
    def max_segments(self) -> int:
        return len(self.run.checkpoints)

    @property
    def eigenvalues(self) -> Tensor:
        """The curvature spectrum at the final parameters: stored eigenvalues [r] (the other P - r equal
        ``final_curvature.floor``)."""
        return self.final_curvature.eigenvalues

    def segment_curvature(self, checkpoints: tuple[int, ...]) -> curv.Curvature:
        """The curvature averaged over some of the run's checkpoints, fitted once per set. For a small model
        and a dense kind every checkpoint's matrix is fitted once (``curvature.dense.checkpoint_matrix``) and a
        segment is the backend's curvature of their mean, so a new L costs an eigendecomposition."""
        with compute_lock:
            if checkpoints not in self._fits:
                self._fits[checkpoints] = self._fit(checkpoints)
            return self._fits[checkpoints]

    def _fit(self, checkpoints: tuple[int, ...]) -> curv.Curvature:
        run, kind = self.run, self.curvature
        if not (isinstance(kind, str) and kind in curv.dense.DENSE_KINDS and run.model.num_params <= DENSE_PARAMS):
            return curv.fit(kind, run.model, run.task, run.checkpoints[list(checkpoints)], run.train,
                            run.recipe.weight_decay, weights=run.weights, progress=self.progress)
        for c in checkpoints:
            if c not in self._dense:
                self._dense[c] = curv.dense.checkpoint_matrix(kind, run.model, run.task, run.checkpoints[c],
                                                              run.train, run.recipe.weight_decay, run.weights)
        mean = sum(self._dense[c] for c in checkpoints) / len(checkpoints)
        return curv.dense.from_matrix(kind, mean, run.recipe.weight_decay)

    def source_terms(self, segments: int, horizon: float = 1.0) -> list[tuple[int, Tensor, float]]:
        """SOURCE's terms with every segment's eta K multiplied by ``horizon``, from SOURCE's own walk
        (``attribution.source.source_walk``): (checkpoint index, u [Q, P], scale); the scores are
        sum scale * u . g_c(i)."""
        if isinstance(horizon, bool) or not isinstance(horizon, int | float) or not 0 < horizon < math.inf:
            raise SettingError(f"horizon must be a positive number (1 = the run as trained), got {horizon!r}")
        plan, _ = source_walk(self.run, self.v, segments, self.curvature, horizon=float(horizon), progress=False,
                              fit=lambda segment, _thetas: self.segment_curvature(segment.checkpoints))
        return [(t.checkpoint, t.u, t.scale) for t in plan.terms]

    def influence_terms(self, damping: float) -> list[tuple[int, Tensor, float]]:
        """Influence's term: -(1/N) (H + damping)^-1 grad f_q at the final parameters."""
        check_damping(damping)
        if isinstance(damping, str):
            raise SettingError("give the damping as a number here (the slider's value)")
        u = self.final_curvature.apply(curv.functions.inverse(float(damping)), self.v)
        return [(len(self.run.checkpoints), u, -1.0 / self.run.num_train)]

    def _scores(self, *term_lists: list[tuple[int, Tensor, float]]) -> list[Tensor]:
        """Scores [Q, N] float64 of each list of terms (kept gradients, or one shared pass of them)."""
        if self._grads is not None:
            return [sum(scale * (u.to(self._grads[c].dtype) @ self._grads[c].T).double() for c, u, scale in terms)
                    for terms in term_lists]
        thetas = [*self.run.checkpoints, self.run.final]
        plans = [Plan(self.run.model, self.run.task, self.run.train,
                      [Term(thetas[c], u, scale) for c, u, scale in terms], len(self.query)) for terms in term_lists]
        return evaluate(plans)

    def source(self, segments: int, horizon: float = 1.0) -> Tensor:
        """SOURCE's scores [Q, N] with the horizon scaled."""
        with compute_lock:
            return self._scores(self.source_terms(segments, horizon))[0]

    def influence(self, damping: float) -> Tensor:
        """Influence scores [Q, N] with this damping."""
        with compute_lock:
            return self._scores(self.influence_terms(damping))[0]

    def view(self, segments: int, horizon: float, damping: float) -> View:
        """Both methods at one setting, judged (kept: repeating a setting is immediate)."""
        with compute_lock:
            return self._view(segments, horizon, damping)

    def _view(self, segments: int, horizon: float, damping: float) -> View:
        key = (int(segments), float(horizon), float(damping))
        if key not in self._views:
            source, influence = self._scores(self.source_terms(segments, horizon), self.influence_terms(damping))
            with warnings.catch_warnings():  # a small ground truth is the explorer's to show, not to warn about
                warnings.simplefilter("ignore", UserWarning)
                judged = [lds(s, self.truth) if self.truth is not None else None for s in (source, influence)]
            agree = [float(spearman(s, self.reference.double()).mean()) if self.reference is not None else None
                     for s in (source, influence)]
            self._views[key] = View(int(segments), float(horizon), float(damping), source, influence, *judged, *agree)
        return self._views[key]

    def refinement(self, damping: float) -> Refinement:
        """EK-FAC influence at ``damping`` refined by ``refine`` (the constructor's: 100 iterations, every 10th
        recorded), kept per damping. Its target is ``influence(damping)`` when this Spectrum's curvature is the
        Gauss-Newton ("ggn")."""
        check_damping(damping)
        if isinstance(damping, str):
            raise SettingError("give the damping as a number here (the slider's value)")
        with compute_lock:
            key = float(damping)
            if key not in self._refinements:
                self._refinements[key] = self._refine(key)
            return self._refinements[key]

    def _refine(self, damping: float) -> Refinement:
        run, settings = self.run, self.refine_settings
        if not settings.record:
            settings = dataclasses.replace(settings, record=(0, settings.iterations))
        if self._kronecker is None:
            self._kronecker = curv.fit("ekfac", run.model, run.task, run.final[None], run.train,
                                       run.recipe.weight_decay, weights=run.weights, progress=self.progress)
        solve = refined_solve(self._kronecker, curv.functions.inverse(damping), self.v, run.model, run.task,
                              run.final, run.train, run.weights, settings)
        recorded = sorted(solve.iterates)
        final = len(run.checkpoints)
        values = dict(zip(recorded, self._scores(*[[(final, solve.iterates[t], -1.0 / run.num_train)]
                                                   for t in recorded]), strict=True))
        target = self.influence(damping).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            judged = {t: lds(v, self.truth) if self.truth is not None else None for t, v in values.items()}
        agreement = {t: float(spearman(v, target).mean()) for t, v in values.items()}
        return Refinement(damping, recorded, solve.history, values, judged, agreement)

    def last_rate(self, segments: int) -> float:
        """eta_L K_L of the last of L segments (effective rates summed over its steps)."""
        seg = segments_of(self.run, segments)[-1]
        return float(self.run.effective_lrs[seg.start:seg.stop].sum())

    def matching_damping(self, segments: int, horizon: float) -> float:
        """1/(horizon x eta_L K_L): the damping whose 1/(s + damping) SOURCE's last segment behaves like.
        As the horizon grows, SOURCE tends to influence at this damping (the last segment forgets the earlier
        ones in every direction with horizon x eta_L K_L x s >> 1; the flattest need the longest horizon)."""
        return 1.0 / (horizon * self.last_rate(segments))

    def gains(self, segments: int, horizon: float, damping: float, s: Tensor) -> dict[str, Tensor]:
        """What each method does to a direction of eigenvalue s (up to 1/N): influence 1/(s + damping) and
        SOURCE's last segment (1 - exp(-eta K s))/s with eta K = horizon x eta_L K_L."""
        return {"influence": curv.functions.inverse(float(damping))(s),
                "SOURCE": curv.functions.learn(self.last_rate(segments), horizon)(s)}


__all__ = ["Spectrum", "View", "Refinement"]
