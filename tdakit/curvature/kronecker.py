"""K-FAC and EK-FAC curvature for nn.Linear, nn.Conv1d/2d, nn.Embedding and self-attention (docs/curvature.md).

Each supported layer's parameters form one matrix W [out, in (+1 bias column)]. A training example's
gradient of that matrix is G = sum_t d_t a_t^T over the layer's positions t (one for Linear, one per
output position of a convolution): a_t the layer input (for a convolution an unfolded patch, plus a 1 for the bias),
d_t the gradient of the loss with respect to the layer's pre-activation output. The curvature of the
mean training loss (plus weight decay) is approximated layer by layer (block diagonal) by

    K-FAC:   A (x) S,   A = E[mean_t a_t a_t^T],  S = E[sum_t d_t d_t^T]
    EK-FAC:  (Q_S (x) Q_A) diag(Lambda) (Q_S (x) Q_A)^T,  Lambda = E[(Q_S^T G Q_A)^2]

with Q_A, Q_S the eigenvectors of A and S. EK-FAC keeps K-FAC's eigenbasis and replaces its eigenvalues
by the exact diagonal of the curvature in that basis. Weight decay adds ``floor`` to every eigenvalue.
An embedding's inputs are one-hot, so its A is diagonal (each token's frequency per position) and Q_A is the
identity: A is accumulated as a vector [V] and Q_A never formed (``A_vectors`` None).

Which curvature: ``fisher="ggn"`` uses, for every example, the columns r_k of Lambda^{1/2} (the square
root of the loss Hessian in the outputs) as output gradients, so that sum_k G_k G_k^T is exactly the
example's Gauss-Newton matrix (equal to the true Fisher's expectation, no sampling; o backward passes);
``"true"`` draws one target per example from the model (seeded); ``"empirical"`` uses the observed ones.

Memory: the factors A [in, in], S [out, out], their eigenvectors and Lambda [out, in] per layer
(``nbytes``); data is streamed in chunks of ``chunk`` examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..datasets import Split
from ..errors import check_choice
from ..hardware import element_budget
from ..layers import Fisher, LayerSlot, factored, gradient_factors
from ..models import FlatModel
from ..task import Task
from .base import EigenFunction, register, resolve


@dataclass
class KroneckerLayer:
    """One layer's factors: eigenvectors of A [in, in] (None: the identity, for an embedding) and S [out, out] and
    eigenvalues [out, in] (EK-FAC: corrected; K-FAC: products of the factors' eigenvalues), without weight decay."""

    slot: LayerSlot
    A_vectors: Tensor | None
    S_vectors: Tensor
    eigenvalues: Tensor


@dataclass
class KroneckerCurvature:
    """Block-diagonal curvature over the supported layers; eigenvalues of each block are the layer's
    ``eigenvalues + floor``. Parameters of excluded layers get fn(M) v = 0 (left out of attribution)."""

    layers: list[KroneckerLayer]
    num_params: int
    floor: float = 0.0
    excluded: list[slice] = field(default_factory=list)

    @property
    def weight_decay(self) -> float:
        return self.floor

    @property
    def eigenvalues(self) -> Tensor:
        """All eigenvalues [P - excluded], weight decay included (float64)."""
        return torch.cat([l.eigenvalues.flatten() for l in self.layers]) + self.floor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for l in self.layers
                   for t in (l.A_vectors, l.S_vectors, l.eigenvalues) if t is not None)

    def apply(self, fn: EigenFunction, v: Tensor) -> Tensor:
        """fn(M) v for v [..., P], layer by layer: Q_S [fn(Lambda + floor) * (Q_S^T V Q_A)] Q_A^T.
        Parameters of excluded layers get 0. A function with ``per_block`` is resolved per layer."""
        return self.apply_many([fn], v)[0]

    def apply_many(self, fns: list, v: Tensor) -> list[Tensor]:
        """[fn(M) v for fn in fns], rotating v into each layer's eigenbasis once for all of them."""
        outs = [torch.zeros_like(v) for _ in fns]
        for layer in self.layers:
            values = layer.eigenvalues + self.floor
            QS = layer.S_vectors.to(v.dtype)
            rotated = _right(QS.T @ layer.slot.matrix(v), layer.A_vectors)
            for fn, out in zip(fns, outs, strict=True):
                f = resolve(fn, float(layer.eigenvalues.mean()))
                layer.slot.scatter(_right(QS @ (rotated * f(values).to(v.dtype)), layer.A_vectors, transpose=True),
                                   out)
        return outs

    def dense(self) -> Tensor:
        """The matrix [P, P] in float64 (small models only)."""
        eye = torch.eye(self.num_params, dtype=torch.float64, device=self.layers[0].S_vectors.device)
        return self.apply(lambda s: s, eye)


def _right(m: Tensor, vectors: Tensor | None, transpose: bool = False) -> Tensor:
    """m [..., out, in] @ Q_A (or @ Q_A^T); Q_A None is the identity."""
    if vectors is None:
        return m
    vectors = vectors.to(m.dtype)
    return m @ (vectors.T if transpose else vectors)


def _symmetric_eigh(m: Tensor) -> tuple[Tensor, Tensor]:
    values, vectors = torch.linalg.eigh(0.5 * (m + m.T))
    return values.clamp(min=0), vectors


def examples_per_chunk(model: FlatModel, task: Task, theta: Tensor, data: Split, fisher: str,
                       slots: list[LayerSlot], cap: int = 512) -> int:
    """How many examples one factor pass holds: their layer inputs a [n, T, in] and output gradients
    d [K, n, T, out] (measured on one example), three times over for autograd's own tensors, within the
    device's budget (``hardware.element_budget``); at most ``cap``."""
    inputs, grads = gradient_factors(model, task, theta, data.subset(slice(0, 1)), fisher, slots,
                                           torch.Generator().manual_seed(0))
    per_example = sum(a.numel() + d.numel() for a, d in zip(inputs, grads, strict=True))
    return max(1, min(cap, element_budget(theta.device) // (3 * per_example)))


def kronecker_curvature(model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
                        eigen_correction: bool = True, fisher: str = "ggn", exclude: Sequence[str] = (),
                        chunk: int | None = None, seed: int = 0, progress: bool = False,
                        weights: Tensor | None = None) -> KroneckerCurvature:
    """EK-FAC (eigen_correction=True) or K-FAC curvature averaged over thetas [C, P].

    Factors A and S are averaged over every theta and example, eigendecomposed once (float64), then
    EK-FAC's eigenvalues are averaged over the same thetas and examples in that fixed basis (SOURCE's
    segment average). See the module docstring for ``fisher``. weights [N]: the run's w_i; example i's
    output gradients are scaled by sqrt(w_i) (so S and the eigenvalues carry w_i) and A is the
    w-weighted mean of its inputs, which keeps a single example's block exact.
    """
    check_choice("fisher", fisher, Fisher)
    slots, excluded = factored(model, exclude, example=data.x[:1])
    thetas = thetas.reshape(-1, thetas.shape[-1])
    data = data.to(thetas.dtype, thetas.device)
    chunk = distributed.agreed_size(chunk or examples_per_chunk(model, task, thetas[0], data, fisher, slots))
    passes = _Passes(model, task, thetas, data, fisher, slots, chunk, seed, weights)
    eig_A, eig_S = _factor_eigenbases(passes, progress)
    if not eigen_correction:
        values = [torch.outer(sv, av) for (sv, _), (av, _) in zip(eig_S, eig_A, strict=True)]
    else:
        values = _corrected_eigenvalues(passes, eig_A, eig_S, progress)
    layers = [KroneckerLayer(sl, ea[1], es[1], v) for sl, ea, es, v in zip(slots, eig_A, eig_S, values, strict=True)]
    return KroneckerCurvature(layers, model.num_params, float(weight_decay), excluded)


def example_seed(seed: int, checkpoint: int, example: int) -> int:
    """The seed of one example's sampled targets at one checkpoint (a sampled Fisher's draw)."""
    return ((seed * 1_000_003 + checkpoint) * 1_000_000_007 + example) % 2 ** 63


@dataclass
class _Passes:
    """The (checkpoint, chunk) pieces a factor pass walks over, and each piece's layer factors: inputs a
    [n, T, in] and output gradients d [K, n, T, out], with sqrt(w_i) in d for a weighted run."""

    model: FlatModel
    task: Task
    thetas: Tensor
    data: Split
    fisher: str
    slots: list[LayerSlot]
    chunk: int
    seed: int
    weights: Tensor | None

    def __post_init__(self):
        if self.weights is not None:
            self.weights = self.weights.to(self.thetas.dtype).to(self.thetas.device)
        pieces = [(c, s) for c in range(len(self.thetas)) for s in range(0, len(self.data), self.chunk)]
        self.ours = [pieces[j] for j in distributed.mine(len(pieces))]  # all of them in one process
        self.count = len(self.thetas) * len(self.data)  # examples x checkpoints: S's and Lambda's mean
        self.a_count = self.count if self.weights is None else len(self.thetas) * float(self.weights.sum())

    def factors(self, c: int, s: int) -> tuple[list[Tensor], list[Tensor]]:
        part = self.data.subset(slice(s, s + self.chunk))
        # fisher="true": one generator per (checkpoint, example), so the draws do not depend on the chunk size
        generators = [torch.Generator().manual_seed(example_seed(self.seed, c, s + i)) for i in range(len(part))] \
            if self.fisher == "true" else None
        inputs, grads = gradient_factors(self.model, self.task, self.thetas[c], part, self.fisher, self.slots,
                                         generators)
        if self.weights is not None:  # G_i = sqrt(w_i) d a^T carries w_i into S and the eigenvalues
            grads = [d * self.weights[s:s + self.chunk].sqrt()[None, :, None, None] for d in grads]
        return inputs, grads


def _factor_eigenbases(passes: _Passes, progress: bool) -> tuple[list[tuple[Tensor, Tensor]], list]:
    """The covariance pass: A = w-weighted mean of a a^T (over positions), S = mean of sum_t d d^T, summed over
    processes and eigendecomposed (rank 0's eigenvectors everywhere): ([(values, vectors)] of A, ... of S)."""
    f64 = {"dtype": torch.float64, "device": passes.thetas.device}
    A = [torch.zeros(*((sl.in_dim,) if sl.one_hot else (sl.in_dim, sl.in_dim)), **f64) for sl in passes.slots]
    S = [torch.zeros(sl.out_dim, sl.out_dim, **f64) for sl in passes.slots]
    w = passes.weights
    for c, s in tqdm(passes.ours, desc="K-FAC factors", disable=not progress, leave=False):
        inputs, grads = passes.factors(c, s)
        for i, (a, d) in enumerate(zip(inputs, grads, strict=True)):
            if passes.slots[i].one_hot:  # token ids: a a^T = diag(a), so A counts the tokens (w-weighted)
                counted = (a >= 0).double() * (1.0 if w is None else w[s:s + passes.chunk, None].double())
                A[i].index_add_(0, a.clamp(min=0).reshape(-1), counted.reshape(-1) / a.shape[1])
            else:
                aw = a if w is None else a * w[s:s + passes.chunk, None, None]  # A: the w-weighted mean of a a^T
                A[i] += torch.einsum("nti,ntj->ij", aw, a).double() / a.shape[1]
            S[i] += torch.einsum("knto,kntp->op", d, d).double()
    A = [distributed.sum_over_ranks(m) for m in A]
    S = [distributed.sum_over_ranks(m) for m in S]
    eig_A = [(m / passes.a_count, None) if m.dim() == 1 else  # diagonal: its entries, the identity's vectors
             tuple(distributed.same_everywhere(t) for t in _symmetric_eigh(m / passes.a_count)) for m in A]
    eig_S = [tuple(distributed.same_everywhere(t) for t in _symmetric_eigh(m / passes.count)) for m in S]
    return eig_A, eig_S


def _corrected_eigenvalues(passes: _Passes, eig_A, eig_S, progress: bool) -> list[Tensor]:
    """EK-FAC's pass: Lambda = E[(Q_S^T G Q_A)^2] per layer [out, in], over the same pieces, in the fixed basis."""
    values = [torch.zeros(sl.out_dim, sl.in_dim, dtype=torch.float64, device=passes.thetas.device)
              for sl in passes.slots]
    for c, s in tqdm(passes.ours, desc="EK-FAC eigenvalues", disable=not progress, leave=False):
        inputs, grads = passes.factors(c, s)
        for i, (a, d) in enumerate(zip(inputs, grads, strict=True)):
            dr = d @ eig_S[i][1].to(d.dtype)  # [K, n, T, out]
            if passes.slots[i].one_hot:
                values[i] += _one_hot_squares(a, dr, passes.slots[i].in_dim)
                continue
            ar = _right(a, eig_A[i][1])  # [n, T, in] in the eigenbasis
            if a.shape[1] == 1:  # one position: G = d a^T is rank one, square the factors
                values[i] += ((dr[:, :, 0] ** 2).sum(0).T @ ar[:, 0] ** 2).double()
            else:
                for dk in dr:
                    values[i] += (torch.einsum("nto,nti->noi", dk, ar) ** 2).sum(0).double()
    return [distributed.sum_over_ranks(v) / passes.count for v in values]


def _one_hot_squares(ids: Tensor, dr: Tensor, vocabulary: int) -> Tensor:
    """sum_i (G_i)^2 [out, V] for an embedding (Q_A the identity): G_i's column v is the sum of dr over the positions
    holding token v, so dr is summed per (example, token) and squared without forming the [n, out, V] G's.
    ids: [n, T] (-1: padding); dr: [K, n, T, out]."""
    n, positions = ids.shape
    present = (ids >= 0).to(dr.dtype)
    keys, where = torch.unique((torch.arange(n, device=ids.device)[:, None] * vocabulary + ids.clamp(min=0))
                               .reshape(-1), return_inverse=True)
    out = torch.zeros(vocabulary, dr.shape[-1], dtype=torch.float64, device=ids.device)
    for dk in dr:
        summed = torch.zeros(len(keys), dr.shape[-1], dtype=dk.dtype, device=ids.device)
        summed.index_add_(0, where, (dk * present[..., None]).reshape(n * positions, -1))
        out.index_add_(0, keys % vocabulary, (summed ** 2).double())
    return out.T


@register("ekfac")
def _fit_ekfac(model, task, thetas, data, weight_decay, weights=None, progress=False) -> KroneckerCurvature:
    return kronecker_curvature(model, task, thetas, data, weight_decay, True, weights=weights, progress=progress)


@register("kfac")
def _fit_kfac(model, task, thetas, data, weight_decay, weights=None, progress=False) -> KroneckerCurvature:
    return kronecker_curvature(model, task, thetas, data, weight_decay, False, weights=weights, progress=progress)
