"""Speed and memory figures for BENCHMARKS.md (medians over repeats, ratios from one run).

    python benchmarks/speed.py              # unrolling seconds, vmap vs loop models/s
    python benchmarks/speed.py --parts unroll retrain   # only those
    python benchmarks/speed.py --demo       # also: wall time and peak memory of `tdakit demo`
    python benchmarks/speed.py --demo-only  # only that
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import tdakit
from tdakit.evaluation import random_subsets, retrain
from tdakit.presets import preset
from tdakit.recipe import seed_of
from tdakit.stacking import retraining_chunk


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def retraining_rates(run, masks, repeats: int, loop_models: int = 8) -> tuple[float, float]:
    """Models per second retraining on half subsets: one by one with train(), and 256 together."""
    data, recipe = run.train, run.recipe

    def loop():
        for m in range(loop_models):
            subset = data.subset(masks[m].nonzero()[:, 0])
            tdakit.train(run.model, subset, tdakit.Recipe(**{**recipe.__dict__, "seed": m}), run.task,
                         checkpoints=0, progress=False, cache=False)

    def together():
        retrain(run, masks, init_seeds=range(len(masks)), order_seeds=[seed_of(m) for m in range(len(masks))],
                progress=False)

    return loop_models / median_seconds(loop, repeats), len(masks) / median_seconds(together, repeats)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--demo", action="store_true", help="also time the demo and measure its peak memory")
    p.add_argument("--demo-only", action="store_true", help="only the demo figures")
    p.add_argument("--parts", nargs="+", choices=["unroll", "methods", "retrain"], default=["unroll", "methods",
                                                                                             "retrain"])
    args = p.parse_args()
    if args.demo_only:
        return demo_figures()
    data = tdakit.datasets.load("concrete")
    runs = {name: preset(name).train(data, progress=False) for name in ("concrete", "concrete_narrow")}
    run, recipe = runs["concrete"], runs["concrete"].recipe
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if "unroll" in args.parts:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t = median_seconds(lambda: tdakit.attribute(run, data.query, "unrolled", progress=False), args.repeats)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        p, q, steps = run.model.num_params, len(data.query), run.num_steps
        print(f"exact unrolling, paper MLP ({p} params, {steps} steps), {q} queries x {len(data.train)} points: "
              f"{t:.1f} s (median of {args.repeats}); peak resident memory {before:.0f} -> {peak:.0f} MiB "
              f"(trajectory {(steps + 1) * p * 4 / 2**20:.0f} MiB, one [Q, P] adjoint {q * p * 4 / 2**20:.1f} MiB)")
    if "methods" in args.parts:
        for method, kw in (("influence", {}), ("source", {"segments": 3}), ("source", {"segments": 1}),
                           ("fast_source", {"segments": 3})):
            t = median_seconds(lambda m=method, k=kw: tdakit.attribute(run, data.query, m, progress=False, **k),
                               args.repeats)
            print(f"{method} {kw}: {t:.1f} s (median of {args.repeats})")
    if "retrain" not in args.parts:
        return
    masks = random_subsets(len(data.train), 256, 0.5, seed=0)
    for name, model_run in (("paper MLP 3 x 128", runs["concrete"]), ("narrow MLP 2 x 32", runs["concrete_narrow"])):
        loop_rate, vmap_rate = retraining_rates(model_run, masks, args.repeats)
        chunk = retraining_chunk(model_run.model, model_run.task, model_run.train, recipe.batch_size,
                                 model_run.final.dtype)
        print(f"{name}, retraining on half subsets ({recipe.epochs} epochs): plain loop {loop_rate:.2f} models/s, "
              f"vmap (256 models, at most {chunk} a chunk, made even) {vmap_rate:.2f} models/s, "
              f"speed-up {vmap_rate / loop_rate:.1f}x")

    if args.demo or args.demo_only:
        demo_figures()


def demo_figures() -> None:
    """Wall time (cold and warm cache) and peak resident memory of `tdakit demo`, via GNU time: the
    child's own high-water mark (getrusage of children would count this parent's pages at fork)."""
    if not shutil.which("time") and not os.path.exists("/usr/bin/time"):
        print("tdakit demo: GNU time not found (apt-get install time); skipping the memory figure")
        return
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "TDAKIT_CACHE": cache, "MPLBACKEND": "Agg"}
        command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "tdakit.cli", "demo", "--quiet", "--out", out]
        seconds, peaks = [], []
        for _ in range(2):  # cold cache, then warm
            start = time.perf_counter()
            done = subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            seconds.append(time.perf_counter() - start)
            peaks.append(int(done.stderr.strip().splitlines()[-1]) / 2**20)
    print(f"tdakit demo: {seconds[0]:.0f} s cold cache, {seconds[1]:.0f} s with the cache; "
          f"peak memory {max(peaks):.2f} GiB")

if __name__ == "__main__":
    main()
