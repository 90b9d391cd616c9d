"""What a curvature fit costs before it starts, and the default curvature ("auto") that fits the problem.

The exact Gauss-Newton in sample space ("ggn") holds the factor A [rows, P] in the run's dtype and a float64 Gram
matrix [rows, rows] with its eigenvectors, rows = training points x outputs x parameter sets fitted together
(one for influence, a segment's checkpoints for SOURCE). Its eigendecomposition costs about rows^3. "auto" takes
the exact GGN while rows <= AUTO_ROWS and the memory fits, EK-FAC beyond (BENCHMARKS.md, issue 24: the
measured eigendecomposition times this limit comes from). Any explicit "ggn" that would not fit in the memory
available is refused before it allocates, with the cheaper choice named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ModelError, SettingError
from ..layers import factored
from ..models import FlatModel

AUTO_ROWS = 2000  # exact-GGN influence on an MNIST MLP then takes ~4 s on 2 CPU cores (BENCHMARKS.md, issue 24)
MEMORY_SHARE = 0.5  # the share of the available memory one fit may plan to hold


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on ``device`` in bytes (CUDA: free device memory; CPU: MemAvailable on Linux), or None when
    it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class GgnCost:
    """The exact sample-space GGN's size: rows of A, parameters P, and the bytes it holds at its peak."""

    rows: int
    params: int
    bytes: int

    @staticmethod
    def of(examples: int, outputs: int, fitted_together: int, params: int, dtype: torch.dtype) -> GgnCost:
        rows = examples * outputs * fitted_together
        itemsize = torch.empty((), dtype=dtype).element_size()
        # A, plus the Gram matrix and its eigenvectors in float64 (eigh's workspace is of the same order)
        return GgnCost(rows, params, rows * params * itemsize + 3 * rows * rows * 8)

    def describe(self) -> str:
        return (f"a {self.rows:,} x {self.rows:,} Gram matrix and a [{self.rows:,}, {self.params:,}] factor, about "
                f"{self.bytes / 2 ** 30:.1f} GiB")


def check_fits(cost: GgnCost, device: torch.device | str = "cpu") -> None:
    """Refuse an exact GGN fit that would not fit in memory, naming the cheaper choice."""
    free = available_bytes(device)
    if free is not None and cost.bytes > MEMORY_SHARE * free:
        raise SettingError(f"curvature='ggn' (the exact Gauss-Newton) would hold {cost.describe()}, more than "
                           f"half the {free / 2 ** 30:.1f} GiB available; use curvature='ekfac' (or 'kfac', or "
                           "curvature='auto', which picks it), or attribute a smaller training set")


def choose(cost: GgnCost, kronecker_possible: bool, device: torch.device | str = "cpu") -> tuple[str, str]:
    """The curvature "auto" stands for: ("ggn" | "ekfac", why)."""
    free = available_bytes(device)
    fits = free is None or cost.bytes <= MEMORY_SHARE * free
    if cost.rows <= AUTO_ROWS and fits:
        return "ggn", f"the exact Gauss-Newton fits ({cost.rows:,} rows <= {AUTO_ROWS:,})"
    if not kronecker_possible:
        return "ggn", (f"the exact Gauss-Newton ({cost.describe()}): EK-FAC cannot factor this model's layers")
    return "ekfac", f"the exact Gauss-Newton would hold {cost.describe()}; EK-FAC instead"


def auto(model: FlatModel, theta: Tensor, example: Tensor, examples: int, fitted_together: int = 1) -> tuple[str, str]:
    """The one rule for curvature="auto": ("ggn" | "ekfac", why) for a fit over ``examples`` training points of
    ``fitted_together`` parameter sets [P] like ``theta``; ``example`` [1, *features] is one training input (it
    gives the number of outputs and whether the layers can be factored)."""
    example = example.to(theta.device, theta.dtype)
    outputs = model(theta, example).shape[-1]
    cost = GgnCost.of(examples, outputs, fitted_together, theta.shape[-1], theta.dtype)
    try:
        factored(model, example=example)
        factorable = True
    except ModelError:
        factorable = False
    return choose(cost, factorable, theta.device)
