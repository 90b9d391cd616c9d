"""Influence functions: implicit differentiation at the final parameters.

    score_IF[q, i] = -(1/N) grad f_q(theta_T)^T (H + damping I)^{-1} grad L(z_i, theta_T)

H: curvature of the mean training loss with weight decay (any backend of ``tdakit.curvature``: "ggn",
"hessian", "ekfac", "kfac", ...). Units: the measurement's; removing S is predicted as
-sum_{i in S} score[:, i].
"""

from __future__ import annotations

from torch import Tensor

from .. import curvature as curv
from ..datasets import Split
from ..grads import gradient_products, measurement_grads
from ..training import Run

DAMPINGS = ("implied", "heuristic")


def implied_damping(run: Run) -> float:
    """1 / sum_k eta_k/(1 - momentum): the damping that unrolling the whole run behaves like
    ((1 - exp(-eta T s))/s ~ 1/(s + 1/(eta T))). Chosen from the recipe, not tuned on ground truth."""
    return 1.0 / float(run.effective_lrs.sum())


def damped_inverse(H: curv.Curvature, damping: float | str, run: Run, relative: float = 0.1):
    """The eigenvalue function 1/(s + damping) for ``damping``: a number >= 0, "implied" (see
    implied_damping) or "heuristic" (relative x the mean eigenvalue, per layer for Kronecker
    curvature: kronfluence's default)."""
    if damping == "implied":
        damping = implied_damping(run)
    if damping == "heuristic":
        if isinstance(H, curv.KroneckerCurvature):
            return curv.functions.relative_inverse(relative)
        return curv.functions.inverse(relative * float(curv.functions.mean_eigenvalue(H)))
    if isinstance(damping, bool) or not isinstance(damping, float | int) or damping < 0:
        raise ValueError(f"damping must be a number >= 0, 'implied' or 'heuristic', got {damping!r}")
    return curv.functions.inverse(float(damping))


def influence_scores(run: Run, query: Split, damping: float | str = "implied", curvature: str | curv.Kronecker = "ggn",
                     theta: Tensor | None = None) -> Tensor:
    """Influence scores [Q, N] at theta (default: the run's final parameters)."""
    if isinstance(damping, str) and damping not in DAMPINGS:
        raise ValueError(f"damping must be a number >= 0 or one of {DAMPINGS}, got {damping!r}")
    theta = run.final if theta is None else theta
    H = curv.fit(curvature, run.model, run.task, theta[None], run.train, run.recipe.weight_decay)
    v = measurement_grads(run.model, run.task, theta, query.to(theta.dtype))
    u = H.apply(damped_inverse(H, damping, run), v)
    return (-gradient_products(run.model, run.task, theta, run.train, u) / run.num_train).to(theta.dtype)


__all__ = ["influence_scores", "implied_damping", "damped_inverse"]
