"""Models as pure functions of a flat parameter vector.

Every method in tdakit works on ``theta``: one flat Tensor [P] holding all of a model's parameters.
``FlatModel`` turns an ``nn.Module`` into ``forward(theta, x) -> outputs`` with torch.func, so that
training, unrolling and curvature can differentiate, vmap and stack parameters freely.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def mlp(in_features: int, hidden: Sequence[int] = (128, 128, 128), out_features: int = 1,
        activation: str = "relu") -> nn.Sequential:
    """A multilayer perceptron: Linear -> activation for each hidden width, then a Linear head.

    The paper's Concrete model is ``mlp(8, (128, 128, 128), 1)`` (~34k parameters). Smooth activations
    ("tanh", "gelu", "softplus") make finite-difference checks through long training runs well posed.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class FlatModel:
    """An ``nn.Module`` seen as ``forward(theta, x)`` with ``theta`` a flat Tensor [P].

    Parameters are packed in ``module.named_parameters()`` order. Modules with buffers (BatchNorm and
    the like) are refused: their running statistics are hidden state that training would have to carry.
    """

    def __init__(self, module: nn.Module):
        buffers = [name for name, _ in module.named_buffers()]
        if buffers:
            raise ValueError(
                f"module has buffers {buffers}; tdakit trains pure functions of the parameters, so "
                "replace layers with running statistics (e.g. BatchNorm) by stateless ones")
        self.module = copy.deepcopy(module).to("meta")
        self._template = copy.deepcopy(module)
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in module.named_parameters()]
        self.sizes = [p.numel() for _, p in module.named_parameters()]
        self.num_params = sum(self.sizes)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """theta: [P] -> {name: parameter view}."""
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"theta has {theta.shape[-1]} entries but the model has {self.num_params} "
                             "parameters; was it trained with another model?")
        chunks = torch.split(theta, self.sizes, dim=-1)
        return {n: c.reshape(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """theta: [P], x: [n, *features] -> outputs [n, out]."""
        return functional_call(self.module, self.unflatten(theta), (x,))

    __call__ = forward

    def init(self, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Fresh parameters [P] from the layers' own initialisation, seeded (same seed, same numbers)."""
        module = copy.deepcopy(self._template)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).to(dtype)

    def init_many(self, seeds: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Stacked fresh parameters [len(seeds), P]."""
        return torch.stack([self.init(int(s), dtype) for s in seeds])

    def describe(self) -> str:
        """A stable text description (used in cache keys)."""
        return f"{self._template!r}|{self.shapes}"
