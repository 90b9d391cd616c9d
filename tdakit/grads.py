"""Per-example gradients and output Jacobians with torch.func, in chunks to bound memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad, jacrev, vmap
from torch.utils._pytree import tree_leaves, tree_map

from .datasets import Split
from .errors import ModelError
from .hardware import element_budget
from .models import FlatModel
from .task import Task


def per_example_grads(model: FlatModel, fn, theta: Tensor, data: Split, chunk: int = 256) -> Tensor:
    """grad_theta fn(outputs of example i, target i) for every example, vmapped in chunks: [n, P]."""
    def one(th, x, y):
        return fn(model(th, x[None]), y[None])[0]

    per_example = vmap_or_loop(grad(one), in_dims=(None, 0, 0))
    data = data.to(theta.dtype, theta.device)
    return torch.cat([per_example(theta, data.x[s:s + chunk], data.y[s:s + chunk]) for s in range(0, len(data), chunk)])


def loss_grads_at(model: FlatModel, task: Task, theta: Tensor, data: Split, index: Tensor) -> Tensor:
    """grad L(z_i, theta) restricted to the parameters ``index`` [R]: [n, R]. Only those parameters are
    differentiated (the rest of theta is held constant), so their layers' weight gradients are never made."""
    def one(part, x, y):
        return task.loss(model(theta.index_put((index,), part), x[None]), y[None])[0]

    data = data.to(theta.dtype, theta.device)
    return vmap_or_loop(grad(one), in_dims=(None, 0, 0))(theta[index], data.x, data.y)


def loss_grads(model: FlatModel, task: Task, theta: Tensor, data: Split, chunk: int = 256) -> Tensor:
    """grad_theta L(z_i, theta) for every example (no weight decay): [n, P]."""
    return per_example_grads(model, task.loss, theta, data, chunk)


def measurement_grads(model: FlatModel, task: Task, theta: Tensor, query: Split, chunk: int = 256) -> Tensor:
    """grad_theta f_q(theta) for every query: [Q, P]."""
    return per_example_grads(model, task.measurement, theta, query, chunk)


def measurements(model: FlatModel, task: Task, theta: Tensor, query: Split) -> Tensor:
    """f_q(theta) for every query: [Q] (theta [P]) or [M, Q] (theta [M, P])."""
    if theta.dim() == 2:
        return vmap_or_loop(lambda th: measurements(model, task, th, query))(theta)
    query = query.to(theta.dtype, theta.device)
    return task.measurement(model(theta, query.x), query.y)


def check_output_curvature(outputs: Tensor, what: str) -> None:
    """Raise a clear error when each example has a sequence of outputs [n, L, V] (a language model): the exact
    Gauss-Newton needs the loss Hessian over all L x V outputs of an example, one backward pass per output."""
    if outputs.dim() > 2:
        raise ModelError(
            f"{what} needs the loss curvature over every output of an example, and this model gives "
            f"{tuple(outputs.shape[1:])} per example (a sequence): {outputs.shape[1:].numel()} backward passes "
            "each. Sample it instead: curvature=tdakit.curvature.Kronecker(fisher='true', ...) (one sampled "
            "next token per position, as kronfluence does for language models)")


def output_derivatives(task: Task, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The per-example loss's gradient [B, o] and Hessian [B, o, o] with respect to the outputs [B, o].

    The loss is a sum of per-example terms, so differentiating the batch sum gives every example's own
    derivatives; the o rows of the Hessians come from one batched backward pass."""
    check_output_curvature(outputs, "the Gauss-Newton matrix (a refined solve, an exact curvature)")
    o = outputs.shape[-1]
    with torch.enable_grad():
        z = outputs.detach().requires_grad_()
        (g,) = torch.autograd.grad(task.loss(z, targets).sum(), z, create_graph=True)
        if not g.requires_grad:  # a loss linear in the outputs
            return g.detach(), z.new_zeros(len(z), o, o)
        rows = torch.eye(o, dtype=z.dtype, device=z.device)[:, None, :].expand(o, len(z), o)
        (h,) = torch.autograd.grad(g, z, rows, is_grads_batched=True)  # h[k, j] = row k of example j's Hessian
    return g.detach(), h.transpose(0, 1)


def output_jacobians(model: FlatModel, task: Task, theta: Tensor, data: Split, chunk: int = 128) -> Tensor:
    """Gauss-Newton factors A_i = Lambda_i^{1/2} d g(x_i) / d theta: [n, o, P].

    Lambda_i [o, o] is the Hessian of the loss with respect to the outputs (PSD for the squared error
    and the cross-entropy), so that the GGN is mean_i A_i^T A_i.
    """
    def out(th, x):
        return model(th, x[None])[0]

    def loss_of_output(g, y):
        return task.loss(g[None], y[None])[0]

    data = data.to(theta.dtype, theta.device)
    check_output_curvature(model(theta, data.x[:1]), "an exact Gauss-Newton curvature ('ggn', 'auto' on a small model)")
    jac = vmap_or_loop(jacrev(out), in_dims=(None, 0))
    out_hess = vmap(torch.func.hessian(loss_of_output))

    def factors(s: slice) -> Tensor:
        x, y = data.x[s], data.y[s]
        j = jac(theta, x)  # [c, o, P]
        lam = out_hess(model(theta, x), y)  # [c, o, o] (evaluation mode: each row is its example's own output)
        root = psd_sqrt(lam)
        return root @ j

    return torch.cat([factors(slice(s, s + chunk)) for s in range(0, len(data), chunk)])


def vmap_or_loop(fn: Callable, in_dims: int | tuple = 0) -> Callable:
    """``vmap(fn, in_dims)``; where torch.func has no batching rule for a layer (nn.LSTM and nn.GRU in float64,
    say), the same numbers one slice at a time, stacked. The first failure switches the wrapper to the loop."""
    batched = vmap(fn, in_dims=in_dims)
    looping = False

    def call(*args):
        nonlocal looping
        if not looping:
            try:
                return batched(*args)
            except RuntimeError as err:
                if not _no_batching_rule(err):
                    raise
                looping = True
        dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
        sizes = [leaf.shape[0] for arg, d in zip(args, dims, strict=True) if d == 0 for leaf in tree_leaves(arg)]
        pieces = [fn(*[tree_map(lambda t, i=i: t[i], arg) if d == 0 else arg
                       for arg, d in zip(args, dims, strict=True)]) for i in range(sizes[0])]
        return tree_map(lambda *leaves: torch.stack(leaves), *pieces)

    return call


NO_RULE_SIGNS = ("Batching rule not implemented", "doesn't match the broadcast shape", "batched tensor",
                 "BatchedTensor")  # how torch.func says a layer has no (working) batching rule


def _no_batching_rule(err: RuntimeError) -> bool:
    """Whether ``err`` is torch.func refusing to batch an operation (then the loop gives the same numbers). Any
    other error re-raises; and a real error misread as this one re-raises from the loop's first slice."""
    return any(sign in str(err) for sign in NO_RULE_SIGNS)


def rows_per_chunk(num_params: int, budget_elements: int | None = None, device: torch.device | str | None = None,
                   cap: int = 512) -> int:
    """How many per-example gradients [rows, P] to hold at once: ~256 MiB on a CPU, a share of the free
    memory on a GPU (see ``hardware.element_budget``), at most ``cap`` rows."""
    budget = budget_elements or element_budget(device)
    return max(1, min(cap, budget // num_params))


def psd_sqrt(m: Tensor) -> Tensor:
    """Symmetric square root of a batch of PSD matrices [..., o, o], via eigh in float64 (a cross-entropy
    Hessian diag(p) - p p^T with a nearly one-hot p is too ill-conditioned for float32 eigh)."""
    evals, evecs = torch.linalg.eigh(m.double())
    root = evecs @ torch.diag_embed(evals.clamp(min=0).sqrt()) @ evecs.transpose(-1, -2)
    return root.to(m.dtype)
