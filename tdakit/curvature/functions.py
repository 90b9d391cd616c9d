"""Scalar functions of curvature eigenvalues s used by the estimators (elementwise, any dtype).

inverse(damping):      1 / (s + damping)                              influence functions
forget(eta, K):        exp(-eta K s)            or (1 - eta s)^K       SOURCE's Sbar ("power" form)
learn(eta, K):         (1 - exp(-eta K s)) / s  or sum_j (1-eta s)^j eta  SOURCE's Fbar
learn -> eta K as s -> 0 and -> 1/s as eta K s -> infinity, like 1/(s + 1/(eta K)).
"""

from __future__ import annotations

import torch
from torch import Tensor

FORMS = ("exp", "power")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"unknown SOURCE form {form!r}; use 'exp' or 'power'")


def inverse(damping: float):
    def fn(s: Tensor) -> Tensor:
        return 1.0 / (s + damping)
    return fn


def forget(eta: float, steps: float, form: str = "exp"):
    _check_form(form)

    def fn(s: Tensor) -> Tensor:
        if form == "exp":
            return torch.exp(-eta * steps * s)
        return torch.pow(1.0 - eta * s, steps)
    return fn


def learn(eta: float, steps: float, form: str = "exp"):
    _check_form(form)

    def fn(s: Tensor) -> Tensor:
        tiny = s.abs() < 1e-30
        safe = torch.where(tiny, torch.ones_like(s), s)
        if form == "exp":
            value = -torch.expm1(-eta * steps * safe) / safe
        else:
            base = 1.0 - eta * safe
            stable = base > 0  # use log1p for precision where (1 - eta s)^K is well defined
            p_log = -torch.expm1(steps * torch.log1p(-eta * torch.where(stable, safe, torch.zeros_like(s))))
            value = torch.where(stable, p_log, 1.0 - torch.pow(base, steps)) / safe
        return torch.where(tiny, torch.full_like(s, eta * steps), value)
    return fn


class relative_inverse:  # noqa: N801  (used like the function factories above)
    """1 / (s + relative * mean(s)), the mean taken per layer for Kronecker curvature (``for_layer``):
    kronfluence's default damping heuristic."""

    def __init__(self, relative: float = 0.1):
        self.relative = relative

    def for_layer(self, eigenvalues: Tensor):
        return inverse(self.relative * float(eigenvalues.mean()))


def mean_eigenvalue(curvature) -> Tensor:
    """trace / P of a curvature backend (the floor counts for directions outside a low-rank part)."""
    values = curvature.eigenvalues
    missing = curvature.num_params - values.numel()
    return (values.sum() + missing * curvature.floor) / curvature.num_params
