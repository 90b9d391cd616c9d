"""The embedded UCI Concrete Compressive Strength table (I-C. Yeh, CC BY 4.0; data/CREDITS.md): a seeded
896 train / 103 query split, features and target standardized with the training statistics."""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

from ..errors import SettingError
from .core import Dataset, Scaler, Split


def concrete(seed: int, n_train: int = 896, n_query: int = 103) -> Dataset:
    path = resources.files("tdakit.datasets") / "data" / "concrete.csv"
    with path.open() as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if n_train + n_query > len(table):
        raise SettingError(f"concrete has {len(table)} rows; n_train + n_query = {n_train + n_query}")
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
                   Scaler(float(t_mu), float(t_sd), "MPa"), tuple(header[:-1]),
                   tuple(Scaler(float(m), float(d)) for m, d in zip(mu, sd, strict=True)))
