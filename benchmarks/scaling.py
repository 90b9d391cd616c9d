"""Seconds and peak memory of each method as the training set grows: MNIST (1k, 2k, 4k points, the paper's
MLP, 100 queries) or a CIFAR-10 slice (256, 512, 1024 images, the cifar10_cpu ResNet-9 of width 8, 20 queries;
needs the CIFAR-10 folder, see docs/data.md).

    python benchmarks/scaling.py                    # every method at 1000, 2000, 4000 points
    python benchmarks/scaling.py --sizes 1000 4000 --methods source influence_ekfac
    python benchmarks/scaling.py --setting cifar10  # 256, 512, 1024 images

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
from tdakit.presets import preset

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


SETTINGS = {"mnist": ("mnist", [1000, 2000, 4000], 100), "cifar10": ("cifar10_cpu", [256, 512, 1024], 20)}


def trained(setting: str, size: int, largest: int):
    """(queries, run) of the setting trained on its first ``size`` points (cached by TDAKIT_CACHE)."""
    name, _, queries = SETTINGS[setting]
    if setting == "cifar10":
        data = tdakit.datasets.cifar10_folder(tdakit.datasets.data_root(), n_train=largest, n_query=queries,
                                              progress=False)
        run = preset(name).train(data, n_train=size, progress=False, dtype=torch.float32)  # as measured
        return data.query, run
    data, run = setup(name, n_train=size)
    return data.query.subset(slice(0, queries)), run


def one(setting: str, method: str, size: int, largest: int) -> dict:
    torch.manual_seed(0)
    query, run = trained(setting, size, largest)
    before = peak_mib()
    name, settings = METHODS[method]
    start = time.perf_counter()
    tdakit.attribute(run, query, name, progress=False, **settings)
    return {"setting": setting, "method": method, "train": size, "queries": len(query),
            "seconds": time.perf_counter() - start, "peak_mib": peak_mib(), "mib_before": before}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--setting", choices=list(SETTINGS), default="mnist")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="default: the setting's three sizes")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--one", nargs=3, metavar=("METHOD", "SIZE", "LARGEST"), help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.setting, args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    sizes = args.sizes or SETTINGS[args.setting][1]
    for size in sizes:  # train (and cache) each run once, outside the timed processes
        trained(args.setting, size, max(sizes))
    rows = []
    print(f"{args.setting}: | method | train points | seconds | peak MiB (before the method) |")
    for method in args.methods:
        for size in sizes:
            out = subprocess.run([sys.executable, __file__, "--setting", args.setting, "--one", method, str(size),
                                  str(max(sizes))], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            rows.append(row)
            print(f"| {method} | {size} | {row['seconds']:.1f} | {row['peak_mib']:.0f} ({row['mib_before']:.0f}) |",
                  flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"scaling_{args.setting}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
