"""Sharing the expensive parts over processes with torch.distributed.

Launch any script with ``torchrun --nproc_per_node N script.py`` (or under Slurm, see docs/distributed.md)
and call ``tdakit.distributed.init()`` first; without torchrun the same script runs in one process and
nothing here does anything. Once initialised:

- EK-FAC/K-FAC fitting: the (checkpoint, chunk) pieces of the covariance and eigenvalue-correction passes
  are dealt out to the ranks and their sums reduced; every rank then holds the same factors.
- Score products: the chunks of training points whose per-example gradients are made are dealt out; each
  rank fills its columns of the score matrix and the matrices are summed (the other columns are 0).
- Ground truth: the chunks of (subset, seed) retrainings are dealt out and the measurements summed.

Pieces are the ones a single process would make, in the same sizes, so every number equals the
single-process number up to the order of float64 sums (factors) and exactly elsewhere.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def init(backend: str | None = None) -> bool:
    """Join the process group torchrun (or Slurm with the same environment variables) describes: backend
    "nccl" when CUDA is present, else "gloo"; each process takes the GPU of its LOCAL_RANK. Returns whether
    more than one process takes part. Does nothing when WORLD_SIZE is unset or 1."""
    if dist.is_available() and dist.is_initialized():
        return active()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return active()


def active() -> bool:
    """Whether more than one process shares the work."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in the process that prints, saves and shows progress (rank 0, or the only process)."""
    return rank() == 0


def mine(count: int) -> list[int]:
    """The pieces 0..count-1 this process computes (every world_size-th, from its rank)."""
    return list(range(rank(), count, world_size()))


def agreed_size(size: int) -> int:
    """The smallest of every process's ``size`` (one number, the same everywhere). Chunk sizes come from each
    process's own free memory; pieces are dealt out by index, so every process must cut the work into the same
    pieces, or some would be computed twice and others never. One process: ``size`` itself."""
    if not active():
        return size
    value = torch.tensor([int(size)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        value = value.to("cuda")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all processes (the tensor itself, unchanged, in one process).
    CPU tensors travel through the GPU under NCCL."""
    if not active():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to("cuda")
        dist.all_reduce(moved)
        return moved.to(tensor.device)
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def same_everywhere(tensor: Tensor) -> Tensor:
    """Rank 0's ``tensor`` on every process (an eigendecomposition computed on each could differ in the last
    bits between machines; sharing rank 0's keeps every process on the same factors)."""
    if not active():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to("cuda")
        dist.broadcast(moved, 0)
        return moved.to(tensor.device)
    out = tensor.contiguous().clone()
    dist.broadcast(out, 0)
    return out
