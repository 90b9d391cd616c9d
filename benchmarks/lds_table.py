"""LDS, agreement with a reference and seconds of every method on a preset, through the experiment runner.

    python benchmarks/lds_table.py --preset concrete --seeds 100          # paper MLP, exact GGN (R = 100)
    python benchmarks/lds_table.py --preset concrete_narrow --seeds 100   # 2 x 32 MLP, full Hessian
    python benchmarks/lds_table.py --preset mnist                          # EK-FAC, every baseline, ensembles

Ground truth: M = 100 subsets, alpha = 0.5, R seeds (cached in TDAKIT_CACHE); with R > 5 the table is
also judged against the first 5 seeds. Ensembles average 5 independently trained runs. kronfluence's
EK-FAC influence (true Fisher, its damping heuristic) is measured in the same run when it is installed
(make bench-extra). Writes benchmarks/results/lds_<preset>[_R<seeds>].json and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch

import tdakit
from tdakit.curvature import Kronecker
from tdakit.evaluation import GroundTruth, lds
from tdakit.experiment import Method, run_experiment, write_json_atomic
from tdakit.presets import preset


def dense_methods(curvature: str) -> dict[str, Method]:
    table = {"exact unrolling": Method("unrolled"),
             "influence": Method("influence", curvature=curvature),
             "SOURCE (L=1, C=6)": Method("source", segments=1, curvature=curvature),
             "SOURCE (L=3, C=6)": Method("source", segments=3, curvature=curvature),
             "Fast-SOURCE (L=3)": Method("fast_source", segments=3, curvature=curvature)}
    if curvature == "hessian_clipped":  # with the raw Hessian only the influence function is defined
        table["influence (raw Hessian, negative eigenvalues kept)"] = Method("influence", curvature="hessian")
    return table


def kronecker_methods() -> dict[str, Method]:
    return {
        "SOURCE (L=3, C=6)": Method("source", segments=3, curvature="ekfac"),
        "Fast-SOURCE (L=3)": Method("fast_source", segments=3, curvature="ekfac"),
        "influence": Method("influence", curvature="ekfac"),
        "influence (K-FAC)": Method("influence", curvature="kfac"),
        "influence (true Fisher, heuristic damping)": Method("influence", curvature=Kronecker(fisher="true"),
                                                             damping="heuristic"),
        "influence (kronfluence's settings: true Fisher, heuristic damping, no weight decay)": Method(
            "influence", curvature=Kronecker(fisher="true", include_weight_decay=False), damping="heuristic"),
        "TracIn (6 checkpoints)": Method("tracin"),
        "TRAK (single model)": Method("trak"),
        "gradient similarity (dot)": Method("grad_dot"),
        "gradient similarity (cosine)": Method("grad_cos"),
        "representation similarity": Method("representation"),
    }


ENSEMBLED = ("SOURCE (L=3, C=6)", "influence", "TRAK (single model)")


def kronfluence_row(run, query, truth) -> str | None:
    try:
        from kronfluence_compare import kronfluence_scores
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as workdir:
        torch.manual_seed(0)
        start = time.perf_counter()
        scores = kronfluence_scores(run, query, None, empirical=False, workdir=workdir)
        return f"kronfluence EK-FAC influence (true Fisher, heuristic damping): {lds(scores, truth)}, " \
               f"{time.perf_counter() - start:.1f} s"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", choices=["concrete", "concrete_narrow", "mnist", "noisy_mnist"], default="concrete")
    p.add_argument("--seeds", type=int, default=5, help="ground-truth seeds R (R = 5 is always reported too)")
    p.add_argument("--members", type=int, default=5, help="runs per ensemble (0: no ensembles)")
    p.add_argument("--no-kronfluence", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    logging.disable(logging.WARNING)
    setting = preset(args.preset)
    data = setting.data()
    run = setting.train(data, progress=False)
    query = data.query
    print(f"{args.preset} ({setting.description}): {run.model.num_params} parameters, {run.num_train} train, "
          f"{len(query)} queries, {run.num_steps} steps", flush=True)
    t0 = time.perf_counter()
    truth = tdakit.groundtruth(run, query, subsets=100, fraction=0.5, seeds=args.seeds, progress=False)
    print(f"ground truth ({args.seeds} seeds): {time.perf_counter() - t0:.0f} s\n", flush=True)
    dense = setting.curvature in ("ggn", "hessian_clipped")
    methods = dense_methods(setting.curvature) if dense else kronecker_methods()
    reference = "exact unrolling" if dense else None
    truths = {f"R = {args.seeds}": truth}
    if args.seeds > 5:
        truths["R = 5"] = GroundTruth(truth.masks, truth.values[:, :5])
    out = {"preset": args.preset, "parameters": run.model.num_params, "tables": {}}
    for name, t in truths.items():
        table = run_experiment(run, query, methods, t, reference=reference, baseline="influence",
                               title=f"{args.preset}, ground truth {name}", progress=False)
        print(table, "\n", flush=True)
        out["tables"][name] = table.as_dict()
    if args.members > 1 and not dense:
        members = [run] + tdakit.train_ensemble(run.model, run.train, run.recipe, run.task,
                                                members=args.members - 1, progress=False)
        table = run_experiment(members, query, {f"{k} ensemble ({args.members})": methods[k] for k in ENSEMBLED},
                               truth, baseline=f"influence ensemble ({args.members})",
                               title=f"{args.preset}, ensembles of {args.members} runs", progress=False)
        print(table, "\n", flush=True)
        out["tables"]["ensembles"] = table.as_dict()
    if not args.no_kronfluence and not dense:
        line = kronfluence_row(run, query, truth)
        print(line or "kronfluence is not installed (make bench-extra): its row is skipped")
        out["kronfluence"] = line
    suffix = f"_R{args.seeds}" if args.seeds != 5 else ""
    write_json_atomic(Path(args.out) / f"lds_{args.preset}{suffix}.json", out)


if __name__ == "__main__":
    main()
