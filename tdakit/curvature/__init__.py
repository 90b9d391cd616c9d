"""Curvature backends behind one interface (``Curvature``: eigenvalues and ``apply(fn, v)``).

Registered backends (``BACKENDS``): "ggn" (exact Gauss-Newton in sample space), "hessian" (full, small
models), "hessian_clipped" (its negative eigenvalues set to 0), "ekfac" and "kfac" (Kronecker-factored,
nn.Linear, nn.Conv1d/2d, nn.Embedding, self-attention). ``Kronecker(...)`` passes K-FAC/EK-FAC options
wherever a name is accepted.
A new backend registers itself with ``@register("name")`` (docs/curvature.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..datasets import Split
from ..errors import check_choice
from ..layers import Fisher
from ..models import FlatModel
from ..task import Task
from . import budget, dense, functions
from .base import BACKENDS, Curvature, EigenFunction, register
from .dense import ggn_curvature, hessian, hessian_curvature
from .eigen import EigenCurvature, SampleSpaceCurvature, mean_loss_eigenvalue
from .fitting import fit, shared_fits
from .kronecker import KroneckerCurvature, kronecker_curvature


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
    chunk: int | None = None  # examples per factor pass (None: sized to the device's memory)
    seed: int = 0
    include_weight_decay: bool = True

    def __post_init__(self):
        check_choice("fisher", self.fisher, Fisher)
        if isinstance(self.exclude, str | list):  # one name, or a list: kept as a tuple (hashable settings)
            names = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
            object.__setattr__(self, "exclude", names)

    def fit(self, model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
            weights: Tensor | None = None, progress: bool = False) -> KroneckerCurvature:
        return kronecker_curvature(model, task, thetas, data, weight_decay if self.include_weight_decay else 0.0,
                                   self.eigen_correction, self.fisher, tuple(self.exclude), self.chunk, self.seed,
                                   progress=progress, weights=weights)


CurvatureSpec = str | Kronecker


def names() -> Sequence[str]:
    """The registered backend names."""
    return tuple(BACKENDS)


__all__ = ["budget", "dense", "Curvature", "CurvatureSpec", "EigenCurvature", "SampleSpaceCurvature",
           "KroneckerCurvature", "Kronecker", "EigenFunction", "BACKENDS", "register", "fit", "shared_fits", "names",
           "functions",
           "mean_loss_eigenvalue", "ggn_curvature", "hessian", "hessian_curvature", "kronecker_curvature"]
