"""The replayed trajectory exact unrolling walks back along: theta_k for k = T-1, ..., 0, whole or checkpointed.

Stored whole, the trajectory costs (T + 1) x P values. Checkpointed (``keep_every=k``), the forward pass keeps the
parameters and the momentum buffer at every k-th step only; on the way back each stretch of k steps is recomputed
from its checkpoint once, with the run's own step, so the states are the same numbers bit for bit. Memory is then
about (2 T / k + k) x P values (the least, 2 sqrt(2T) P, at k = sqrt(2T)) for one more forward pass of compute.
``keep_every="auto"`` stores the whole trajectory while it fits ``WHOLE_BYTES`` and a quarter of the free memory,
and checkpoints every ceil(sqrt(2T)) steps beyond (BENCHMARKS.md, issue 21: memory and seconds against T and k).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..curvature.budget import available_bytes
from ..errors import SettingError
from ..sgd import Step
from ..training import Run, steps

WHOLE_BYTES = 2 * 2 ** 30  # a whole trajectory up to 2 GiB is stored as it is


def auto_every(run: Run, dtype: torch.dtype) -> int:
    """1 (store every state) while (T + 1) x P values fit ``WHOLE_BYTES`` and a quarter of the free memory, else
    ceil(sqrt(2T)), which minimises the checkpoints plus one stretch."""
    steps_, params = run.num_steps, run.final.shape[-1]
    whole = (steps_ + 1) * params * torch.empty((), dtype=dtype).element_size()
    free = available_bytes(run.final.device)
    if whole <= WHOLE_BYTES and (free is None or whole <= free / 4):
        return 1
    return max(1, math.ceil(math.sqrt(2 * steps_)))


def check_every(keep_every) -> None:
    if keep_every == "auto":
        return
    if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 1:
        raise SettingError(f"keep_every must be 'auto' or a whole number >= 1 (1: store every step's parameters; "
                           f"k: every k-th, recomputing the rest on the way back), got {keep_every!r}")


class Trajectory:
    """theta_k [P] of a run replayed in ``dtype`` (the run's steps, so in the run's dtype theta_T is ``run.final``
    bit for bit), served as ``trajectory[k]`` for k = 0..T; walking k downwards recomputes each checkpointed
    stretch once. keep_every: 1 (every state stored), k, or "auto" (``auto_every``)."""

    def __init__(self, run: Run, dtype: torch.dtype | None = None, keep_every: int | str = "auto",
                 weights: Tensor | None = None):
        check_every(keep_every)
        self.dtype = dtype or run.final.dtype
        self.every = auto_every(run, self.dtype) if keep_every == "auto" else keep_every
        self.num_steps = run.num_steps
        self._data = run.train.to(self.dtype)
        self._weights = (run.weights if weights is None else weights).to(self.dtype)
        self._batches, self._lrs = run.batches, run.lrs
        self._step = Step(run.model, run.task, run.recipe)
        theta, buf = run.init.to(self.dtype).clone(), torch.zeros_like(run.init, dtype=self.dtype)
        self._saved: dict[int, tuple[Tensor, Tensor]] = {0: (theta.clone(), buf.clone())}
        whole = None
        if self.every == 1:  # filled in place: one [T + 1, P] block, never a list of states and its stacked copy
            whole = torch.empty(self.num_steps + 1, theta.numel(), dtype=self.dtype, device=theta.device)
            whole[0] = theta
        for k, after, _ in steps(self._step, self._data, theta, self._batches, self._lrs, self._weights, buf=buf):
            if whole is not None:
                whole[k + 1] = after
            elif (k + 1) % self.every == 0 and k + 1 < self.num_steps:
                self._saved[k + 1] = (after.clone(), buf.clone())
        self.final = whole[-1].clone() if whole is not None else after.clone() if self.num_steps else theta.clone()
        self._stretch_start, self._stretch = (0, whole) if whole is not None else (-1, None)

    def __len__(self) -> int:
        return self.num_steps + 1

    def __getitem__(self, k: int) -> Tensor:
        if k == self.num_steps:
            return self.final
        if self._stretch is None or not self._stretch_start <= k < self._stretch_start + len(self._stretch):
            self._recompute(k - k % self.every)
        return self._stretch[k - self._stretch_start]

    def _recompute(self, start: int) -> None:
        """The stored states of steps start .. start + every - 1, from the checkpoint at ``start``."""
        theta, buf = (t.clone() for t in self._saved[start])
        end = min(start + self.every, self.num_steps)
        self._stretch = None  # the previous stretch goes first (states a caller still holds stay as they were)
        self._stretch = torch.empty(end - start, theta.numel(), dtype=self.dtype, device=theta.device)
        self._stretch[0] = theta
        for k, after, _ in steps(self._step, self._data, theta, self._batches, self._lrs, self._weights, buf=buf,
                                 first=start, last=end - 2):  # theta_end itself is not needed
            self._stretch[k + 1 - start] = after
        self._stretch_start = start

    @property
    def stored_values(self) -> int:
        """Values held at most at once (``stored_values``)."""
        return stored_values(self.num_steps, self.final.numel(), self.every)


def stored_values(steps: int, params: int, every: int) -> int:
    """Values a trajectory of ``steps`` updates of ``params`` parameters holds at most at once: all T + 1 states for
    every = 1, else the checkpoints (parameters and buffer, at steps 0, k, 2k, ...) plus one stretch."""
    if every == 1:
        return (steps + 1) * params
    return 2 * -(-steps // every) * params + min(every, steps) * params
