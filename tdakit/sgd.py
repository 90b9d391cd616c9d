"""The one SGD step every trajectory in tdakit takes: training, stacked retraining and exact unrolling's replay.

One step k with batch B_k, per-example weights w and learning rate eta_k (PyTorch's heavy-ball SGD):

    g_k       = sum_{j in B_k} c_j grad L(z_j, theta_k) + weight_decay * theta_k,    c_j = w_j / |B_k|
    buf_k+1   = momentum * buf_k + g_k
    theta_k+1 = theta_k - eta_k * buf_k+1

c_j are the batch coefficients (0 for the padding of a short batch). A model with BatchNorm carries its running
statistics in theta (``FlatModel.state_slice``): they get no gradient and no weight decay, and the step replaces
them by the statistics the batch updated (``FlatModel.train_forward``). ``Step`` is that update as a pure
function of (theta, buf, batch, rate); ``Step.stacked`` is the same function over M models at once (vmap), so a
retrained model takes exactly the steps ``train`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad

from .grads import vmap_or_loop
from .models import FlatModel
from .recipe import Recipe
from .task import Task


def batch_coefficients(batch: Tensor, weights: Tensor) -> Tensor:
    """The factor of each batch slot in the batch loss, w_i / |B_k|: [..., B] (0 for padding)."""
    valid = (batch >= 0).to(weights.dtype)
    picked = torch.gather(weights, -1, batch.clamp(min=0)) * valid
    return picked / valid.sum(-1, keepdim=True)


def make_batch_gradient(model: FlatModel, task: Task):
    """(theta, x_b, y_b, c_b) -> (gradient of the batch loss sum_j c_j L(z_j, theta), (that loss, updated
    running statistics [num_state])).

    c_b [B] are the batch coefficients w_i/|B_k| (weight decay is not included); the statistics are
    empty [0] for a model without BatchNorm. The model runs in training mode (``FlatModel.train_forward``):
    BatchNorm uses the batch's statistics, weighted by c_b."""
    def batch_loss(theta, xb, yb, cb):
        outputs, state = model.train_forward(theta, xb, cb)
        loss = (cb * task.loss(outputs, yb)).sum()
        return loss, (loss, theta[..., :0].detach() if state is None else state)  # aux must be tensors

    return grad(batch_loss, has_aux=True)


def decayed(model: FlatModel, theta: Tensor) -> Tensor:
    """The part of theta that weight decay acts on: theta with the running statistics zeroed ([..., P])."""
    if not model.num_state:
        return theta
    return torch.cat([theta[..., :model.num_trainable], torch.zeros_like(theta[..., model.state_slice])], -1)


def with_state(model: FlatModel, theta: Tensor, state: Tensor) -> Tensor:
    """theta [..., P] with its running statistics replaced by ``state`` [..., num_state]."""
    if not model.num_state:
        return theta
    return torch.cat([theta[..., :model.num_trainable], state.to(theta.dtype)], -1)


@dataclass(frozen=True)
class Step:
    """One SGD update of ``recipe`` for ``model`` on ``task``: step(theta, buf, x_b, y_b, c_b, lr) -> the batch loss,
    with theta and buf [P] updated in place (the caller owns them; keep a copy of any theta it wants to keep).
    x_b [B, ...]; y_b [B]; c_b [B] the batch coefficients; lr a 0-d tensor. In place because retraining steps many
    stacked models: a fresh [M, P] tensor per step would cost more than the arithmetic."""

    model: FlatModel
    task: Task
    recipe: Recipe

    def __post_init__(self):
        object.__setattr__(self, "_batch_gradient", make_batch_gradient(self.model, self.task))

    def __call__(self, theta: Tensor, buf: Tensor, xb: Tensor, yb: Tensor, cb: Tensor, lr: Tensor) -> Tensor:
        g, (loss, state) = self._batch_gradient(theta, xb, yb, cb)
        self.update_(theta, buf, g, state, lr)
        return loss

    def update_(self, theta: Tensor, buf: Tensor, g: Tensor, state: Tensor, lr: Tensor) -> None:
        """buf <- momentum buf + g + weight_decay theta (running statistics excluded); theta <- theta - lr buf; the
        running statistics <- state. theta, buf, g [..., P]: one model or M stacked, which round alike."""
        buf.mul_(self.recipe.momentum).add_(g).add_(decayed(self.model, theta), alpha=self.recipe.weight_decay)
        theta.sub_(buf, alpha=float(lr))
        if self.model.num_state:
            theta[..., self.model.state_slice] = state.to(theta.dtype)

    def stacked(self, models: int):
        """The same step for M models at once: theta, buf [M, P]; x_b [M, B, ...]; y_b, c_b [M, B]; lr 0-d -> the
        batch losses [M]. The batch gradients under vmap (one model: directly, less overhead), then one update of
        the stacked tensors."""
        batch_gradient = vmap_or_loop(self._batch_gradient) if models > 1 else _one_model(self._batch_gradient)

        def step(theta, buf, xb, yb, cb, lr):
            g, (loss, state) = batch_gradient(theta, xb, yb, cb)
            self.update_(theta, buf, g, state, lr)
            return loss

        return step


def _one_model(batch_gradient):
    """The stacked batch gradient for M = 1 without vmap (same results, less per-step overhead)."""
    def gradient(theta, xb, yb, cb):
        g, (loss, state) = batch_gradient(theta[0], xb[0], yb[0], cb[0])
        return g[None], (loss[None], state[None])

    return gradient
