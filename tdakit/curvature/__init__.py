"""Curvature backends behind one interface (``EigenCurvature.apply(fn, v)``)."""

from __future__ import annotations

from torch import Tensor

from ..datasets import Split
from ..models import FlatModel
from ..task import Task
from . import functions
from .base import EigenCurvature, EigenFunction, SampleSpaceCurvature
from .dense import ggn_curvature, hessian, hessian_curvature

KINDS = ("ggn", "hessian", "hessian_clipped")

__all__ = ["EigenCurvature", "SampleSpaceCurvature", "EigenFunction", "fit", "functions", "ggn_curvature", "hessian",
           "hessian_curvature", "KINDS"]


def fit(kind: str, model: FlatModel, task: Task, thetas: Tensor, data: Split,
        weight_decay: float) -> EigenCurvature | SampleSpaceCurvature:
    """Curvature of the mean training loss (with weight decay), averaged over thetas [C, P].

    kind: "ggn" (Gauss-Newton, exact in sample space, any P), "hessian" (full, small P) or
    "hessian_clipped" (full, negative eigenvalues set to 0).
    """
    if kind == "ggn":
        return ggn_curvature(model, task, thetas, data, weight_decay)
    if kind in ("hessian", "hessian_clipped"):
        return hessian_curvature(model, task, thetas, data, weight_decay, clip_negative=kind == "hessian_clipped")
    raise ValueError(f"unknown curvature {kind!r}; choose one of {', '.join(KINDS)}")
