"""Your own table as a ``Dataset``: ``from_arrays(x, y, task)`` and ``from_csv(path, target, task)``.

Rows are split by a seeded permutation into train, query and test parts. Features (and a regression target) are
standardized with the training part's mean and std only, and the maps are recorded on the Dataset, so that
``data.features_standardized(new_rows)`` transforms new inputs the same way and ``data.scaler`` turns
standardized targets, predictions and scores back into the target's units. Classification labels of any kind
(numbers or text) become 0..K-1, their original values kept as ``class_names``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import DataNotFoundError, InputError, SettingError, check_choice
from .core import Dataset, Scaler, Split, as_tensor

TaskKind = Literal["regression", "classification"]


def from_arrays(x, y, task: TaskKind, query: float | int = 0.1, test: float | int = 0.0, seed: int = 0,
                standardize: bool = True, feature_names: tuple[str, ...] | list[str] = (), unit: str = "",
                name: str = "table") -> Dataset:
    """A Dataset from features x [n, F] and targets y [n] (tensors, numpy arrays, pandas objects or lists).

    task: "regression" (real targets) or "classification" (labels of any kind, mapped to 0..K-1). query, test:
    the share of rows (a fraction in (0, 1)) or their number (an int) held out to attribute and to test; the
    rest trains. seed: the split's permutation. standardize: scale features (and a regression target) by the
    training rows' mean and std; set False for data already scaled. unit: the target's unit, for reports.
    """
    check_choice("task", task, TaskKind)
    features = as_tensor(x, "x").double()
    if features.dim() != 2:
        raise InputError(f"x must be a table [n, F]; got shape {tuple(features.shape)} (one feature: x[:, None])")
    labels, class_names = _targets(y, task, len(features))
    if not bool(torch.isfinite(features).all()):
        row = int((~torch.isfinite(features)).any(1).nonzero()[0])
        raise InputError(f"x has NaN or inf (first in row {row}); drop or impute those rows first")
    n = len(features)
    n_query, n_test = _count(query, n, "query"), _count(test, n, "test")
    if n - n_query - n_test < 2:
        raise SettingError(f"{n} rows leave {n - n_query - n_test} to train on after query={query} and "
                           f"test={test}; hold out fewer")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    train_rows, query_rows = order[: n - n_query - n_test], order[n - n_query - n_test: n - n_test]
    test_rows = order[n - n_test:]
    feature_scalers: tuple[Scaler, ...] = ()
    target_scaler = Scaler(0.0, 1.0, unit) if task == "regression" else None
    if standardize:
        mean, std = features[train_rows].mean(0), features[train_rows].std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant column stays constant (0)
        feature_scalers = tuple(Scaler(float(m), float(s)) for m, s in zip(mean, std, strict=True))
        features = (features - mean) / std
        if task == "regression":
            t_mean, t_std = float(labels[train_rows].mean()), float(labels[train_rows].std(unbiased=False))
            t_std = t_std if t_std > 0 else 1.0
            target_scaler = Scaler(t_mean, t_std, unit)
            labels = (labels - t_mean) / t_std
    names = tuple(feature_names) or tuple(f"x{j}" for j in range(features.shape[1]))
    if len(names) != features.shape[1]:
        raise InputError(f"feature_names has {len(names)} names for {features.shape[1]} features")

    def split(rows) -> Split:
        target = labels[rows] if task == "classification" else labels[rows].float()
        return Split(features[rows].float(), target)

    return Dataset(name, task, split(train_rows), split(query_rows), split(test_rows), target_scaler, names,
                   feature_scalers, class_names=class_names)


def from_csv(path: str | Path, target: str, task: TaskKind, features: list[str] | None = None,
             delimiter: str = ",", **options) -> Dataset:
    """A Dataset from a CSV file with a header row: ``target`` names the target column, ``features`` the input
    columns (default: every other column). Other options as ``from_arrays`` (query, test, seed, standardize,
    unit). Feature cells must be numbers; an empty cell is refused with its row and column."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"no CSV file at {path}")
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    if len(rows) < 2:
        raise InputError(f"{path} needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    if target not in header:
        raise InputError(f"{path} has no column {target!r}; its columns are {', '.join(header)}")
    inputs = features if features is not None else [h for h in header if h != target]
    missing = [c for c in inputs if c not in header]
    if missing:
        raise InputError(f"{path} has no column(s) {', '.join(map(repr, missing))}; its columns are "
                         f"{', '.join(header)}")
    columns = [header.index(c) for c in inputs]
    table = np.empty((len(body), len(columns)))
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(f"{path}, line {r}: {len(row)} cells for {len(header)} columns")
        for j, c in enumerate(columns):
            try:
                table[r - 2, j] = float(row[c])
            except ValueError:
                raise InputError(f"{path}, line {r}, column {header[c]!r}: {row[c]!r} is not a number; feature "
                                 "columns must be numeric (encode categories first, or leave the column out "
                                 "with features=[...])") from None
    targets = [row[header.index(target)].strip() for row in body]
    if task == "regression":
        try:
            y = np.array([float(t) for t in targets])
        except ValueError:
            raise InputError(f"{path}: column {target!r} holds values that are not numbers; for class names use "
                             "task='classification'") from None
    else:
        y = np.array(targets, dtype=object)
    options.setdefault("name", path.stem)
    return from_arrays(table, y, task, feature_names=inputs, **options)


def _targets(y, task: str, n: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Regression: float64 [n]. Classification: labels 0..K-1 [n] and the original value of each class."""
    if task == "classification":
        values = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y, dtype=object).reshape(-1)
        if len(values) != n:
            raise InputError(f"x has {n} rows but y has {len(values)}; pass one label per row")
        if any(v is None or (isinstance(v, float) and v != v) for v in values):
            raise InputError("y has missing labels; drop those rows first")
        classes = sorted(set(values.tolist()), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise InputError(f"classification needs at least 2 classes; y holds only {classes}")
        index = {c: k for k, c in enumerate(classes)}
        return torch.tensor([index[v] for v in values.tolist()]), tuple(str(c) for c in classes)
    target = Split(torch.zeros(n, 0), as_tensor(y, "y")).y.double()
    if not bool(torch.isfinite(target).all()):
        raise InputError(f"y has NaN or inf (first in row {int((~torch.isfinite(target)).nonzero()[0])}); drop "
                         "those rows first")
    return target, ()


def _count(share: float | int, n: int, name: str) -> int:
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise SettingError(f"{name} must be a fraction in [0, 1) or a number of rows, got {share!r}")
    if isinstance(share, float):
        if not 0 <= share < 1:
            raise SettingError(f"{name} as a fraction must lie in [0, 1), got {share}")
        return round(share * n)
    if not 0 <= share < n:
        raise SettingError(f"{name} must be between 0 and {n - 1} rows, got {share}")
    return share
