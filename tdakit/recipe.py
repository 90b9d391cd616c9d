"""How to train: the recipe, the batch order it implies, and where a run records checkpoints.

A ``Recipe`` (rate, epochs, batch size, momentum, weight decay, schedule, seed) fixes everything about training
except the model and the data. ``batch_order`` draws the shuffled batches of every epoch from a seed, and
``Checkpoints`` says which parameter vectors a run keeps and which updates each one stands for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import SettingError, check_choice
from .schedules import learning_rates

Placement = Literal["middle", "end", "start"]
PLACEMENTS: tuple[str, ...] = ("middle", "end", "start")


@dataclass(frozen=True)
class Recipe:
    """How to train. ``lr`` is the peak rate; ``warmup`` a fraction of the steps (see schedules)."""

    lr: float = 3e-2
    epochs: int = 20
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 1e-5
    schedule: str = "constant"
    warmup: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise SettingError(f"recipe needs lr > 0, epochs >= 1, batch_size >= 1; got {self}")
        if not 0.0 <= self.momentum < 1.0:
            raise SettingError(f"momentum must lie in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise SettingError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def steps_per_epoch(self, n: int) -> int:
        return -(-n // self.batch_size)

    def learning_rates(self, n: int) -> Tensor:
        """eta_k for every step of training on n points: float64 [T]."""
        return learning_rates(self.schedule, self.lr, self.epochs * self.steps_per_epoch(n), self.warmup)


def seed_of(*parts) -> int:
    """A deterministic 63-bit seed from any parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_order(indices: Tensor, batch_size: int, epochs: int, seed: int) -> Tensor:
    """Shuffled batches over ``indices`` for every epoch: LongTensor [T, batch_size], -1 padding."""
    g = torch.Generator().manual_seed(seed)
    n = len(indices)
    per_epoch = -(-n // batch_size)
    out = torch.full((epochs * per_epoch, batch_size), -1, dtype=torch.long)
    for e in range(epochs):
        perm = indices[torch.randperm(n, generator=g)]
        padded = torch.cat([perm, perm.new_full((per_epoch * batch_size - n,), -1)])
        out[e * per_epoch:(e + 1) * per_epoch] = padded.view(per_epoch, batch_size)
    return out


@dataclass(frozen=True)
class Checkpoints:
    """Which parameter vectors a run records, and which updates each stands for (SOURCE's segment averages and
    TracIn's weights follow it).

    ``at``: C (C equal pieces of training), "all" (the parameters every update starts from) or explicit step
    numbers. ``placement``: where a checkpoint sits in its piece and what it stands for -- "middle" (the
    default: the midpoint of each piece; the updates nearer to it than to any other checkpoint), "end" (the end
    of each piece, the last one the final parameters; the updates since the previous checkpoint) or "start"
    (the updates up to the next one; what "all" means). docs/conventions.md says why the midpoints."""

    at: int | str | tuple[int, ...] = 6
    placement: Placement = "middle"

    def __post_init__(self):
        check_choice("placement", self.placement, Placement)
        at = self.at
        if isinstance(at, str):
            if at != "all":
                raise SettingError(f"checkpoints must be a count, 'all' or a list of steps, got {at!r}")
            object.__setattr__(self, "placement", "start")
        elif isinstance(at, bool) or not isinstance(at, int | Sequence | Tensor):
            raise SettingError(f"checkpoints must be a count, 'all' or a list of steps, got {at!r}")
        elif isinstance(at, int):
            if at < 0:
                raise SettingError(f"checkpoints must be >= 0, got {at}")
            if self.placement == "start":
                raise SettingError("placement='start' needs explicit steps or checkpoints='all'")
        else:
            object.__setattr__(self, "at", tuple(int(s) for s in at))

    def steps(self, total: int) -> Tensor:
        """The sorted steps [C] at which a run of ``total`` updates records its checkpoints."""
        if self.at == "all":
            return torch.arange(total)
        if isinstance(self.at, int):
            offset = 1.0 if self.placement == "end" else 0.5
            return torch.tensor([round((j + offset) * total / self.at) for j in range(self.at)], dtype=torch.long)
        chosen = torch.as_tensor(list(self.at), dtype=torch.long).sort().values
        if len(chosen) and (chosen.min() < 0 or chosen.max() > total):
            raise SettingError(f"checkpoint steps must lie in 0..{total}, got {chosen.tolist()}")
        return chosen


CheckpointSpec = Checkpoints | int | str | Sequence[int]


def as_checkpoints(checkpoints: CheckpointSpec, placement: str | None = None) -> Checkpoints:
    """A ``Checkpoints`` from what ``train(checkpoints=...)`` accepts: the object itself, or a count, "all" or
    steps with a placement (the separate ``placement=`` argument of tdakit 0.2)."""
    if isinstance(checkpoints, Checkpoints):
        if placement is not None and placement != checkpoints.placement:
            raise SettingError(f"placement={placement!r} contradicts {checkpoints}; give the placement once")
        return checkpoints
    return Checkpoints(checkpoints if isinstance(checkpoints, int | str) else tuple(checkpoints),
                       placement or "middle")


def checkpoint_steps(checkpoints: CheckpointSpec, steps: int, placement: str = "middle") -> tuple[Tensor, str]:
    """Where to record checkpoints in a run of ``steps`` updates: (sorted steps [C], placement)."""
    spec = as_checkpoints(checkpoints, placement)
    return spec.steps(steps), spec.placement
