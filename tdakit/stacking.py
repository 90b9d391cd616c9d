"""When to train several models together under vmap, and how many at once.

Retraining (ground truth, removal, the what-if explorer) trains many models with one recipe. Stacking them under
torch.func.vmap removes a loop's per-step overhead but makes every tensor M times larger; whether that pays is a
property of one model's training step, decided here from its FLOPs (counted exactly on meta tensors), the same
way on every rerun.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .datasets import Split
from .models import FlatModel
from .sgd import make_batch_gradient
from .task import Task


def models_per_chunk(num_params: int, dtype: torch.dtype, device: torch.device | str | None = None,
                     budget_bytes: int | None = None) -> int:
    """How many models to train together when stacking them pays (``stack_models``): on a CPU each stacked
    [M, P] tensor stays under ~24 MiB, where allocators still reuse memory instead of mapping fresh pages on
    every step; on a GPU under 256 MiB (the models' activations, which grow with M too, take the rest)."""
    on_gpu = torch.device(device or "cpu").type == "cuda"
    if budget_bytes is None:
        budget_bytes = 256 * 2**20 if on_gpu else 24 * 2**20
    return max(1, min(256, budget_bytes // (num_params * torch.finfo(dtype).bits // 8)))


# Stacking models under vmap removes the per-step overhead of a loop (Python, dispatch, small kernels) but
# makes every tensor M times larger, and turns convolutions into grouped ones. On a CPU it pays while one
# model's step is small; the threshold and the weight of a convolution FLOP come from
# benchmarks/retrain_paths.py (BENCHMARKS.md, "Issue 12 (second part)", where the crossover is measured).
CPU_STACKING_MFLOP = 400.0
CONV_WEIGHT = 4.0
_step_flops_seen: dict[tuple, tuple[int, int]] = {}


def step_flops(model: FlatModel, task: Task, x: Tensor, y: Tensor) -> tuple[int, int]:
    """(matrix-product FLOPs, convolution FLOPs) of one model's training step on the batch (x [B, ...],
    y [B]): the forward and backward of the weighted batch loss, counted by torch.utils.flop_counter on meta
    tensors (no work is done; the counts are exact for those operations, elementwise work is not counted)."""
    key = (model.describe(), tuple(x.shape), tuple(y.shape), x.dtype, y.dtype)
    if key not in _step_flops_seen:
        meta = torch.device("meta")
        theta = torch.zeros(model.num_params, device=meta)
        c = torch.ones(len(x), device=meta)
        with FlopCounterMode(display=False) as counter:
            make_batch_gradient(model, task)(theta, x.to(meta, torch.float32 if x.is_floating_point() else x.dtype),
                                             y.to(meta), c)
        counts = counter.get_flop_counts().get("Global", {})
        conv = sum(int(n) for op, n in counts.items() if "conv" in str(op))
        _step_flops_seen[key] = (int(counter.get_total_flops()) - conv, conv)
    return _step_flops_seen[key]


def stack_models(model: FlatModel, task: Task, x: Tensor, y: Tensor, device: torch.device | str | None = None) -> bool:
    """Whether to train several models together under vmap (True) or one at a time (False), for training
    batches like (x [B, ...], y [B]). On a GPU: always (kernels there are launch-bound at these sizes; not
    yet measured). On a CPU: while one model's step costs under ``CPU_STACKING_MFLOP`` million matrix-product
    FLOPs, a convolution FLOP counting ``CONV_WEIGHT`` (``step_flops``). The choice is a pure function of the
    model, batch shape and device, so reruns take the same path; ``models_per_chunk=`` on retraining overrides
    it."""
    if torch.device(device or "cpu").type == "cuda":
        return True
    matmul, conv = step_flops(model, task, x, y)
    return matmul + CONV_WEIGHT * conv < CPU_STACKING_MFLOP * 1e6


def even_chunks(count: int, chunk: int) -> int:
    """The chunk size that splits ``count`` jobs into as many chunks as ``chunk`` would, but evenly (256 jobs
    at most 183 a chunk: two chunks of 128, not 183 + 73, so no chunk runs nearly empty)."""
    pieces = max(1, -(-count // max(chunk, 1)))
    return -(-count // pieces)


def retraining_chunk(model: FlatModel, task: Task, data: Split, batch_size: int, dtype: torch.dtype,
                     device: torch.device | str | None = None) -> int:
    """Models per ``train_many`` call: ``models_per_chunk`` if ``stack_models`` says stacking pays, else 1."""
    n = min(batch_size, len(data))
    if not stack_models(model, task, data.x[:n], data.y[:n], device):
        return 1
    return models_per_chunk(model.num_params, dtype, device)
