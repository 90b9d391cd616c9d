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
from .settings import InfluenceDamping, check_damping


def implied_damping(run: Run) -> float:
    """1 / sum_k eta_k/(1 - momentum): the damping that unrolling the whole run behaves like
    ((1 - exp(-eta T s))/s ~ 1/(s + 1/(eta T))). Chosen from the recipe, not tuned on ground truth."""
    return 1.0 / float(run.effective_lrs.sum())


def is_kronecker(curvature) -> bool:
    """Whether a curvature (a fitted one, a backend name or an options object) is K-FAC/EK-FAC."""
    if isinstance(curvature, str):
        return curvature in ("ekfac", "kfac")
    return isinstance(curvature, curv.KroneckerCurvature | curv.Kronecker)


INFLUENCE_KRONECKER = {"fisher": "true", "include_weight_decay": False}  # measured: BENCHMARKS.md, issue 24


def auto_influence(curvature: curv.CurvatureSpec, damping: float | str) -> tuple[curv.CurvatureSpec, float | str]:
    """The (curvature, damping) influence uses. damping="auto" (the default) stands for a measured package:

    - with a Kronecker curvature ("ekfac", "kfac" or ``Kronecker(...)``): kronfluence's recipe, the true Fisher of
      the loss alone (``INFLUENCE_KRONECKER``, for the options left at None) and "heuristic" damping, 0.1 x each
      layer's mean eigenvalue. Measured over an MLP regression, an MLP classifier and two CNNs (BENCHMARKS.md,
      issue 24): 0.03-0.08 LDS above the recipe's implied damping, the best or within 0.006 of the best of the
      combinations tried; its parts alone are not (the true Fisher with the weight decay inside scored 0.19
      lower on MNIST);
    - with an exact curvature: "implied" damping. Over a whole exact Gauss-Newton the heuristic's mean eigenvalue
      counts every direction no example reaches and is far too small (0.10 LDS below "implied" on Concrete).

    Any other damping keeps the curvature as given: the Hessian of the objective that was trained (weight decay
    included, ``fisher="ggn"``) plus that damping, the implicit-function answer."""
    if damping != "auto":
        return curvature, damping
    if not is_kronecker(curvature):
        return curvature, "implied"
    if isinstance(curvature, str):
        curvature = curv.Kronecker(eigen_correction=curvature == "ekfac")
    return curvature.with_defaults(**INFLUENCE_KRONECKER), "heuristic"


def damped_inverse(H: curv.Curvature, damping: float | str, run: Run, relative: float = 0.1,
                   total_rate: float | None = None):
    """The eigenvalue function 1/(s + damping) for ``damping``:

    - a number >= 0;
    - "implied": 1 / sum_k eta_k/(1 - momentum) (``implied_damping``; ``total_rate`` overrides the sum);
    - "heuristic": ``relative`` (0.1) x the mean eigenvalue of the loss curvature, weight decay excluded,
      per layer for Kronecker curvature (``functions.relative_damping``: kronfluence's default);
    - "auto": "heuristic" for a Kronecker curvature, else "implied" (``auto_influence``).

    Raises an error naming the fix when 1/(s + damping) would be infinite: a curvature with a zero
    eigenvalue (no weight decay, directions no training point reaches) and damping 0."""
    check_damping(damping, InfluenceDamping)
    if damping == "auto":  # a fitted curvature: the damping half of ``auto_influence``
        damping = "heuristic" if is_kronecker(H) else "implied"
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


def influence_plan(run: Run, query: Split, damping: float | str = "auto", curvature: curv.CurvatureSpec = "ggn",
                   theta: Tensor | None = None, progress: bool = True) -> Plan:
    """The influence function's one term: u = -(1/N) (H + damping I)^{-1} grad f_q at theta."""
    check_damping(damping, InfluenceDamping)
    curvature, damping = auto_influence(curvature, damping)
    theta = run.final if theta is None else theta
    H = curv.fit(curvature, run.model, run.task, theta[None], run.train, run.recipe.weight_decay,
                 weights=run.weights, progress=progress)
    v = measurement_grads(run.model, run.task, theta, query.to(theta.dtype))
    u = H.apply(damped_inverse(H, damping, run), v)
    return Plan(run.model, run.task, run.train, [Term(theta, u, -1.0 / run.num_train)], len(query))


__all__ = ["influence_plan", "implied_damping", "auto_influence", "damped_inverse", "check_damping", "is_kronecker",
           "INFLUENCE_KRONECKER"]
