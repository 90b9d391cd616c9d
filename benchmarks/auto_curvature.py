"""Where curvature="auto" switches from the exact Gauss-Newton to EK-FAC (curvature.budget.AUTO_ROWS).

    python benchmarks/auto_curvature.py [--rows 1000 2000 4000 6000 8000] [--repeats 3]

Part 1: seconds of the float64 eigendecomposition of a rows x rows Gram matrix (the exact GGN's cost that grows
as rows^3), median over repeats, and the bytes the exact GGN would hold. Part 2: influence on an MNIST MLP
classifier (10 outputs) with growing training sets, exact GGN against EK-FAC, seconds and what "auto" picks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tdakit  # noqa: E402
from tdakit.curvature import budget  # noqa: E402


def eigh_seconds(rows: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, 64, generator=g, dtype=torch.float64)
    gram = a @ a.T + 1e-3 * torch.eye(rows, dtype=torch.float64)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.linalg.eigh(gram)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def influence_seconds(n_train: int, curvature: str) -> tuple[float, str]:
    setting = tdakit.preset("mnist")
    data = setting.data()
    train = tdakit.datasets.balanced_subset(data.train, n_train)
    run = tdakit.train(tdakit.mlp(784, [64], 10), train, tdakit.Recipe(lr=0.05, epochs=2, batch_size=64),
                       tdakit.Classification(), progress=False, cache=False)
    query = data.query.subset(slice(0, 10))
    start = time.perf_counter()
    scores = tdakit.attribute(run, query, "influence", curvature=curvature, progress=False)
    return time.perf_counter() - start, scores.settings.get("curvature", curvature)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 2000, 4000, 6000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", type=int, nargs="+", default=[200, 400, 600, 800])
    args = parser.parse_args()
    print(f"threads: {torch.get_num_threads()}; AUTO_ROWS = {budget.AUTO_ROWS}")
    print("| Gram rows | float64 eigh, seconds (median) | exact GGN holds for P = 50,000 (GiB) |")
    print("|---|---|---|")
    for rows in args.rows:
        cost = budget.GgnCost.of(rows, 1, 1, 50_000, torch.float32)
        print(f"| {rows:,} | {eigh_seconds(rows, args.repeats if rows <= 4000 else 1):.2f} | "
              f"{cost.bytes / 2 ** 30:.2f} |", flush=True)
    print()
    print("| MNIST MLP 784-64-10, training points | rows (x 10 outputs) | ggn seconds | ekfac seconds | auto picks |")
    print("|---|---|---|---|---|")
    for n in args.train:
        ggn, _ = influence_seconds(n, "ggn")
        ekfac, _ = influence_seconds(n, "ekfac")
        _, picked = influence_seconds(n, "auto")
        print(f"| {n} | {n * 10:,} | {ggn:.1f} | {ekfac:.1f} | {picked} |", flush=True)


if __name__ == "__main__":
    main()
