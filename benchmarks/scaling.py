"""Seconds and peak memory of each method as the MNIST training set grows (1k, 2k, 4k points).

    python benchmarks/scaling.py                    # every method at 1000, 2000, 4000 points
    python benchmarks/scaling.py --sizes 1000 4000 --methods source influence

Each (method, size) runs in a fresh process, so its peak resident memory (ru_maxrss) is its own; the
memory of the process after loading the trained run (before the method) is printed beside it. Runs
are cached (TDAKIT_CACHE) so training is not timed. Writes benchmarks/results/scaling_mnist.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import setup

import tdakit

METHODS = {
    "source": ("source", {"segments": 3, "curvature": "ekfac"}),
    "fast_source": ("fast_source", {"segments": 3, "curvature": "ekfac"}),
    "influence_ekfac": ("influence", {"curvature": "ekfac"}),
    "influence_kfac": ("influence", {"curvature": "kfac"}),
    "tracin": ("tracin", {}),
    "trak": ("trak", {}),
    "grad_dot": ("grad_dot", {}),
    "grad_cos": ("grad_cos", {}),
    "representation": ("representation", {}),
}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(method: str, size: int) -> dict:
    torch.manual_seed(0)
    data, run = setup("mnist", n_train=size)
    before = peak_mib()
    name, settings = METHODS[method]
    start = time.perf_counter()
    tdakit.attribute(run, data.query, name, progress=False, **settings)
    return {"method": method, "train": size, "seconds": time.perf_counter() - start,
            "peak_mib": peak_mib(), "mib_before": before}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--one", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    for size in args.sizes:  # train (and cache) each run once, outside the timed processes
        setup("mnist", n_train=size)
    rows = []
    print("| method | train points | seconds | peak MiB (before the method) |")
    for method in args.methods:
        for size in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--one", method, str(size)], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            rows.append(row)
            print(f"| {method} | {size} | {row['seconds']:.1f} | {row['peak_mib']:.0f} ({row['mib_before']:.0f}) |",
                  flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "scaling_mnist.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
