"""``tdakit demo``: the exact triangle on UCI Concrete, judged against retraining.

Trains the ``concrete`` preset (the paper's MLP and recipe), scores every training point for every
query with exact unrolling, the influence function, SOURCE and Fast-SOURCE (``run_experiment``: per-example
gradients shared, scores cached), retrains random half subsets for the ground truth, prints the table
(method, LDS with 95% interval, agreement with exact unrolling, paired difference from influence,
seconds) with the ground truth's reliability; then judges the same scores against the run's own trajectory
retrained without 1% of its points (``protocol="same"``), where exact unrolling is exact to first order. Writes a
report folder: table.json, table_same_trajectory.json, scores_vs_unrolled.png, predicted_vs_actual.png, lds.png,
lds_same_trajectory.png.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import plots, store  # noqa: E402
from .attribution import implied_damping  # noqa: E402
from .errors import SettingError
from .evaluation import groundtruth  # noqa: E402
from .experiment import Method, Table, run_experiment, write_json_atomic  # noqa: E402
from .presets import preset  # noqa: E402

DEMO_METHODS = ("influence", "SOURCE (L=3, C=6)", "Fast-SOURCE (L=3)")
MODELS = {"paper": "concrete", "narrow": "concrete_narrow"}
SAME_REMOVED = 0.01  # the share of training points each same-trajectory subset removes
DEFAULTS = {"model": "paper", "subsets": 100, "seeds": 5, "epochs": None, "queries": None, "train_points": None}


def report_folder(out: str | None, configuration: dict) -> Path:
    """``out``, or by default one folder per configuration: tdakit-report for the full demo,
    tdakit-report-train100-subsets20 (say) for a smaller one, so a quick look never overwrites it."""
    if out is not None:
        return Path(out)
    changed = [f"{name.replace('_points', '')}{value}" for name, value in configuration.items()
               if value != DEFAULTS[name]]
    return Path("-".join(["tdakit-report", *changed]))


def check_folder(folder: Path, configuration: dict, force: bool) -> None:
    """Refuse to overwrite another configuration's report unless ``force``."""
    found = folder / "configuration.json"
    if force or not found.is_file():
        return
    try:
        before = json.loads(found.read_text())
    except (OSError, ValueError):
        return
    if before != configuration:
        different = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in configuration.items() if before.get(k) != v)
        raise SettingError(f"{folder}/ holds the report of another configuration ({different}); choose another "
                           "folder (out=FOLDER), or overwrite it (force=True)")


def run_demo(out: str | None = None, model: str = "paper", subsets: int = 100, seeds: int = 5,
             epochs: int | None = None, queries: int | None = None, train_points: int | None = None,
             cache: bool = True, progress: bool = True, say=print, force: bool = False) -> Table:
    """Run the demo; returns the table (also written to the report folder's table.json). out: the report folder
    (default: one per configuration, ``report_folder``); force: overwrite a folder holding another
    configuration's report."""
    if model not in MODELS:
        raise SettingError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if subsets < 2 or seeds < 2:
        raise SettingError("the ground truth needs at least 2 subsets and 2 seeds (reliability splits seeds)")
    if queries is not None and queries < 1:
        raise SettingError(f"--queries must be at least 1 (or left out for all queries), got {queries}")
    if train_points is not None and train_points < 2:
        raise SettingError(f"--train must be at least 2 (or left out for all training points), got {train_points}")
    if epochs is not None and epochs < 1:
        raise SettingError(f"--epochs must be at least 1, got {epochs}")
    configuration = {"model": model, "subsets": subsets, "seeds": seeds, "epochs": epochs, "queries": queries,
                     "train_points": train_points}
    folder = report_folder(out, configuration)
    check_folder(folder, configuration, force)
    setting = preset(MODELS[model])
    if epochs is not None:
        setting = dataclasses.replace(setting, recipe=dataclasses.replace(setting.recipe, epochs=epochs))
    data = setting.data()
    query = data.query if queries is None else data.query.subset(slice(0, queries))
    r = setting.recipe
    if train_points is not None:
        data = dataclasses.replace(data, train=data.train.subset(slice(0, train_points)))
    say(f"UCI Concrete: {len(data.train)} training points, {len(query)} queries; MLP {setting.hidden} with the "
        f"paper's recipe ({r.epochs} epochs, lr {r.lr}, momentum {r.momentum}, batch {r.batch_size}, wd "
        f"{r.weight_decay}); curvature: {setting.curvature}; cache: {store.folder(cache) or 'off'}")
    t0 = time.perf_counter()
    run = setting.train(data, progress=progress, cache=cache)
    say(f"trained {run.model.num_params} parameters for {run.num_steps} steps, checkpoints at steps "
        f"{run.checkpoint_steps.tolist()} ({time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    truth = groundtruth(run, query, subsets=subsets, fraction=0.5, seeds=seeds, cache=cache, progress=progress)
    say(f"ground truth: {subsets} random half subsets x {seeds} seeds retrained ({time.perf_counter() - t0:.1f} s)")
    if seeds < 50:
        say(f"  note: the demo uses R = {seeds} seeds; the benchmark uses R = 100 for a reliability "
            "near 0.9, so the LDS below is bounded by the ceiling and noisy (see BENCHMARKS.md)")

    chosen = {k: v for k, v in setting.methods().items() if k in DEMO_METHODS}
    methods = {"exact unrolling": Method("unrolled"), **chosen}
    table = run_experiment(run, query, methods, truth, reference="exact unrolling", baseline="influence",
                           title=f"UCI Concrete: LDS against retraining ({len(data.train)} points, "
                                 f"{run.num_steps} steps, {setting.curvature})", progress=progress, cache=cache)
    say("")
    say(str(table))
    say(f"influence damping: 1/(eta_eff T) = {implied_damping(run):.3g}, implied by the recipe (not tuned)")

    # the same scores judged by the other question: what would *this* run have done without 1% of its points?
    t0 = time.perf_counter()
    removed = max(1, round(SAME_REMOVED * len(data.train)))
    same = groundtruth(run, query, subsets=subsets, fraction=1 - removed / len(data.train), protocol="same",
                       cache=cache, progress=progress)
    say(f"\nsame-trajectory ground truth: {subsets} subsets, each without {removed} random points, the run's own "
        f"initialisation and batch order rerun once ({time.perf_counter() - t0:.1f} s)")
    same_table = run_experiment(run, query, methods, same, reference="exact unrolling", baseline="influence",
                                title=f"UCI Concrete: LDS against the same trajectory, {removed} points removed",
                                progress=False, cache=cache, scores=table.scores)
    say(str(same_table))
    say(f"exact unrolling ranks {_rank(table, 'exact unrolling')} of {len(table.rows)} against fresh seeds and "
        f"{_rank(same_table, 'exact unrolling')} against its own trajectory: it is exact for this run, while the "
        "fresh-seed ground truth also asks about a new initialisation and batch order, which no method sees. "
        "The gap is the randomness of training, not the estimate's error (docs/evaluation.md)")

    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "configuration.json", configuration)
    table.save(folder / "table.json")
    same_table.save(folder / "table_same_trajectory.json")
    _figures(folder, table, truth, data.scaler)
    with plots.style():
        fig, ax = plt.subplots(figsize=(7, 3.8))
        same_table.plot(ax=ax)
        plots.save(fig, folder / "lds_same_trajectory.png")
    plt.close("all")
    say(f"report written to {folder}/ (table.json, table_same_trajectory.json, scores_vs_unrolled.png, "
        "predicted_vs_actual.png, lds.png, lds_same_trajectory.png)")
    return table


def _rank(table: Table, label: str) -> str:
    """'1st', '2nd', ... place of ``label`` by LDS in ``table``."""
    order = sorted(table.rows, key=lambda r: -r.lds.value)
    place = [r.label for r in order].index(label) + 1
    return f"{place}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(place, 'th')}"


def _figures(folder: Path, table: Table, truth, scaler) -> None:
    scores = table.scores
    names = [n for n in scores if n != "exact unrolling"]
    with plots.style():
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.6), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            plots.scores_against(scores["exact unrolling"], scores[name], ax=ax, unit="MPa per unit weight",
                                 scale=scaler.std, labels=("exact unrolling", name))
        fig.suptitle("Scores of every (query, training point) pair against exact unrolling")
        plots.save(fig, folder / "scores_vs_unrolled.png")
        fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.8), squeeze=False)
        for ax, (name, s) in zip(axes[0], scores.items(), strict=True):
            plots.predicted_vs_actual(s, truth, query=0, ax=ax, unit="MPa", scale=scaler.std, label=name)
        fig.suptitle("Query 0: predicted against actual change of the absolute error on half subsets")
        plots.save(fig, folder / "predicted_vs_actual.png")
        fig, ax = plt.subplots(figsize=(7, 3.8))
        table.plot(ax=ax)
        plots.save(fig, folder / "lds.png")
    plt.close("all")
