"""Speed and memory figures for BENCHMARKS.md (medians over repeats, ratios from one run).

    python benchmarks/speed.py              # unrolling seconds, vmap vs loop models/s
    python benchmarks/speed.py --demo       # also: wall time and peak memory of `tdakit demo`
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import tdakit
from tdakit.evaluation import random_subsets, retrain
from tdakit.training import models_per_chunk, seed_of


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo", action="store_true")
    args = p.parse_args()
    data = tdakit.datasets.load("concrete")
    recipe = tdakit.Recipe(lr=3e-2, epochs=20, batch_size=32, momentum=0.9, weight_decay=1e-5)
    run = tdakit.train(tdakit.mlp(8), data.train, recipe, tdakit.Regression(), progress=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    t = median_seconds(lambda: tdakit.attribute(run, data.query, "unrolled", progress=False), args.repeats)
    print(f"exact unrolling, paper MLP ({run.model.num_params} params, {run.num_steps} steps), "
          f"{len(data.query)} queries x {len(data.train)} points: {t:.1f} s (median of {args.repeats})")
    for method, kw in (("influence", {}), ("source", {"segments": 3}), ("source", {"segments": 1}),
                       ("fast_source", {"segments": 3})):
        t = median_seconds(lambda m=method, k=kw: tdakit.attribute(run, data.query, m, **k), args.repeats)
        print(f"{method} {kw}: {t:.1f} s (median of {args.repeats})")

    masks = random_subsets(len(data.train), 256, 0.5, seed=0)
    loop_models = 8

    def loop():
        for m in range(loop_models):
            subset = data.train.subset(masks[m].nonzero()[:, 0])
            tdakit.train(run.model, subset, tdakit.Recipe(**{**recipe.__dict__, "seed": m}), run.task,
                         checkpoints=0, progress=False)

    def together():
        retrain(run, masks, init_seeds=range(256), order_seeds=[seed_of(m) for m in range(256)], progress=False)

    chunk = models_per_chunk(run.model.num_params, run.final.dtype)
    loop_rate = loop_models / median_seconds(loop, args.repeats)
    vmap_rate = 256 / median_seconds(together, args.repeats)
    print(f"retraining on half subsets ({recipe.epochs} epochs): plain loop {loop_rate:.2f} models/s, "
          f"vmap (256 models, in chunks of {chunk}) {vmap_rate:.2f} models/s, speed-up {vmap_rate / loop_rate:.1f}x")

    if args.demo:
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
            env = {**os.environ, "TDAKIT_CACHE": cache, "MPLBACKEND": "Agg"}
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tdakit.cli", "demo", "--quiet", "--out", out], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            cold = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tdakit.cli", "demo", "--quiet", "--out", out], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            warm = time.perf_counter() - start
        print(f"tdakit demo: {cold:.0f} s cold cache, {warm:.0f} s with the cache; peak memory {peak:.2f} GiB")


if __name__ == "__main__":
    main()
