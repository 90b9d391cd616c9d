"""Small helpers the benchmark scripts share; the settings themselves are tdakit's presets."""

from __future__ import annotations

import time

import torch

from tdakit.presets import preset


def setup(name: str, n_train: int | None = None, seed: int = 0):
    """(dataset, run) of a preset; n_train keeps the first n training points (class-balanced for images)."""
    setting = preset(name)
    data = setting.data()
    return data, setting.train(data, seed=seed, n_train=n_train, progress=False)


def median_seconds(fn, repeats: int = 3):
    """(result of the last call, median wall seconds over repeats)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(torch.tensor(times).median())
