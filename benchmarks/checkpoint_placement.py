"""Where SOURCE's and TracIn's checkpoints sit: at the ends of C equal pieces of training (the last one
the final parameters) or at their midpoints. Same trajectory, same ground truth; only the recorded
checkpoints (and so the segment averages and TracIn's weights) differ.

    python benchmarks/checkpoint_placement.py concrete      # R = 100 ground truth, GGN and EK-FAC, seeds 0 and 1
    python benchmarks/checkpoint_placement.py mnist --subsets 50   # M = 50, R = 5, EK-FAC
    python benchmarks/checkpoint_placement.py noisy_mnist   # M = 100, R = 5, EK-FAC
    python benchmarks/checkpoint_placement.py rotated_mnist # last-stage images, M = 100, R = 5, EK-FAC

Prints one table row per (model, method, placement) and the paired difference end - middle with its 95%
bootstrap interval over queries; writes benchmarks/results/checkpoint_placement_<setting>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import tdakit
from tdakit.evaluation import GroundTruth, groundtruth_stages, paired_difference, reliability
from tdakit.evaluation.ground_truth import groundtruth
from tdakit.presets import preset

OUT = Path("benchmarks/results")
PLACEMENTS = ("end", "middle")


def methods(curvature: str) -> dict[str, tuple[str, dict]]:
    return {f"SOURCE L=3, C=6 ({curvature})": ("source", {"segments": 3, "curvature": curvature}),
            f"Fast-SOURCE L=3 ({curvature})": ("fast_source", {"segments": 3, "curvature": curvature}),
            "TracIn C=6": ("tracin", {})}


def compare(label: str, scores_by_placement: dict[str, dict[str, torch.Tensor]], truth: GroundTruth) -> list[dict]:
    rows = []
    for name in scores_by_placement["end"]:
        got = {p: tdakit.lds(scores_by_placement[p][name], truth) for p in PLACEMENTS}
        diff = paired_difference(got["end"], got["middle"])
        print(f"| {label} | {name} | {got['middle']} | {got['end']} | {diff} |", flush=True)
        rows.append({"model": label, "method": name, "middle": str(got["middle"]), "end": str(got["end"]),
                     "end_minus_middle": str(diff), "difference": diff.value})
    return rows


def single(setting: str, subsets: int = 100) -> dict:
    p = preset(setting)
    data = p.data()
    seeds = 100 if setting == "concrete" else 5
    models = (0, 1) if setting == "concrete" else (0,)
    curvatures = ("ggn", "ekfac") if setting == "concrete" else ("ekfac",)
    out = {"setting": setting, "description": p.description, "seeds": seeds, "subsets": subsets, "rows": []}
    print("| model | method | midpoints | ends | ends - midpoints |\n|---|---|---|---|---|")
    for model_seed in models:
        runs = {pl: p.train(data, seed=model_seed, progress=False, placement=pl) for pl in PLACEMENTS}
        truth = groundtruth(runs["end"], data.query, subsets=subsets, fraction=0.5, seeds=seeds, progress=False)
        rel = reliability(truth)
        out[f"reliability_model_{model_seed}"] = rel.reliability
        print(f"model {model_seed}: checkpoints at {runs['end'].checkpoint_steps.tolist()} (ends) and "
              f"{runs['middle'].checkpoint_steps.tolist()} (midpoints); {rel}", flush=True)
        for curvature in curvatures:
            table = methods(curvature)
            if curvature != curvatures[0]:
                table.pop("TracIn C=6")
            scores = {pl: {name: tdakit.attribute(runs[pl], data.query, m, progress=False, **kw).values
                           for name, (m, kw) in table.items()} for pl in PLACEMENTS}
            out["rows"] += compare(f"seed {model_seed}, R = {seeds}", scores, truth)
            if seeds > 5:  # the same comparison against the first 5 seeds only
                five = GroundTruth(truth.masks, truth.values[:, :5])
                out["rows"] += compare(f"seed {model_seed}, R = 5", scores, five)
    return out


def rotated(subsets: int = 100) -> dict:
    p = preset("rotated_mnist")
    data = p.data()
    query = p.queries(data, angles=(0.0, 90.0))
    q = len(data.query)
    pipelines = {pl: p.train(data, progress=False, placement=pl) for pl in PLACEMENTS}
    last = len(pipelines["end"].runs) - 1
    truth = groundtruth_stages(pipelines["end"], query, last, subsets=subsets, fraction=0.5, seeds=5, progress=False)
    out = {"setting": "rotated_mnist", "description": p.description, "stage": last, "rows": []}
    table = {"SOURCE L=3 per stage, C=6 (ekfac)": ("source", {"segments": 3, "curvature": "ekfac"}),
             "Fast-SOURCE L=3 per stage (ekfac)": ("fast_source", {"segments": 3, "curvature": "ekfac"}),
             "TracIn C=6 per stage": ("tracin", {})}
    scores = {pl: {name: tdakit.attribute(pipelines[pl], query, m, progress=False, **kw)[last].values
                   for name, (m, kw) in table.items()} for pl in PLACEMENTS}
    print("| queries | method | midpoints | ends | ends - midpoints |\n|---|---|---|---|---|")
    for k, angle in enumerate((0.0, 90.0)):
        rows = slice(k * q, (k + 1) * q)
        part = GroundTruth(truth.masks, truth.values[:, :, rows])
        print(f"queries at {angle:.0f} degrees: {reliability(part)}")
        sliced = {pl: {name: s[rows] for name, s in by.items()} for pl, by in scores.items()}
        out["rows"] += compare(f"{angle:.0f} degrees, last-stage images", sliced, part)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=["concrete", "mnist", "noisy_mnist", "rotated_mnist"])
    parser.add_argument("--subsets", type=int, default=100, help="ground-truth subsets M (default 100)")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = rotated(args.subsets) if args.setting == "rotated_mnist" else single(args.setting, args.subsets)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"checkpoint_placement_{args.setting}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
