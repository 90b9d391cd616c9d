"""Exact unrolling with a checkpointed trajectory: peak memory and seconds against the run's length T and the
checkpoint spacing k (issue 21).

    python benchmarks/unroll_checkpointed.py                      # mnist at T = 315 and 1260; cifar10_cpu
    python benchmarks/unroll_checkpointed.py --queries 10 --settings mnist

Each (setting, T, k) runs in its own process, so the peak resident memory it reports (ru_maxrss) is that
configuration's alone; the run is trained (or read from the cache) first, in the parent. k = 1 stores the whole
trajectory, (T + 1) x P values; k > 1 stores every k-th state with its momentum buffer and recomputes each stretch
on the way back. Prints one markdown row per configuration and writes benchmarks/results/unroll_checkpointed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

OUT = Path("benchmarks/results")


def run_of(setting: str, epochs: int | None):
    import dataclasses

    from tdakit.presets import preset

    p = preset(setting)
    if epochs is not None:
        p = dataclasses.replace(p, recipe=dataclasses.replace(p.recipe, epochs=epochs))
    data = p.data(progress=False) if setting.startswith("cifar") else p.data()
    return p.train(data, progress=False), data


def child(setting: str, epochs: int | None, every: int, queries: int) -> None:
    """One measurement, printed as JSON on stdout."""
    import tdakit
    from tdakit.attribution.trajectory import stored_values

    run, data = run_of(setting, epochs)
    query = data.query.subset(slice(0, queries))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    scores = tdakit.attribute(run, query, "unrolled", keep_every=every, progress=False).values
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    T, P = run.num_steps, run.model.num_params
    stored = stored_values(T, P, every)
    print(json.dumps({"setting": setting, "steps": T, "params": P, "every": every, "queries": queries,
                      "seconds": seconds, "peak_gib": peak / 2 ** 20, "before_gib": base / 2 ** 20,
                      "trajectory_gib": stored * run.final.element_size() / 2 ** 30,
                      "checksum": float(scores.double().abs().sum())}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", nargs="+", default=["mnist", "cifar10_cpu"])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--child", nargs=3, metavar=("SETTING", "EPOCHS", "EVERY"))
    args = parser.parse_args()
    if args.child:
        setting, epochs, every = args.child
        child(setting, None if epochs == "none" else int(epochs), int(every), args.queries)
        return
    plans = {"mnist": [5, None], "cifar10_cpu": [None]}  # epochs (None: the preset's)
    rows = []
    print("| setting | T | P | k | stored trajectory GiB | peak resident GiB | seconds | checksum |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for setting in args.settings:
        for epochs in plans[setting]:
            run, _ = run_of(setting, epochs)  # trained once here, read from the cache by the children
            T = run.num_steps
            for every in sorted({1, math.ceil(math.sqrt(2 * T)), max(2, T // 4)}):
                out = subprocess.run([sys.executable, __file__, "--child", setting, str(epochs or "none"), str(every),
                                      "--queries", str(args.queries)], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"| {setting} | {row['steps']} | {row['params']:,} | {every} | {row['trajectory_gib']:.2f} | "
                      f"{row['peak_gib']:.2f} | {row['seconds']:.1f} | {row['checksum']:.10g} |", flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "unroll_checkpointed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
