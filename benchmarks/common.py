"""Shared set-ups for the benchmark scripts: the paper's models and recipes on Concrete and MNIST."""

from __future__ import annotations

import dataclasses

import torch

import tdakit

SETTINGS = {
    # name: (dataset, hidden widths, outputs, task, recipe) as in DESIGN.md section 5
    "concrete": ("concrete", (128, 128, 128), 1, tdakit.Regression(),
                 tdakit.Recipe(lr=3e-2, epochs=20, batch_size=32, momentum=0.9, weight_decay=1e-5)),
    "mnist": ("mnist5k", (512, 256, 128), 10, tdakit.Classification(),
              tdakit.Recipe(lr=3e-2, epochs=20, batch_size=64, momentum=0.9, weight_decay=1e-3)),
}


def setup(name: str, n_train: int | None = None, seed: int = 0, cache=None):
    """(dataset, model, task, recipe, run) for a named setting; n_train keeps the first n points."""
    dataset_name, hidden, outputs, task, recipe = SETTINGS[name]
    data = tdakit.datasets.load(dataset_name)
    if n_train is None:
        train = data.train
    elif data.kind == "classification":  # the split is in file order (sorted by digit): balance the classes
        train = tdakit.datasets.balanced_subset(data.train, n_train)
    else:
        train = data.train.subset(slice(0, n_train))
    model = tdakit.mlp(train.x.shape[1], hidden, outputs)
    recipe = dataclasses.replace(recipe, seed=seed)
    run = tdakit.train(model, train, recipe, task, checkpoints=6, progress=False, cache=cache)
    return data, model, task, recipe, run


def median_seconds(fn, repeats: int = 3):
    """(result of the last call, median wall seconds over repeats)."""
    import time
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(torch.tensor(times).median())
