"""Where implicit differentiation falls short (issue 4): LDS of every method when training is not
converged, has noisy labels, or runs in stages; and subset-removal curves.

    python benchmarks/beyond_convergence.py noisy            # MNIST, 30% random labels, 3 epochs
    python benchmarks/beyond_convergence.py rotated          # MNIST 0 -> 45 -> 90 degrees, 3 stages (pipelines)
    python benchmarks/beyond_convergence.py epochs           # Concrete trained 1, 3, 10, 20 epochs
    python benchmarks/beyond_convergence.py removal --setting noisy_mnist|concrete   # removal curves

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
from tdakit.evaluation.ground_truth import GroundTruth
from tdakit.stages import Stage, groundtruth_stages, train_stages

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


ROTATED_RECIPE = tdakit.Recipe(lr=1e-2, epochs=3, batch_size=64, momentum=0.9, weight_decay=1e-3)


def rotated_stages(data, sizes=(2000, 1000, 1000), angles=(0.0, 45.0, 90.0), recipe=ROTATED_RECIPE):
    """Continual learning: disjoint, class-balanced parts of the training split, part s rotated by
    angles[s] and trained as stage s (each from the previous stage's final parameters)."""
    parts = tdakit.datasets.balanced_parts(data.train, sizes, seed=0)
    return [Stage(tdakit.datasets.rotated(part, a), dataclasses.replace(recipe, seed=s), name=f"{a:.0f} degrees")
            for s, (part, a) in enumerate(zip(parts, angles, strict=True))]


STAGED = [  # label, method, settings
    ("SOURCE (L=3 per stage, C=6)", "source", {"segments": 3}),
    ("Fast-SOURCE (L=3 per stage)", "fast_source", {"segments": 3}),
    ("EK-FAC influence (final parameters, pooled data)", "influence", {}),
    ("TracIn (each stage's checkpoints)", "tracin", {}),
    ("TRAK (final parameters)", "trak", {}),
    ("exact unrolling (the recorded pipeline)", "unrolled", {}),
]


def staged_method(members, query, method: str, settings: dict) -> list[torch.Tensor]:
    """Scores of every stage, averaged over the pipelines in ``members`` (one: a single pipeline).
    TRAK as a practitioner would run it: at the final parameters, on each stage's data."""
    if method != "trak":
        return tdakit.staged_ensemble(members, query, method, curvature="ekfac", **settings)
    out = None
    for staged in members:
        scores = [tdakit.attribute(dataclasses.replace(run, final=staged.final), query, "trak").values
                  for run in staged.runs]
        out = scores if out is None else [a + b for a, b in zip(out, scores, strict=True)]
    return [o / len(members) for o in out]


def rotated(cache, members: int = 5) -> dict:
    data = tdakit.datasets.load("mnist5k")
    model, task = tdakit.mlp(784, (512, 256, 128), 10), tdakit.Classification()
    stages = rotated_stages(data)
    staged = train_stages(model, stages, task, checkpoints=6, progress=False, cache=cache)
    angles = (0.0, 90.0)
    queries = [tdakit.datasets.rotated(data.query, a) for a in angles]
    query = tdakit.datasets.Split(torch.cat([q.x for q in queries]), torch.cat([q.y for q in queries]))
    rows_of = {a: slice(k * len(data.query), (k + 1) * len(data.query)) for k, a in enumerate(angles)}
    accuracy = {a: float((tdakit.grads.measurements(staged.model, task, staged.final,
                                                    tdakit.datasets.rotated(data.query, a)) > 0).double().mean())
                for a in (0.0, 45.0, 90.0)}
    print(f"rotated MNIST: stages {staged.names}, sizes {[r.num_train for r in staged.runs]}, steps "
          f"{[r.num_steps for r in staged.runs]}; query accuracy after the pipeline by angle: {accuracy}", flush=True)
    attributed = (0, len(stages) - 1)
    truths = {s: groundtruth_stages(staged, query, s, subsets=100, fraction=0.5, seeds=5, cache=cache, progress=False)
              for s in attributed}
    pipelines = [staged] + tdakit.train_stages_ensemble(model, stages, task, seeds=range(1, members), checkpoints=6,
                                                       progress=False, cache=cache)
    scores = {}
    for label, method, settings in STAGED:
        start = time.perf_counter()
        scores[label] = (staged_method([staged], query, method, settings), time.perf_counter() - start)
        print(f"{label}: {scores[label][1]:.1f} s", flush=True)
        if method in ("source", "influence", "trak"):
            start = time.perf_counter()
            scores[f"{label} ensemble ({members})"] = (staged_method(pipelines, query, method, settings),
                                                       time.perf_counter() - start)
    out = {"setting": f"MNIST continual learning: disjoint balanced parts {[r.num_train for r in staged.runs]} "
                      f"at {[st.name for st in stages]}, {ROTATED_RECIPE}", "query_accuracy": accuracy, "cases": []}
    for angle in angles:
        for s in attributed:
            rows = rows_of[angle]
            truth = GroundTruth(truths[s].masks, truths[s].values[:, :, rows])
            rel = reliability(truth)
            print(f"\nqueries at {angle:.0f} degrees (accuracy {accuracy[angle]:.2f}), attributing stage {s} "
                  f"({staged.names[s]}) data; {rel}")
            table = [row(label, values[s][rows], truth, seconds) for label, (values, seconds) in scores.items()]
            out["cases"].append({"query_degrees": angle, "stage": s, "stage_name": staged.names[s],
                                 "reliability": rel.reliability, "ceiling": rel.ceiling, "rows": table,
                                 "paired": paired(table, STAGED[0][0], STAGED[2][0]) if len(STAGED) > 2 else None})
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


REMOVAL = {  # setting: (dataset, recipe, hidden widths, outputs, task, label noise, queries, ks)
    "concrete": ("concrete", SETTINGS["concrete"][4], (128, 128, 128), 1, tdakit.Regression(), None, 40, [5, 15, 45]),
    "noisy_mnist": ("mnist5k", NOISY_RECIPE, (512, 256, 128), 10, tdakit.Classification(), 0.3, 40,
                    [5, 20, 80, 200]),
}


def removal(cache, setting: str, members: int = 5) -> dict:
    """Remove each query's top-k points by every method (single runs and ensembles), retrain 2 seeds;
    against random points and exact unrolling of the recorded run (the 'oracle')."""
    dataset, recipe, hidden, outputs, task, noise, n_query, ks = REMOVAL[setting]
    data = tdakit.datasets.load(dataset)
    train = data.train if noise is None else tdakit.datasets.with_label_noise(data.train, noise, 10, 0)[0]
    query = data.query.subset(slice(0, n_query)) if noise is None else tdakit.datasets.balanced_subset(
        data.query, n_query)
    model = tdakit.mlp(train.x.shape[1], hidden, outputs)
    run = tdakit.train(model, train, recipe, task, checkpoints=6, progress=False, cache=cache)
    runs = [run] + tdakit.train_ensemble(model, run.train, recipe, task, seeds=range(1, members), checkpoints=6,
                                         progress=False)
    print(f"\n{setting}: remove each query's top-k by each method, k = {ks}, 2 seeds, {len(query)} queries",
          flush=True)
    methods = [(label, lambda m=method, kw=settings: tdakit.attribute(run, query, m, **kw))
               for label, method, settings in SINGLE]
    methods += [(f"{label} ensemble ({members})", lambda m=method, kw=settings: tdakit.ensemble(runs, query, m, **kw))
                for label, method, settings in SINGLE if label in ENSEMBLED]
    methods.append(("oracle: exact unrolling of the recorded run",
                    lambda: tdakit.attribute(run, query, "unrolled")))
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
    cache = tdakit.store.default_dir()
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.what == "removal":
        result, name = removal(cache, args.setting), f"beyond_removal_{args.setting}"
    else:
        result, name = {"noisy": noisy, "rotated": rotated, "epochs": epochs}[args.what](cache), f"beyond_{args.what}"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
