"""Exact unrolled differentiation: d f_q(theta_T(w)) / d w_i through the whole recorded run.

The forward pass replays the run (same init, batch order and rates, in the requested dtype) and keeps
theta_k and the momentum buffer at every step. The reverse pass carries the adjoints of (theta, buf)
back one step at a time; a single torch.func.vjp of the step's gradient g_k(theta, c) gives both the
Hessian-vector product (to go back one step) and, since g_k is linear in the batch coefficients
c_j = w_j/|B_k|, every batch point's contribution to the score. vmap batches the queries. For a stack of
Linear layers and elementwise activations the same two products are written out (``unroll_stack``) and
accumulated straight into the adjoints, which is faster on a CPU (BENCHMARKS.md). The adjoints
are kept per parameter tensor ([Q, *shape]) and updated in place, so a step moves each [Q, P] adjoint
through memory a handful of times and never gathers a flat [Q, P] gradient.
Memory: the trajectory, (T + 1) x P values stored whole or about (2T/k + k) x P checkpointed every k steps
(``trajectory.py``: each stretch recomputed once on the way back), plus about five [Q, P] adjoint-sized tensors
per query chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vjp
from tqdm.auto import tqdm

from ..datasets import Split
from ..grads import measurement_grads, vmap_or_loop
from ..sgd import Step, batch_coefficients
from ..training import Run, steps
from .trajectory import Trajectory
from .unroll_stack import StackStep


def replay(run: Run, dtype: torch.dtype | None = None, weights: Tensor | None = None) -> Tensor:
    """Parameters at the start of every step, theta_0..theta_T: [T + 1, P] (float64 if asked). The run's own
    steps (``training.steps``), so in the run's dtype this reproduces ``run.final`` bit for bit."""
    dtype = dtype or run.final.dtype
    data = run.train.to(dtype)
    w = (run.weights if weights is None else weights).to(dtype)
    theta = run.init.to(dtype)
    step = Step(run.model, run.task, run.recipe)
    return torch.stack([theta] + [after.clone() for _, after, _ in steps(step, data, theta, run.batches, run.lrs, w)])


def unrolled_scores(run: Run, query: Split, dtype: torch.dtype | None = None, query_chunk: int = 128,
                    progress: bool = True, written_out: bool = True, keep_every: int | str = "auto") -> Tensor:
    """score[q, i] = d f_q(theta_T(w)) / d w_i at w = run.weights, exactly, for this batch order.

    Returns [Q, N] in units of the measurement. Removing S is predicted as -sum_{i in S} score[:, i].
    written_out=False differentiates every step with torch.func even for a Linear/activation stack
    (same numbers, slower; for checks). keep_every: how much of the replayed trajectory is stored
    (``trajectory.Trajectory``: 1 all of it, k every k-th state, recomputing the rest on the way back).
    """
    dtype = dtype or run.final.dtype
    thetas = Trajectory(run, dtype, keep_every)
    v_final = measurement_grads(run.model, run.task, thetas.final, query.to(dtype))  # [Q, P]
    return unrolled_adjoint(run, v_final, dtype, query_chunk, progress, thetas, written_out)[0]


def unrolled_adjoint(run: Run, v_final: Tensor, dtype: torch.dtype | None = None, query_chunk: int = 128,
                     progress: bool = True, thetas: Trajectory | Tensor | None = None,
                     written_out: bool = True, keep_every: int | str = "auto") -> tuple[Tensor, Tensor]:
    """The reverse pass for adjoints v_final [Q, P] of the final parameters: (d(v . theta_T)/d w_i
    [Q, N], the adjoint of the initial parameters [Q, P]) -- the latter carries a multi-stage pipeline's
    derivative back into the previous stage. A stack of Linear layers and elementwise activations takes
    the written-out step (``unroll_stack.StackStep``) unless written_out=False. thetas: the replayed
    trajectory (a ``Trajectory`` or every state [T + 1, P]); default: replayed here with ``keep_every``."""
    dtype = dtype or run.final.dtype
    data = run.train.to(dtype)
    w = run.weights.to(dtype)
    model, task, recipe = run.model, run.task, run.recipe
    thetas = Trajectory(run, dtype, keep_every) if thetas is None else thetas
    v_final = v_final.to(dtype)

    def batch_loss(params, cb, xb, yb, state):
        outputs, _ = model.train_call(params, state, xb, cb)
        return (cb * task.loss(outputs, yb)).sum()

    # The gradient of the batch loss with respect to each parameter tensor, not the flat theta: the
    # adjoints stay in pieces [Q, *shape], so no step gathers a [Q, P] gradient.
    piece_gradient = grad(batch_loss)
    stack_step = StackStep.for_model(model, task) if written_out else None
    momentum, weight_decay = recipe.momentum, recipe.weight_decay

    scores = torch.zeros(len(v_final), len(data), dtype=dtype, device=v_final.device)
    initial = torch.zeros_like(v_final)
    for start in range(0, len(v_final), query_chunk):
        lam_theta = [t.contiguous() for t in model.parameter_tensors(v_final[start:start + query_chunk])]
        lam_buf = [torch.zeros_like(t) for t in lam_theta]
        rows = scores[start:start + query_chunk]
        for k in tqdm(reversed(range(run.num_steps)), total=run.num_steps, desc="unroll",
                      disable=not progress, leave=False):
            idx = run.batches[k].to(scores.device)
            valid = (idx >= 0).to(dtype)
            cb = batch_coefficients(idx, w)
            lr = float(run.lrs[k])
            # theta' = theta - eta buf',  buf' = beta buf + g(theta, c) + wd theta  (read backwards)
            for b, t in zip(lam_buf, lam_theta, strict=True):  # in place: no fresh [Q, P]-sized tensors
                b.add_(t, alpha=-lr)  # lam_buf now holds the adjoint of buf'
            xb, yb = data.x[idx.clamp(min=0)], data.y[idx.clamp(min=0)]
            if stack_step is not None:  # H mu accumulated straight into lam_theta
                dc = stack_step(model.parameter_tensors(thetas[k]), xb, yb, cb, tuple(lam_buf), tuple(lam_theta))
            else:
                state = thetas[k][model.state_slice]
                _, pullback = vjp(lambda p, c, xb=xb, yb=yb, state=state: piece_gradient(p, c, xb, yb, state),
                                  model.parameter_tensors(thetas[k]), cb)
                hvp, dc = vmap_or_loop(pullback)(tuple(lam_buf))
                for t, h in zip(lam_theta, hvp, strict=True):
                    t.add_(h)
            for t, b in zip(lam_theta, lam_buf, strict=True):
                if weight_decay:
                    t.add_(b, alpha=weight_decay)
                b.mul_(momentum)
            # dc_j/dw_i = valid_j / |B_k| for the point i sitting in slot j
            contrib = dc * (valid / valid.sum())
            rows.index_add_(1, idx.clamp(min=0), contrib * valid)
        # running statistics carry no adjoint: they enter every step detached
        initial[start:start + query_chunk, :model.num_trainable] = torch.cat([t.flatten(1) for t in lam_theta], 1)
    return scores, initial
