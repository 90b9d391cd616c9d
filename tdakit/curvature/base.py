"""The one curvature interface (the contract every backend meets) and the backend registry.

Influence functions apply fn(s) = 1/(s + damping); SOURCE applies exp(-eta K s) and
(1 - exp(-eta K s))/s. Any backend that can do ``apply`` serves every method; docs/curvature.md says
how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from torch import Tensor

from ..errors import SettingError

EigenFunction = Callable[[Tensor], Tensor]
"""fn(s) -> values: an elementwise function of a Tensor of eigenvalues s (weight decay included, float64
or the backend's dtype, any shape), returning a Tensor of the same shape. It may instead offer
``per_block(mean_loss_eigenvalue: float) -> EigenFunction``: backends then call it with the mean
eigenvalue *without* the weight decay of each block (one block per layer for K-FAC/EK-FAC, the whole
matrix otherwise) and apply what it returns (kronfluence's damping heuristic is one)."""


def resolve(fn, mean_loss_eigenvalue: float) -> EigenFunction:
    """The function to apply to one block: ``fn.per_block(mean)`` where fn offers it, else fn."""
    per_block = getattr(fn, "per_block", None)
    return per_block(mean_loss_eigenvalue) if per_block is not None else fn


@runtime_checkable
class Curvature(Protocol):
    """What a curvature backend offers: a symmetric P x P matrix M (the curvature of the mean training
    loss plus weight decay, averaged over one or several parameter vectors) seen through its eigenvalues.

    To add a backend: write a class with these members, a function ``fit(model, task, thetas [C, P],
    data, weight_decay, weights [N] or None, progress) -> your class``, and register the function with
    ``@register("name")``; every method then accepts ``curvature="name"`` (docs/curvature.md).
    """

    num_params: int
    floor: float  # the eigenvalue of every direction the backend does not store
    weight_decay: float  # how much weight decay M includes (in every eigenvalue)

    @property
    def eigenvalues(self) -> Tensor:
        """The stored eigenvalues, ``floor`` included: [r] (r <= P; the other P - r equal ``floor``)."""

    @property
    def nbytes(self) -> int:
        """Memory held by the backend's tensors, in bytes."""

    def apply(self, fn: EigenFunction, v: Tensor) -> Tensor:
        """fn(M) v for v [..., P]; returned in v's dtype."""

    def apply_many(self, fns: list[EigenFunction], v: Tensor) -> list[Tensor]:
        """[fn(M) v for fn in fns], rotating v into the eigenbasis once."""

    def dense(self) -> Tensor:
        """M itself [P, P] (small models: tests and plots)."""


Fit = Callable[..., Curvature]
BACKENDS: dict[str, Fit] = {}


def register(name: str) -> Callable[[Fit], Fit]:
    """Decorator: make a fitting function available as ``curvature=name`` everywhere."""
    def add(fit: Fit) -> Fit:
        if name in BACKENDS:
            raise SettingError(f"a curvature backend named {name!r} is already registered")
        BACKENDS[name] = fit
        return fit
    return add
