"""Influence functions: implicit differentiation at the final parameters.

    score_IF[q, i] = -(1/N) grad f_q(theta_T)^T (H + damping I)^{-1} grad L(z_i, theta_T)

H: curvature of the mean training loss with weight decay ("ggn" or "hessian"). Units: the
measurement's; removing S is predicted as -sum_{i in S} score[:, i].
"""

from __future__ import annotations

from torch import Tensor

from .. import curvature as curv
from ..datasets import Split
from ..grads import loss_grads, measurement_grads
from ..training import Run


def implied_damping(run: Run) -> float:
    """1 / sum_k eta_k/(1 - momentum): the damping that unrolling the whole run behaves like
    ((1 - exp(-eta T s))/s ~ 1/(s + 1/(eta T))). Chosen from the recipe, not tuned on ground truth."""
    return 1.0 / float(run.effective_lrs.sum())


def influence_scores(run: Run, query: Split, damping: float | str = "implied", curvature: str = "ggn",
                     theta: Tensor | None = None) -> Tensor:
    """Influence scores [Q, N] at theta (default: the run's final parameters)."""
    if damping == "implied":
        damping = implied_damping(run)
    if not isinstance(damping, float | int) or damping < 0:
        raise ValueError(f"damping must be a number >= 0 or 'implied', got {damping!r}")
    theta = run.final if theta is None else theta
    H = curv.fit(curvature, run.model, run.task, theta[None], run.train, run.recipe.weight_decay)
    v = measurement_grads(run.model, run.task, theta, query.to(theta.dtype))
    u = H.apply(curv.functions.inverse(float(damping)), v)
    G = loss_grads(run.model, run.task, theta, run.train.to(theta.dtype))
    return -(u @ G.T) / run.num_train


__all__ = ["influence_scores", "implied_damping"]
