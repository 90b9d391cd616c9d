"""Fitting a curvature by name or options object, and sharing identical fits.

``fit(kind, model, task, thetas, data, weight_decay, weights)`` is the one way every method gets a curvature: a
registered backend name (``base.BACKENDS``) or an options object with a ``fit`` method (``Kronecker(...)``).
Inside ``shared_fits()`` a fit asked for twice with the same inputs is made once (``attribute_many`` uses it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .. import store
from ..datasets import Split
from ..errors import InputError, SettingError
from ..models import FlatModel
from ..task import Task
from . import budget
from .base import BACKENDS, Curvature

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
    if kind == "auto":  # what attribute() resolves before fitting; direct callers get the same rule
        kind = budget.auto(model, thetas[0], data.x[:1], len(data), len(thetas))[0]
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
