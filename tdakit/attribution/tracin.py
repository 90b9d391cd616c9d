"""TracIn (Pruthi et al., 2020), checkpoint version, in tdakit's score convention:

    score[q, i] = -(1/N) sum_c W_c grad f_q(theta_c) . grad L(z_i, theta_c)

W_c = the summed effective learning rate eta_k/(1 - momentum) of the steps checkpoint c stands for
(the steps nearer to it than to any other checkpoint). Each point is in a batch |B|/N of the time,
hence 1/N. This is SOURCE with no curvature (every segment forgets nothing and learns eta K g).
Units: the measurement's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..datasets import Split
from ..grads import gradient_products, measurement_grads
from ..task import Task
from ..training import Run


def checkpoint_rates(run: Run) -> Tensor:
    """W_c [C] float64: the effective rate summed over the steps nearest to each checkpoint."""
    steps = run.checkpoint_steps.double()
    if len(steps) == 0:
        raise ValueError("TracIn needs checkpoints; train with checkpoints=6 (or more)")
    bounds = torch.cat([steps.new_zeros(1), (steps[1:] + steps[:-1]) / 2, steps.new_full((1,), run.num_steps)])
    k = torch.arange(run.num_steps, dtype=torch.float64) + 0.5
    owner = torch.bucketize(k, bounds[1:-1])
    return torch.zeros(len(steps), dtype=torch.float64).index_add_(0, owner, run.effective_lrs.double())


def tracin_scores(run: Run, query: Split, measure: Task | None = None) -> Tensor:
    """TracIn scores [Q, N] over the run's checkpoints (see the module docstring). measure: the task
    whose measurement f_q is attributed (default the run's; for an earlier stage of a pipeline, the
    last stage's)."""
    dtype = run.final.dtype
    query = query.to(dtype)
    scores = torch.zeros(len(query), run.num_train, dtype=torch.float64, device=run.final.device)
    for theta, rate in zip(run.checkpoints, checkpoint_rates(run).tolist(), strict=True):
        v = measurement_grads(run.model, measure or run.task, theta, query)
        scores += rate * gradient_products(run.model, run.task, theta, run.train, v)
    return (-scores / run.num_train).to(dtype)
