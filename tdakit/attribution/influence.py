"""Influence functions: implicit differentiation at the final parameters (docs/maths.md, section 3).

    score_IF[q, i] = -(1/N) grad f_q(theta_T)^T (H + damping I)^{-1} grad L(z_i, theta_T)

H: curvature of the mean (weighted) training loss with weight decay, from any registered backend
("ggn", "hessian", "ekfac", "kfac", ...). Units: the measurement's; removing S is predicted as
-sum_{i in S} score[:, i] (the convention of docs/conventions.md).
"""

from __future__ import annotations

import math

from torch import Tensor

from .. import curvature as curv
from ..datasets import Split
from ..errors import ResultError
from ..grads import measurement_grads
from ..training import Run
from .products import Plan, Term
from .refine import Refine, refined_solve
from .settings import check_damping


def implied_damping(run: Run) -> float:
    """1 / sum_k eta_k/(1 - momentum): the damping that unrolling the whole run behaves like
    ((1 - exp(-eta T s))/s ~ 1/(s + 1/(eta T))). Chosen from the recipe, not tuned on ground truth."""
    return 1.0 / float(run.effective_lrs.sum())


def damped_inverse(H: curv.Curvature, damping: float | str, run: Run, relative: float = 0.1,
                   total_rate: float | None = None):
    """The eigenvalue function 1/(s + damping) for ``damping``:

    - a number >= 0;
    - "implied": 1 / sum_k eta_k/(1 - momentum) (``implied_damping``; ``total_rate`` overrides the sum);
    - "heuristic": ``relative`` (0.1) x the mean eigenvalue of the loss curvature, weight decay excluded,
      per layer for Kronecker curvature (``functions.relative_damping``: kronfluence's default);

    Raises an error naming the fix when 1/(s + damping) would be infinite: a curvature with a zero
    eigenvalue (no weight decay, directions no training point reaches) and damping 0."""
    check_damping(damping)
    if damping == "heuristic":
        return curv.functions.relative_damping(relative)
    if damping == "implied":
        damping = implied_damping(run) if total_rate is None else 1.0 / total_rate
    damping = float(damping)
    values = H.eigenvalues
    smallest = float(values.abs().min()) if values.numel() else math.inf
    if H.num_params > values.numel():
        smallest = min(smallest, abs(H.floor))
    if damping == 0.0 and smallest <= 1e-12 * max(float(values.abs().max()), 1e-300):
        raise ResultError(
            f"the curvature has a zero eigenvalue (smallest |s| = {smallest:.3g}; weight decay "
            f"{H.weight_decay:g}) and damping is 0, so (H + damping I)^-1 does not exist: use a positive damping "
            "(damping='implied', 'heuristic' or a number > 0) or train with weight decay")
    return curv.functions.inverse(damping)


def influence_plan(run: Run, query: Split, damping: float | str = "implied", curvature: curv.CurvatureSpec = "ggn",
                   theta: Tensor | None = None, refine: int | Refine = 0, progress: bool = True) -> Plan:
    """The influence function's one term: u = -(1/N) (H + damping I)^{-1} grad f_q at theta; with ``refine``
    iterations, the Kronecker answer refined toward the exact damped Gauss-Newton solve (``refine.py``)."""
    check_damping(damping)
    theta = run.final if theta is None else theta
    H = curv.fit(curvature, run.model, run.task, theta[None], run.train, run.recipe.weight_decay,
                 weights=run.weights, progress=progress)
    v = measurement_grads(run.model, run.task, theta, query.to(theta.dtype))
    solve = refined_solve(H, damped_inverse(H, damping, run), v, run.model, run.task, theta, run.train, run.weights,
                          Refine.of(refine))
    return Plan(run.model, run.task, run.train, [Term(theta, solve.x, -1.0 / run.num_train,
                                                      iterates=solve.iterates or None)], len(query),
                {"residuals": solve.history} if solve.history else {})


__all__ = ["influence_plan", "implied_damping", "damped_inverse", "check_damping"]
