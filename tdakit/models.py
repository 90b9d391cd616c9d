"""Models as pure functions of a flat parameter vector.

Every method in tdakit works on ``theta``: one flat Tensor [P] holding all of a model's parameters.
``FlatModel`` turns an ``nn.Module`` into ``forward(theta, x) -> outputs`` with torch.func, so that
training, unrolling and curvature can differentiate, vmap and stack parameters freely.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import deprecation
from .errors import InputError, ModelError

# names that moved in 0.3: the model zoo to zoo.py, the layer view to layers.py
__getattr__ = deprecation.moved(__name__, {
    "mlp": "tdakit.zoo:mlp", "resnet9": "tdakit.zoo:resnet9", "Residual": "tdakit.zoo:Residual",
    "Scale": "tdakit.zoo:Scale", "conv_bn": "tdakit.zoo:conv_bn", "ACTIVATIONS": "tdakit.zoo:ACTIVATIONS",
    "LayerSlot": "tdakit.layers:LayerSlot", "factorable": "tdakit.layers:factorable",
    "SUPPORTED": "tdakit.layers:SUPPORTED"})

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
        self.dropout_layers = dropout_layers(module)
        if self.dropout_layers:
            warnings.warn(f"tdakit trains and attributes without dropout: the layers {self.dropout_layers} are off "
                          "(identity) in every training step, replay and retraining, so all paths follow the same "
                          "trajectory. Remove them, or set p=0, to silence this (docs/your-own-model.md)",
                          UserWarning, stacklevel=3)
        self.has_attention = any(isinstance(m, nn.MultiheadAttention) for m in module.modules())
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
        return self.call(self.module, self.unflatten(theta), x)

    def call(self, module: nn.Module, values: dict[str, Tensor], x: Tensor) -> Tensor:
        """functional_call(module, values, x); attention through PyTorch's plain ("math") kernel when the model has
        nn.MultiheadAttention layers, whose fused CPU kernel has no second derivative (exact unrolling needs one)
        and no batching rule: one kernel, so every path computes the same numbers."""
        if not self.has_attention:
            return functional_call(module, values, (x,))
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(module, values, (x,))

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
            return self.call(self.module, values, x), None
        self._sink.begin(coefficients)
        try:
            outputs = self.call(self.train_module, values, x)
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

    # -- the layer view moved to tdakit.layers in 0.3; these forward to it, with a warning, for one release
    def layers(self, exclude: Sequence[str] = (), strict: bool = True, example: Tensor | None = None):
        """Deprecated: ``tdakit.layers.factored(model, ...)``."""
        return deprecation.call("FlatModel.layers()", "tdakit.layers:factored", self, exclude, strict, example)

    def hook_split(self, example: Tensor | None = None):
        """Deprecated: ``tdakit.layers.hook_split(model, ...)``."""
        return deprecation.call("FlatModel.hook_split()", "tdakit.layers:hook_split", self, example)

    def tap(self, theta: Tensor, x: Tensor, slots):
        """Deprecated: ``tdakit.layers.tap(model, ...)``."""
        return deprecation.call("FlatModel.tap()", "tdakit.layers:tap", self, theta, x, slots)

    def inputs_of(self, layer: str, theta: Tensor, x: Tensor) -> Tensor:
        """Deprecated: ``tdakit.layers.inputs_of(model, ...)``."""
        return deprecation.call("FlatModel.inputs_of()", "tdakit.layers:inputs_of", self, layer, theta, x)


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


def dropout_layers(module: nn.Module) -> list[str]:
    """Names of the dropout layers (any ``nn.Dropout*``) with p > 0: tdakit keeps them off."""
    return [name or "the model itself" for name, m in module.named_modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def _with_training_norms(module: nn.Module, norms: dict[str, nn.Module], sink: _BatchStatistics) -> nn.Module:
    """A copy of the (meta) module with every BatchNorm replaced by its training-step stand-in."""
    # eval: the stand-ins below use batch statistics whatever the mode; dropout stays off (``dropout_layers``)
    out = copy.deepcopy(module).eval()
    for name in norms:
        stand_in = _TrainingBatchNorm(name, out.get_submodule(name), sink)
        if not name:
            return stand_in
        parent, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, child, stand_in)
    return out
