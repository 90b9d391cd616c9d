"""Dense curvature of the mean training loss J(theta) = (1/N) sum_i w_i L(z_i, theta) + wd/2 |theta|^2.

- ``hessian_curvature``: the full Hessian, built column-chunk by column-chunk from Hessian-vector
  products and eigendecomposed in float64. Small models only (P up to a few thousand).
- ``ggn_curvature``: the Gauss-Newton matrix G = mean_i A_i^T A_i + wd I, exactly, in sample space:
  with A the stacked factors [n*o*C, P] (examples x outputs x checkpoints rows), the nonzero spectrum of
  A^T A equals that of the small Gram matrix A A^T (its eigenvectors are applied through A, never
  formed). Affordable whenever n*o*C is a few thousand, whatever P (the paper's 34k-parameter MLP).
Both average over several parameter vectors (a segment's checkpoints) when given thetas [C, P].
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap
from tqdm.auto import tqdm

from ..datasets import Split
from ..errors import SettingError
from ..grads import output_jacobians
from ..models import FlatModel
from ..task import Task
from .base import register
from .budget import GgnCost, check_fits
from .eigen import EigenCurvature, SampleSpaceCurvature

LONG_ROWS = 2000  # from here on an exact GGN fit takes seconds (BENCHMARKS.md, issue 24): it shows a bar

MAX_DENSE_PARAMS = 12_000


def hessian(model: FlatModel, task: Task, theta: Tensor, data: Split, weight_decay: float,
            chunk: int = 256, weights: Tensor | None = None) -> Tensor:
    """The Hessian of J at theta: [P, P], in theta's dtype (weights [N]: the run's w_i, default ones)."""
    P = theta.numel()
    if P > MAX_DENSE_PARAMS:
        raise SettingError(
            f"a dense Hessian of {P} parameters needs {P * P * 8 / 2**30:.1f} GiB and an O(P^3) "
            f"eigendecomposition; use curvature='ggn' (exact in sample space) or a narrower model "
            f"(at most {MAX_DENSE_PARAMS} parameters)")
    data = data.to(theta.dtype, theta.device)
    w = None if weights is None else weights.to(theta.dtype).to(theta.device)

    def mean_loss(th):
        losses = task.loss(model(th, data.x), data.y)
        return losses.mean() if w is None else (w * losses).sum() / len(losses)

    grad_fn = grad(mean_loss)

    def hvp(direction):
        return jvp(grad_fn, (theta,), (direction,))[1]

    eye = torch.eye(P, dtype=theta.dtype, device=theta.device)
    columns = [vmap(hvp)(eye[s:s + chunk]) for s in range(0, P, chunk)]
    H = torch.cat(columns)
    return 0.5 * (H + H.T) + weight_decay * eye


def hessian_curvature(model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
                      clip_negative: bool = False, weights: Tensor | None = None,
                      progress: bool = False) -> EigenCurvature:
    """Eigendecomposition (float64) of the Hessian averaged over thetas [C, P].

    clip_negative: set negative eigenvalues to 0. A nonconvex network's Hessian has some; SOURCE's
    exp(-eta K s) then grows like exp(eta K |s|), an amplification real training never shows because
    the curvature is not stationary there (SOURCE refuses such curvature; see docs/curvature.md). Keep
    them (the default) for exact identities such as the power form.
    """
    thetas = thetas.reshape(-1, thetas.shape[-1])
    H = sum(hessian(model, task, th, data, weight_decay, weights=weights).double() for th in thetas) / len(thetas)
    return from_matrix("hessian_clipped" if clip_negative else "hessian", H, weight_decay)


DENSE_KINDS = ("ggn", "hessian", "hessian_clipped")


def checkpoint_matrix(kind: str, model: FlatModel, task: Task, theta: Tensor, data: Split, weight_decay: float,
                      weights: Tensor | None = None) -> Tensor:
    """One parameter vector's dense matrix [P, P] (float64) for a dense kind: the Gauss-Newton matrix, or the
    raw Hessian for "hessian" and "hessian_clipped" (clipping comes after averaging, in ``from_matrix``).
    Every dense kind averages linearly over checkpoints, so a segment's curvature is ``from_matrix`` of the mean
    of its checkpoints' matrices: fitting per checkpoint once serves any grouping of them into segments."""
    if kind not in DENSE_KINDS:
        raise SettingError(f"checkpoint_matrix takes a dense kind ({', '.join(DENSE_KINDS)}), got {kind!r}")
    if kind == "ggn":
        return ggn_curvature(model, task, theta[None], data, weight_decay, weights=weights).dense().double()
    return hessian(model, task, theta, data, weight_decay, weights=weights).double()


def from_matrix(kind: str, matrix: Tensor, weight_decay: float) -> EigenCurvature:
    """The curvature ``kind`` makes of a (checkpoint-averaged) dense matrix [P, P]: its eigendecomposition in
    float64, negative eigenvalues set to 0 for "hessian_clipped"."""
    values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.T) if kind == "ggn" else matrix)
    if kind == "hessian_clipped":
        values = values.clamp(min=0.0)
    return EigenCurvature(vectors, values, floor=0.0, weight_decay=float(weight_decay))


@register("hessian")
def _fit_hessian(model, task, thetas, data, weight_decay, weights=None, progress=False) -> EigenCurvature:
    return hessian_curvature(model, task, thetas, data, weight_decay, weights=weights)


@register("hessian_clipped")
def _fit_hessian_clipped(model, task, thetas, data, weight_decay, weights=None, progress=False) -> EigenCurvature:
    return hessian_curvature(model, task, thetas, data, weight_decay, clip_negative=True, weights=weights)


@register("ggn")
def ggn_curvature(model: FlatModel, task: Task, thetas: Tensor, data: Split, weight_decay: float,
                  rtol: float = 1e-9, chunk: int = 2048, weights: Tensor | None = None,
                  progress: bool = False) -> SampleSpaceCurvature:
    """The exact Gauss-Newton matrix averaged over thetas [C, P], in sample space.

    Holds A [n*o*C, P] in theta's dtype; the Gram matrix and its eigendecomposition are float64.
    Gram eigenvalues below rtol * largest are treated as zero (their directions join the weight-decay
    floor). weights [N]: the run's w_i (row i of A is scaled by sqrt(w_i)).
    """
    thetas = thetas.reshape(-1, thetas.shape[-1])
    n, C = len(data), len(thetas)
    outputs = model(thetas[0], data.x[:1].to(thetas.device)).shape[-1]
    check_fits(GgnCost.of(n, outputs, C, thetas.shape[1], thetas.dtype), thetas.device)
    scale = None if weights is None else weights.to(thetas.dtype).to(thetas.device).sqrt()

    def factor(theta: Tensor) -> Tensor:
        a = output_jacobians(model, task, theta, data)  # [n, o, P]
        return (a if scale is None else a * scale[:, None, None]).flatten(0, 1)

    rows = n * outputs * C
    bar = tqdm(total=C + 2, desc=f"exact GGN ({rows:,} rows): factors, Gram, eigendecomposition",
               disable=not progress or rows < LONG_ROWS, leave=False)
    first = factor(thetas[0])
    bar.update()
    P = first.shape[1]
    A = first.new_empty(rows, P)  # filled in place: one copy of the factor, not three
    A[:len(first)] = first
    del first
    for c in range(1, C):
        A[c * rows // C:(c + 1) * rows // C] = factor(thetas[c])
        bar.update()
    A.mul_((n * C) ** -0.5)  # G - wd I = A^T A
    gram = torch.zeros(rows, rows, dtype=torch.float64, device=A.device)
    for s in range(0, P, chunk):  # accumulate over parameter blocks: never a float64 copy of A
        block = A[:, s:s + chunk].double()
        gram += block @ block.T
    bar.update()
    sigma, U = torch.linalg.eigh(gram)  # one LAPACK call: the bar moves when it returns (about rows^3)
    bar.update()
    bar.close()
    keep = sigma > rtol * sigma.max().clamp(min=1e-300)
    return SampleSpaceCurvature(A, U[:, keep], sigma[keep], floor=float(weight_decay),
                                weight_decay=float(weight_decay))
