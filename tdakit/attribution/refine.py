"""Refined inverse products: the damped Gauss-Newton system solved iteratively, preconditioned by EK-FAC/K-FAC.

Influence needs u = (G + D)^{-1} v for every query gradient v [P]: G the Gauss-Newton matrix of the mean weighted
training loss (plus the weight decay when the curvature includes it), D the damping (a number, or one per layer for
the heuristic). A Kronecker curvature answers with its own approximation M: x_0 = (M + D)^{-1} v, today's result.
Refinement improves it by preconditioned stochastic iterations (as the ASTRA method does, Wang et al. 2025):

    r_t = G_B x_t + D x_t - v          G_B: the Gauss-Newton of a random minibatch B, by jvp and vjp (never formed)
    m_{t+1} = beta m_t - (step_t / lambda) (M + D)^{-1} r_t,     x_{t+1} = x_t + m_{t+1}

with the step halved every ``halve_every`` iterations. lambda is the largest eigenvalue of the preconditioned
system (M + D)^{-1} (G + D), estimated before the first iteration by power iteration on a minibatch: the step is
a fraction of the stable one (heavy ball with momentum beta is stable below step = 2 (1 + beta)), whatever the
curvature's scale and however far EK-FAC is from G (on Concrete its answer leaves a residual 13 times |v|, and a
fixed, unscaled step of 0.1 diverged there). Defaults: step 1, momentum 0.9, halved every 50 of 200 iterations,
minibatches of 256. A minibatch can curve more than the probe's: when the residual passes 3 times the best so far,
the iteration goes back to the best iterate, drops its momentum and halves the step for good; the solve returns
the last iterate, or the best one if the last is worse. All queries move together: one batched
Gauss-Newton-vector product per iteration. Iteration 0 is x_0 exactly, so
``iterations=0`` gives the Kronecker result bit for bit; the minibatches come from a seeded generator, so the solve
is deterministic. Parameters a Kronecker curvature leaves out (excluded layers, BatchNorm) keep 0, as there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from .. import curvature as curv
from ..datasets import Split
from ..errors import SettingError
from ..grads import output_derivatives
from ..models import FlatModel
from ..recipe import seed_of
from ..task import Task

DIVERGING = 3.0  # a residual this many times the best so far means the step is too long: halve it and go back


@dataclass(frozen=True)
class Refine:
    """Settings of the refined solve (``refine=Refine(...)``, or ``refine=K`` for K iterations and the rest as
    here). iterations: 0 keeps the Kronecker answer. batch: training examples per Gauss-Newton product. step and
    momentum: the preconditioned heavy-ball iteration (see the module docstring); halve_every: iterations between
    halvings of the step. seed: of the minibatches. record: iterations t whose answers (what ``refine=t`` returns)
    the scores also report, as ``Scores.diagnostics["by_iteration"][t]`` [Q, N], from one more pass of products."""

    iterations: int = 200
    batch: int = 256
    step: float = 1.0  # in units of 1 / (the preconditioned system's largest eigenvalue)
    momentum: float = 0.9
    halve_every: int = 50
    seed: int = 0
    power_iterations: int = 20  # for that eigenvalue
    record: tuple[int, ...] = ()  # iterations whose iterates the scores also report (Scores.diagnostics)

    def __post_init__(self):
        for name in ("iterations", "batch", "halve_every"):
            value = getattr(self, name)
            least = 0 if name == "iterations" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SettingError(f"refine {name} must be a whole number >= {least}, got {value!r}")
        if not isinstance(self.record, tuple) or any(
                isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= self.iterations for t in self.record):
            raise SettingError(f"refine record must be a tuple of iterations between 0 and {self.iterations}, got "
                               f"{self.record!r}")
        if not 0 < self.step or not 0 <= self.momentum < 1:
            raise SettingError(f"refine step must be > 0 and momentum in [0, 1), got step {self.step!r}, "
                               f"momentum {self.momentum!r}")

    @staticmethod
    def of(refine: int | Refine | None) -> Refine:
        """``refine=`` as given to a method: a whole number of iterations, a Refine, or None/0 (no refinement)."""
        if isinstance(refine, Refine):
            return refine
        if refine is None:
            return Refine(iterations=0)
        if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
            raise SettingError(f"refine must be a whole number of iterations >= 0 or tdakit.attribution.Refine(...), "
                               f"got {refine!r}")
        return Refine(iterations=refine)


@dataclass
class Solve:
    """The result of a refined solve: x [Q, P]; the relative residual |r_t| / |v| (mean over queries) before each
    iteration t, measured on that iteration's minibatch (``history[0]`` is the Kronecker answer's); the estimated
    largest eigenvalue of the preconditioned system that scaled the step; at each iteration t ``Refine.record``
    names, the answer [Q, P] a solve of t iterations returns (the same minibatches; 0: the Kronecker answer)."""

    x: Tensor
    history: list[float] = field(default_factory=list)
    largest: float = 1.0
    iterates: dict[int, Tensor] = field(default_factory=dict)


def largest_eigenvalue(operator, z: Tensor, iterations: int) -> float:
    """The largest eigenvalue of ``operator`` (a map [1, P] -> [1, P] with real, non-negative eigenvalues, such as
    a preconditioned positive definite system) by ``iterations`` steps of power iteration from z, with 10% added
    for what the estimate misses and for minibatches that curve more than the probe's."""
    value = 1.0
    for _ in range(iterations):
        z = z / z.norm().clamp(min=1e-300)
        image = operator(z)
        value = float((z * image).sum())  # the Rayleigh quotient of the normalised iterate
        z = image
    return 1.1 * max(value, 1e-12)


def damping_vector(H: curv.Curvature, fn, num_params: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """(D [P], kept [P] bool) of the system a Kronecker curvature's damped inverse ``fn`` approximates: D holds, per
    parameter, the weight decay inside the curvature plus the damping (per layer for a ``per_block`` damping such
    as the heuristic); kept marks the parameters the curvature covers."""
    if not isinstance(H, curv.KroneckerCurvature):
        raise SettingError("refine needs a Kronecker curvature to precondition with: use curvature='ekfac' or "
                           "'kfac' (an exact curvature such as 'ggn' is already the exact solve)")
    D = torch.zeros(num_params, dtype=dtype, device=device)
    kept = torch.zeros(num_params, dtype=torch.bool, device=device)
    for layer in H.layers:
        one = layer.slot.matrix(torch.zeros(1, num_params, dtype=dtype, device=device))
        damping = getattr(curv.base.resolve(fn, float(layer.eigenvalues.mean())), "damping", None)
        if damping is None:
            raise SettingError("refine solves (G + damping) u = v, so it needs a damped inverse 1/(s + damping) "
                               "(curvature.functions.inverse or relative_damping), not another eigenvalue function")
        layer.slot.scatter(torch.full_like(one, H.floor + float(damping)), D[None])
        mask = torch.zeros(1, num_params, dtype=dtype, device=device)
        layer.slot.scatter(torch.ones_like(one), mask)
        kept |= mask[0].bool()
    return D, kept


def gauss_newton_products(model: FlatModel, task: Task, theta: Tensor, x: Tensor, y: Tensor, coefficients: Tensor,
                          vectors: Tensor) -> Tensor:
    """sum_j c_j J_j^T Lambda_j J_j V for V [Q, P]: J_j the output Jacobian of example j, Lambda_j the loss's Hessian
    in the outputs; by one jvp and one vjp per vector (vmapped over the queries). Returns [Q, P]."""
    def outputs(th):
        return model(th, x)

    out, pullback = vjp(outputs, theta)
    _, lam = output_derivatives(task, out.detach(), y)  # [B, o, o]

    def one(v):
        _, jv = jvp(outputs, (theta,), (v,))  # [B, o]
        weighted = coefficients[:, None] * torch.einsum("bij,bj->bi", lam, jv)
        return pullback(weighted)[0]

    return vmap(one)(vectors)


def refined_solve(H: curv.Curvature, fn, v: Tensor, model: FlatModel, task: Task, theta: Tensor, data: Split,
                  weights: Tensor | None, settings: Refine, start: Tensor | None = None) -> Solve:
    """(G + D)^{-1} v [Q, P] refined from ``start`` (default: the Kronecker answer H.apply(fn, v)); see the module
    docstring. G is the Gauss-Newton of (1/N) sum_i w_i L(z_i) at theta [P], or its mean over theta [C, P] (a SOURCE
    segment's checkpoints); D and the parameters covered come from ``damping_vector``."""
    x = H.apply(fn, v) if start is None else start
    if settings.iterations == 0:
        return Solve(x, [], iterates={0: x} if settings.record else {})
    thetas = theta[None] if theta.dim() == 1 else theta
    n = len(data)
    D, kept = damping_vector(H, fn, v.shape[-1], v.dtype, v.device)
    keep = kept.to(v.dtype)
    target = v * keep
    w = torch.ones(n, dtype=v.dtype, device=v.device) if weights is None else weights.to(v.device, v.dtype)
    data = data.to(v.dtype, v.device)
    generator = torch.Generator().manual_seed(seed_of("refine", settings.seed))
    batch = min(settings.batch, n)
    scale = target.norm(dim=-1).clamp(min=1e-300)

    def system(vectors: Tensor, idx: Tensor) -> Tensor:
        """(G_B + D) vectors on the covered parameters, G_B averaged over the thetas."""
        products = sum(gauss_newton_products(model, task, th, data.x[idx], data.y[idx], w[idx] / len(idx), vectors)
                       for th in thetas) / len(thetas)
        return (products + D * vectors) * keep

    largest = 1.0
    if settings.power_iterations:
        probe_batch = torch.randperm(n, generator=generator)[:batch].to(v.device)
        start_vector = torch.randn(1, v.shape[-1], generator=generator, dtype=torch.float64).to(v) * keep
        largest = largest_eigenvalue(lambda z: H.apply(fn, system(z, probe_batch)) * keep, start_vector,
                                     settings.power_iterations)
    momentum = torch.zeros_like(x)
    history: list[float] = []
    best, best_x, shrink = float("inf"), x, 1.0
    iterates: dict[int, Tensor] = {}
    for t in range(settings.iterations):
        if t in settings.record:  # what refine=t returns (the same minibatches, the same choice of iterate)
            iterates[t] = best_x if history and history[-1] > best else x
        idx = torch.randperm(n, generator=generator)[:batch].to(v.device)
        residual = system(x, idx) - target
        relative = float((residual.norm(dim=-1) / scale).mean())
        history.append(relative)
        if relative <= best:
            best, best_x = relative, x
        elif relative > DIVERGING * best:  # a minibatch curving more than the probe: back off, from the best so far
            x, shrink = best_x, shrink / 2
            momentum.zero_()
            continue
        step = shrink * settings.step * 0.5 ** (t // settings.halve_every) / largest
        momentum.mul_(settings.momentum).sub_(H.apply(fn, residual), alpha=step)
        x = x + momentum
    x = best_x if history[-1] > best else x
    if settings.iterations in settings.record:
        iterates[settings.iterations] = x
    return Solve(x, history, largest, iterates)


__all__ = ["Refine", "Solve", "refined_solve", "damping_vector", "gauss_newton_products"]
