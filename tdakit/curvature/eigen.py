"""Backends held as an eigendecomposition: ``EigenCurvature`` (a dense matrix's eigenvectors) and
``SampleSpaceCurvature`` (a low-rank factor A with the eigendecomposition of its small Gram matrix). The dense
backends (dense.py) return them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import EigenFunction, resolve


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
