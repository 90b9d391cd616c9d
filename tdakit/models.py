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
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .errors import InputError, ModelError, SettingError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


def mlp(in_features: int, hidden: Sequence[int] = (128, 128, 128), out_features: int = 1,
        activation: str = "relu") -> nn.Sequential:
    """A multilayer perceptron: Linear -> activation for each hidden width, then a Linear head.

    The paper's Concrete model is ``mlp(8, (128, 128, 128), 1)`` (~34k parameters). Smooth activations
    ("tanh", "gelu", "softplus") make finite-difference checks through long training runs well posed.
    """
    if activation not in ACTIVATIONS:
        raise SettingError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
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
                raise ModelError(f"BatchNorm layer {label!r} has track_running_stats=False: its evaluation output "
                                 "depends on the batch, so per-example gradients are undefined; keep the default "
                                 "track_running_stats=True")
            if m.momentum is None:
                raise ModelError(f"BatchNorm layer {label!r} has momentum=None (a cumulative average); tdakit "
                                 "records exponential running statistics: set momentum (PyTorch's default is 0.1)")
        owned = {f"{n}.{b}" if n else b for n in norms for b in ("running_mean", "running_var", "num_batches_tracked")}
        others = [name for name, _ in module.named_buffers() if name not in owned]
        if others:
            raise ModelError(
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
        # Tied weights: one Parameter reachable under several names (``l2.weight = l1.weight``). theta holds it
        # once, under its first name; every call hands the same tensor to each other name (``aliases``).
        primary = {id(p): name for name, p in reversed(params)}
        self.aliases = {name: primary[id(p)] for name, p in module.named_parameters(remove_duplicate=False)
                        if primary[id(p)] != name}
        self._outside_uses: dict[tuple, dict[str, set[str]]] = {}  # probes of parameter uses, per input kind
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
        self.slices.update({alias: self.slices[name] for alias, name in self.aliases.items()})

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """theta: [P] -> {name: parameter or running-statistic view} (the statistics detached)."""
        self._check_size(theta)
        chunks = torch.split(theta, self.sizes, dim=-1)
        out = {n: c.reshape(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}
        for n in self.state_names:
            out[n] = out[n].detach()
        return self._with_aliases(out)

    def _with_aliases(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """values keyed by every name a parameter has: a tied parameter's other names get the same tensor."""
        for alias, name in self.aliases.items():
            values[alias] = values[name]
        return values

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """Evaluation mode: theta [P], x [n, *features] -> outputs [n, out] (BatchNorm uses the running
        statistics held in theta, so each example's output depends on that example only). Real-valued inputs
        are computed in theta's dtype (a float32 test set against a float64 run, say)."""
        if x.is_floating_point() and x.dtype != theta.dtype:
            x = x.to(theta.dtype)
        return functional_call(self.module, self.unflatten(theta), (x,))

    def _check_size(self, theta: Tensor) -> None:
        if theta.shape[-1] != self.num_params:
            raise InputError(f"theta has {theta.shape[-1]} entries but the model has {self.num_params} "
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
        values = self._with_aliases(dict(zip(self.param_names, params, strict=True)))
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
            for mean, var, counted in seen.get(name, []):  # torch.where, not if: this runs under vmap too
                stats[2 * j] = torch.where(counted, (1 - momentum) * stats[2 * j] + momentum * mean, stats[2 * j])
                stats[2 * j + 1] = torch.where(counted, (1 - momentum) * stats[2 * j + 1] + momentum * var,
                                               stats[2 * j + 1])
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
            raise ModelError(f"layer {layer!r} was not called in the forward pass")
        return seen[-1]

    def outside_uses(self, x: Tensor) -> dict[str, set[str]]:
        """Parameters used outside their own module's forward call, with where: {parameter name: {module names}}.

        A Linear's per-example gradient from hooks is d a^T only when its weight is used by its own call alone.
        That fails for a weight also used elsewhere (a tied decoder ``F.linear(h, embed.weight)``), for a layer
        whose weight its parent reads instead of calling it (``nn.MultiheadAttention``'s ``out_proj``), and for a
        layer never called. One forward pass on the first example of x records which module's call every
        operation on a parameter ran inside (a TorchFunctionMode); it is run once per input shape and dtype.
        A parameter never used at all is reported with the place "nowhere"."""
        key = (tuple(x.shape[1:]), x.dtype)
        if key not in self._outside_uses:
            self._outside_uses[key] = _probe_uses(self.network, x[:1])
        return self._outside_uses[key]

    def layers(self, exclude: Sequence[str] = (), strict: bool = True,
               example: Tensor | None = None) -> tuple[list[LayerSlot], list[slice]]:
        """The layers with a Kronecker-factored form (nn.Linear, nn.Conv2d) and the flat slices of the
        ``exclude``d ones. Shared by K-FAC/EK-FAC curvature, hook-based gradients, TRAK's projections.

        A layer is factored when its weight is used by its own forward call alone: not tied to another layer's,
        not read by another module (``outside_uses``, probed on ``example`` [n, *features] when given; pass it
        whenever data is at hand). ``exclude`` names layers to leave out, each with everything inside it.
        Normalisation layers (BatchNorm) are always excluded, and so is the running-statistics state: their
        score contributions are 0 in every Kronecker-based method (docs/conventions.md). strict=True raises a
        ModelError naming any other layer with parameters that cannot be factored and is not excluded;
        strict=False excludes such layers instead (and allows a model with no factorable layer)."""
        exclude = set(exclude)
        named = dict(self.network.named_modules())
        with_params = [n for n, m in named.items() if list(m.parameters(recurse=False))]
        unknown = exclude - set(named)
        if unknown:
            raise SettingError(f"exclude names {sorted(unknown)} that are not layers of the model; layers with "
                               f"parameters: {with_params}")
        owners: dict[int, list[str]] = {}
        for name in with_params:
            for p in named[name].parameters(recurse=False):
                owners.setdefault(id(p), []).append(name or "the model itself")
        outside = {} if example is None else self.outside_uses(example)
        slots, excluded = [], []
        for name in with_params:
            module = named[name]
            own = dict(module.named_parameters(recurse=False))
            full = {p: self.slices[f"{name}.{p}" if name else p] for p in own}
            if any(name == e or name.startswith(f"{e}.") for e in exclude) or name in self.norms:
                excluded += list(full.values())
                continue
            why = _not_factorable(name, module, owners, {p: outside.get(f"{name}.{p}" if name else p) for p in own})
            if why is not None:
                if strict:
                    raise ModelError(why)
                excluded += list(full.values())
                continue
            out_dim = module.weight.shape[0]
            in_dim = module.weight[0].numel() + (module.bias is not None)
            slots.append(LayerSlot(name, module, full["weight"], full.get("bias"), out_dim, in_dim))
        if not slots and strict:
            raise ModelError("the model has no nn.Linear or nn.Conv2d layer left to factor; use a dense curvature "
                             "(curvature='ggn') instead")
        if self.num_state:
            excluded.append(self.state_slice)
        return slots, excluded

    def hook_split(self, example: Tensor | None = None) -> tuple[list[LayerSlot], Tensor] | None:
        """For per-example gradients: the layers whose gradients forward hooks give as d a^T (``layers`` with
        strict=False: every nn.Linear, and nn.Conv2d with groups=1 and numeric zero padding, whose weight only
        its own call uses -- probed on ``example``), and the flat indices [R] of every other trainable
        parameter (tied, used elsewhere, or of another kind: for torch.func). None when no layer qualifies."""
        slots, _ = self.layers(strict=False, example=example)
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
                raise ModelError(f"layer {s.name!r} was not called in the forward pass; exclude it")
        inputs = [torch.cat([s.inputs(a) for a, _ in records[s.name]], 1) for s in slots]
        layer_outputs = [[out for _, out in records[s.name]] for s in slots]
        return outputs, inputs, layer_outputs


def _exclusion_fix(names: list[str]) -> str:
    """How to leave layers out of the Kronecker-factored methods, or avoid the factors."""
    listed = ", ".join(repr(n) for n in names)
    return (f"Leave {'it' if len(names) == 1 else 'them'} out (their parameters then score 0): "
            f"curvature=tdakit.curvature.Kronecker(exclude=[{listed}]) for influence and SOURCE, exclude=[{listed}] "
            "for TRAK; or use a dense curvature (curvature='ggn')")


def _not_factorable(name: str, module: nn.Module, owners: dict[int, list[str]],
                    used_outside: dict[str, set[str] | None]) -> str | None:
    """Why a layer with parameters has no Kronecker-factored gradient (a message with the fix), or None."""
    label = name or "the model itself"
    for p_name, p in module.named_parameters(recurse=False):
        others = [o for o in owners[id(p)] if o != label]
        if others:
            return (f"layer {label!r} shares its parameter {p_name!r} with layer {others[0]!r} (tied weights): "
                    f"Kronecker factors need each weight in one layer. {_exclusion_fix([name, *others])}")
        places = used_outside.get(p_name)
        if places == {"nowhere"}:
            return f"layer {label!r} is never called in the forward pass. {_exclusion_fix([name])}"
        if places:
            return (f"layer {label!r}'s parameter {p_name!r} is used outside its own forward call (inside "
                    f"{', '.join(sorted(repr(w) for w in places))}), so its gradient is not d a^T. "
                    f"{_exclusion_fix([name])}")
    if not factorable(module):
        if isinstance(module, nn.Conv2d):
            return (f"layer {label!r}: K-FAC supports Conv2d with groups=1, numeric padding and padding_mode="
                    f"'zeros'. {_exclusion_fix([name])}")
        return (f"layer {label!r} ({type(module).__name__}) has parameters but no Kronecker-factored form "
                f"(K-FAC/EK-FAC support nn.Linear and nn.Conv2d). {_exclusion_fix([name])}")
    return None


class _UseRecorder(TorchFunctionMode):
    """Records, for every operation that takes a parameter, the innermost module whose forward call is running."""

    def __init__(self, owners: dict[int, list[str]], names: dict[int, str], stack: list[str]):
        super().__init__()
        self.owners, self.names, self.stack = owners, names, stack
        self.outside: dict[str, set[str]] = {}
        self.used: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, Tensor) and id(t) in self.owners:
                name = self.names[id(t)]
                self.used.add(name)
                where = self.stack[-1] if self.stack else ""
                if where not in self.owners[id(t)]:
                    self.outside.setdefault(name, set()).add(where or "the model's own forward")
        return func(*args, **kwargs)


def _probe_uses(network: nn.Module, x: Tensor) -> dict[str, set[str]]:
    """``FlatModel.outside_uses`` for one example x [1, *features]: every parameter name (each name of a tied
    parameter) used outside its own module's call -> the modules it was used in ("nowhere": never used)."""
    params = list(network.named_parameters(remove_duplicate=False))
    owners: dict[int, list[str]] = {}
    for name, p in params:
        owners.setdefault(id(p), []).append(name.rpartition(".")[0])
    names = {id(p): name for name, p in reversed(params)}  # the first name of each parameter
    stack: list[str] = []
    handles = []

    def entered(name: str):
        def hook(_module, _inputs) -> None:
            stack.append(name)
        return hook

    def left(_module, _inputs, _output) -> None:  # returns None: the output is left as it is
        stack.pop()

    for name, module in network.named_modules():
        handles.append(module.register_forward_pre_hook(entered(name)))
        handles.append(module.register_forward_hook(left, always_call=True))
    first = next(network.parameters(), None)
    if first is not None:
        x = x.to(first.device, first.dtype if x.is_floating_point() else x.dtype)
    recorder = _UseRecorder(owners, names, stack)
    try:
        with torch.no_grad(), recorder:
            network(x)
    finally:
        for h in handles:
            h.remove()
    found = {}
    for name, p in params:  # report under every name of the parameter
        primary = names[id(p)]
        if primary not in recorder.used:
            found[name] = {"nowhere"}
        elif primary in recorder.outside:
            found[name] = recorder.outside[primary]
    return found


class _BatchStatistics:
    """Hands a training step's batch coefficients to the BatchNorm stand-ins and collects, per layer and
    call, the (mean, unbiased variance) [C] they normalised with and whether the batch had the two or more
    values per channel that an update of the running statistics needs (detached)."""

    def __init__(self):
        self.coefficients: Tensor | None = None
        self.seen: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def begin(self, coefficients: Tensor) -> None:
        self.coefficients, self.seen = coefficients, {}

    def end(self) -> dict[str, list[tuple[Tensor, Tensor, Tensor]]]:
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
        # A batch whose points all have weight 0 holds no examples: it is normalised with mean 0 and variance
        # 1 (the outputs stay finite; their loss terms are 0 anyway) and leaves the running statistics alone.
        empty = total <= 0
        denominator = torch.where(empty, torch.ones_like(total), total)
        mean = (w * x).sum(dims) / denominator
        centred = x - mean.reshape(shape)
        var = torch.where(empty, torch.ones_like(mean), (w * centred * centred).sum(dims) / denominator)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.weight is not None:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        # the unbiased variance needs two values per channel: with one (a batch of a single example in
        # BatchNorm1d) or none, the running statistics are not updated (PyTorch refuses such a batch)
        count = (c > 0).sum() * per_example
        unbiased = var * count / (count - 1).clamp(min=1)
        self.sink.seen.setdefault(self.name, []).append((mean.detach(), unbiased.detach(), (count > 1).detach()))
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
