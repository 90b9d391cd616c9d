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
from torch.func import grad, vmap

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
    """One SGD update of ``recipe`` for ``model`` on ``task``: (theta, buf, x_b, y_b, c_b, lr) -> (theta', buf',
    batch loss), pure (new tensors; the inputs are not changed). theta, buf [P]; x_b [B, ...]; y_b [B]; c_b [B]
    the batch coefficients; lr a 0-d tensor."""

    model: FlatModel
    task: Task
    recipe: Recipe

    def __post_init__(self):
        object.__setattr__(self, "_batch_gradient", make_batch_gradient(self.model, self.task))

    def __call__(self, theta: Tensor, buf: Tensor, xb: Tensor, yb: Tensor, cb: Tensor,
                 lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, (loss, state) = self._batch_gradient(theta, xb, yb, cb)
        buf = self.recipe.momentum * buf + g + self.recipe.weight_decay * decayed(self.model, theta)
        return with_state(self.model, theta - lr * buf, state), buf, loss

    def stacked(self, models: int):
        """The same step for M models at once: theta, buf [M, P]; x_b [M, B, ...]; y_b, c_b [M, B]; lr 0-d ->
        ([M, P], [M, P], [M]). vmap for M > 1; one model is stepped directly (same numbers, less overhead)."""
        if models > 1:
            return vmap(self, in_dims=(0, 0, 0, 0, 0, None))

        def one(theta, buf, xb, yb, cb, lr):
            theta, buf, loss = self(theta[0], buf[0], xb[0], yb[0], cb[0], lr)
            return theta[None], buf[None], loss[None]

        return one
