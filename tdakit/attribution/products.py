"""Score products u . grad L(z_i, theta), shared across methods.

Influence, SOURCE, Fast-SOURCE, TracIn and gradient dot products are all sums of terms

    scores[q, i] += scale * u[q] . grad L(z_i, theta)

with a query-side vector u [Q, P] (the query gradient after the method's curvature function) and the
parameters theta at which training gradients are taken (the final parameters or a checkpoint). A
method *plans* its terms; ``evaluate`` then makes every per-example gradient once per distinct
(training data, theta) and multiplies it by the u of every term -- of every method -- that needs it.
Per-example gradients are made chunk by chunk and never held for the whole dataset; under
torch.distributed the chunks are dealt out to the processes (see ``distributed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed, hardware
from ..datasets import Split
from ..grads import loss_grads, rows_per_chunk
from ..models import FlatModel
from ..task import Task


@dataclass
class Term:
    """scale * u @ grad L(z_i, theta) for every training point i of ``data``: u [Q, P], theta [P]."""

    theta: Tensor
    u: Tensor
    scale: float
    part: int = 0  # which piece of the method the term belongs to (SOURCE: its segment)


@dataclass
class Plan:
    """A method's terms over one training set; its scores are the sum of the terms, [Q, N] float64."""

    model: FlatModel
    task: Task
    data: Split
    terms: list[Term]
    queries: int


def evaluate(plans: Sequence[Plan], chunk: int | None = None, progress: bool = False,
             precision: str = "float32") -> list[Tensor]:
    """Scores [Q, N] float64 of every plan. Terms that share training data (the same Split object) and
    equal theta share one pass of per-example gradients. precision: "float32" (the model's dtype) or
    "bf16" for the products (``hardware.products``)."""
    groups: list[tuple[Plan, Tensor, list[tuple[int, Term]]]] = []
    for p, plan in enumerate(plans):
        for term in plan.terms:
            for first, theta, members in groups:
                if first.data is plan.data and first.model is plan.model and first.task == plan.task \
                        and theta.shape == term.theta.shape and torch.equal(theta, term.theta):
                    members.append((p, term))
                    break
            else:
                groups.append((plan, term.theta, [(p, term)]))
    out = [torch.zeros(plan.queries, len(plan.data), dtype=torch.float64, device=_device(plan)) for plan in plans]
    for first, theta, members in tqdm(groups, desc="gradient products", disable=not progress, leave=False):
        u = torch.cat([term.u.to(theta.dtype) for _, term in members])  # [sum of Q, P]
        data = first.data.to(theta.dtype, theta.device)
        size = chunk or rows_per_chunk(theta.numel(), device=theta.device)
        starts = range(0, len(data), size)
        for s in [starts[j] for j in distributed.mine(len(starts))]:  # every chunk in one process
            grads = loss_grads(first.model, first.task, theta, data.subset(slice(s, s + size)), chunk=size)
            products = hardware.products(u, grads, precision)  # [sum of Q, chunk] float64
            row = 0
            for p, term in members:
                q = len(term.u)
                out[p][:, s:s + size] += term.scale * products[row:row + q]
                row += q
    return [distributed.sum_over_ranks(o) for o in out]  # each process filled its own columns


def _device(plan: Plan) -> torch.device:
    return plan.terms[0].u.device if plan.terms else plan.data.x.device
