"""Exact unrolled differentiation: d f_q(theta_T(w)) / d w_i through the whole recorded run.

The forward pass replays the run (same init, batch order and rates, in the requested dtype) and keeps
theta_k and the momentum buffer at every step. The reverse pass carries the adjoints of (theta, buf)
back one step at a time; a single torch.func.vjp of the step's gradient g_k(theta, c) gives both the
Hessian-vector product (to go back one step) and, since g_k is linear in the batch coefficients
c_j = w_j/|B_k|, every batch point's contribution to the score. vmap batches the queries.
Memory: T x P values per stored tensor, so this is for small models and short runs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import vjp, vmap
from tqdm.auto import tqdm

from .datasets import Split
from .grads import measurement_grads
from .training import Run, batch_coefficients, make_batch_gradient, make_update


def replay(run: Run, dtype: torch.dtype | None = None, weights: Tensor | None = None) -> Tensor:
    """Parameters at the start of every step, theta_0..theta_T: [T + 1, P] (float64 if asked)."""
    dtype = dtype or run.final.dtype
    data = run.train.to(dtype)
    w = (run.weights if weights is None else weights).to(dtype)
    update = make_update(run.model, run.task, run.recipe)
    theta, buf = run.init.to(dtype), torch.zeros_like(run.init, dtype=dtype)
    thetas = [theta]
    for k in range(run.num_steps):
        idx = run.batches[k].to(theta.device)
        theta, buf, _ = update(theta, buf, data.x[idx.clamp(min=0)], data.y[idx.clamp(min=0)],
                               batch_coefficients(idx, w), run.lrs[k].to(dtype))
        thetas.append(theta)
    return torch.stack(thetas)


def unrolled_scores(run: Run, query: Split, dtype: torch.dtype | None = None, chunk: int = 128,
                    progress: bool = True) -> Tensor:
    """score[q, i] = d f_q(theta_T(w)) / d w_i at w = run.weights, exactly, for this batch order.

    Returns [Q, N] in units of the measurement. Removing S is predicted as -sum_{i in S} score[:, i].
    """
    dtype = dtype or run.final.dtype
    thetas = replay(run, dtype)
    v_final = measurement_grads(run.model, run.task, thetas[-1], query.to(dtype))  # [Q, P]
    return unrolled_adjoint(run, v_final, dtype, chunk, progress, thetas)[0]


def unrolled_adjoint(run: Run, v_final: Tensor, dtype: torch.dtype | None = None, chunk: int = 128,
                     progress: bool = True, thetas: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The reverse pass for adjoints v_final [Q, P] of the final parameters: (d(v . theta_T)/d w_i
    [Q, N], the adjoint of the initial parameters [Q, P]) -- the latter carries a multi-stage pipeline's
    derivative back into the previous stage."""
    dtype = dtype or run.final.dtype
    data = run.train.to(dtype)
    w = run.weights.to(dtype)
    model, task, recipe = run.model, run.task, run.recipe
    thetas = replay(run, dtype) if thetas is None else thetas
    v_final = v_final.to(dtype)

    batch_gradient = make_batch_gradient(model, task)  # (gradient, (loss, state)): rides along as aux

    scores = torch.zeros(len(v_final), len(data), dtype=dtype, device=v_final.device)
    initial = torch.zeros_like(v_final)
    for start in range(0, len(v_final), chunk):
        lam_theta = v_final[start:start + chunk]
        lam_buf = torch.zeros_like(lam_theta)
        rows = scores[start:start + chunk]
        for k in tqdm(reversed(range(run.num_steps)), total=run.num_steps, desc="unroll",
                      disable=not progress, leave=False):
            idx = run.batches[k].to(scores.device)
            valid = (idx >= 0).to(dtype)
            cb = batch_coefficients(idx, w)
            # theta' = theta - eta buf',  buf' = beta buf + g(theta, c) + wd theta
            lam_bufnew = lam_buf - run.lrs[k].to(dtype) * lam_theta
            xb, yb = data.x[idx.clamp(min=0)], data.y[idx.clamp(min=0)]
            _, pullback, _ = vjp(lambda th, c, xb=xb, yb=yb: batch_gradient(th, xb, yb, c), thetas[k], cb,
                                 has_aux=True)
            hvp, dc = vmap(pullback)(lam_bufnew)
            lam_theta = lam_theta + hvp + recipe.weight_decay * lam_bufnew
            lam_buf = recipe.momentum * lam_bufnew
            # dc_j/dw_i = valid_j / |B_k| for the point i sitting in slot j
            contrib = dc * (valid / valid.sum())
            rows.index_add_(1, idx.clamp(min=0), contrib * valid)
        initial[start:start + chunk] = lam_theta
    return scores, initial
