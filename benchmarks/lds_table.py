"""LDS and seconds of every method on Concrete or MNIST with the paper's MLP and recipe (issue 3).

    python benchmarks/lds_table.py --setting concrete     # 3 x 128 MLP, 896 train / 103 queries
    python benchmarks/lds_table.py --setting mnist        # 784-512-256-128-10, 4000 train / 100 queries

Ground truth: M = 100 subsets, alpha = 0.5, R = 5 seeds (cached in TDAKIT_CACHE; with --seeds R more,
reported beside). Ensembles average 5 independently trained runs. kronfluence's EK-FAC influence (true
Fisher, its per-layer damping heuristic) is measured in the same run when it is installed
(make bench-extra). Writes benchmarks/results/lds_<setting>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from common import setup

import tdakit
from tdakit.curvature import Kronecker
from tdakit.evaluation import bootstrap, reliability
from tdakit.evaluation.ground_truth import GroundTruth

EKFAC = "ekfac"
METHODS = [
    # label, method, settings
    ("EK-FAC SOURCE (L=3, C=6)", "source", {"segments": 3, "curvature": EKFAC}),
    ("EK-FAC Fast-SOURCE (L=3)", "fast_source", {"segments": 3, "curvature": EKFAC}),
    ("EK-FAC influence (implied damping)", "influence", {"curvature": EKFAC}),
    ("K-FAC influence (implied damping)", "influence", {"curvature": "kfac"}),
    ("EK-FAC influence (true Fisher, heuristic damping)", "influence",
     {"curvature": Kronecker(fisher="true"), "damping": "heuristic"}),
    ("EK-FAC influence (kronfluence's settings: true Fisher, heuristic damping, no weight decay)", "influence",
     {"curvature": Kronecker(fisher="true", include_weight_decay=False), "damping": "heuristic"}),
    ("TracIn (6 checkpoints)", "tracin", {}),
    ("TRAK (single model)", "trak", {}),
    ("gradient similarity (dot)", "grad_dot", {}),
    ("gradient similarity (cosine)", "grad_cos", {}),
    ("representation similarity", "representation", {}),
]
ENSEMBLES = [
    ("EK-FAC SOURCE ensemble (5 runs)", "source", {"segments": 3, "curvature": EKFAC}),
    ("EK-FAC influence ensemble (5 runs)", "influence", {"curvature": EKFAC}),
    ("TRAK ensemble (5 runs)", "trak", {}),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--setting", choices=["concrete", "mnist"], default="concrete")
    p.add_argument("--seeds", type=int, default=5, help="ground-truth seeds (R = 5 is always reported)")
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--no-kronfluence", action="store_true")
    p.add_argument("--only", nargs="+", default=None,
                   help="recompute only the rows whose label contains one of these strings and merge them "
                        "into the existing JSON (ensembles and kronfluence are rows too)")
    args = p.parse_args()
    wanted = (lambda label: True) if args.only is None else (lambda label: any(o in label for o in args.only))
    warnings.simplefilter("ignore", FutureWarning)
    logging.disable(logging.WARNING)
    cache = tdakit.store.default_dir()
    data, model, task, recipe, run = setup(args.setting, cache=cache)
    query = data.query
    print(f"{args.setting}: {run.model.num_params} parameters, {run.num_train} train, {len(query)} queries, "
          f"{run.num_steps} steps", flush=True)
    t0 = time.perf_counter()
    truth = tdakit.groundtruth(run, query, subsets=100, fraction=0.5, seeds=args.seeds, cache=cache, progress=False)
    print(f"ground truth ({args.seeds} seeds): {time.perf_counter() - t0:.0f} s", flush=True)
    truth5 = GroundTruth(truth.masks, truth.values[:, :5])
    rel5, rel = reliability(truth5), reliability(truth) if args.seeds > 5 else None
    print(f"R = 5: {rel5}" + (f"\nR = {args.seeds}: {rel}" if rel else ""), flush=True)

    rows = []

    def record(label: str, scores: torch.Tensor, seconds: float) -> None:
        l5 = tdakit.lds(scores, truth5)
        lR = tdakit.lds(scores, truth) if rel else None
        rows.append({"method": label, "seconds": seconds, "lds_R5": str(l5), "lds_R5_value": l5.value,
                     "lds_R5_per_query": l5.per_query.tolist(),
                     **({f"lds_R{args.seeds}": str(lR), "lds_R_value": lR.value,
                         "lds_R_per_query": lR.per_query.tolist()} if lR else {})})
        print(f"| {label} | {l5} |" + (f" {lR} |" if lR else "") + f" {seconds:.1f} |", flush=True)

    for label, method, settings in METHODS:
        if not wanted(label):
            continue
        s = tdakit.attribute(run, query, method, **settings)
        record(label, s.values, s.seconds)

    if not args.no_kronfluence and wanted("kronfluence EK-FAC influence (true Fisher, heuristic damping)"):
        try:
            from kronfluence_compare import kronfluence_scores
            with tempfile.TemporaryDirectory() as workdir:
                torch.manual_seed(0)
                start = time.perf_counter()
                scores = kronfluence_scores(run, query, None, empirical=False, workdir=workdir)
                record("kronfluence EK-FAC influence (true Fisher, heuristic damping)", scores,
                       time.perf_counter() - start)
        except ImportError:
            print("kronfluence is not installed (make bench-extra): its row is skipped")

    start, train_seconds = time.perf_counter(), None
    members = []
    if any(wanted(label) for label, _, _ in ENSEMBLES):
        members = [run] + tdakit.train_ensemble(model, run.train, recipe, task, seeds=range(1, args.members),
                                                checkpoints=6, progress=False)
    if members:
        train_seconds = time.perf_counter() - start
        print(f"ensemble: {args.members - 1} more runs trained with vmap in {train_seconds:.0f} s", flush=True)
    for label, method, settings in ENSEMBLES:
        if not wanted(label):
            continue
        s = tdakit.ensemble(members, query, method, **settings)
        record(label, s.values, s.seconds)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lds_{args.setting}.json"
    if args.only is not None and path.exists():  # merge: keep the rows not recomputed, in the table's order
        old = json.loads(path.read_text())
        new = {r["method"]: r for r in rows}
        order = [label for label, _, _ in METHODS] + ["kronfluence EK-FAC influence (true Fisher, heuristic damping)"]
        order += [label for label, _, _ in ENSEMBLES]
        merged = {r["method"]: r for r in old["rows"]} | new
        rows = [merged[label] for label in order if label in merged]
        train_seconds = train_seconds if train_seconds is not None else old.get("ensemble_train_seconds")
    pairs = {}
    by_label = {r["method"]: r for r in rows}
    for a, b in [("EK-FAC SOURCE (L=3, C=6)", "EK-FAC influence (implied damping)"),
                 ("EK-FAC SOURCE (L=3, C=6)", "kronfluence EK-FAC influence (true Fisher, heuristic damping)"),
                 ("EK-FAC SOURCE (L=3, C=6)", "EK-FAC influence (true Fisher, heuristic damping)"),
                 ("EK-FAC SOURCE ensemble (5 runs)", "EK-FAC influence ensemble (5 runs)")]:
        for r in ("R5", "R"):
            key = f"lds_{r}_per_query"
            if a in by_label and b in by_label and key in by_label[a] and key in by_label[b]:
                d = bootstrap(torch.tensor(by_label[a][key]) - torch.tensor(by_label[b][key]))
                pairs[f"{a} - {b} ({r})"] = str(d)
                print(f"paired {r}: {a} - {b}: {d}")
    path.write_text(json.dumps({
        "setting": args.setting, "parameters": run.model.num_params, "train": run.num_train,
        "queries": len(query), "seeds": args.seeds, "reliability_R5": rel5.reliability, "ceiling_R5": rel5.ceiling,
        **({"reliability_R": rel.reliability, "ceiling_R": rel.ceiling} if rel else {}),
        "ensemble_train_seconds": train_seconds, "rows": rows, "paired": pairs}, indent=2))
    head = "| method | LDS (R=5) |" + (f" LDS (R={args.seeds}) |" if rel else "") + " seconds |"
    print("\n" + head)
    for r in rows:
        print(f"| {r['method']} | {r['lds_R5']} |" + (f" {r[f'lds_R{args.seeds}']} |" if rel else "")
              + f" {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
