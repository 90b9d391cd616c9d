"""Where work runs and how big its pieces are: the default device, chunk sizes fitted to the device's
memory, and the optional bfloat16 score products (float32 accumulation).

Everything in tdakit follows its inputs' device: train on data moved to ``default_device()`` and every
method, curvature and ground truth runs there. Chunk sizes come from here so that a GPU gets pieces
sized to its free memory and a CPU pieces small enough for its caches and allocator.
"""

from __future__ import annotations

import typing
from typing import Literal

import torch
from torch import Tensor

from .errors import check_choice

Precision = Literal["float32", "bf16"]  # of the score products (bf16: bfloat16 inputs, float32 accumulation)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
CPU_ELEMENTS = 2 ** 26  # per-example gradient rows x parameters held at once on a CPU (256 MiB in float32)
GPU_SHARE = 0.2  # the share of a GPU's free memory one chunk may take


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def element_budget(device: torch.device | str | None = None, bytes_per_element: int = 4) -> int:
    """How many tensor elements one chunk may hold: ~256 MiB on a CPU; GPU_SHARE of the free memory on CUDA."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(CPU_ELEMENTS, int(GPU_SHARE * free) // bytes_per_element)
    return CPU_ELEMENTS


def check_precision(precision: str) -> str:
    check_choice("precision", precision, Precision)
    return precision


def products(u: Tensor, grads: Tensor, precision: str = "float32", block: int = 2 ** 16) -> Tensor:
    """u [Q, P] @ grads[n, P]^T -> [Q, n] float64.

    precision "bf16": both sides rounded to bfloat16 for the multiply (tensor-core speed on a GPU); each
    block of ``block`` parameters is summed by the matmul in float32 and the blocks are accumulated in
    float32, so the rounding is that of the inputs (relative ~4e-3 per entry), not of a long bf16 sum."""
    check_precision(precision)
    if precision == "float32" or u.dtype == torch.float64:
        return (u @ grads.T).double()
    out = torch.zeros(u.shape[0], grads.shape[0], dtype=torch.float32, device=u.device)
    for s in range(0, u.shape[1], block):
        out += (u[:, s:s + block].bfloat16() @ grads[:, s:s + block].bfloat16().T).float()
    return out.double()


def matmul(a: Tensor, b: Tensor, precision: str = "float32") -> Tensor:
    """a [n, k] @ b [k, m] in the inputs' dtype, or with precision "bf16" from bfloat16 inputs (float32
    accumulation inside the matmul, the result returned in float32). For short inner dimensions k (a
    layer's inputs); ``products`` blocks long ones."""
    check_precision(precision)
    if precision == "float32" or a.dtype == torch.float64:
        return a @ b
    return (a.bfloat16() @ b.bfloat16()).float()
