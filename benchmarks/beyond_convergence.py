"""Where implicit differentiation falls short (issue 4): LDS of every method when training is not
converged, has noisy labels, or runs in stages; and subset-removal curves.

    python benchmarks/beyond_convergence.py noisy            # MNIST, 30% random labels, 3 epochs
    python benchmarks/beyond_convergence.py rotated          # MNIST 0 -> 45 -> 90 degrees, 3 stages
    python benchmarks/beyond_convergence.py epochs           # Concrete trained 1, 3, 10, 20 epochs
    python benchmarks/beyond_convergence.py removal          # removal curves, Concrete and noisy MNIST

Ground truth: M = 100 random halves, R = 5 seeds (cached in TDAKIT_CACHE). Ensembles average 5
independently trained runs (pipelines). Writes benchmarks/results/beyond_<what>.json and prints tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from common import SETTINGS

import tdakit
from tdakit.evaluation import bootstrap, reliability
from tdakit.stages import Stage, groundtruth_stages, staged_scores, train_stages

OUT = Path("benchmarks/results")
SINGLE = [  # label, method, settings (single-stage runs)
    ("SOURCE (L=3, C=6)", "source", {"segments": 3, "curvature": "ekfac"}),
    ("Fast-SOURCE (L=3)", "fast_source", {"segments": 3, "curvature": "ekfac"}),
    ("EK-FAC influence", "influence", {"curvature": "ekfac"}),
    ("TracIn", "tracin", {}),
    ("TRAK", "trak", {}),
]
ENSEMBLED = ["SOURCE (L=3, C=6)", "EK-FAC influence", "TRAK"]
NOISY_RECIPE = tdakit.Recipe(lr=1e-2, epochs=3, batch_size=64, momentum=0.9, weight_decay=3e-5)


def row(label: str, scores, truth, seconds: float) -> dict:
    result = tdakit.lds(scores, truth)
    print(f"| {label} | {result} | {seconds:.1f} |", flush=True)
    return {"method": label, "lds": str(result), "lds_value": result.value, "per_query": result.per_query.tolist(),
            "seconds": seconds}


def paired(rows: list[dict], a: str, b: str) -> str:
    by = {r["method"]: r for r in rows}
    d = bootstrap(torch.tensor(by[a]["per_query"]) - torch.tensor(by[b]["per_query"]))
    print(f"paired: {a} - {b}: {d}")
    return str(d)


def single_stage_table(run, query, truth, model, recipe, task, members: int = 5) -> list[dict]:
    rows = []
    for label, method, settings in SINGLE:
        s = tdakit.attribute(run, query, method, **settings)
        rows.append(row(label, s.values, truth, s.seconds))
    runs = [run] + tdakit.train_ensemble(model, run.train, recipe, task, seeds=range(1, members), checkpoints=6,
                                         progress=False)
    for label, method, settings in SINGLE:
        if label in ENSEMBLED:
            s = tdakit.ensemble(runs, query, method, **settings)
            rows.append(row(f"{label} ensemble ({members})", s.values, truth, s.seconds))
    return rows


def noisy(cache) -> dict:
    data = tdakit.datasets.load("mnist5k")
    train, changed = tdakit.datasets.with_label_noise(data.train, 0.3, classes=10, seed=0)
    model = tdakit.mlp(784, (512, 256, 128), 10)
    task = tdakit.Classification()
    run = tdakit.train(model, train, NOISY_RECIPE, task, checkpoints=6, progress=False, cache=cache)
    acc = float((tdakit.grads.measurements(run.model, task, run.final, data.query) > 0).double().mean())
    print(f"noisy MNIST: {int(changed.sum())} of {len(train)} labels randomized, {run.num_steps} steps, "
          f"query accuracy {acc:.2f}")
    truth = tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5, seeds=5, cache=cache, progress=False)
    rel = reliability(truth)
    print(rel)
    rows = single_stage_table(run, data.query, truth, model, NOISY_RECIPE, task)
    return {"setting": "MNIST 4000 train, 30% random labels, 3 epochs", "query_accuracy": acc,
            "reliability": rel.reliability, "ceiling": rel.ceiling, "rows": rows,
            "paired": {"SOURCE - EK-FAC influence": paired(rows, "SOURCE (L=3, C=6)", "EK-FAC influence")}}


def rotated_stages(data, n: int, angles=(0.0, 45.0, 90.0), epochs: int = 5):
    base = tdakit.datasets.balanced_subset(data.train, n)  # the split is in file order, sorted by digit
    recipe = tdakit.Recipe(lr=3e-2, epochs=epochs, batch_size=64, momentum=0.9, weight_decay=1e-3)
    return [Stage(tdakit.datasets.rotated(base, a), dataclasses.replace(recipe, seed=s), name=f"{a:.0f} degrees")
            for s, a in enumerate(angles)]


def rotated(cache, n: int = 500) -> dict:
    data = tdakit.datasets.load("mnist5k")
    model, task = tdakit.mlp(784, (512, 256, 128), 10), tdakit.Classification()
    stages = rotated_stages(data, n)
    staged = train_stages(model, stages, task, checkpoints=6, progress=False, cache=cache)
    out = {"setting": f"MNIST, the same {n} images at 0, 45 and 90 degrees, 5 epochs per stage", "cases": []}
    for query_angle, stage in [(0.0, 0), (90.0, 2)]:
        query = tdakit.datasets.rotated(data.query, query_angle)
        acc = float((tdakit.grads.measurements(staged.model, task, staged.final, query) > 0).double().mean())
        truth = groundtruth_stages(staged, query, stage, subsets=100, fraction=0.5, seeds=5, cache=cache,
                                   progress=False)
        rel = reliability(truth)
        print(f"\nqueries at {query_angle:.0f} degrees (accuracy {acc:.2f}), attributing stage {stage} "
              f"({staged.names[stage]}) data; {rel}")
        rows = []
        for label, method, settings in [("SOURCE (L=3 per stage, C=6)", "source", {"segments": 3}),
                                        ("Fast-SOURCE (L=3 per stage)", "fast_source", {"segments": 3}),
                                        ("EK-FAC influence (final parameters, pooled data)", "influence", {}),
                                        ("TracIn (each stage's checkpoints)", "tracin", {})]:
            start = time.perf_counter()
            values = staged_scores(staged, query, method, curvature="ekfac", **settings)[stage]
            rows.append(row(label, values, truth, time.perf_counter() - start))
        start = time.perf_counter()  # TRAK as a practitioner would: final parameters, this stage's data
        trak_run = dataclasses.replace(staged.runs[stage], final=staged.final)
        rows.append(row("TRAK (final parameters)", tdakit.attribute(trak_run, query, "trak").values, truth,
                        time.perf_counter() - start))
        out["cases"].append({"query_degrees": query_angle, "stage": stage, "stage_name": staged.names[stage],
                             "query_accuracy": acc, "reliability": rel.reliability, "ceiling": rel.ceiling,
                             "rows": rows, "paired": paired(rows, rows[0]["method"], rows[2]["method"])})
    return out


def epochs(cache) -> dict:
    _, hidden, outputs, task, recipe = SETTINGS["concrete"]
    data = tdakit.datasets.load("concrete")
    model = tdakit.mlp(8, hidden, outputs)
    out = {"setting": "Concrete, paper MLP and recipe, trained for E epochs", "cases": []}
    for e in (1, 3, 10, 20):
        r = dataclasses.replace(recipe, epochs=e)
        run = tdakit.train(model, data.train, r, task, checkpoints=6, progress=False, cache=cache)
        truth = tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5, seeds=5, cache=cache, progress=False)
        rel = reliability(truth)
        print(f"\n{e} epochs ({run.num_steps} steps): {rel}")
        rows = single_stage_table(run, data.query, truth, model, r, task)
        out["cases"].append({"epochs": e, "steps": run.num_steps, "reliability": rel.reliability,
                             "ceiling": rel.ceiling, "rows": rows,
                             "paired": paired(rows, "SOURCE (L=3, C=6)", "EK-FAC influence")})
    return out


def removal(cache) -> dict:
    out = {}
    cases = {
        "concrete": ("concrete", SETTINGS["concrete"][4], (128, 128, 128), 1, tdakit.Regression(), None, 40,
                     [5, 15, 45]),
        "noisy_mnist": ("mnist5k", NOISY_RECIPE, (512, 256, 128), 10, tdakit.Classification(), 0.3, 20,
                        [10, 40, 160]),
    }
    for name, (dataset, recipe, hidden, outputs, task, noise, n_query, ks) in cases.items():
        data = tdakit.datasets.load(dataset)
        train = data.train if noise is None else tdakit.datasets.with_label_noise(data.train, noise, 10, 0)[0]
        query = data.query.subset(slice(0, n_query)) if noise is None else tdakit.datasets.balanced_subset(
            data.query, n_query)
        model = tdakit.mlp(train.x.shape[1], hidden, outputs)
        run = tdakit.train(model, train, recipe, task, checkpoints=6, progress=False, cache=cache)
        print(f"\n{name}: remove each query's top-k by each method, k = {ks}, 2 seeds, {len(query)} queries")
        methods = list(SINGLE)
        if name == "concrete":
            methods.append(("oracle: exact unrolling", "unrolled", {}))
        curves = {}
        for label, method, settings in methods:
            s = tdakit.attribute(run, query, method, **settings)
            rem = tdakit.subset_removal(run, query, s, ks, seeds=2, progress=False)
            curves[label] = rem
        curves["random points"] = tdakit.evaluation.random_removal(run, query, ks, seeds=2, progress=False)
        table = {}
        for label, rem in curves.items():
            if task.higher_is_better:
                figure = rem.flipped().tolist()
                print(f"| {label} | " + " | ".join(f"{f:.2f}" for f in figure) + " |  (fraction of correct queries "
                      "that flip)")
            else:
                figure = (rem.change.mean(1) * data.scaler.std).tolist()
                print(f"| {label} | " + " | ".join(f"{f:+.2f}" for f in figure) + " |  (mean error increase, MPa)")
            table[label] = {"ks": ks, "figure": figure, "mean_change": rem.change.mean(1).tolist()}
        out[name] = table
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["noisy", "rotated", "epochs", "removal"])
    args = p.parse_args()
    cache = tdakit.store.default_dir()
    torch.manual_seed(0)
    result = {"noisy": noisy, "rotated": rotated, "epochs": epochs, "removal": removal}[args.what](cache)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"beyond_{args.what}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
