"""TRAK-style attribution (Park et al., 2023) with structured random projections, CPU-friendly.

Each supported layer's gradient matrix M [out, in] is projected to R_out M R_in^T [k_o, k_i] with
seeded Gaussian matrices (a side no wider than ``projection`` is kept whole), so a per-example
gradient becomes a feature vector phi of a few thousand entries without a P x k matrix. Then, as an
influence function in the projected space with the empirical Fisher as the kernel,

    score[q, i] = -(1/N) phi(grad f_q)^T (Phi^T Phi / N + damping I)^{-1} phi(grad L(z_i))

at the final parameters. Units: the measurement's (up to the projection's distortion). TRAK's
accuracy comes from averaging over independently trained models: use ``ensemble``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import distributed
from ..datasets import Split
from ..grads import measurement_grads, rows_per_chunk
from ..layers import LayerSlot, factored, gradient_factors
from ..training import Run
from .influence import check_damping, implied_damping


def _projections(slots: list[LayerSlot], size: int, seed: int, dtype, device) -> list[tuple[Tensor | None, ...]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for slot in slots:
        sides = []
        for dim in (slot.out_dim, slot.in_dim):
            r = None if dim <= size else torch.randn(size, dim, generator=g, dtype=torch.float64) / size ** 0.5
            sides.append(None if r is None else r.to(dtype=dtype, device=device))
        out.append(tuple(sides))
    return out


def project(slots: list[LayerSlot], projections, v: Tensor) -> Tensor:
    """v [n, P] -> features [n, sum of k_o * k_i]."""
    parts = []
    for slot, (r_out, r_in) in zip(slots, projections, strict=True):
        m = slot.matrix(v)
        if r_out is not None:
            m = r_out @ m
        if r_in is not None:
            m = m @ r_in.T
        parts.append(m.flatten(1))
    return torch.cat(parts, 1)


def project_factors(slots: list[LayerSlot], projections, inputs: list[Tensor], grads: list[Tensor]) -> Tensor:
    """``project`` of per-example gradients given as layer factors (inputs a [n, T, in], output gradients
    d [1, n, T, out]) without forming them: R_out (sum_t d_t a_t^T) R_in^T = sum_t (R_out d_t)(R_in a_t)^T.
    Returns features [n, sum of k_o * k_i]."""
    parts = []
    for slot, (r_out, r_in), a, d in zip(slots, projections, inputs, grads, strict=True):
        d = d[0] if r_out is None else d[0] @ r_out.T  # [n, T, k_o]
        if slot.one_hot:  # token ids: R_in a_t is R_in's column at the token
            a = slot.dense_inputs(a, d.dtype) if r_in is None else slot.gathered(a, r_in.to(d.dtype))
        else:
            a = a if r_in is None else a @ r_in.T  # [n, T, k_i]
        parts.append(torch.einsum("nto,nti->noi", d, a).flatten(1))
    return torch.cat(parts, 1)


def trak_scores(run: Run, query: Split, projection: int = 32, damping: float | str = "implied", seed: int = 0,
                exclude: Sequence[str] = (), progress: bool = True) -> Tensor:
    """TRAK scores [Q, N] of one run (see the module docstring). projection: kept rows/columns per side
    of each layer's gradient matrix. damping: a number >= 0, "implied" (1 / sum_k eta_k/(1 - momentum))
    or "heuristic" (0.1 x the kernel's mean eigenvalue). A weighted run's kernel weights point i by w_i."""
    check_damping(damping)
    slots, _ = factored(run.model, exclude, example=run.train.x[:1])
    theta, dtype = run.final, run.final.dtype
    proj = _projections(slots, projection, seed, dtype, theta.device)
    data = run.train.to(dtype)
    chunk = distributed.agreed_size(rows_per_chunk(run.model.num_params, device=theta.device))
    starts = range(0, len(data), chunk)
    pieces = {s: project_factors(slots, proj, *gradient_factors(
        run.model, run.task, theta, data.subset(slice(s, s + chunk)), "empirical", slots))
              for s in [starts[j] for j in distributed.mine(len(starts))]}  # all of them in one process
    width = sum((r_out.shape[0] if r_out is not None else sl.out_dim) * (r_in.shape[0] if r_in is not None else
                sl.in_dim) for sl, (r_out, r_in) in zip(slots, proj, strict=True))
    phi = torch.zeros(len(data), width, dtype=torch.float64, device=theta.device)  # [N, k]
    for s, rows in pieces.items():
        phi[s:s + chunk] = rows.double()
    phi = distributed.sum_over_ranks(phi)  # each process filled its own rows
    w = run.weights.double().to(phi.device)
    gram = (phi * w[:, None]).T @ phi / len(data)
    if damping == "implied":
        damping = implied_damping(run)
    elif damping == "heuristic":
        damping = 0.1 * float(gram.diagonal().mean())
    kernel = gram + float(damping) * torch.eye(phi.shape[1], dtype=torch.float64, device=phi.device)
    phi_q = project(slots, proj, measurement_grads(run.model, run.task, theta, query.to(dtype))).double()
    u = torch.linalg.solve(kernel, phi_q.T).T
    return (-(u @ phi.T) / len(data)).to(dtype)
