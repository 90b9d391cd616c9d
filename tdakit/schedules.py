"""Learning-rate schedules: the rate eta_k of every step k = 0..T-1, as a float64 Tensor [T]."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import SettingError

SCHEDULES = ("constant", "linear", "cosine", "warmup_linear", "warmup_cosine", "cyclic")


def learning_rates(schedule: str, peak: float, steps: int, warmup: float = 0.0) -> Tensor:
    """eta_k for k = 0..steps-1.

    constant: peak. linear / cosine: decay from peak towards 0. warmup_*: rise linearly from ~0 to peak
    over the first ``warmup`` fraction of steps, then decay. cyclic: a triangle, up to peak at the
    ``warmup`` fraction (0.25 if unset) and down to 0 at the end (the ResNet-9 CIFAR recipe).
    """
    if schedule not in SCHEDULES:
        raise SettingError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0.0 <= warmup < 1.0:
        raise SettingError(f"warmup is a fraction of the steps in [0, 1), got {warmup}")
    k = torch.arange(steps, dtype=torch.float64)
    if schedule == "constant":
        return torch.full((steps,), float(peak), dtype=torch.float64)
    if schedule == "cyclic":
        warmup = warmup or 0.25
    n_warm = round(warmup * steps) if schedule != "linear" and schedule != "cosine" else 0
    rise = (k + 1) / max(n_warm, 1)
    progress = ((k - n_warm) / max(steps - n_warm, 1)).clamp(0, 1)
    if schedule.endswith("cosine"):
        fall = 0.5 * (1 + torch.cos(math.pi * progress))
    else:
        fall = 1 - progress
    return peak * torch.where(k < n_warm, rise, fall)
