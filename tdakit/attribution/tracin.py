"""TracIn (Pruthi et al., 2020), checkpoint version, in tdakit's score convention:

    score[q, i] = -(1/N) sum_c W_c grad f_q(theta_c) . grad L(z_i, theta_c)

W_c = the summed effective learning rate eta_k/(1 - momentum) of the updates checkpoint c stands for
(``checkpoint_rates``). Each point is in a batch |B|/N of the time, hence 1/N. Units: the measurement's.

TracIn is close to SOURCE with the curvature set to zero (nothing is forgotten and a segment learns
eta K g), but not equal to it: TracIn takes the query gradient at each checkpoint, SOURCE takes it once
at the final parameters and carries it back through the segments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..datasets import Split
from ..errors import SettingError
from ..grads import measurement_grads
from ..task import Task
from ..training import Run
from .products import Plan, Term


def checkpoint_rates(run: Run) -> Tensor:
    """W_c [C] float64: the effective rate eta_k/(1 - momentum) summed over the updates k that checkpoint c
    stands for (``Run.checkpoint_placement``): "end" -- the updates since the previous checkpoint (and any
    after the last); "start" -- the updates from it to the next (and any before the first); "middle" --
    the updates nearer to it than to any other checkpoint. The W_c add up to the whole run's rate."""
    steps = run.checkpoint_steps.double()
    if len(steps) == 0:
        raise SettingError("TracIn needs checkpoints; train with checkpoints=6 (or more)")
    T = run.num_steps
    k = torch.arange(T, dtype=torch.float64)  # update k moves theta_k to theta_k+1
    if run.checkpoint_placement == "end":
        owner = torch.bucketize(k, steps[:-1], right=True)  # first c with k < s_c
    elif run.checkpoint_placement == "start":
        owner = (torch.bucketize(k, steps, right=True) - 1).clamp(min=0)  # last c with s_c <= k
    else:
        owner = torch.bucketize(k + 0.5, (steps[1:] + steps[:-1]) / 2)
    return torch.zeros(len(steps), dtype=torch.float64).index_add_(0, owner, run.effective_lrs.double())


def tracin_plan(run: Run, query: Split, query_task: Task | None = None, progress: bool = True) -> Plan:
    """TracIn's terms over the run's checkpoints (see the module docstring). query_task: the task whose
    measurement f_q is attributed (default the run's; for an earlier stage of a pipeline, the last
    stage's)."""
    dtype = run.final.dtype
    query = query.to(dtype)
    terms = []
    for theta, rate in zip(run.checkpoints, checkpoint_rates(run).tolist(), strict=True):
        if rate > 0:
            v = measurement_grads(run.model, query_task or run.task, theta, query)
            terms.append(Term(theta, v, -rate / run.num_train))
    return Plan(run.model, run.task, run.train, terms, len(query))
