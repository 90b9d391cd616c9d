"""Models as pure functions of a flat parameter vector.

Every method in tdakit works on ``theta``: one flat Tensor [P] holding all of a model's parameters.
``FlatModel`` turns an ``nn.Module`` into ``forward(theta, x) -> outputs`` with torch.func, so that
training, unrolling and curvature can differentiate, vmap and stack parameters freely.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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
        self.network = copy.deepcopy(module)  # real tensors: initialisation and forward hooks run on it
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [tuple(p.shape) for _, p in module.named_parameters()]
        self.sizes = [p.numel() for _, p in module.named_parameters()]
        self.num_params = sum(self.sizes)
        starts = torch.tensor([0, *self.sizes]).cumsum(0).tolist()
        self.slices = {n: slice(a, b) for n, a, b in zip(self.names, starts, starts[1:], strict=False)}

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
        module = copy.deepcopy(self.network)
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
        return f"{self.network!r}|{self.shapes}"

    def inputs_of(self, layer: str, theta: Tensor, x: Tensor) -> Tensor:
        """What layer ``layer`` receives (its first input) when the model runs at theta on x (the last call
        if it is called several times); no gradients."""
        seen = []
        handle = self.network.get_submodule(layer).register_forward_hook(
            lambda _m, inputs, _out: seen.append(inputs[0].detach().clone()))
        try:
            with torch.no_grad():
                functional_call(self.network, self.unflatten(theta), (x,))
        finally:
            handle.remove()
        if not seen:
            raise ValueError(f"layer {layer!r} was not called in the forward pass")
        return seen[-1]

    def layers(self, exclude: Sequence[str] = ()) -> tuple[list[LayerSlot], list[slice]]:
        """The layers with a Kronecker-factored form (nn.Linear, nn.Conv2d) and the flat slices of the
        ``exclude``d ones. Shared by K-FAC/EK-FAC curvature, hook-based gradients, TRAK's projections.

        Raises a ValueError naming any layer with parameters that is neither supported nor excluded, and
        any parameter shared by two layers (call one module twice instead: that is supported)."""
        exclude = set(exclude)
        named = dict(self.network.named_modules())
        with_params = [n for n, m in named.items() if list(m.parameters(recurse=False))]
        unknown = exclude - set(named)
        if unknown:
            raise ValueError(f"exclude names {sorted(unknown)} that are not layers of the model; layers with "
                             f"parameters: {with_params}")
        owner: dict[int, str] = {}
        slots, excluded = [], []
        for name in with_params:
            module = named[name]
            label = name or "the model itself"
            own = dict(module.named_parameters(recurse=False))
            for p_name, p in own.items():
                if id(p) in owner:
                    raise ValueError(
                        f"layer {label!r} shares its parameter {p_name!r} with layer {owner[id(p)]!r} (tied weights); "
                        "Kronecker factors and hook gradients need each parameter in one layer. Call one module "
                        "twice instead (supported), or use curvature='ggn' / 'hessian'")
                owner[id(p)] = label
            full = {p: self.slices[f"{name}.{p}" if name else p] for p in own}
            if name in exclude:
                excluded += list(full.values())
                continue
            if not isinstance(module, SUPPORTED):
                raise ValueError(
                    f"layer {label!r} ({type(module).__name__}) has parameters but no Kronecker-factored form; "
                    f"K-FAC/EK-FAC support nn.Linear and nn.Conv2d. Pass exclude=[{name!r}] to leave its "
                    "parameters out of the attribution (their score contributions become 0)")
            if isinstance(module, nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)
                                                  or module.padding_mode != "zeros"):
                raise ValueError(f"layer {label!r}: K-FAC supports Conv2d with groups=1, numeric padding and "
                                 "padding_mode='zeros'; exclude it or use an equivalent layer")
            out_dim = module.weight.shape[0]
            in_dim = module.weight[0].numel() + (module.bias is not None)
            slots.append(LayerSlot(name, module, full["weight"], full.get("bias"), out_dim, in_dim))
        if not slots:
            raise ValueError("the model has no nn.Linear or nn.Conv2d layer left to factor")
        return slots, excluded

    def tap(self, theta: Tensor, x: Tensor,
            slots: Sequence[LayerSlot]) -> tuple[Tensor, list[Tensor], list[list[Tensor]]]:
        """A forward pass that records, for every slot, its inputs a [n, T, in] and its outputs (kept for
        autograd): (model outputs [n, o], inputs per slot, outputs per slot and call).

        Safe against in-place operations: the hook hands the rest of the network a copy of the layer's
        output (so ``ReLU(inplace=True)`` or ``out += residual`` change the copy, not the tensor we
        differentiate with respect to) and keeps a copy of its input. A layer called several times in one
        pass (a reused block) has every call recorded; its positions are concatenated along T, so that
        sum_t d_t a_t^T is the layer's whole gradient."""
        records: dict[str, list[tuple[Tensor, Tensor]]] = {s.name: [] for s in slots}

        def hook(slot):
            def record(_module, inputs, output):
                records[slot.name].append((inputs[0].detach().clone(), output))
                return output.clone()
            return record

        handles = [self.network.get_submodule(s.name).register_forward_hook(hook(s)) for s in slots]
        try:
            with torch.enable_grad():
                theta = theta.detach().requires_grad_(True)
                outputs = functional_call(self.network, self.unflatten(theta), (x,))
        finally:
            for h in handles:
                h.remove()
        for s in slots:
            if not records[s.name]:
                raise ValueError(f"layer {s.name!r} was not called in the forward pass; exclude it")
        inputs = [torch.cat([s.inputs(a) for a, _ in records[s.name]], 1) for s in slots]
        layer_outputs = [[out for _, out in records[s.name]] for s in slots]
        return outputs, inputs, layer_outputs


SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class LayerSlot:
    """Where a layer's parameters sit in the flat theta, and how to read its inputs and output gradients.

    The layer's parameters form one matrix [out, in] (in: inputs per position, plus a bias column)."""

    name: str
    module: nn.Module = field(repr=False, compare=False)
    weight: slice
    bias: slice | None
    out_dim: int
    in_dim: int  # columns of the layer matrix, the bias column included

    def matrix(self, v: Tensor) -> Tensor:
        """v [..., P] -> this layer's block as a matrix [..., out, in]."""
        w = v[..., self.weight].reshape(*v.shape[:-1], self.out_dim, -1)
        if self.bias is None:
            return w
        return torch.cat([w, v[..., self.bias, None]], -1)

    def scatter(self, m: Tensor, out: Tensor) -> None:
        """Write a matrix [..., out, in] back into the flat out [..., P]."""
        cols = self.in_dim - (self.bias is not None)
        out[..., self.weight] = m[..., :cols].reshape(*m.shape[:-2], -1)
        if self.bias is not None:
            out[..., self.bias] = m[..., cols]

    def inputs(self, x: Tensor) -> Tensor:
        """The layer's input -> a [n, T, in] (patches for Conv2d, a ones column for the bias)."""
        if isinstance(self.module, nn.Conv2d):
            c = self.module
            x = F.unfold(x, c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride).transpose(1, 2)
        else:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is not None:
            x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
        return x

    def output_grads(self, d: Tensor) -> Tensor:
        """Gradient w.r.t. the layer output -> d [n, T, out]."""
        if isinstance(self.module, nn.Conv2d):
            return d.flatten(2).transpose(1, 2)
        return d.reshape(d.shape[0], -1, d.shape[-1])
