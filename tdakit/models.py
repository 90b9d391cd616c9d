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



class Residual(nn.Module):
    """x -> x + block(x) (the block ends in an in-place ReLU, whose output autograd keeps, so the sum is a
    new tensor)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Scale(nn.Module):
    """Multiplies by a fixed factor (no parameters)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution (no bias) -> BatchNorm -> in-place ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def resnet9(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Sequential:
    """ResNet-9, the paper's CIFAR-10 model: widths (1, 2, 4, 8) x ``width``, two residual blocks, max
    pooling, a bias-free linear head scaled by 1/8. width=64 gives 6.57M parameters for 32x32 inputs; tests
    and CPU tutorials use a narrow one (width 8-16). Inputs [n, in_channels, H, W] with H, W divisible by 8.
    """
    w = (width, 2 * width, 4 * width, 8 * width)
    return nn.Sequential(
        conv_bn(in_channels, w[0]),
        conv_bn(w[0], w[1]), nn.MaxPool2d(2), Residual(conv_bn(w[1], w[1]), conv_bn(w[1], w[1])),
        conv_bn(w[1], w[2]), nn.MaxPool2d(2),
        conv_bn(w[2], w[3]), nn.MaxPool2d(2), Residual(conv_bn(w[3], w[3]), conv_bn(w[3], w[3])),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w[3], num_classes, bias=False), Scale(0.125))

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FlatModel:
    """An ``nn.Module`` seen as ``forward(theta, x)`` with ``theta`` a flat Tensor [P].

    Parameters are packed in ``module.named_parameters()`` order. A model with BatchNorm layers also
    carries their running statistics in theta, after the parameters (``num_state`` entries at
    ``state_slice``): recorded state, not trained. ``forward`` is evaluation mode (running statistics;
    they enter detached, so gradients with respect to them are 0 by construction); training steps use
    ``train_forward`` (the batch's statistics, weighted by the batch coefficients, and the updated running
    statistics). Other modules with buffers are refused.
    """

    def __init__(self, module: nn.Module):
        norms = {name: m for name, m in module.named_modules() if isinstance(m, NORMS)}
        for name, m in norms.items():
            label = name or "the model itself"
            if not m.track_running_stats:
                raise ValueError(f"BatchNorm layer {label!r} has track_running_stats=False: its evaluation output "
                                 "depends on the batch, so per-example gradients are undefined; keep the default "
                                 "track_running_stats=True")
            if m.momentum is None:
                raise ValueError(f"BatchNorm layer {label!r} has momentum=None (a cumulative average); tdakit "
                                 "records exponential running statistics: set momentum (PyTorch's default is 0.1)")
        owned = {f"{n}.{b}" if n else b for n in norms for b in ("running_mean", "running_var", "num_batches_tracked")}
        others = [name for name, _ in module.named_buffers() if name not in owned]
        if others:
            raise ValueError(
                f"module has buffers {others}; tdakit trains pure functions of the parameters and carries only "
                "BatchNorm's running statistics as recorded state: replace these layers by stateless ones")
        self.module = copy.deepcopy(module).to("meta").eval()
        self.network = copy.deepcopy(module).eval()  # real tensors: initialisation and forward hooks run on it
        self.norms = {name: self.network.get_submodule(name) for name in norms}
        self._sink = _BatchStatistics()
        self.train_module = _with_training_norms(self.module, norms, self._sink)
        params = list(module.named_parameters())
        buffers = [(f"{n}.{b}" if n else b, getattr(m, b)) for n, m in norms.items() for b in ("running_mean",
                                                                                                "running_var")]
        self.param_names = [name for name, _ in params]
        self.state_names = [name for name, _ in buffers]
        self.names = self.param_names + self.state_names
        self.shapes = [tuple(p.shape) for _, p in params + buffers]
        self.sizes = [p.numel() for _, p in params + buffers]
        self.num_trainable = sum(p.numel() for _, p in params)
        self.num_state = sum(b.numel() for _, b in buffers)
        self.num_params = self.num_trainable + self.num_state
        self.state_slice = slice(self.num_trainable, self.num_params)
        self.param_shapes = self.shapes[:len(self.param_names)]
        self.state_sizes = self.sizes[len(self.param_names):]
        starts = torch.tensor([0, *self.sizes]).cumsum(0).tolist()
        self.slices = {n: slice(a, b) for n, a, b in zip(self.names, starts, starts[1:], strict=False)}

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """theta: [P] -> {name: parameter or running-statistic view} (the statistics detached)."""
        self._check_size(theta)
        chunks = torch.split(theta, self.sizes, dim=-1)
        out = {n: c.reshape(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}
        for n in self.state_names:
            out[n] = out[n].detach()
        return out

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Evaluation mode: theta [P], x [n, *features] -> outputs [n, out] (BatchNorm uses the running
        statistics held in theta, so each example's output depends on that example only)."""
        return functional_call(self.module, self.unflatten(theta), (x,))

    def _check_size(self, theta: Tensor) -> None:
        if theta.shape[-1] != self.num_params:
            raise ValueError(f"theta has {theta.shape[-1]} entries but the model has {self.num_params} "
                             "parameters; was it trained with another model?")

    def parameter_tensors(self, theta: Tensor) -> tuple[Tensor, ...]:
        """theta [..., P] -> the trainable parameters as views [..., *shape], in ``param_names`` order
        (the running statistics left out)."""
        self._check_size(theta)
        pieces = torch.split(theta, self.sizes[:len(self.param_names)] + [self.num_state], -1)
        return tuple(piece.reshape(*theta.shape[:-1], *shape)
                     for piece, shape in zip(pieces, self.param_shapes, strict=False))

    def train_forward(self, theta: Tensor, x: Tensor, coefficients: Tensor) -> tuple[Tensor, Tensor | None]:
        """Training mode: (outputs [B, out], updated running statistics [num_state] or None without BatchNorm).

        coefficients [B] are the batch coefficients w_i/|B_k| (0 for padding): BatchNorm normalises with the
        batch's mean and variance weighted by them, so a point with weight 0 is absent from the batch
        exactly as if it had been removed. The running statistics follow PyTorch's update (momentum,
        unbiased variance) and are returned detached: derivatives treat them as recorded constants."""
        return self.train_call(self.parameter_tensors(theta), theta[..., self.state_slice], x, coefficients)

    def train_call(self, params: Sequence[Tensor], state: Tensor, x: Tensor,
                   coefficients: Tensor) -> tuple[Tensor, Tensor | None]:
        """``train_forward`` with the parameters given as separate tensors (``parameter_tensors``' order) and
        the running statistics [num_state] apart: differentiating with respect to the pieces avoids
        gathering a flat [P] gradient (exact unrolling uses this)."""
        values = dict(zip(self.param_names, params, strict=True))
        if not self.num_state:
            return functional_call(self.module, values, (x,)), None
        self._sink.begin(coefficients)
        try:
            outputs = functional_call(self.train_module, values, (x,))
        finally:
            seen = self._sink.end()
        stats = list(torch.split(state.detach(), self.state_sizes, -1))
        for j, name in enumerate(self.norms):
            momentum = self.norms[name].momentum
            for mean, var in seen.get(name, []):
                stats[2 * j] = (1 - momentum) * stats[2 * j] + momentum * mean
                stats[2 * j + 1] = (1 - momentum) * stats[2 * j + 1] + momentum * var
        return outputs, torch.cat(stats, -1)

    __call__ = forward

    def init(self, seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Fresh parameters [P] from the layers' own initialisation, seeded (same seed, same numbers);
        BatchNorm running statistics start at mean 0, variance 1."""
        module = copy.deepcopy(self.network)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        values = [p.detach().reshape(-1) for p in module.parameters()]
        values += [module.get_buffer(n).detach().reshape(-1).to(values[0].dtype) for n in self.state_names]
        return torch.cat(values).to(dtype)

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

    def layers(self, exclude: Sequence[str] = (), strict: bool = True) -> tuple[list[LayerSlot], list[slice]]:
        """The layers with a Kronecker-factored form (nn.Linear, nn.Conv2d) and the flat slices of the
        ``exclude``d ones. Shared by K-FAC/EK-FAC curvature, hook-based gradients, TRAK's projections.

        Normalisation layers (BatchNorm) are always excluded, and so is the running-statistics state: their
        score contributions are 0 in every Kronecker-based method (docs/conventions.md). Raises a ValueError
        naming any other layer with parameters that is neither supported nor excluded, and any parameter
        shared by two layers (call one module twice instead: that is supported). strict=False excludes such
        layers instead (and allows a model with no factorable layer)."""
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
            if name in exclude or name in self.norms:
                excluded += list(full.values())
                continue
            if not factorable(module):
                if not strict:
                    excluded += list(full.values())
                    continue
                if isinstance(module, nn.Conv2d):
                    raise ValueError(f"layer {label!r}: K-FAC supports Conv2d with groups=1, numeric padding and "
                                     "padding_mode='zeros'; exclude it or use an equivalent layer")
                raise ValueError(
                    f"layer {label!r} ({type(module).__name__}) has parameters but no Kronecker-factored form; "
                    f"K-FAC/EK-FAC support nn.Linear and nn.Conv2d. Pass exclude=[{name!r}] to leave its "
                    "parameters out of the attribution (their score contributions become 0)")
            out_dim = module.weight.shape[0]
            in_dim = module.weight[0].numel() + (module.bias is not None)
            slots.append(LayerSlot(name, module, full["weight"], full.get("bias"), out_dim, in_dim))
        if not slots and strict:
            raise ValueError("the model has no nn.Linear or nn.Conv2d layer left to factor")
        if self.num_state:
            excluded.append(self.state_slice)
        return slots, excluded

    def hook_split(self) -> tuple[list[LayerSlot], Tensor] | None:
        """For per-example gradients: the layers whose gradients forward hooks give as d a^T (every
        nn.Linear, and nn.Conv2d with groups=1 and numeric zero padding), and the flat indices [R] of every
        other trainable parameter (for torch.func). None when hooks cannot serve (tied weights, or no such
        layer)."""
        try:
            slots, _ = self.layers(strict=False)
        except ValueError:  # tied weights
            return None
        if not slots:
            return None
        covered = torch.zeros(self.num_trainable, dtype=torch.bool)
        for slot in slots:
            for part in (slot.weight, slot.bias):
                if part is not None:
                    covered[part] = True
        return slots, (~covered).nonzero()[:, 0]

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


class _BatchStatistics:
    """Hands a training step's batch coefficients to the BatchNorm stand-ins and collects, per layer and
    call, the (mean, unbiased variance) [C] they normalised with (detached)."""

    def __init__(self):
        self.coefficients: Tensor | None = None
        self.seen: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def begin(self, coefficients: Tensor) -> None:
        self.coefficients, self.seen = coefficients, {}

    def end(self) -> dict[str, list[tuple[Tensor, Tensor]]]:
        seen, self.coefficients, self.seen = self.seen, None, {}
        return seen


class _TrainingBatchNorm(nn.Module):
    """BatchNorm in a training step: normalises each channel with the batch's statistics weighted by the
    batch coefficients c_j (sum_j c_j x_j / sum_j c_j over examples and positions; biased variance, as
    nn.BatchNorm does), then reports them for the running-statistics update."""

    def __init__(self, name: str, norm: nn.Module, sink: _BatchStatistics):
        super().__init__()
        self.name, self.eps, self.sink = name, norm.eps, sink
        self.weight, self.bias = norm.weight, norm.bias  # meta parameters, replaced by functional_call

    def forward(self, x: Tensor) -> Tensor:
        c = self.sink.coefficients
        if c is None or c.shape[0] != x.shape[0]:
            raise RuntimeError("a BatchNorm training step needs the batch coefficients (use FlatModel.train_forward)")
        dims = [0, *range(2, x.dim())]
        shape = (1, -1, *[1] * (x.dim() - 2))
        per_example = x[0, 0].numel()
        w = c.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
        total = c.sum() * per_example
        mean = (w * x).sum(dims) / total
        centred = x - mean.reshape(shape)
        var = (w * centred * centred).sum(dims) / total
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        count = (c > 0).sum() * per_example
        self.sink.seen.setdefault(self.name, []).append((mean.detach(), (var * count / (count - 1)).detach()))
        return out


def _with_training_norms(module: nn.Module, norms: dict[str, nn.Module], sink: _BatchStatistics) -> nn.Module:
    """A copy of the (meta) module with every BatchNorm replaced by its training-step stand-in."""
    out = copy.deepcopy(module).train()
    for name in norms:
        stand_in = _TrainingBatchNorm(name, out.get_submodule(name), sink)
        if not name:
            return stand_in
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, stand_in)
    return out


SUPPORTED = (nn.Linear, nn.Conv2d)


def factorable(module: nn.Module) -> bool:
    """Whether a layer's gradient is sum_t d_t a_t^T over positions (LayerSlot's form)."""
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and not isinstance(module.padding, str) and module.padding_mode == "zeros"
    return isinstance(module, SUPPORTED)


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
