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
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed, hardware
from ..datasets import Split
from ..errors import ModelError
from ..grads import loss_grads, loss_grads_at, rows_per_chunk
from ..layers import LayerSlot, gradient_factors, hook_split
from ..models import FlatModel
from ..task import Task
from .settings import ProductOptions


@dataclass
class Term:
    """scale * u @ grad L(z_i, theta) for every training point i of ``data``: u [Q, P], theta [P]."""

    theta: Tensor
    u: Tensor
    scale: float
    part: int = 0  # which piece of the method the term belongs to (SOURCE: its segment)
    checkpoint: int | None = None  # which of the run's checkpoints theta is (None: the final or a mean)
    iterates: dict[int, Tensor] | None = None  # a refined u's recorded iterates {iteration: [Q, P]} (refine.py)


@dataclass
class Plan:
    """A method's terms over one training set; its scores are the sum of the terms, [Q, N] float64."""

    model: FlatModel
    task: Task
    data: Split
    terms: list[Term]
    queries: int
    diagnostics: dict = field(default_factory=dict)  # what the method reports beside its scores (e.g. residuals)


def iterates_plan(plan: Plan) -> Plan | None:
    """The plan whose query rows are its terms' recorded iterates, one block of Q rows per recorded iteration in
    increasing order ([len(recorded) x Q] rows), or None when no term recorded any (``Refine.record``)."""
    if not plan.terms or not plan.terms[0].iterates:
        return None
    recorded = sorted(plan.terms[0].iterates)
    terms = [Term(t.theta, torch.cat([t.iterates[k] for k in recorded]), t.scale, t.part, t.checkpoint)
             for t in plan.terms]
    return Plan(plan.model, plan.task, plan.data, terms, plan.queries * len(recorded))


def split_iterates(plan: Plan, values: Tensor) -> dict[int, Tensor]:
    """``iterates_plan(plan)``'s scores [len(recorded) x Q, N] as {iteration: scores [Q, N]}."""
    recorded = sorted(plan.terms[0].iterates)
    return {k: values[i * plan.queries:(i + 1) * plan.queries] for i, k in enumerate(recorded)}


def evaluate(plans: Sequence[Plan], options: ProductOptions | None = None, chunk: int | None = None,
             progress: bool = False) -> list[Tensor]:
    """Scores [Q, N] float64 of every plan. Terms that share training data (the same Split object) and
    equal theta share one pass of per-example gradients. options: the precision of the products and how the
    training gradients are made (``settings.ProductOptions``; "hooks" contracts u with the layer inputs and
    output gradients of every factored layer (``layers.factored``) through ``FactoredQueries`` and uses
    torch.func for the other parameters). chunk: training points per pass (default: sized to the device's memory)."""
    options = options or ProductOptions()
    precision, gradients = options.precision, options.gradients
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
        split = None if gradients == "vmap" else hook_split(first.model, data.x[:1])
        if gradients == "hooks" and split is None:
            raise ModelError("gradients='hooks' needs an nn.Linear, convolution, embedding or self-attention layer "
                             "whose weight only its own call uses; use gradients='auto'")
        factored = None if split is None else FactoredQueries(first.model, u, *split)
        size = chunk or (factored.examples_per_chunk(first.task, theta, data) if factored is not None
                         else rows_per_chunk(theta.numel(), device=theta.device))
        size = distributed.agreed_size(size)  # one chunk plan for every process
        starts = range(0, len(data), size)
        for s in [starts[j] for j in distributed.mine(len(starts))]:  # every chunk in one process
            part = data.subset(slice(s, s + size))
            if factored is not None:
                products = factored.products(first.task, theta, part, precision)  # [sum of Q, chunk] float64
            else:
                products = hardware.products(u, loss_grads(first.model, first.task, theta, part, chunk=size),
                                             precision)
            row = 0
            for p, term in members:
                q = len(term.u)
                out[p][:, s:s + size] += term.scale * products[row:row + q]
                row += q
    return [distributed.sum_over_ranks(o) for o in out]  # each process filled its own columns


class FactoredQueries:
    """Query-side vectors u [Q, P] arranged for products with per-example gradients made by hooks.

    For a layer with inputs a_t [in] and output gradients d_t [out] at positions t (one position for
    nn.Linear, the unfolded patches of a convolution), example i's gradient of the layer matrix is
    G_i = sum_t d_it a_it^T, so u . grad L(z_i) = sum over layers of <U_l, G_i> with U_l the layer's block
    of u as a matrix [out, in]. Per-example gradients exist one layer at a time (never as a flat [n, P]
    tensor); parameters outside such layers (normalisation layers, unsupported ones) are differentiated
    with torch.func, those parameters only."""

    def __init__(self, model: FlatModel, u: Tensor, slots: list[LayerSlot], rest: Tensor):
        self.model, self.slots, self.rest = model, slots, rest.to(u.device)
        # [Q, out, in] per layer; an embedding's as [in, Q, out], one contiguous row per token
        self.blocks = [slot.matrix(u).permute(2, 0, 1).contiguous() if slot.one_hot else slot.matrix(u)
                       for slot in slots]
        self.u_rest = u[:, self.rest]

    def examples_per_chunk(self, task: Task, theta: Tensor, data: Split, cap: int = 1024) -> int:
        """How many examples one pass takes: the largest per-example tensor of any layer (its inputs and
        output gradients, its per-example matrix or its [Q, out] products) and the other parameters'
        gradients, within the device's budget (``hardware.element_budget``)."""
        inputs, grads = gradient_factors(self.model, task, theta, data.subset(slice(0, 1)), "empirical",
                                               self.slots)
        q = self.u_rest.shape[0]
        largest = max(a.numel() + d.numel() + (q * d.numel() if s.one_hot else q * b.shape[1] if a.shape[1] == 1
                                               else b[0].numel())  # an embedding: at most [T, Q, out] gathered
                      for s, a, d, b in zip(self.slots, inputs, grads, self.blocks, strict=True))
        per_example = max(largest, 4 * len(self.rest), 1)
        return max(1, min(cap, hardware.element_budget(theta.device) // (2 * per_example)))

    def products(self, task: Task, theta: Tensor, data: Split, precision: str = "float32") -> Tensor:
        """u . grad L(z_i, theta) for every example of data: [Q, n] float64.

        One position (nn.Linear): d_i^T U a_i, as (a U^T) then a product with d, so no per-example matrix is
        formed (Q n out in multiply-adds). Several positions (nn.Conv2d): G_i = sum_t d_it a_it^T first
        (n T out in), then <U, G_i> (Q n out in), cheaper than contracting every position with every query.
        An embedding (one-hot a): sum_t d_t . U[:, token t], the columns gathered (Q n T out)."""
        inputs, grads = gradient_factors(self.model, task, theta, data, "empirical", self.slots)
        out = torch.zeros(self.u_rest.shape[0], len(data), dtype=torch.float64, device=theta.device)
        for slot, block, a, d in zip(self.slots, self.blocks, inputs, grads, strict=True):
            if slot.one_hot:  # an embedding (a: token ids): sum_t d_t . U[:, x_t] over the real tokens only
                real = a >= 0
                picked = block[a[real]].to(d.dtype)  # [tokens, Q, out]: the token's column of every query
                each = torch.bmm(picked, d[0][real][:, :, None])[:, :, 0]  # [tokens, Q]
                by_example = torch.zeros(len(a), each.shape[1], dtype=each.dtype, device=each.device)
                out += by_example.index_add_(0, real.nonzero()[:, 0], each).T.double()
                continue
            q, o, i = block.shape
            if a.shape[1] == 1:
                projected = hardware.matmul(a[:, 0], block.reshape(q * o, i).T, precision).view(-1, q, o)
                out += torch.einsum("nqo,no->qn", projected, d[0, :, 0].to(projected.dtype)).double()
            else:
                g = torch.einsum("nto,nti->noi", d[0], a).flatten(1)
                out += hardware.products(block.flatten(1), g, precision)
        if len(self.rest):
            out += hardware.products(self.u_rest, loss_grads_at(self.model, task, theta, data, self.rest), precision)
        return out


def _device(plan: Plan) -> torch.device:
    return plan.terms[0].u.device if plan.terms else plan.data.x.device
