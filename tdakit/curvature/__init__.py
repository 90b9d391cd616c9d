"""Curvature backends behind one interface (``apply(fn, v)``): dense Hessian, exact Gauss-Newton in
sample space, and K-FAC / EK-FAC for nn.Linear and nn.Conv2d."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..datasets import Split
from ..models import FlatModel
from ..task import Task
from . import functions
from .base import EigenCurvature, EigenFunction, SampleSpaceCurvature
from .dense import ggn_curvature, hessian, hessian_curvature
from .kronecker import KroneckerCurvature, kronecker_curvature, kronecker_layers

KINDS = ("ggn", "hessian", "hessian_clipped", "ekfac", "kfac")

Curvature = EigenCurvature | SampleSpaceCurvature | KroneckerCurvature


@dataclass(frozen=True)
class Kronecker:
    """K-FAC / EK-FAC options, usable wherever a curvature name is: ``curvature=Kronecker(fisher="true")``.

    fisher: "ggn" (exact expectation over the model's outputs), "true" (sampled targets, seeded) or
    "empirical" (observed targets). exclude: names of layers to leave out (e.g. a LayerNorm).
    include_weight_decay: add the recipe's weight decay to the curvature (the Hessian of the objective
    training minimised). False reproduces tools that fit the loss alone (kronfluence).
    """

    eigen_correction: bool = True
    fisher: str = "ggn"
    exclude: tuple[str, ...] = ()
    chunk: int = 512
    seed: int = 0
    include_weight_decay: bool = True

    def fit(self, model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float) -> KroneckerCurvature:
        return kronecker_curvature(model, task, thetas, data, weight_decay if self.include_weight_decay else 0.0,
                                   self.eigen_correction, self.fisher, self.exclude, self.chunk, self.seed)


def fit(kind: str | Kronecker, model: FlatModel, task: Task, thetas: Tensor, data: Split,
        weight_decay: float) -> Curvature:
    """Curvature of the mean training loss (with weight decay), averaged over thetas [C, P].

    kind: "ggn" (Gauss-Newton, exact in sample space), "hessian" (full, small P), "hessian_clipped"
    (full, negative eigenvalues set to 0), "ekfac" / "kfac" (Kronecker-factored Gauss-Newton, any size),
    or a ``Kronecker(...)`` with options.
    """
    if isinstance(kind, Kronecker):
        return kind.fit(model, task, thetas, data, weight_decay)
    if kind == "ggn":
        return ggn_curvature(model, task, thetas, data, weight_decay)
    if kind in ("hessian", "hessian_clipped"):
        return hessian_curvature(model, task, thetas, data, weight_decay, clip_negative=kind == "hessian_clipped")
    if kind in ("ekfac", "kfac"):
        return Kronecker(eigen_correction=kind == "ekfac").fit(model, task, thetas, data, weight_decay)
    raise ValueError(f"unknown curvature {kind!r}; choose one of {', '.join(KINDS)} or pass Kronecker(...)")


__all__ = ["EigenCurvature", "SampleSpaceCurvature", "KroneckerCurvature", "Kronecker", "Curvature", "EigenFunction",
           "fit", "functions", "ggn_curvature", "hessian", "hessian_curvature", "kronecker_curvature",
           "kronecker_layers", "KINDS"]
