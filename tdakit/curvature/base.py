"""The one curvature interface (the contract every backend meets) and the backend registry.

Influence functions apply fn(s) = 1/(s + damping); SOURCE applies exp(-eta K s) and
(1 - exp(-eta K s))/s. Any backend that can do ``apply`` serves every method; docs/curvature.md says
how to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .. import store
from ..datasets import Split
from ..errors import InputError, SettingError
from ..models import FlatModel
from ..task import Task

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


_shared: dict[tuple, Curvature] | None = None
# tensor identity -> (the tensor, its content hash), only while a shared_fits block runs; holding the tensor
# keeps its id and storage from being reused by another tensor during the block
_digests: dict[tuple, tuple[Tensor, str]] = {}


@contextmanager
def shared_fits() -> Iterator[None]:
    """Inside this block a curvature fitted twice on the same inputs (kind, model, task, thetas, data,
    weights, weight decay) is fitted once: ``attribute_many`` uses it so that SOURCE and Fast-SOURCE with the
    same segments, or two influence settings on one curvature, share their fits. Fits are kept only until
    the outermost block ends."""
    global _shared
    outer = _shared
    if outer is None:
        _shared = {}
    try:
        yield
    finally:
        _shared = outer
        if outer is None:
            _digests.clear()


def _digest(*tensors: Tensor | None) -> str:
    """A content hash of the tensors; each tensor is hashed once per block (the training data, say, is
    asked about at every fit), recognised by identity, storage and version counter."""
    parts = []
    for t in tensors:
        if t is None:
            continue
        identity = (id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, str(t.device))
        if identity not in _digests:
            _digests[identity] = (t, store.digest(t))
        parts.append(_digests[identity][1])
    return store.digest(*parts)


def fit(kind, model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
        weights: Tensor | None = None, progress: bool = False) -> Curvature:
    """Curvature of the mean weighted training loss (1/N) sum_i w_i L(z_i) + weight decay, averaged over
    thetas [C, P]. kind: a registered name (``BACKENDS``: "ggn", "hessian", "hessian_clipped", "ekfac",
    "kfac", ...) or an options object with the same ``fit`` method (``Kronecker(...)``). Inside
    ``shared_fits()`` an identical earlier fit is returned instead of refitting."""
    weights = check_weights(weights, len(data))
    if _shared is None:
        return _fit(kind, model, task, thetas, data, weight_decay, weights, progress)
    key = (repr(kind), model.describe(), repr(task), weight_decay, _digest(thetas, data.x, data.y, weights))
    if key not in _shared:
        _shared[key] = _fit(kind, model, task, thetas, data, weight_decay, weights, progress)
    return _shared[key]


def _fit(kind, model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
         weights: Tensor | None, progress: bool) -> Curvature:
    if isinstance(kind, str):
        if kind not in BACKENDS:
            raise SettingError(f"unknown curvature {kind!r}; choose one of {', '.join(BACKENDS)} or pass "
                             "Kronecker(...)")
        return BACKENDS[kind](model, task, thetas, data, weight_decay, weights=weights, progress=progress)
    if not callable(getattr(kind, "fit", None)):
        raise SettingError(f"curvature must be a name ({', '.join(BACKENDS)}) or an options object with a fit "
                         f"method, got {kind!r}")
    return kind.fit(model, task, thetas, data, weight_decay, weights=weights, progress=progress)


def check_weights(weights: Tensor | None, n: int) -> Tensor | None:
    """None for an unweighted run (all ones), else the weights [N], checked (>= 0: a curvature)."""
    if weights is None:
        return None
    weights = torch.as_tensor(weights)
    if weights.shape != (n,):
        raise InputError(f"weights must have shape ({n},), got {tuple(weights.shape)}")
    if (weights < 0).any():
        raise InputError("curvature needs non-negative training weights (a negative weight makes the loss "
                         "curvature indefinite); attribute a run trained with weights >= 0")
    return None if bool((weights == 1).all()) else weights


@dataclass
class EigenCurvature:
    """A symmetric P x P matrix M = V diag(s) V^T + floor * (I - V V^T).

    eigenvectors V [P, r] (orthonormal columns), eigenvalues s [r]. When r < P the orthogonal
    complement has the single eigenvalue ``floor`` (for a Gauss-Newton matrix: the weight decay).
    """

    eigenvectors: Tensor
    eigenvalues: Tensor
    floor: float = 0.0
    weight_decay: float = 0.0

    @property
    def num_params(self) -> int:
        return self.eigenvectors.shape[0]

    @property
    def rank(self) -> int:
        return self.eigenvectors.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.eigenvectors, self.eigenvalues))

    def apply(self, fn: EigenFunction, v: Tensor) -> Tensor:
        """fn(M) v for v [..., P] (computed in the eigenvectors' dtype, returned in v's)."""
        return self.apply_many([fn], v)[0]

    def apply_many(self, fns: list[EigenFunction], v: Tensor) -> list[Tensor]:
        """[fn(M) v for fn in fns], projecting v onto the eigenvectors once for all of them."""
        V = self.eigenvectors
        x = v.to(V.dtype)
        coeff = x @ V  # [..., r]
        rest = x - coeff @ V.T if self.rank < self.num_params else None
        values = self.eigenvalues.to(V.dtype)
        mean = mean_loss_eigenvalue(self)
        outs = []
        for fn in map(lambda f: resolve(f, mean), fns):
            out = (coeff * fn(values)) @ V.T
            if rest is not None:
                out = out + fn(torch.tensor(self.floor, dtype=V.dtype, device=V.device)) * rest
            outs.append(out.to(v.dtype))
        return outs

    def dense(self) -> Tensor:
        """The matrix itself [P, P] (small models only: tests and plots)."""
        eye = torch.eye(self.num_params, dtype=self.eigenvectors.dtype, device=self.eigenvectors.device)
        return self.apply(lambda s: s, eye)


@dataclass
class SampleSpaceCurvature:
    """M = A^T A + floor * I, held through its factor A [rows, P] and the eigendecomposition of the small
    Gram matrix A A^T = U diag(sigma) U^T (float64). The nonzero eigenvectors of A^T A are
    A^T U sigma^{-1/2}; they are never formed, so memory stays at A's size and apply costs two passes
    over A. Eigenvalues: sigma + floor on span(A^T), floor on its complement.
    """

    factor: Tensor
    gram_vectors: Tensor
    gram_values: Tensor
    floor: float = 0.0
    weight_decay: float = 0.0

    @property
    def eigenvalues(self) -> Tensor:
        return self.gram_values + self.floor

    @property
    def num_params(self) -> int:
        return self.factor.shape[1]

    @property
    def rank(self) -> int:
        return len(self.gram_values)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.factor, self.gram_vectors, self.gram_values))

    def apply(self, fn: EigenFunction, v: Tensor) -> Tensor:
        """fn(M) v for v [..., P] = fn(floor) v + V (fn(sigma + floor) - fn(floor)) V^T v."""
        return self.apply_many([fn], v)[0]

    def apply_many(self, fns: list[EigenFunction], v: Tensor) -> list[Tensor]:
        """[fn(M) v for fn in fns], with one pass over the factor A into sample space for all of them."""
        A, U, sigma = self.factor, self.gram_vectors, self.gram_values
        coeff = (v.to(A.dtype) @ A.T).double() @ U  # sigma^{1/2} V^T v
        mean = mean_loss_eigenvalue(self)
        outs = []
        for fn in map(lambda f: resolve(f, mean), fns):
            f_floor = fn(torch.tensor(self.floor, dtype=torch.float64, device=A.device))
            gain = (fn(sigma + self.floor) - f_floor) / sigma
            back = ((coeff * gain) @ U.T).to(A.dtype) @ A
            outs.append((f_floor * v.double() + back.double()).to(v.dtype))
        return outs

    def dense(self) -> Tensor:
        eye = torch.eye(self.num_params, dtype=torch.float64, device=self.factor.device)
        return self.apply(lambda s: s, eye)


def mean_loss_eigenvalue(curvature) -> float:
    """trace / P of a backend's matrix, less its weight decay (directions outside a low-rank part count
    with the ``floor``)."""
    values = curvature.eigenvalues
    missing = curvature.num_params - values.numel()
    return float((values.sum() + missing * curvature.floor) / curvature.num_params) - curvature.weight_decay
