"""Refined inverse products against EK-FAC: LDS, seconds and the residual by iteration (issue 21).

    python benchmarks/refine_lds.py concrete            # the ground truths of benchmarks/influence_defaults.py
    python benchmarks/refine_lds.py mnist --iterations 200 --steps 1 0.3

The same run and ground truth as ``influence_defaults.py`` (read from the cache when that ran first). For each
damping (the recipe's implied one, the heuristic) and each step: influence with EK-FAC refined for 0 (EK-FAC
itself) and ``iterations`` iterations; prints the LDS, the paired difference refined - EK-FAC, seconds, and the
relative residual |r_t| / |v| at a few iterations; writes benchmarks/results/refine_<setting>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from influence_defaults import setting_run

import tdakit
from tdakit.attribution import Refine
from tdakit.evaluation import paired_difference

OUT = Path("benchmarks/results")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=["concrete", "mnist", "cnn", "cifar10_cpu", "noisy_mnist"])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=float, nargs="+", default=[1.0, 0.3])
    parser.add_argument("--dampings", nargs="+", default=["implied", "heuristic"])
    parser.add_argument("--queries", type=int, default=None, help="the first Q queries only (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    run, query, subsets, seeds, description = setting_run(args.setting)
    truth = tdakit.groundtruth(run, query, subsets=subsets, fraction=0.5, seeds=seeds, progress=False)
    if args.queries is not None:  # the same ground truth, its first Q queries
        truth = dataclasses.replace(truth, values=truth.values[:, :, :args.queries])
        query = query.subset(slice(0, args.queries))
    print(f"{args.setting}: {description}; M = {subsets}, R = {seeds}; {args.iterations} iterations, batch "
          f"{args.batch}")
    print("| damping | step | LDS EK-FAC | LDS refined | refined - EK-FAC | seconds EK-FAC | seconds refined | "
          "residual at 0 / 50 / 100 / last |\n|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for damping in args.dampings:
        start = time.perf_counter()
        plain = tdakit.attribute(run, query, "influence", curvature="ekfac", damping=damping, progress=False)
        plain_seconds = time.perf_counter() - start
        base = tdakit.lds(plain, truth)
        for step in args.steps:
            start = time.perf_counter()
            refined = tdakit.attribute(run, query, "influence", curvature="ekfac", damping=damping, progress=False,
                                       refine=Refine(iterations=args.iterations, batch=args.batch, step=step))
            seconds = time.perf_counter() - start
            got = tdakit.lds(refined, truth)
            history = refined.diagnostics["residuals"]
            marks = " / ".join(f"{history[i]:.3f}" for i in (0, 50, 100, len(history) - 1) if i < len(history))
            print(f"| {damping} | {step:g} | {base} | {got} | {paired_difference(got, base)} | {plain_seconds:.1f} | "
                  f"{seconds:.1f} | {marks} |", flush=True)
            rows.append({"damping": damping, "step": step, "ekfac": base.value, "refined": got.value,
                         "difference": str(paired_difference(got, base)), "seconds_ekfac": plain_seconds,
                         "seconds_refined": seconds, "residuals": history})
    OUT.mkdir(exist_ok=True)
    (OUT / f"refine_{args.setting}.json").write_text(json.dumps(
        {"setting": args.setting, "iterations": args.iterations, "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
