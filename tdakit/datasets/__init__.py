"""Datasets that ship with tdakit, split and standardized the way the paper does it.

``load("concrete")`` reads the embedded UCI Concrete CSV (credits in data/CREDITS.md), standardizes
features and target with training statistics, and returns a seeded 896 train / 103 query split (the
remaining 31 rows are kept as ``test``). Targets stay standardized for training; ``scaler`` maps
predictions and measurements back to MPa.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "Dataset", "Scaler", "load", "available"]


@dataclass(frozen=True)
class Split:
    """Examples x [n, *features] and targets y [n]."""

    x: Tensor
    y: Tensor

    def __post_init__(self):
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index) -> Split:
        return Split(self.x[index], self.y[index])

    def to(self, dtype: torch.dtype | None = None, device=None) -> Split:
        """Cast features (and floating targets) to ``dtype``; move both to ``device``."""
        y_dtype = dtype if self.y.is_floating_point() else None
        return Split(self.x.to(device=device, dtype=dtype), self.y.to(device=device, dtype=y_dtype))

    def fingerprint(self) -> str:
        """Content hash (used in cache keys)."""
        h = hashlib.sha256()
        for t in (self.x, self.y):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


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


def _concrete(seed: int, n_train: int = 896, n_query: int = 103) -> Dataset:
    path = resources.files("tdakit.datasets") / "data" / "concrete.csv"
    with path.open() as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if n_train + n_query > len(table):
        raise ValueError(f"concrete has {len(table)} rows; n_train + n_query = {n_train + n_query}")
    order = np.random.default_rng(seed).permutation(len(table))
    train_rows, query_rows = order[:n_train], order[n_train:n_train + n_query]
    test_rows = order[n_train + n_query:]
    features, target = table[:, :-1], table[:, -1]
    mu, sd = features[train_rows].mean(0), features[train_rows].std(0)
    t_mu, t_sd = target[train_rows].mean(), target[train_rows].std()

    def split(rows) -> Split:
        x = torch.tensor((features[rows] - mu) / sd, dtype=torch.float32)
        y = torch.tensor((target[rows] - t_mu) / t_sd, dtype=torch.float32)
        return Split(x, y)

    return Dataset("concrete", "regression", split(train_rows), split(query_rows), split(test_rows),
                   Scaler(float(t_mu), float(t_sd), "MPa"), tuple(header[:-1]))


_LOADERS = {"concrete": _concrete}


def available() -> list[str]:
    """Names accepted by ``load``."""
    return sorted(_LOADERS)


def load(name: str, seed: int = 0, **kwargs) -> Dataset:
    """Load an embedded dataset by name, split with ``seed`` (same seed, same split)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _LOADERS[name](seed, **kwargs)
