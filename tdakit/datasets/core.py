"""The data types every part of tdakit passes around: ``Split`` (examples and targets), ``Dataset`` (train, query
and test splits with what is known about units and pixels) and ``Scaler`` (standardized <-> original units)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import store
from ..errors import InputError, SettingError


@dataclass(frozen=True)
class Split:
    """Examples x [n, *features] and targets y [n]."""

    x: Tensor
    y: Tensor

    def __post_init__(self):
        if self.x.shape[0] != self.y.shape[0]:
            raise InputError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index) -> Split:
        return Split(self.x[index], self.y[index])

    def to(self, dtype: torch.dtype | None = None, device=None) -> Split:
        """Cast features (and floating targets) to ``dtype``; move both to ``device``."""
        y_dtype = dtype if self.y.is_floating_point() else None
        return Split(self.x.to(device=device, dtype=dtype), self.y.to(device=device, dtype=y_dtype))

    def fingerprint(self) -> str:
        """Content hash of the examples and targets (used in cache keys; ``store.digest``)."""
        return store.digest(self.x, self.y)


@dataclass(frozen=True)
class Scaler:
    """Affine map between standardized and original target units: original = mean + std * value."""

    mean: float
    std: float
    unit: str = ""

    def to_original(self, value):
        return self.mean + self.std * value

    def scale(self, difference):
        """Convert a difference (e.g. a score or an error change) to original units."""
        return self.std * difference


@dataclass(frozen=True)
class Dataset:
    """A named dataset: ``train`` to train on, ``query`` to attribute, ``test`` left over."""

    name: str
    kind: str  # "regression" or "classification"
    train: Split
    query: Split
    test: Split
    scaler: Scaler | None = None
    feature_names: tuple[str, ...] = ()
    feature_scalers: tuple[Scaler, ...] = ()  # per feature, standardized -> original units (tabular data)
    image_shape: tuple[int, ...] = ()  # (H, W) for images stored flattened or not; (C, H, W) for colour
    channel_scalers: tuple[Scaler, ...] = ()  # per colour channel, standardized -> [0, 1] pixel values
    class_names: tuple[str, ...] = ()

    def features_original(self, x: Tensor) -> Tensor:
        """Tabular features [n, F] back in their original units (unchanged when no scalers are known)."""
        if not self.feature_scalers:
            return x
        mean = torch.tensor([s.mean for s in self.feature_scalers], dtype=torch.float64)
        std = torch.tensor([s.std for s in self.feature_scalers], dtype=torch.float64)
        return mean + std * x.double()

    def pixels(self, x: Tensor) -> Tensor:
        """Colour images [n, C, H, W] (standardized) -> displayable pixels [n, H, W, C] in [0, 1]."""
        if not self.channel_scalers:
            raise SettingError(f"{self.name} has no colour channels to restore")
        mean = torch.tensor([s.mean for s in self.channel_scalers], dtype=torch.float32)
        std = torch.tensor([s.std for s in self.channel_scalers], dtype=torch.float32)
        return (x.float().cpu().movedim(1, -1) * std + mean).clamp(0, 1)


def data_root() -> Path:
    """Where folder datasets are looked for by default: $TDAKIT_DATA, else ~/.cache/tdakit/data."""
    return Path(os.environ.get("TDAKIT_DATA", Path.home() / ".cache" / "tdakit" / "data"))
