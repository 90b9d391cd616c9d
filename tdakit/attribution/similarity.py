"""Similarity baselines at the final parameters, in the one sign convention (docs/conventions.md):
a positive score says up-weighting training point i moves the query's measurement f_q up.

- ``grad_dot``: -(sum_k eta_k/(1 - momentum) / N) grad f_q . grad L(z_i): TracIn with the final
  parameters standing for the whole run (measurement units).
- ``grad_cos``: -cos(grad f_q, grad L(z_i)): unitless, in [-1, 1].
- ``representation``: -cos(h_q, h_i) x cos(d f_q / d g, d L_i / d g), with h the inputs of the model's
  last nn.Linear layer and g the model's outputs: unitless, in [-1, 1]. The first factor says how alike
  the network sees the two points; the second says which way a gradient step on L_i moves the outputs
  relative to the way f_q moves with them (for a regression's absolute error: whether i pulls the
  query's prediction towards its target). Only its ranking and sign are meaningful.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from ..datasets import Split
from ..errors import ModelError
from ..grads import loss_grads, measurement_grads, rows_per_chunk
from ..layers import inputs_of
from ..training import Run
from .products import Plan, Term


def grad_dot_plan(run: Run, query: Split, progress: bool = True) -> Plan:
    """One term at the final parameters, scaled by the whole run's effective rate (module docstring)."""
    v = measurement_grads(run.model, run.task, run.final, query.to(run.final.dtype))
    rate = float(run.effective_lrs.sum())
    return Plan(run.model, run.task, run.train, [Term(run.final, v, -rate / run.num_train)], len(query))


def grad_cos_scores(run: Run, query: Split, progress: bool = True) -> Tensor:
    """[Q, N], unitless cosines of the query-measurement and training-loss gradients, negated."""
    v = measurement_grads(run.model, run.task, run.final, query.to(run.final.dtype))
    v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
    data = run.train.to(run.final.dtype)
    chunk = rows_per_chunk(run.model.num_params, device=run.final.device)
    out = []
    for s in range(0, len(data), chunk):
        g = loss_grads(run.model, run.task, run.final, data.subset(slice(s, s + chunk)))
        out.append(v @ (g / g.norm(dim=1, keepdim=True).clamp(min=1e-30)).T)
    return -torch.cat(out, 1)


def representations(run: Run, x: Tensor, theta: Tensor | None = None) -> Tensor:
    """Inputs of the model's last nn.Linear layer: [n, features]."""
    theta = run.final if theta is None else theta
    linear = [name for name, m in run.model.network.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ModelError("representation similarity needs a model whose head is an nn.Linear layer")
    x = x.to(theta.dtype) if x.is_floating_point() else x  # token ids stay integers
    return inputs_of(run.model, linear[-1], theta, x).reshape(len(x), -1)


def _output_gradients(run: Run, data: Split, of_loss: bool) -> Tensor:
    """d L(z_i)/d g_i (of_loss) or d f_q/d g_q per example, with g the model outputs: [n, o] (a sequence's
    outputs [L, V] flattened to one vector of L x V)."""
    fn = run.task.loss if of_loss else run.task.measurement
    data = data.to(run.final.dtype)
    with torch.no_grad():
        outputs = run.model(run.final, data.x)
    return vmap(grad(lambda g, y: fn(g[None], y[None])[0]))(outputs, data.y).reshape(len(data), -1)


def representation_scores(run: Run, query: Split, progress: bool = True) -> Tensor:
    """[Q, N], unitless, in [-1, 1] (see the module docstring)."""
    hq = nn.functional.normalize(representations(run, query.x), dim=1)
    hi = nn.functional.normalize(representations(run, run.train.x), dim=1)
    dq = nn.functional.normalize(_output_gradients(run, query, of_loss=False), dim=1)
    di = nn.functional.normalize(_output_gradients(run, run.train, of_loss=True), dim=1)
    return -(hq @ hi.T) * (dq @ di.T)
