"""One small job that touches every part tdakit shares over processes: EK-FAC fitting, score products
(influence, SOURCE, TracIn, TRAK) and ground-truth retraining. test_distributed.py runs it in one process and with
``torchrun --nproc_per_node N`` (gloo) and compares. Run directly: python tests/distributed_job.py OUT [uneven].

"uneven" gives every process its own chunk sizes (as processes with different free memory would size them) and
asks for a ground truth of 4 retrainings (fewer chunks than 3 processes): the processes must still agree on one
plan, so that every piece is computed exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import tdakit
from tdakit import distributed
from tdakit.attribution import products, trak
from tdakit.curvature import kronecker
from tdakit.datasets import Split
from tdakit.evaluation import groundtruth


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(72, 2, 6, 6, generator=g)
    data = Split(x, torch.randint(0, 3, (72,), generator=g))
    query = Split(torch.randn(5, 2, 6, 6, generator=g), torch.randint(0, 3, (5,), generator=g))
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(36, 3))
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16, momentum=0.9, weight_decay=1e-3)
    return model, data, query, recipe


def chunk_sizes(uneven: bool) -> int:
    """Pieces of 16 points (several per process); "uneven": 16 in process 0, 10 elsewhere."""
    return 10 if uneven and distributed.rank() > 0 else 16


def job(uneven: bool = False) -> dict:
    model, data, query, recipe = problem()
    run = tdakit.train(model, data, recipe, tdakit.Classification(), checkpoints=3, progress=False, cache=False)
    size = chunk_sizes(uneven)
    factored = products.FactoredQueries
    original = (factored.examples_per_chunk, factored.products, kronecker.examples_per_chunk, trak.rows_per_chunk)
    made = []

    def counted(self, task, theta, part, precision="float32"):  # how many examples this process made products of
        made.append(len(part))
        return original[1](self, task, theta, part, precision)

    factored.examples_per_chunk = lambda *a, **k: size
    factored.products = counted
    kronecker.examples_per_chunk = lambda *a, **k: size
    trak.rows_per_chunk = lambda *a, **k: size
    try:
        factors = kronecker.kronecker_curvature(run.model, run.task, run.checkpoints, data, recipe.weight_decay)
        scores = {m: tdakit.attribute(run, query, m, progress=False).values
                  for m in ("influence", "source", "tracin", "trak")}
    finally:
        factored.examples_per_chunk, factored.products, kronecker.examples_per_chunk, trak.rows_per_chunk = original
    rows = [sum(made)]
    if distributed.active():
        rows = [None] * distributed.world_size()
        torch.distributed.all_gather_object(rows, sum(made))
    subsets, seeds = (2, 2) if uneven else (4, 2)  # uneven: 4 retrainings, fewer chunks than 3 processes
    truth = groundtruth(run, query, subsets=subsets, seeds=seeds, models_per_chunk=2, cache=False, progress=False)
    return {"world": distributed.world_size(), "gradient_rows": rows,
            "eigenvalues": [layer.eigenvalues for layer in factors.layers],
            "A": [layer.A_vectors for layer in factors.layers], "S": [layer.S_vectors for layer in factors.layers],
            "scores": scores, "truth": truth.values, "masks": truth.masks}


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.init()
    result = job(uneven=len(sys.argv) > 2 and sys.argv[2] == "uneven")
    if distributed.is_main():
        out = Path(sys.argv[1])
        torch.save(result, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").replace(out)
    if distributed.active():  # leave the group together (a process exiting while others still talk can abort)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
