"""Refined inverse products against EK-FAC: LDS by iteration, seconds and the residual (issue 21).

    python benchmarks/refine_lds.py concrete                      # the ground truths of influence_defaults.py
    python benchmarks/refine_lds.py mnist --methods influence source --members 5
    python benchmarks/refine_lds.py rotated_mnist --methods source influence
    python benchmarks/refine_lds.py cnn --batch 1400 --queries 20  # full-batch Gauss-Newton products

The same run and ground truth as ``influence_defaults.py`` (read from the cache when that ran first); for
``rotated_mnist`` the pipeline of ``beyond_convergence.py rotated`` judged on its last stage's images, upright and
90-degree queries together. For each method (influence at each damping; SOURCE with L = 3 at its own damping
1/(eta_l K_l)) one refined solve records its iterates (``Refine.record``), so every row gives the LDS after 0
(EK-FAC itself), 25, 50, 100, ... iterations from the same minibatches, with the paired difference refined -
EK-FAC at the last, seconds of EK-FAC and of the refined method, and the relative residual |r_t| / |v| (for SOURCE:
its last segment's). ``--members E`` adds ensembles of E runs (this run and E - 1 seeds; the refinement of each
member, averaged). Writes benchmarks/results/refine_<setting>[_<tag>].json.
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
from tdakit.evaluation import GroundTruth, paired_difference
from tdakit.presets import preset

OUT = Path("benchmarks/results")
SEGMENTS = 3


def rotated_setting():
    """(pipeline, queries at 0 and 90 degrees, ground truth of its last stage's images, description)."""
    setting = preset("rotated_mnist")
    data = setting.data()
    staged = setting.train(data, progress=False)
    query = setting.queries(data, (0.0, 90.0))
    last = len(staged.runs) - 1
    truth = tdakit.groundtruth_stages(staged, query, last, subsets=100, fraction=0.5, seeds=5, progress=False)
    return staged, query, truth, setting.description + "; last stage's images, queries at 0 and 90 degrees"


def members_of(run, name: str, count: int) -> list:
    """The run and count - 1 more trained with other seeds (a pipeline's by ``train_stages_ensemble``)."""
    if count <= 1:
        return [run]
    if name == "rotated_mnist":
        setting = preset(name)
        return [run] + tdakit.train_stages_ensemble(setting.model(), setting.stages(setting.data()), setting.task,
                                                    members=count - 1, progress=False)
    return [run] + tdakit.train_ensemble(run.model, run.train, run.recipe, run.task, members=count - 1,
                                         progress=False)


def scored(run, query, method: str, settings: dict, refine: Refine):
    """(Scores of the last stage, seconds) for one member."""
    start = time.perf_counter()
    got = tdakit.attribute(run, query, method, curvature="ekfac", refine=refine, progress=False, **settings)
    seconds = time.perf_counter() - start
    return (got[-1] if isinstance(got, list) else got), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=["concrete", "mnist", "cnn", "cifar10_cpu", "noisy_mnist",
                                            "rotated_mnist"])
    parser.add_argument("--methods", nargs="+", default=["influence"], choices=["influence", "source"])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--step", type=float, default=1.0)
    parser.add_argument("--dampings", nargs="+", default=["implied", "heuristic"], help="influence's")
    parser.add_argument("--queries", type=int, default=None, help="the first Q queries only (default: all)")
    parser.add_argument("--members", type=int, default=1, help="also ensembles of this many runs")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.setting == "rotated_mnist":
        run, query, truth, description = rotated_setting()
        subsets, seeds = 100, 5
    else:
        run, query, subsets, seeds, description = setting_run(args.setting)
        truth = tdakit.groundtruth(run, query, subsets=subsets, fraction=0.5, seeds=seeds, progress=False)
    if args.queries is not None:  # the same ground truth, its first Q queries
        truth = GroundTruth(truth.masks, truth.values[:, :, :args.queries])
        query = query.subset(slice(0, args.queries))
    record = tuple(sorted({0, *range(25, args.iterations, 25), args.iterations}))
    refine = Refine(iterations=args.iterations, batch=args.batch, step=args.step, record=record)
    members = members_of(run, args.setting, args.members)
    print(f"{args.setting}: {description}; {len(query)} queries; M = {subsets}, R = {seeds}; {args.iterations} "
          f"iterations of batch {args.batch}, step {args.step:g}; members {len(members)}")
    configurations = [("influence", {"damping": d}, f"influence, damping {d}") for d in args.dampings
                      if "influence" in args.methods]
    if "source" in args.methods:
        configurations.append(("source", {"segments": SEGMENTS}, f"SOURCE (L = {SEGMENTS})"))
    rows = []
    print("| method | members | LDS at iteration " + " / ".join(map(str, record)) + " | refined - EK-FAC | "
          "seconds EK-FAC / refined | residual at " + " / ".join(map(str, record[:-1])) + f" / {record[-1] - 1} |"
          "\n|---|---|---|---|---|---|", flush=True)
    for method, settings, label in configurations:
        by_member, plain_seconds, seconds, residuals = [], 0.0, 0.0, None
        for m, member in enumerate(members):
            _, t0 = scored(member, query, method, settings, Refine(iterations=0))
            got, t1 = scored(member, query, method, settings, refine)
            plain_seconds, seconds = plain_seconds + t0, seconds + t1
            by_member.append(got.diagnostics["by_iteration"])
            history = got.diagnostics["residuals"]
            history = history[0] if isinstance(history[0], list) else history  # SOURCE: the last segment's
            if m == 0:
                residuals = history
            for size in sorted({1, len(members)}):
                if m + 1 != size:
                    continue
                mean = {t: sum(b[t] for b in by_member) / size for t in record}
                judged = {t: tdakit.lds(mean[t], truth) for t in record}
                diff = paired_difference(judged[record[-1]], judged[0])
                lds_text = " / ".join(f"{judged[t].value:.3f}" for t in record)
                res_text = " / ".join(f"{residuals[min(t, len(residuals) - 1)]:.2f}" for t in record)
                print(f"| {label} | {size} | {lds_text} | {diff} | {plain_seconds:.1f} / {seconds:.1f} | "
                      f"{res_text} |", flush=True)
                rows.append({"method": method, "settings": settings, "label": label, "members": size,
                             "lds": {t: judged[t].value for t in record},
                             "interval_ekfac": str(judged[0]), "interval_refined": str(judged[record[-1]]),
                             "difference": str(diff), "seconds_ekfac": plain_seconds, "seconds_refined": seconds,
                             "residuals": residuals})
    OUT.mkdir(exist_ok=True)
    name = f"refine_{args.setting}" + (f"_{args.tag}" if args.tag else "")
    (OUT / f"{name}.json").write_text(json.dumps(
        {"setting": args.setting, "description": description, "queries": len(query), "subsets": subsets,
         "seeds": seeds, "refine": dataclasses.asdict(refine), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
