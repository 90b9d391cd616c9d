"""Where implicit differentiation falls short (issue 4): LDS of every method when training is not
converged, has noisy labels, or runs in stages; and subset-removal curves.

    python benchmarks/beyond_convergence.py noisy            # MNIST, 30% random labels, 3 epochs
    python benchmarks/beyond_convergence.py rotated          # MNIST 0 -> 45 -> 90 degrees, 3 stages (pipelines)
    python benchmarks/beyond_convergence.py epochs           # Concrete trained 1, 3, 10, 20 epochs
    python benchmarks/beyond_convergence.py removal --setting noisy_mnist|concrete   # removal curves

Settings are tdakit's presets (noisy_mnist, rotated_mnist, concrete); every table comes from the
experiment runner. Ground truth: M = 100 random halves, R = 5 seeds (cached in TDAKIT_CACHE). Ensembles
average 5 independently trained runs (pipelines). Writes benchmarks/results/beyond_<what>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import tdakit
from tdakit.evaluation import GroundTruth
from tdakit.experiment import Method, run_experiment
from tdakit.presets import preset

OUT = Path("benchmarks/results")
SINGLE = {
    "SOURCE (L=3, C=6)": Method("source", segments=3, curvature="ekfac"),
    "Fast-SOURCE (L=3)": Method("fast_source", segments=3, curvature="ekfac"),
    "EK-FAC influence": Method("influence", curvature="ekfac"),
    "TracIn": Method("tracin"),
    "TRAK": Method("trak"),
}
ENSEMBLED = ("SOURCE (L=3, C=6)", "EK-FAC influence", "TRAK")


def single_stage_tables(run, query, truth, title: str, members: int = 5) -> dict:
    """The single-run table and the ensemble table (``members`` runs) for one setting."""
    single = run_experiment(run, query, SINGLE, truth, baseline="EK-FAC influence", title=title, progress=False)
    print(single, "\n", flush=True)
    runs = [run] + tdakit.train_ensemble(run.model, run.train, run.recipe, run.task, members=members - 1,
                                         progress=False)
    ens = run_experiment(runs, query, {f"{k} ensemble ({members})": SINGLE[k] for k in ENSEMBLED}, truth,
                         baseline=f"EK-FAC influence ensemble ({members})", title=f"{title}, ensembles",
                         progress=False)
    print(ens, "\n", flush=True)
    return {"single": single.as_dict(), "ensembles": ens.as_dict()}


def noisy() -> dict:
    setting = preset("noisy_mnist")
    data = setting.data()
    run = setting.train(data, progress=False)
    acc = float((tdakit.grads.measurements(run.model, run.task, run.final, data.query) > 0).double().mean())
    print(f"noisy MNIST: {run.num_steps} steps, query accuracy {acc:.2f}")
    truth = tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5, seeds=5, progress=False)
    return {"setting": setting.description, "query_accuracy": acc,
            **single_stage_tables(run, data.query, truth, "noisy MNIST (30% random labels, 3 epochs)")}


STAGED = {
    "SOURCE (L=3 per stage, C=6)": Method("source", segments=3, curvature="ekfac"),
    "Fast-SOURCE (L=3 per stage)": Method("fast_source", segments=3, curvature="ekfac"),
    "EK-FAC influence (final parameters, pooled data)": Method("influence", curvature="ekfac"),
    "TracIn (each stage's checkpoints)": Method("tracin"),
    "exact unrolling (the recorded pipeline)": Method("unrolled"),
}

STAGED_ENSEMBLED = ("SOURCE (L=3 per stage, C=6)", "EK-FAC influence (final parameters, pooled data)")


def rotated(members: int = 5) -> dict:
    setting = preset("rotated_mnist")
    data = setting.data()
    staged = setting.train(data, progress=False)
    angles = (0.0, 90.0)
    query = setting.queries(data, angles)
    q = len(data.query)
    accuracy = {a: float((tdakit.grads.measurements(staged.model, staged.task, staged.final,
                                                    tdakit.datasets.rotated(data.query, a)) > 0).double().mean())
                for a in (0.0, 45.0, 90.0)}
    print(f"rotated MNIST: stages {staged.names}, steps {[r.num_steps for r in staged.runs]}; query accuracy by "
          f"angle: {accuracy}", flush=True)
    pipelines = [staged] + tdakit.train_stages_ensemble(setting.model(), setting.stages(data), setting.task,
                                                       members=members - 1, progress=False)
    out = {"setting": setting.description, "query_accuracy": accuracy, "cases": []}
    for s in (0, len(staged.runs) - 1):
        truth = tdakit.groundtruth_stages(staged, query, s, subsets=100, fraction=0.5, seeds=5, progress=False)
        for k, angle in enumerate(angles):
            rows = slice(k * q, (k + 1) * q)
            part = GroundTruth(truth.masks, truth.values[:, :, rows])
            sub = tdakit.datasets.Split(query.x[rows], query.y[rows])
            title = f"queries at {angle:.0f} degrees, stage {s} ({staged.names[s]}) images"
            single = run_experiment(staged, sub, STAGED, part, baseline="EK-FAC influence (final parameters, pooled "
                                    "data)", stage=s, title=title, progress=False)
            print(single, "\n", flush=True)
            ens = run_experiment(pipelines, sub, {f"{k} ensemble ({members})": STAGED[k] for k in STAGED_ENSEMBLED},
                                 part, stage=s, title=f"{title}, ensembles of pipelines", progress=False)
            print(ens, "\n", flush=True)
            out["cases"].append({"query_degrees": angle, "stage": s, "single": single.as_dict(),
                                 "ensembles": ens.as_dict()})
    return out


def epochs() -> dict:
    setting = preset("concrete")
    data = setting.data()
    out = {"setting": "Concrete, paper MLP and recipe, trained for E epochs", "cases": []}
    for e in (1, 3, 10, 20):
        variant = dataclasses.replace(setting, recipe=dataclasses.replace(setting.recipe, epochs=e))
        run = variant.train(data, progress=False)
        truth = tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5, seeds=5, progress=False)
        out["cases"].append({"epochs": e, "steps": run.num_steps,
                             **single_stage_tables(run, data.query, truth, f"Concrete, {e} epochs")})
    return out


REMOVAL = {"concrete": (40, [5, 15, 45]), "noisy_mnist": (40, [5, 20, 80, 200])}  # preset: (queries, ks)


def removal(setting: str, members: int = 5) -> dict:
    """Remove each query's top-k points by every method (single runs and ensembles), retrain 2 seeds;
    against random points and exact unrolling of the recorded run (the 'oracle')."""
    n_query, ks = REMOVAL[setting]
    chosen = preset(setting)
    data = chosen.data()
    task = chosen.task
    query = data.query.subset(slice(0, n_query)) if data.kind != "classification" else \
        tdakit.datasets.balanced_subset(data.query, n_query)
    run = chosen.train(data, progress=False)
    runs = [run] + tdakit.train_ensemble(run.model, run.train, run.recipe, task, members=members - 1,
                                         progress=False)
    print(f"\n{setting}: remove each query's top-k by each method, k = {ks}, 2 seeds, {len(query)} queries",
          flush=True)
    methods = [(label, lambda c=c: tdakit.attribute(run, query, c.method, progress=False, **c.settings))
               for label, c in SINGLE.items()]
    methods += [(f"{label} ensemble ({members})",
                 lambda c=c: tdakit.ensemble(runs, query, c.method, progress=False, **c.settings))
                for label, c in SINGLE.items() if label in ENSEMBLED]
    methods.append(("oracle: exact unrolling of the recorded run",
                    lambda: tdakit.attribute(run, query, "unrolled", progress=False)))
    curves, seconds = {}, {}
    for label, score in methods:
        s = score()
        seconds[label] = s.seconds
        curves[label] = tdakit.subset_removal(run, query, s, ks, seeds=2, progress=False)
    curves["random points"] = tdakit.evaluation.random_removal(run, query, ks, seeds=2, progress=False)
    table = {}
    for label, rem in curves.items():
        if task.higher_is_better:
            figure = rem.flipped().tolist()
            unit = f"fraction of the {int((rem.before > 0).sum())} correct queries that flip"
            cells = " | ".join(f"{f:.2f}" for f in figure)
        else:
            figure = (rem.change.mean(1) * data.scaler.std).tolist()
            unit = "mean error increase, MPa"
            cells = " | ".join(f"{f:+.2f}" for f in figure)
        print(f"| {label} | {cells} | {seconds.get(label, 0.0):.1f} |  ({unit})", flush=True)
        table[label] = {"ks": ks, "figure": figure, "unit": unit, "mean_change": rem.change.mean(1).tolist(),
                        "seconds": seconds.get(label)}
    return {"setting": setting, "queries": len(query), "ks": ks, "curves": table}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["noisy", "rotated", "epochs", "removal"])
    p.add_argument("--setting", choices=list(REMOVAL), default="noisy_mnist", help="for removal")
    args = p.parse_args()
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.what == "removal":
        result, name = removal(args.setting), f"beyond_removal_{args.setting}"
    else:
        result, name = {"noisy": noisy, "rotated": rotated, "epochs": epochs}[args.what](), f"beyond_{args.what}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
