"""Dense curvature of the mean training loss J(theta) = mean_i L(z_i, theta) + wd/2 |theta|^2.

- ``hessian_curvature``: the full Hessian, built column-chunk by column-chunk from Hessian-vector
  products and eigendecomposed in float64. Small models only (P up to a few thousand).
- ``ggn_curvature``: the Gauss-Newton matrix G = mean_i A_i^T A_i + wd I, exactly, in sample space:
  with A the stacked factors [r0 = n*o*C, P], the nonzero spectrum of A^T A / n equals that of the small
  Gram matrix A A^T / n (its eigenvectors A^T u / sqrt(n sigma) are applied, never formed).
  Affordable whenever n*o*C is a few thousand, whatever P (the paper's 34k-parameter Concrete MLP).
Both average over several parameter vectors (a segment's checkpoints) when given thetas [C, P].
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from ..datasets import Split
from ..grads import output_jacobians
from ..models import FlatModel
from ..task import Task
from .base import EigenCurvature, SampleSpaceCurvature

MAX_DENSE_PARAMS = 12_000


def hessian(model: FlatModel, task: Task, theta: Tensor, data: Split, weight_decay: float,
            chunk: int = 256) -> Tensor:
    """The Hessian of J at theta: [P, P], in theta's dtype."""
    P = theta.numel()
    if P > MAX_DENSE_PARAMS:
        raise ValueError(
            f"a dense Hessian of {P} parameters needs {P * P * 8 / 2**30:.1f} GiB and an O(P^3) "
            f"eigendecomposition; use curvature='ggn' (exact in sample space) or a narrower model "
            f"(at most {MAX_DENSE_PARAMS} parameters)")
    data = data.to(theta.dtype)

    def mean_loss(th):
        return task.loss(model(th, data.x), data.y).mean()

    grad_fn = grad(mean_loss)

    def hvp(direction):
        return jvp(grad_fn, (theta,), (direction,))[1]

    eye = torch.eye(P, dtype=theta.dtype, device=theta.device)
    columns = [vmap(hvp)(eye[s:s + chunk]) for s in range(0, P, chunk)]
    H = torch.cat(columns)
    return 0.5 * (H + H.T) + weight_decay * eye


def hessian_curvature(model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
                      clip_negative: bool = False) -> EigenCurvature:
    """Eigendecomposition (float64) of the Hessian averaged over thetas [C, P].

    clip_negative: set negative eigenvalues to 0. A nonconvex network's Hessian has some; SOURCE's
    exp(-eta K s) then grows like exp(eta K |s|), an amplification real training never shows because
    the curvature is not stationary there. Keep them (the default) for exact identities.
    """
    thetas = thetas.reshape(-1, thetas.shape[-1])
    H = sum(hessian(model, task, th, data, weight_decay).double() for th in thetas) / len(thetas)
    evals, evecs = torch.linalg.eigh(H)
    return EigenCurvature(evecs, evals.clamp(min=0) if clip_negative else evals, floor=0.0)


def ggn_curvature(model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
                  rtol: float = 1e-9, chunk: int = 2048) -> SampleSpaceCurvature:
    """The exact Gauss-Newton matrix averaged over thetas [C, P], in sample space.

    Holds A [n*o*C, P] in theta's dtype; the Gram matrix and its eigendecomposition are float64.
    Gram eigenvalues below rtol * largest are treated as zero (their directions join the weight-decay
    floor).
    """
    thetas = thetas.reshape(-1, thetas.shape[-1])
    n, C = len(data), len(thetas)
    first = output_jacobians(model, task, thetas[0], data).flatten(0, 1)
    rows, P = len(first) * C, first.shape[1]
    A = first.new_empty(rows, P)  # filled in place: one copy of the factor, not three
    A[:len(first)] = first
    del first
    for c in range(1, C):
        A[c * rows // C:(c + 1) * rows // C] = output_jacobians(model, task, thetas[c], data).flatten(0, 1)
    A.mul_((n * C) ** -0.5)  # G - wd I = A^T A
    gram = torch.zeros(rows, rows, dtype=torch.float64, device=A.device)
    for s in range(0, P, chunk):  # accumulate over parameter blocks: never a float64 copy of A
        block = A[:, s:s + chunk].double()
        gram += block @ block.T
    sigma, U = torch.linalg.eigh(gram)
    keep = sigma > rtol * sigma.max().clamp(min=1e-300)
    return SampleSpaceCurvature(A, U[:, keep], sigma[keep], floor=weight_decay)
