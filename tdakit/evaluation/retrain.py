"""Retraining with the run's recipe: the counterfactual every estimate is judged against.

``retrain`` trains one model per row of ``keep`` on the kept points only (a fresh batch order over them, the
same batch size, epochs and schedule, the run's own weights w_i), vmap-batched. Models with the same number of
kept points share a step count and train together in chunks. ``retrain_reweighted`` keeps the run's own
init and batch order and sets w_i = 0 for removed points (trajectory-specific counterfactuals).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InputError
from ..recipe import batch_order
from ..stacking import even_chunks, retraining_chunk
from ..training import Run, train_many


def retrain(run: Run, keep: Tensor, init_seeds, order_seeds, models_per_chunk: int | None = None, progress: bool = True,
            desc: str = "retrain", on_step: Callable[[float], object] | None = None) -> Tensor:
    """keep: bool [J, N]; init_seeds, order_seeds: J ints. Returns final parameters [J, P].

    models_per_chunk: models trained together (default: ``retraining_chunk``, which says whether stacking pays).
    on_step: see ``train_many``."""
    keep = torch.as_tensor(keep, dtype=torch.bool)
    if keep.dim() != 2 or keep.shape[1] != run.num_train:
        raise InputError(f"keep must be a bool mask [J, {run.num_train}], got {tuple(keep.shape)}")
    counts = keep.sum(1)
    if (counts == 0).any():
        raise InputError("a retraining would keep no training points; remove fewer points")
    device = run.final.device
    out = torch.empty(len(keep), run.model.num_params, dtype=run.final.dtype, device=device)
    r = run.recipe
    chunk = models_per_chunk or retraining_chunk(run.model, run.task, run.train, r.batch_size, run.final.dtype,
                                                 device)
    for count in counts.unique().tolist():
        rows = (counts == count).nonzero()[:, 0]
        size = even_chunks(len(rows), chunk)
        for s in range(0, len(rows), size):
            part = rows[s:s + size].tolist()
            inits = torch.stack([run.model.init(int(init_seeds[j]), run.final.dtype) for j in part]).to(device)
            orders = torch.stack([batch_order(keep[j].nonzero()[:, 0], r.batch_size, r.epochs,
                                              int(order_seeds[j])) for j in part])
            weights = run.weights.to(device, run.final.dtype).expand(len(part), -1)  # the run's own w_i
            out[part] = train_many(run.model, run.train, r, run.task, inits, orders, weights, progress=progress,
                                   desc=f"{desc} {s + len(part)}/{len(rows)}", on_step=on_step)
    return out


def retrain_reweighted(run: Run, weights: Tensor, models_per_chunk: int | None = None, progress: bool = True,
                       on_step: Callable[[float], object] | None = None) -> Tensor:
    """Rerun the recorded trajectory (same init, batch order, rates) with weights [J, N]: [J, P].
    on_step: see ``train_many``."""
    weights = torch.as_tensor(weights, dtype=run.final.dtype, device=run.final.device)
    chunk = models_per_chunk or retraining_chunk(run.model, run.task, run.train, run.recipe.batch_size,
                                                 run.final.dtype, run.final.device)
    out = []
    chunk = even_chunks(len(weights), chunk)
    for s in range(0, len(weights), chunk):
        w = weights[s:s + chunk]
        inits = run.init.expand(len(w), -1)
        orders = run.batches.expand(len(w), -1, -1)
        out.append(train_many(run.model, run.train, run.recipe, run.task, inits, orders, w,
                              progress=progress, desc="retrain (same trajectory)", on_step=on_step))
    return torch.cat(out)
