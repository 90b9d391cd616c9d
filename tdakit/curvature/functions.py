"""Scalar functions of curvature eigenvalues s used by the estimators (elementwise, any dtype).

inverse(damping):      1 / (s + damping)                              influence functions
forget(eta, K):        exp(-eta K s)            or (1 - eta s)^K       SOURCE's Sbar ("power" form)
learn(eta, K):         (1 - exp(-eta K s)) / s  or sum_j (1-eta s)^j eta  SOURCE's Fbar
learn -> eta K as s -> 0 and -> 1/s as eta K s -> infinity, like 1/(s + 1/(eta K)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import SettingError

FORMS = ("exp", "power")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise SettingError(f"unknown SOURCE form {form!r}; use 'exp' or 'power'")


def inverse(damping: float):
    def fn(s: Tensor) -> Tensor:
        return 1.0 / (s + damping)
    fn.damping = damping  # what a refined solve reads (attribution.refine.damping_vector)
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


class relative_damping:  # noqa: N801  (used like the function factories above)
    """1 / (s + relative * mean loss eigenvalue): the damping is ``relative`` times the mean eigenvalue of
    the loss curvature, weight decay excluded, per block (per layer for K-FAC/EK-FAC, the whole matrix
    otherwise). With the weight decay left out of the curvature too (``Kronecker(include_weight_decay=
    False)``), this is exactly kronfluence's default heuristic."""

    def __init__(self, relative: float = 0.1):
        self.relative = relative

    def per_block(self, mean_loss_eigenvalue: float):
        return inverse(self.relative * mean_loss_eigenvalue)

    def __call__(self, s: Tensor) -> Tensor:
        raise TypeError("relative_damping depends on the curvature block; pass it to a backend's apply")
