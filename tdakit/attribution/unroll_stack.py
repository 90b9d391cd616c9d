"""Exact unrolling's reverse step written out for stacks of Linear layers and elementwise activations.

For such a network the step's Hessian-vector products and per-example gradient products have a closed
form (Pearlmutter's R-operator), so the reverse pass need not differentiate the batch gradient with
torch.func. Writing it out lets every weight-sized product be accumulated straight into the adjoint
(``baddbmm_``, ``addmm_``), where double backward writes each term to a fresh [Q, out, in] tensor and
then adds them (a large share of the torch.func reverse pass in a CPU profile: BENCHMARKS.md), and the loss's
output derivatives come from one small autograd call instead of per-example torch.func transforms.

The results are the same numbers as differentiating sum_j c_j L(z_j, theta) twice (tested against dense
float64 Hessians and the torch.func path). Models with anything else (convolutions, BatchNorm, residual
blocks) take the generic path in ``unroll.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..grads import output_derivatives
from ..models import FlatModel
from ..task import Task

# Elementwise activations the written-out step handles; their first and second derivatives come from
# autograd, so any other elementwise module could join the list.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Softplus, nn.SiLU, nn.ELU)
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU)


@dataclass(frozen=True)
class Layer:
    """One Linear layer of the stack: its parameter positions in ``param_names`` order and the
    activation that follows it (None for the output layer)."""

    weight: int
    bias: int | None
    activation: nn.Module | None
    width: int  # out_features


def linear_stack(model: FlatModel) -> tuple[list[nn.Module], list[Layer]] | None:
    """The model as (leading Flatten modules, Linear layers with their activations), or None when it is
    not a plain stack (then exact unrolling differentiates the step with torch.func)."""
    module = model.network
    if model.num_state or model.aliases or not isinstance(module, nn.Sequential):  # tied weights: generic path
        return None
    position = {name: i for i, name in enumerate(model.param_names)}
    prefix: list[nn.Module] = []
    layers: list[Layer] = []
    seen: set[int] = set()
    # _modules, not named_children(): the latter skips a module's second use (a shared activation instance)
    for name, child in module._modules.items():
        if isinstance(child, nn.Linear):
            if layers and layers[-1].activation is None:
                return None  # two Linear layers in a row
            if id(child) in seen:
                return None  # one Linear used twice: tied weights, left to the generic path
            seen.add(id(child))
            bias = position[f"{name}.bias"] if child.bias is not None else None
            layers.append(Layer(position[f"{name}.weight"], bias, None, child.out_features))
        elif isinstance(child, ELEMENTWISE):
            if not layers or layers[-1].activation is not None:
                return None  # an activation before the first Linear, or two in a row
            layers[-1] = dataclasses.replace(layers[-1], activation=child)
        elif isinstance(child, nn.Flatten) and not layers:
            prefix.append(child)
        elif not isinstance(child, nn.Identity):
            return None
    if not layers or layers[-1].activation is not None:
        return None
    return prefix, layers


class StackStep:
    """The reverse step of one SGD update for a Linear/activation stack.

    ``__call__(params, x, y, c, mu, out)`` takes the parameters theta_k as tensors (``param_names`` order),
    the batch x [B, ...], y [B], c [B] (coefficients w_j/|B_k|) and adjoint pieces mu [Q, *shape]; it adds
    H mu (H the Hessian of sum_j c_j L(z_j, theta) at theta_k) into ``out`` in place and returns
    dc [Q, B] = grad L(z_j, theta_k) . mu, the derivative of g . mu with respect to each coefficient c_j.
    """

    def __init__(self, prefix: list[nn.Module], layers: list[Layer], task: Task):
        self.prefix, self.layers, self.task = prefix, layers, task
        self._scratch: dict[str, Tensor] = {}
        self._scratch_key: tuple | None = None

    @classmethod
    def for_model(cls, model: FlatModel, task: Task) -> StackStep | None:
        """The step for ``model``, or None when it is not a plain stack (``linear_stack``)."""
        stack = linear_stack(model)
        return None if stack is None else cls(*stack, task)

    def _scratch_for(self, q: int, b: int, like: Tensor) -> dict[str, Tensor]:
        """Work tensors reused by every step with Q queries and B batch slots (no per-step allocation)."""
        key = (q, b, like.dtype, like.device)
        if self._scratch_key != key:
            widths = [layer.width for layer in self.layers]
            fresh = {}
            for i, width in enumerate(widths):
                for name in ("rz", "product", "ra"):
                    fresh[f"{name}{i}"] = like.new_empty(q, b, width)
                if i:
                    fresh[f"below{i}"] = like.new_empty(q, b, widths[i - 1])
            self._scratch, self._scratch_key = fresh, key
        return self._scratch

    def __call__(self, params: tuple[Tensor, ...], x: Tensor, y: Tensor, c: Tensor,
                 mu: tuple[Tensor, ...], out: tuple[Tensor, ...]) -> Tensor:
        inputs, slopes, curvatures, output = self._primal_forward(params, x)
        output_grad, output_hessian = output_derivatives(self.task, output, y)
        errors, back = self._primal_backward(params, slopes, output_grad)
        scratch = self._scratch_for(mu[0].shape[0], len(x), x)
        dc, tangents, tangent_inputs = self._tangent_forward(params, mu, inputs, errors, slopes, curvatures, scratch)
        self._tangent_backward(params, mu, out, c, inputs, errors, back, slopes, curvatures, tangents,
                               tangent_inputs, output_hessian, scratch)
        return dc

    def _primal_forward(self, params, x: Tensor):
        """The network's forward pass: each layer's input a_{l-1} [B, in], the activation derivatives s1, s2
        [B, out] (None after the output layer; s2 None for piecewise-linear activations) and the outputs."""
        a = x
        for m in self.prefix:
            a = m(a)
        inputs, slopes, curvatures = [], [], []
        for layer in self.layers:
            inputs.append(a)
            z = _linear(a, params[layer.weight], None if layer.bias is None else params[layer.bias])
            if layer.activation is None:
                slopes.append(None)
                curvatures.append(None)
                a = z
                continue
            a, s1, s2 = _activation_derivatives(layer.activation, z)
            slopes.append(s1)
            curvatures.append(s2)
        return inputs, slopes, curvatures, a

    def _primal_backward(self, params, slopes, output_grad: Tensor):
        """Per example and unscaled, from the loss's output gradient [B, o]: e_l = dL_j/dz_l [B, out_l], and
        u_l = e_{l+1} W_{l+1} (what e_l is before the activation's slope)."""
        errors: list[Tensor] = [output_grad]
        back: list[Tensor | None] = [None]
        for layer, s1 in zip(self.layers[:0:-1], slopes[-2::-1], strict=True):
            u = errors[0] @ params[layer.weight]
            back.insert(0, u)
            errors.insert(0, u * s1)
        return errors, back

    def _tangent_forward(self, params, mu, inputs, errors, slopes, curvatures, scratch):
        """The adjoint pushed forward as a tangent: Rz_l [Q, B, out_l] (kept where sigma'' is needed), the
        tangent inputs Ra_{l-1}, and dc[q, j] = sum_l e_l[j] . (a_{l-1}[j] V_l^T + v_l)[q]."""
        q, b = mu[0].shape[0], len(inputs[0])
        dc = inputs[0].new_zeros(q, b)
        tangents: list[Tensor | None] = []
        tangent_inputs: list[Tensor | None] = []
        ra = None
        for i, (layer, a_in, e, s1) in enumerate(zip(self.layers, inputs, errors, slopes, strict=True)):
            rz, product = scratch[f"rz{i}"], scratch[f"product{i}"]
            torch.bmm(a_in.expand(q, *a_in.shape), mu[layer.weight].transpose(1, 2), out=rz)
            if layer.bias is not None:
                rz.add_(mu[layer.bias][:, None, :])
            dc.add_(torch.mul(rz, e, out=product).sum(-1))
            tangent_inputs.append(ra)
            if ra is not None:
                rz.view(q * b, -1).addmm_(ra.view(q * b, -1), params[layer.weight].T)
            if s1 is None:
                tangents.append(rz)
                ra = None
            elif curvatures[i] is None:
                tangents.append(None)
                ra = rz.mul_(s1)
            else:
                tangents.append(rz)
                ra = torch.mul(rz, s1, out=scratch[f"ra{i}"])
        return dc, tangents, tangent_inputs

    def _tangent_backward(self, params, mu, out, c: Tensor, inputs, errors, back, slopes, curvatures, tangents,
                          tangent_inputs, output_hessian: Tensor, scratch) -> None:
        """R delta_L = c H_out Rz_L, then back through the layers: each adds its Hessian-vector block into
        ``out`` (the adjoint pieces) in place."""
        q, b = mu[0].shape[0], len(c)
        cq = c[:, None]
        r_delta = torch.einsum("bij,qbj->qbi", output_hessian * c[:, None, None], tangents[-1])
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            delta = errors[i] * cq
            out_w = out[layer.weight]
            out_w.baddbmm_(r_delta.transpose(1, 2), inputs[i].expand(q, *inputs[i].shape))
            if tangent_inputs[i] is not None:
                out_w.baddbmm_(delta.T.expand(q, *delta.T.shape), tangent_inputs[i])
            if layer.bias is not None:
                out[layer.bias].add_(r_delta.sum(1))
            if i == 0:
                break
            below = scratch[f"below{i}"]
            torch.mm(r_delta.reshape(q * b, -1), params[layer.weight], out=below.view(q * b, -1))
            below.baddbmm_(delta.expand(q, *delta.shape), mu[layer.weight])
            below.mul_(slopes[i - 1])
            if curvatures[i - 1] is not None:
                below.add_(tangents[i - 1] * (back[i - 1] * cq * curvatures[i - 1]))
            r_delta = below


def _linear(a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return a @ weight.T if bias is None else torch.addmm(bias, a, weight.T)


def _activation_derivatives(activation: nn.Module, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """sigma(z), sigma'(z) and sigma''(z) elementwise ([B, out]); sigma'' is None for piecewise-linear
    activations. Plain autograd: an elementwise function's gradient of the sum is its derivative."""
    second = not isinstance(activation, PIECEWISE_LINEAR)
    with torch.enable_grad():
        leaf = z.detach().requires_grad_()
        a = activation(leaf.clone())  # a clone, so that in-place activations leave the leaf alone
        (s1,) = torch.autograd.grad(a.sum(), leaf, create_graph=second)
        s2 = None
        if second:
            s2 = torch.autograd.grad(s1.sum(), leaf)[0] if s1.requires_grad else torch.zeros_like(z)
    return a.detach(), s1.detach(), s2
