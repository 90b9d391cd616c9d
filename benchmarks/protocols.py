"""Every method under both ground-truth protocols, halves and 1% removed (issue 21).

    python benchmarks/protocols.py concrete      # the concrete preset (float64), 103 queries
    python benchmarks/protocols.py mnist         # the mnist preset, 100 queries

Four ground truths judge the same scores: half of the training points removed or 1%, each retrained with fresh
seeds (``protocol="fresh"``: new initialisations and batch orders, R seeds averaged) or along the run's own
trajectory (``protocol="same"``: its initialisation and batch order with the removed points weighted 0). Prints
one markdown table (LDS with 95% intervals over queries, the ground truths' reliability) and writes
benchmarks/results/protocols_<setting>.json. Ground truths and scores are cached (~/.cache/tdakit).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tdakit
from tdakit.evaluation import reliability
from tdakit.experiment import Method, compute_scores
from tdakit.presets import preset

OUT = Path("benchmarks/results")
METHODS = {"exact unrolling": Method("unrolled"), "influence": Method("influence"), "SOURCE": Method("source"),
           "Fast-SOURCE": Method("fast_source"), "TracIn": Method("tracin"), "TRAK": Method("trak"),
           "grad dot": Method("grad_dot"), "grad cos": Method("grad_cos"), "representation": Method("representation")}
SIZES = {"concrete": (100, 20), "mnist": (50, 5)}  # subsets M, fresh seeds R


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=sorted(SIZES))
    parser.add_argument("--subsets", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="fresh seeds per subset")
    parser.add_argument("--seeds-small", type=int, default=None,
                        help="fresh seeds per subset when 1%% is removed (default: --seeds)")
    args = parser.parse_args()
    torch.manual_seed(0)
    subsets, seeds = args.subsets or SIZES[args.setting][0], args.seeds or SIZES[args.setting][1]
    setting = preset(args.setting)
    data = setting.data()
    run = setting.train(data, progress=False)
    query = data.query
    start = time.perf_counter()
    scores, _ = compute_scores(run, query, METHODS, progress=False)
    seconds = {name: s.seconds for name, s in scores.items()}
    print(f"{args.setting}: {setting.description}; {run.num_train} training points, {len(query)} queries; scores "
          f"in {time.perf_counter() - start:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})",
          flush=True)
    columns = {"halves, fresh seeds": ("fresh", 0.5), "halves, same trajectory": ("same", 0.5),
               "1% removed, fresh seeds": ("fresh", 0.99), "1% removed, same trajectory": ("same", 0.99)}
    judged, notes = {}, {}
    for column, (protocol, kept) in columns.items():
        start = time.perf_counter()
        fresh_seeds = (args.seeds_small or seeds) if kept > 0.5 else seeds
        truth = tdakit.groundtruth(run, query, subsets=subsets, fraction=kept, protocol=protocol,
                                   seeds=fresh_seeds if protocol == "fresh" else None, progress=False)
        notes[column] = f"{reliability(truth)} ({time.perf_counter() - start:.0f} s)"
        judged[column] = {name: tdakit.lds(s, truth) for name, s in scores.items()}
        print(f"{column}: {notes[column]}", flush=True)
    print("\n| LDS | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for name in METHODS:
        print(f"| {name} | " + " | ".join(str(judged[c][name]) for c in columns) + " |")
    OUT.mkdir(exist_ok=True)
    (OUT / f"protocols_{args.setting}.json").write_text(json.dumps(
        {"setting": args.setting, "subsets": subsets, "seeds": seeds, "seeds_small": args.seeds_small or seeds,
         "queries": len(query), "ground_truths": notes,
         "seconds": seconds, "lds": {c: {m: {"value": i.value, "interval": str(i)} for m, i in row.items()}
                                     for c, row in judged.items()}}, indent=1))


if __name__ == "__main__":
    main()
