"""Similarity baselines at the final parameters.

- ``grad_dot``: -(sum_k eta_k/(1 - momentum) / N) grad f_q . grad L(z_i): TracIn with the final
  parameters standing for the whole run (measurement units).
- ``grad_cos``: -cos(grad f_q, grad L(z_i)): unitless, same sign convention (positive: up-weighting
  i moves f_q up).
- ``representation``: cos(h_q, h_i) of the inputs of the model's last Linear layer: unitless; a
  point that looks like the query (to the network) ranks high. Ignores the sign of the effect.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..datasets import Split
from ..grads import gradient_products, loss_grads, measurement_grads, rows_per_chunk
from ..training import Run


def grad_dot_scores(run: Run, query: Split) -> Tensor:
    """[Q, N] in measurement units (see the module docstring)."""
    v = measurement_grads(run.model, run.task, run.final, query.to(run.final.dtype))
    rate = float(run.effective_lrs.sum())
    return (-rate / run.num_train * gradient_products(run.model, run.task, run.final, run.train, v)).to(v.dtype)


def grad_cos_scores(run: Run, query: Split) -> Tensor:
    """[Q, N], unitless cosines of the query-measurement and training-loss gradients, negated."""
    v = measurement_grads(run.model, run.task, run.final, query.to(run.final.dtype))
    v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
    data = run.train.to(run.final.dtype)
    chunk = rows_per_chunk(run.model.num_params)
    out = []
    for s in range(0, len(data), chunk):
        g = loss_grads(run.model, run.task, run.final, data.subset(slice(s, s + chunk)))
        out.append(v @ (g / g.norm(dim=1, keepdim=True).clamp(min=1e-30)).T)
    return -torch.cat(out, 1)


def representations(run: Run, x: Tensor, theta: Tensor | None = None) -> Tensor:
    """Inputs of the model's last nn.Linear layer: [n, features]."""
    theta = run.final if theta is None else theta
    linear = [m for m in run.model._template.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError("representation similarity needs a model whose head is an nn.Linear layer")
    seen = []
    handle = linear[-1].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            torch.func.functional_call(run.model._template, run.model.unflatten(theta), (x.to(theta.dtype),))
    finally:
        handle.remove()
    return seen[-1].reshape(len(x), -1)


def representation_scores(run: Run, query: Split) -> Tensor:
    """[Q, N], unitless cosine similarity of last-layer representations."""
    hq = torch.nn.functional.normalize(representations(run, query.x), dim=1)
    hi = torch.nn.functional.normalize(representations(run, run.train.x), dim=1)
    return hq @ hi.T
