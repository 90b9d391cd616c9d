"""A model's layer structure: which parameters form an nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding or
self-attention layer, the hooks that read a layer's inputs and output gradients, and the layer's per-example
gradient factors.

For such a layer the parameters form one matrix W [out, in (+1 bias column)], and an example's gradient of it is
G = sum_t d_t a_t^T over the layer's positions t (one for Linear, one per output position or pixel for Conv1d and
Conv2d, one per token for an embedding): a_t the layer input (for a convolution an unfolded patch, plus a 1 for the
bias; for nn.Embedding [V, E], whose matrix is W^T [E, V], the one-hot row of the token, zero at padding_idx,
which is passed around as the token id itself, -1 for padding: ``LayerSlot.one_hot``), d_t the gradient of the
loss with respect to the layer's output. Forward hooks read a_t and let autograd give d_t, so per-example
gradients exist one layer at a time and never as a flat [n, P] tensor. The Kronecker curvature backends
(curvature/kronecker.py), the score products (attribution/products.py) and TRAK's projections all read layers
through this module:

    slots, excluded = factored(model, example=data.x[:1])      # LayerSlots, and the slices left out
    outputs, inputs, layer_outputs = tap(model, theta, x, slots)  # a forward pass that records them
    inputs, grads = gradient_factors(model, task, theta, data, "empirical", slots)  # a [n, T, in], d [K, n, T, out]

A layer qualifies only when its own forward call is the only use of its weight (``outside_uses``): tied weights,
a weight read by another module (a tied decoder) or a layer never called are left to torch.func by the score
products and refused, with the fix, by the Kronecker backends. nn.MultiheadAttention called as self-attention
gives two layers: its packed in-projection (``in_proj_weight`` [3E, E], named after the attention module) and
``out_proj``. Its own code applies both inside one call, so ``tap`` computes them itself, around the module, and
hands the module identity projections in their place (``_AttentionTap``).
"""

from __future__ import annotations

import typing
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .datasets import Split
from .errors import ModelError, SettingError
from .grads import check_output_curvature, psd_sqrt
from .models import FlatModel
from .task import Task

Fisher = Literal["ggn", "true", "empirical"]  # which output directions gradient_factors backpropagates
FISHERS: tuple[str, ...] = typing.get_args(Fisher)
# per model: {(input shape, dtype): what outside_uses found}; entries go with their model
_probes: weakref.WeakKeyDictionary[FlatModel, dict[tuple, dict[str, set[str]]]] = weakref.WeakKeyDictionary()
CROSS = "a call with different query, key and value"  # outside_uses' place for a non-self-attention call
UNBATCHED = "a call whose input is not batch-major"  # ... for a layer whose input's first dimension is not the batch


def inputs_of(model: FlatModel, layer: str, theta: Tensor, x: Tensor) -> Tensor:
    """What layer ``layer`` receives (its first input) when the model runs at theta on x (the last call
    if it is called several times); no gradients."""
    seen = []
    handle = model.network.get_submodule(layer).register_forward_hook(
        lambda _m, inputs, _out: seen.append(inputs[0].detach().clone()))
    try:
        with torch.no_grad():
            model.call(model.network, model.unflatten(theta), x)
    finally:
        handle.remove()
    if not seen:
        raise ModelError(f"layer {layer!r} was not called in the forward pass")
    return seen[-1]


def outside_uses(model: FlatModel, x: Tensor) -> dict[str, set[str]]:
    """Parameters used outside their own module's forward call, with where: {parameter name: {module names}}.

    A Linear's per-example gradient from hooks is d a^T only when its weight is used by its own call alone.
    That fails for a weight also used elsewhere (a tied decoder ``F.linear(h, embed.weight)``), for a layer
    whose weight its parent reads instead of calling it (``nn.MultiheadAttention``'s ``out_proj``), and for a
    layer never called. One forward pass on the first example of x records which module's call every
    operation on a parameter ran inside (a TorchFunctionMode); it is run once per input shape and dtype.
    A parameter never used at all is reported with the place "nowhere"; an nn.MultiheadAttention called with
    different query, key and value (cross-attention) has its ``in_proj_weight`` reported with the place ``CROSS``,
    and a layer hooks would read (Linear, Conv2d, Embedding, attention) whose input does not hold the examples along
    its batch dimension (a sequence-first layer, a position table looked up once for the whole batch) its
    ``weight`` with the place ``UNBATCHED``: per-example gradients cannot be read from it."""
    key = (tuple(x.shape[1:]), x.dtype)
    probes = _probes.setdefault(model, {})
    if key not in probes:
        probes[key] = _probe_uses(model.network, x[:1])
    return probes[key]


def factored(model: FlatModel, exclude: Sequence[str] = (), strict: bool = True,
             example: Tensor | None = None) -> tuple[list[LayerSlot], list[slice]]:
    """The layers with a Kronecker-factored form (nn.Linear, nn.Conv1d/2d, nn.Embedding, self-attention) and
    the flat slices of the ``exclude``d ones. Shared by K-FAC/EK-FAC curvature, hook-based gradients, TRAK's
    projections.

    A layer is factored when its weight is used by its own forward call alone: not tied to another layer's,
    not read by another module (``outside_uses``, probed on ``example`` [n, *features] when given; pass it
    whenever data is at hand). ``exclude`` names layers to leave out, each with everything inside it.
    Normalisation layers (BatchNorm, LayerNorm) are always excluded, and so is the running-statistics state:
    their score contributions are 0 in every Kronecker-based method (docs/conventions.md). strict=True raises a
    ModelError naming any other layer with parameters that cannot be factored and is not excluded;
    strict=False excludes such layers instead (and allows a model with no factorable layer).
    nn.MultiheadAttention (same embedding size for query, key and value, no bias_k/bias_v, called as
    self-attention) gives two slots: its in-projection, named after the module, and its ``out_proj``."""
    exclude = set(exclude)
    named = dict(model.network.named_modules())
    with_params = [n for n, m in named.items() if list(m.parameters(recurse=False))]
    unknown = exclude - set(named)
    if unknown:
        raise SettingError(f"exclude names {sorted(unknown)} that are not layers of the model; layers with "
                           f"parameters: {with_params}")
    owners: dict[int, list[str]] = {}
    for name in with_params:
        for p in named[name].parameters(recurse=False):
            owners.setdefault(id(p), []).append(name or "the model itself")
    outside = {} if example is None else outside_uses(model, example)
    slots, excluded, problems = [], [], []
    for name in with_params:
        module = named[name]
        own = dict(module.named_parameters(recurse=False))
        full = {p: model.slices[f"{name}.{p}" if name else p] for p in own}
        if any(name == e or name.startswith(f"{e}.") for e in exclude) or name in model.norms \
                or isinstance(module, nn.LayerNorm):
            excluded += list(full.values())
            continue
        used = {p: outside.get(f"{name}.{p}" if name else p) for p in own}
        parent = name.rpartition(".")[0]
        in_attention = isinstance(named.get(parent), nn.MultiheadAttention) and named[parent].out_proj is module
        if in_attention:  # nn.MultiheadAttention reads out_proj's weight inside its own call: tap computes it
            used = {p: (places or set()) - {parent or "the model's own forward"} for p, places in used.items()}
        why = _not_factorable(name, module, owners, used)
        if why is not None:
            problems.append(why)
            excluded += list(full.values())
            continue
        if isinstance(module, nn.MultiheadAttention):
            weight, bias = module.in_proj_weight, module.in_proj_bias
            slots.append(LayerSlot(name, module, full["in_proj_weight"], full.get("in_proj_bias"),
                                   weight.shape[0], weight.shape[1] + (bias is not None), "attention_in"))
            continue
        if isinstance(module, nn.Embedding):
            slots.append(LayerSlot(name, module, full["weight"], None, module.embedding_dim, module.num_embeddings,
                                   "embedding"))
            continue
        out_dim = module.weight.shape[0]
        in_dim = module.weight[0].numel() + (module.bias is not None)
        slots.append(LayerSlot(name, module, full["weight"], full.get("bias"), out_dim, in_dim,
                               "attention_out" if in_attention else "layer"))
    if strict and problems and slots:  # leaving the layer out works: other layers remain to factor
        reason, names = problems[0]
        raise ModelError(f"{reason} {_exclusion_fix(names)}")
    if strict and not slots:
        reasons = " ".join(reason for reason, _ in problems)
        left = "left " if problems or exclude else ""
        raise ModelError(f"{reasons + ' ' if reasons else ''}The model has no nn.Linear, convolution, "
                         f"embedding or self-attention layer {left}to factor, which Kronecker curvatures (K-FAC, "
                         "EK-FAC) and TRAK need: use a dense curvature (curvature='ggn', or 'auto') with influence "
                         "and SOURCE")
    if model.num_state:
        excluded.append(model.state_slice)
    return slots, excluded


def hook_split(model: FlatModel, example: Tensor | None = None) -> tuple[list[LayerSlot], Tensor] | None:
    """For per-example gradients: the layers whose gradients forward hooks give as d a^T (``factored`` with
    strict=False: every nn.Linear, and nn.Conv1d/2d with groups=1 and even zero padding, whose weight only
    its own call uses -- probed on ``example``), and the flat indices [R] of every other trainable
    parameter (tied, used elsewhere, or of another kind: for torch.func). None when no layer qualifies."""
    slots, _ = factored(model, strict=False, example=example)
    if not slots:
        return None
    covered = torch.zeros(model.num_trainable, dtype=torch.bool)
    for slot in slots:
        for part in (slot.weight, slot.bias):
            if part is not None:
                covered[part] = True
    return slots, (~covered).nonzero()[:, 0]


def tap(model: FlatModel, theta: Tensor, x: Tensor,
        slots: Sequence[LayerSlot]) -> tuple[Tensor, list[Tensor], list[list[Tensor]]]:
    """A forward pass that records, for every slot, its inputs a [n, T, in] and its outputs (kept for
    autograd): (model outputs [n, o], inputs per slot, outputs per slot and call).

    Safe against in-place operations: the hook hands the rest of the network a copy of the layer's
    output (so ``ReLU(inplace=True)`` or ``out += residual`` change the copy, not the tensor we
    differentiate with respect to) and keeps a copy of its input. A layer called several times in one
    pass (a reused block) has every call recorded; its positions are concatenated along T, so that
    sum_t d_t a_t^T is the layer's whole gradient. nn.MultiheadAttention's projections are computed here,
    around the module (``_AttentionTap``)."""
    records: dict[str, list[tuple[Tensor, Tensor]]] = {s.name: [] for s in slots}

    def hook(slot):
        def record(_module, inputs, output):
            records[slot.name].append((inputs[0].detach().clone(), output))
            return output.clone()
        return record

    with torch.enable_grad():
        theta = theta.detach().requires_grad_(True)
        values = model.unflatten(theta)
        attention = _AttentionTap(model, values, slots, records)
        handles = [model.network.get_submodule(s.name).register_forward_hook(hook(s)) for s in slots
                   if s.kind in ("layer", "embedding")] + attention.handles
        try:
            outputs = model.call(model.network, attention.values, x)
        finally:
            for h in handles:
                h.remove()
    for s in slots:
        if not records[s.name]:
            raise ModelError(f"layer {s.name!r} was not called in the forward pass; exclude it")
        rows = {a.shape[0] for a, _ in records[s.name]}
        if rows != {x.shape[0]}:
            raise ModelError(f"layer {s.name!r} received inputs whose first dimension is {sorted(rows)}, not the "
                             f"batch's {x.shape[0]}: per-example gradients from hooks and Kronecker factors need "
                             "every layer to see the examples along its first dimension (batch_first=True for "
                             "transformer layers). Otherwise use gradients='vmap' and a dense curvature "
                             "(curvature='ggn')")
    inputs = [torch.cat([s.inputs(a) for a, _ in records[s.name]], 1) for s in slots]
    layer_outputs = [[out for _, out in records[s.name]] for s in slots]
    return outputs, inputs, layer_outputs


class _AttentionTap:
    """nn.MultiheadAttention applies its in- and out-projections inside one call, where no hook reaches. For the
    attention slots, tap computes them itself: a forward pre-hook projects the query x [n, L, E] to
    P = x W_in^T + b_in [n, L, 3E] and passes P's three parts as query, key and value; a forward hook applies
    W_out to the module's output. Meanwhile the module is handed identity projections with zero biases, which
    return their inputs exactly (products with 1 and 0), so the attention in between computes what it always
    does. ``values`` is the parameter dict to call the model with."""

    def __init__(self, model: FlatModel, values: dict[str, Tensor], slots: Sequence[LayerSlot],
                 records: dict[str, list[tuple[Tensor, Tensor]]]):
        self.values, self.handles, self.records = dict(values), [], records
        for slot in slots:
            if slot.kind == "attention_in":
                module, prefix = slot.module, f"{slot.name}." if slot.name else ""
                names = (f"{prefix}in_proj_weight", f"{prefix}in_proj_bias" if module.in_proj_bias is not None
                         else None)
                self.handles.append(module.register_forward_pre_hook(self._project_in(slot, *self._swap(*names)),
                                                                     with_kwargs=True))
            elif slot.kind == "attention_out":
                owner = slot.name.rpartition(".")[0]
                module = model.network.get_submodule(owner)
                names = (f"{slot.name}.weight", f"{slot.name}.bias" if slot.bias is not None else None)
                self.handles.append(module.register_forward_hook(self._project_out(slot, module.batch_first,
                                                                                   *self._swap(*names))))

    def _swap(self, weight: str, bias: str | None) -> tuple[Tensor, Tensor | None]:
        """Hand the module identity blocks [out, in] (and a zero bias) for these; return the real ones."""
        real_weight, real_bias = self.values[weight], self.values[bias] if bias is not None else None
        out, width = real_weight.shape
        self.values[weight] = torch.eye(width, dtype=real_weight.dtype, device=real_weight.device).repeat(
            out // width, 1)
        if bias is not None:
            self.values[bias] = torch.zeros_like(real_bias, requires_grad=False)
        return real_weight, real_bias

    def _project_in(self, slot: LayerSlot, weight: Tensor, bias: Tensor | None):
        def before(module, args, kwargs):
            named = _attention_arguments(args, kwargs)
            query, key, value = named["query"], named["key"], named["value"]
            if not (query is key and key is value) or query.dim() != 3:
                fix = _exclusion_fix([slot.name])
                raise ModelError(f"layer {slot.name!r} (nn.MultiheadAttention) is called with different query, key "
                                 "and value, or without a batch dimension: its packed in-projection has a "
                                 f"Kronecker-factored form for batched self-attention only. {fix}")
            x = query if module.batch_first else query.transpose(0, 1)  # [n, L, E]
            projected = F.linear(x, weight, bias)
            self.records[slot.name].append((x.detach().clone(), projected))
            projected = projected.clone() if module.batch_first else projected.clone().transpose(0, 1)
            parts = projected.chunk(3, -1)
            named.update(zip(("query", "key", "value"), parts, strict=True))
            return (), named
        return before

    def _project_out(self, slot: LayerSlot, batch_first: bool, weight: Tensor, bias: Tensor | None):
        def after(_module, _args, output):
            mixed, attention_weights = output
            a = mixed if batch_first else mixed.transpose(0, 1)  # [n, L, E]: what out_proj receives
            projected = F.linear(a, weight, bias)
            self.records[slot.name].append((a.detach().clone(), projected))
            projected = projected.clone() if batch_first else projected.clone().transpose(0, 1)
            return projected, attention_weights
        return after


def _exclusion_fix(names: list[str]) -> str:
    """How to leave layers out of the Kronecker-factored methods, or avoid the factors."""
    listed = ", ".join(repr(n) for n in names)
    return (f"Leave {'it' if len(names) == 1 else 'them'} out (their parameters then score 0): "
            f"curvature=tdakit.curvature.Kronecker(exclude=[{listed}]) for influence and SOURCE, exclude=[{listed}] "
            "for TRAK; or use a dense curvature (curvature='ggn')")


def _not_factorable(name: str, module: nn.Module, owners: dict[int, list[str]],
                    used_outside: dict[str, set[str] | None]) -> tuple[str, list[str]] | None:
    """Why a layer with parameters has no Kronecker-factored gradient, with the layers to leave out; or None."""
    label = name or "the model itself"
    for p_name, p in module.named_parameters(recurse=False):
        others = [o for o in owners[id(p)] if o != label]
        if others:
            return (f"layer {label!r} shares its parameter {p_name!r} with layer {others[0]!r} (tied weights): "
                    "Kronecker factors need each weight in one layer.", [name, *others])
        places = used_outside.get(p_name)
        if places == {UNBATCHED}:
            return (f"layer {label!r} receives inputs whose first dimension is not the batch (a sequence-first "
                    "layer, or a table looked up once for the whole batch), so hooks cannot read one example's "
                    "gradient from it: call it batch-major (batch_first=True; per-example ids [n, ...]).", [name])
        if places == {CROSS}:
            return (f"layer {label!r} (nn.MultiheadAttention) is called with different query, key and value: its "
                    "packed in-projection has a Kronecker-factored form for self-attention only.", [name])
        if places == {"nowhere"}:
            return f"layer {label!r} is never called in the forward pass.", [name]
        if places:
            return (f"layer {label!r}'s parameter {p_name!r} is used outside its own forward call (inside "
                    f"{', '.join(sorted(repr(w) for w in places))}), so its gradient is not d a^T.", [name])
    if not factorable(module):
        if isinstance(module, CONVOLUTIONS):
            return (f"layer {label!r}: K-FAC supports {type(module).__name__} with groups=1, padding_mode='zeros' "
                    "and the same padding on both sides (numbers, 'valid', or 'same' where dilation x (kernel - 1) is "
                    "even, as with an odd kernel).", [name])
        if isinstance(module, nn.Embedding):
            return (f"layer {label!r}: K-FAC supports nn.Embedding without max_norm (which rewrites the weight) "
                    "and without scale_grad_by_freq.", [name])
        if isinstance(module, nn.MultiheadAttention):
            return (f"layer {label!r}: K-FAC supports nn.MultiheadAttention with one embedding size for query, key "
                    "and value (kdim = vdim = embed_dim) and add_bias_kv=False.", [name])
        return (f"layer {label!r} ({type(module).__name__}) has parameters but no Kronecker-factored form "
                "(K-FAC/EK-FAC support nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding and self-attention).", [name])
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

    cross: set[str] = set()
    unbatched: set[str] = set()

    def attention_call(name: str):
        def hook(module, args, kwargs) -> None:
            named = _attention_arguments(args, kwargs)
            query = named["query"]
            if not (query is named["key"] and named["key"] is named["value"]):
                cross.add(name)
            if query.dim() != 3 or query.shape[0 if module.batch_first else 1] != len(x):
                unbatched.add(name)
        return hook

    def layer_call(name: str):
        def hook(_module, inputs) -> None:
            if not inputs or inputs[0].dim() == 0 or inputs[0].shape[0] != len(x):
                unbatched.add(name)
        return hook

    for name, module in network.named_modules():
        handles.append(module.register_forward_pre_hook(entered(name)))
        handles.append(module.register_forward_hook(left, always_call=True))
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_pre_hook(attention_call(name), with_kwargs=True))
        elif isinstance(module, SUPPORTED):
            handles.append(module.register_forward_pre_hook(layer_call(name)))
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
    for name in cross:
        found[f"{name}.in_proj_weight" if name else "in_proj_weight"] = {CROSS}
    for name in unbatched - cross:
        prefix = f"{name}." if name else ""
        attention = isinstance(network.get_submodule(name), nn.MultiheadAttention)
        for weight in ("in_proj_weight", "out_proj.weight") if attention else ("weight",):
            found.setdefault(prefix + weight, {UNBATCHED})
    return found


def _attention_arguments(args: tuple, kwargs: dict) -> dict:
    """nn.MultiheadAttention.forward's arguments by name (query, key and value however they were passed)."""
    return dict(zip(("query", "key", "value"), args, strict=False)) | kwargs


CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)  # their patches are unfolded (a Conv1d as a Conv2d of height 1)
SUPPORTED = (nn.Linear, *CONVOLUTIONS, nn.Embedding, nn.MultiheadAttention)


def factorable(module: nn.Module) -> bool:
    """Whether a layer's gradient is sum_t d_t a_t^T over positions (LayerSlot's form); for nn.MultiheadAttention,
    its in-projection's (when called as self-attention, which ``outside_uses`` probes)."""
    if isinstance(module, CONVOLUTIONS):
        return module.groups == 1 and module.padding_mode == "zeros" and _numeric_padding(module) is not None
    if isinstance(module, nn.MultiheadAttention):
        return _self_attention(module)
    if isinstance(module, nn.Embedding):
        return module.max_norm is None and not module.scale_grad_by_freq
    return isinstance(module, SUPPORTED)


def _numeric_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...] | None:
    """The zero padding per side of each spatial dimension (padding="valid" is 0, "same" is dilation (k - 1) / 2),
    or None when "same" pads unevenly (an even dilation (k - 1)), which unfolding cannot express."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
    return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)


def _self_attention(module: nn.Module | None) -> bool:
    """An nn.MultiheadAttention whose projections tap can compute: one packed in-projection, no bias_k/bias_v."""
    return isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim and module.bias_k is None


@dataclass(frozen=True)
class LayerSlot:
    """Where a layer's parameters sit in the flat theta, and how to read its inputs and output gradients.

    The layer's parameters form one matrix [out, in] (in: inputs per position, plus a bias column). An
    nn.Embedding's weight [V, E] is stored transposed: its matrix is [E, V], its inputs one-hot rows [V], carried
    as token ids (``one_hot``)."""

    name: str
    module: nn.Module = field(repr=False, compare=False)
    weight: slice
    bias: slice | None
    out_dim: int
    in_dim: int  # columns of the layer matrix, the bias column included
    kind: Literal["layer", "embedding", "attention_in", "attention_out"] = "layer"  # attention: _AttentionTap

    @property
    def one_hot(self) -> bool:
        """Inputs are one-hot (an embedding): A = E[a a^T] is diagonal, with the identity as eigenvectors, and
        ``inputs`` gives token ids [n, T] (-1: no input) instead of a [n, T, in] (``dense_inputs`` makes those)."""
        return self.kind == "embedding"

    def matrix(self, v: Tensor) -> Tensor:
        """v [..., P] -> this layer's block as a matrix [..., out, in]."""
        if self.one_hot:
            return v[..., self.weight].reshape(*v.shape[:-1], self.in_dim, self.out_dim).transpose(-1, -2)
        w = v[..., self.weight].reshape(*v.shape[:-1], self.out_dim, -1)
        if self.bias is None:
            return w
        return torch.cat([w, v[..., self.bias, None]], -1)

    def scatter(self, m: Tensor, out: Tensor) -> None:
        """Write a matrix [..., out, in] back into the flat out [..., P]."""
        if self.one_hot:
            out[..., self.weight] = m.transpose(-1, -2).reshape(*m.shape[:-2], -1)
            return
        cols = self.in_dim - (self.bias is not None)
        out[..., self.weight] = m[..., :cols].reshape(*m.shape[:-2], -1)
        if self.bias is not None:
            out[..., self.bias] = m[..., cols]

    def inputs(self, x: Tensor) -> Tensor:
        """The layer's input -> a [n, T, in] (patches for a convolution, a ones column for the bias; for an embedding,
        the token ids [n, T], -1 at its padding_idx, whose row gets no gradient: the one-hot a is never formed)."""
        if self.one_hot:
            ids = x.reshape(x.shape[0], -1)
            if self.module.padding_idx is not None:
                ids = ids.masked_fill(ids == self.module.padding_idx, -1)
            return ids
        if isinstance(self.module, nn.Conv1d):  # [n, C, L] as an image of height 1: patches [n, L_out, C k]
            c = self.module
            x = F.unfold(x.unsqueeze(-2), (1, *c.kernel_size), dilation=(1, *c.dilation),
                         padding=(0, *_numeric_padding(c)), stride=(1, *c.stride)).transpose(1, 2)
        elif isinstance(self.module, nn.Conv2d):
            c = self.module
            x = F.unfold(x, c.kernel_size, dilation=c.dilation, padding=_numeric_padding(c),
                         stride=c.stride).transpose(1, 2)
        else:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is not None:
            x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)
        return x

    def dense_inputs(self, a: Tensor, dtype: torch.dtype) -> Tensor:
        """``inputs`` as a [n, T, in] in ``dtype``: for an embedding, the one-hot rows (zero for id -1)."""
        if not self.one_hot:
            return a
        return F.one_hot(a.clamp(min=0), self.in_dim).to(dtype) * (a >= 0).to(dtype)[..., None]

    def gathered(self, a: Tensor, columns: Tensor) -> Tensor:
        """For an embedding: the columns [..., in] of ``columns`` at each token, zero for id -1: a_t's product
        with a matrix [..., in] -> [n, T, ...], without forming the one-hot a."""
        picked = columns.movedim(-1, 0)[a.clamp(min=0)]  # [n, T, ...]
        return picked * (a >= 0).reshape(*a.shape, *([1] * (picked.dim() - 2))).to(picked.dtype)

    def output_grads(self, d: Tensor) -> Tensor:
        """Gradient w.r.t. the layer output -> d [n, T, out]."""
        if isinstance(self.module, CONVOLUTIONS):  # [n, out, *positions]
            return d.flatten(2).transpose(1, 2)
        return d.reshape(d.shape[0], -1, d.shape[-1])


def output_directions(task: Task, outputs: Tensor, targets: Tensor, fisher: str,
                      generator: torch.Generator | Sequence[torch.Generator] | None) -> list[Tensor]:
    """Per-example vectors r [n, o] to backpropagate; sum_k r_k r_k^T is the loss curvature in the outputs
    (ggn), or r is the loss gradient with sampled (true) or observed (empirical) targets. A sequence of generators
    draws example i's targets from generator[i] (draws that do not depend on how the data is chunked)."""
    g = outputs.detach()
    if fisher == "ggn":
        check_output_curvature(g, "the Kronecker curvature's exact Gauss-Newton (fisher='ggn')")
        lam = vmap(torch.func.hessian(lambda o, y: task.loss(o[None], y[None])[0]))(g, targets)
        root = psd_sqrt(lam)
        return [root[:, :, k] for k in range(root.shape[-1])]
    if fisher == "true" and isinstance(generator, Sequence):
        targets = torch.cat([task.sample_targets(g[i:i + 1], each) for i, each in enumerate(generator)])
    elif fisher == "true":
        targets = task.sample_targets(g, generator)
    with torch.enable_grad():
        g = g.clone().requires_grad_(True)
        (direction,) = torch.autograd.grad(task.loss(g, targets).sum(), g)
    return [direction]


def gradient_factors(model: FlatModel, task: Task, theta: Tensor, data: Split, fisher: str = "empirical",
                     slots: list[LayerSlot] | None = None,
                     generator: torch.Generator | Sequence[torch.Generator] | None = None):
    """For one chunk of data: per slot, inputs a [n, T, in] (an embedding's: token ids [n, T]) and, per output
    direction k, output gradients d [K, n, T, out]. With fisher="empirical", G_i = sum_t d[0, i, t] a[i, t]^T is example
    i's gradient of the layer matrix (per-example gradients from hooks)."""
    slots = slots if slots is not None else factored(model, example=data.x[:1])[0]
    outputs, inputs, layer_outputs = tap(model, theta, data.x, slots)
    directions = output_directions(task, outputs, data.y, fisher, generator)
    flat_outputs = [out for calls in layer_outputs for out in calls]
    grads = [[] for _ in slots]
    for k, r in enumerate(directions):
        got = iter(torch.autograd.grad(outputs, flat_outputs, grad_outputs=r.to(outputs.dtype),
                                       retain_graph=k < len(directions) - 1))
        for i, (slot, calls) in enumerate(zip(slots, layer_outputs, strict=True)):
            grads[i].append(torch.cat([slot.output_grads(next(got)) for _ in calls], 1))  # calls as positions
    return inputs, [torch.stack(g) for g in grads]
