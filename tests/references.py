"""Independent references every test compares against, written once: dense float64 Gauss-Newton and
Hessian matrices from torch.func, per-example gradients from an autograd loop, finite differences of
the weighted training run, and the small models and data sets the tests share."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import hessian, jacrev

import tdakit
from tdakit.attribution.unroll import replay
from tdakit.datasets import Split
from tdakit.grads import measurements
from tdakit.models import FlatModel


def dense_ggn(model: FlatModel, task, theta, data: Split, wd: float, weights=None) -> torch.Tensor:
    """(1/n) sum_i w_i J_i^T Lambda_i J_i + wd I, from full Jacobians and output Hessians, example by example."""
    P = theta.numel()
    G = torch.zeros(P, P, dtype=torch.float64)
    w = torch.ones(len(data), dtype=torch.float64) if weights is None else weights.double()
    for x, y, wi in zip(data.x, data.y, w, strict=True):
        J = jacrev(lambda th, x=x: model(th, x[None])[0])(theta).reshape(-1, P)  # [o, P]
        lam = hessian(lambda o, y=y: task.loss(o[None], y[None])[0])(model(theta, x[None])[0])
        G += wi * J.T @ lam @ J
    return G / len(data) + wd * torch.eye(P, dtype=torch.float64)


def dense_hessian(model: FlatModel, task, theta, data: Split, wd: float, weights=None) -> torch.Tensor:
    """The Hessian of (1/n) sum_i w_i L(z_i) + wd/2 |theta|^2 by torch.func.hessian of the whole objective."""
    w = torch.ones(len(data), dtype=torch.float64) if weights is None else weights.double()

    def objective(th):
        return (w * task.loss(model(th, data.x), data.y)).sum() / len(data) + 0.5 * wd * (th ** 2).sum()

    return hessian(objective)(theta)


def loop_grads(model: FlatModel, task, theta, data: Split) -> torch.Tensor:
    """grad L(z_i, theta) for every example, one autograd call each: [n, P]."""
    rows = []
    for x, y in zip(data.x, data.y, strict=True):
        th = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(task.loss(model(th, x[None]), y[None])[0], th)
        rows.append(g)
    return torch.stack(rows)


def measure_with_weights(run, query: Split, weights) -> torch.Tensor:
    """f_q after rerunning the recorded trajectory (same init, batch order) with training weights w: [Q]."""
    return measurements(run.model, run.task, replay(run, torch.float64, weights)[-1], query)


def finite_difference_scores(run, query: Split, point: int, eps: float = 1e-5) -> torch.Tensor:
    """Central difference of f_q in w_point around the run's own weights: [Q]."""
    up, down = run.weights.double().clone(), run.weights.double().clone()
    up[point] += eps
    down[point] -= eps
    return (measure_with_weights(run, query, up) - measure_with_weights(run, query, down)) / (2 * eps)


def smooth_mlp(hidden=(12,)) -> nn.Module:
    return tdakit.mlp(8, hidden, 1, activation="tanh")


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2), nn.Tanh(),
                         nn.Flatten(), nn.Linear(16, 3))


def small_cnn1d() -> nn.Module:
    """For sequences [n, 2, 12]: a padded ("same") and a strided, dilated nn.Conv1d (the second without a bias)."""
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding="same"), nn.Tanh(),
                         nn.Conv1d(3, 4, 2, stride=2, dilation=2, bias=False), nn.Tanh(), nn.Flatten(),
                         nn.Linear(20, 3))


def classification_data(n: int, image: bool | str = False, seed: int = 0) -> Split:
    """Features [n, 5]; image=True: [n, 1, 6, 6]; image="sequence": [n, 2, 12]."""
    g = torch.Generator().manual_seed(seed)
    shape = {False: (5,), True: (1, 6, 6), "sequence": (2, 12)}[image]
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return Split(x, torch.randint(0, 3, (n,), generator=g))


def trained(module: nn.Module, data: Split, task, wd: float = 1e-3, checkpoints=2, weights=None):
    recipe = tdakit.Recipe(lr=0.1, epochs=3, batch_size=8, weight_decay=wd)
    return tdakit.train(module, data, recipe, task, checkpoints=checkpoints, dtype=torch.float64, progress=False,
                        weights=weights, cache=False)


def kronecker_basis_directions(K, num_params: int, per_layer: int, seed: int = 0):
    """(layer, o, i, v) for ``per_layer`` random entries of each layer's Kronecker eigenbasis: v [P] float64 is
    s_o a_i^T written into that layer's block (zeros elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    for layer in K.layers:
        for _ in range(per_layer):
            o = int(torch.randint(layer.slot.out_dim, (1,), generator=g))
            i = int(torch.randint(layer.slot.in_dim, (1,), generator=g))
            v = torch.zeros(num_params, dtype=torch.float64)
            layer.slot.scatter(torch.outer(layer.S_vectors[:, o], layer.A_vectors[:, i]), v)
            yield layer, o, i, v
