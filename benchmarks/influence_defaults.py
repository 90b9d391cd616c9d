"""Which defaults should influence's EK-FAC curvature take? A measured study over four models, each judged by
its own retraining ground truth (issue 24).

    python benchmarks/influence_defaults.py concrete     # MLP regression: the concrete preset, M = 100, R = 20
    python benchmarks/influence_defaults.py mnist        # MLP classifier: the mnist preset, M = 50, R = 5
    python benchmarks/influence_defaults.py cnn          # small CNN: 1,400 MNIST digits at 8 x 8, 38k parameters
    python benchmarks/influence_defaults.py cifar10_cpu  # ResNet-9 (width 8, BatchNorm), M = 50, R = 2
    python benchmarks/influence_defaults.py noisy_mnist  # not converged: 3 epochs, 30% wrong labels, M = 50, R = 5

The three choices, crossed (EK-FAC in every row; only influence's settings change, on the same trained run):

- damping: "implied" (1 / sum_k eta_k/(1 - momentum)) or "heuristic" (0.1 x each layer's mean loss eigenvalue),
  and the heuristic's factor swept over 0.01, 0.1, 1;
- fisher: "ggn" (the exact expectation over the model's outputs) or "true" (one sampled target per example);
- weight decay inside the curvature (the Hessian of the objective that was trained) or not (the loss alone).

Prints one markdown row per configuration with its LDS, 95% bootstrap interval over queries, the paired
difference against the current default (implied, ggn, weight decay in) and seconds; writes
benchmarks/results/influence_defaults_<setting>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import tdakit
from tdakit.curvature import Kronecker
from tdakit.evaluation import paired_difference, reliability
from tdakit.presets import preset

OUT = Path("benchmarks/results")

# (label, damping, relative factor, fisher, weight decay inside the curvature)
CONFIGURATIONS = [
    ("implied, ggn, weight decay in (before)", "implied", 0.1, "ggn", True),
    ("implied, ggn, weight decay out", "implied", 0.1, "ggn", False),
    ("implied, true, weight decay in", "implied", 0.1, "true", True),
    ("implied, true, weight decay out", "implied", 0.1, "true", False),
    ("heuristic 0.1, ggn, weight decay in", "heuristic", 0.1, "ggn", True),
    ("heuristic 0.1, ggn, weight decay out", "heuristic", 0.1, "ggn", False),
    ("heuristic 0.1, true, weight decay in", "heuristic", 0.1, "true", True),
    ("heuristic 0.1, true, weight decay out (kronfluence's)", "heuristic", 0.1, "true", False),
    ("heuristic 0.01, ggn, weight decay out", "heuristic", 0.01, "ggn", False),
    ("heuristic 1, ggn, weight decay out", "heuristic", 1.0, "ggn", False),
]


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and two linear layers for [n, 1, 8, 8] digits: 38,282 parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def small_digits(split: tdakit.Split, n: int) -> tdakit.Split:
    """The first n class-balanced MNIST images averaged down to 8 x 8 and standardized: [n, 1, 8, 8]."""
    part = tdakit.datasets.balanced_subset(split, n) if n < len(split) else split
    x = F.adaptive_avg_pool2d(part.x.reshape(-1, 1, 28, 28), 8)
    return tdakit.Split((x - x.mean()) / x.std(), part.y)


def setting_run(name: str):
    """(run, query split, subsets M, seeds R, description)."""
    if name == "cnn":
        data = tdakit.datasets.load("mnist5k")
        train, query = small_digits(data.train, 1400), small_digits(data.query, len(data.query))
        recipe = tdakit.Recipe(lr=0.02, epochs=8, batch_size=32, momentum=0.9, weight_decay=1e-3, seed=0)
        run = tdakit.train(SmallCNN(), train, recipe, tdakit.Classification(), progress=False)
        return run, query, 100, 5, "small CNN, 1,400 MNIST digits at 8 x 8, 38,282 parameters, 8 epochs"
    p = preset(name)
    data = p.data(progress=False) if name.startswith("cifar") else p.data()
    run = p.train(data, progress=False)
    counts = {"concrete": (100, 20), "mnist": (50, 5), "cifar10_cpu": (50, 2), "noisy_mnist": (50, 5)}[name]
    return run, data.query, *counts, p.description


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("setting", choices=["concrete", "mnist", "cnn", "cifar10_cpu", "noisy_mnist"])
    parser.add_argument("--subsets", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    run, query, subsets, seeds, description = setting_run(args.setting)
    subsets, seeds = args.subsets or subsets, args.seeds or seeds
    start = time.perf_counter()
    truth = tdakit.groundtruth(run, query, subsets=subsets, fraction=0.5, seeds=seeds, progress=False)
    truth_seconds = time.perf_counter() - start
    rel = reliability(truth)
    print(f"{args.setting}: {description}; {run.num_train} training points, {len(query)} queries, "
          f"{run.model.num_params} parameters; ground truth M = {subsets}, R = {seeds} ({truth_seconds:.0f} s), "
          f"{rel}; implied damping {tdakit.attribution.implied_damping(run):.4g}, weight decay "
          f"{run.recipe.weight_decay:g}", flush=True)
    print("| configuration | LDS | minus before | seconds |\n|---|---|---|---|", flush=True)
    rows, before = [], None
    for label, damping, relative, fisher, with_decay in CONFIGURATIONS:
        curvature = Kronecker(fisher=fisher, include_weight_decay=with_decay)
        start = time.perf_counter()
        if damping == "heuristic" and relative != 0.1:
            scores = heuristic_scores(run, query, curvature, relative)
        else:
            scores = tdakit.attribute(run, query, "influence", curvature=curvature, damping=damping,
                                      progress=False)
        seconds = time.perf_counter() - start
        got = tdakit.lds(scores, truth)
        before = before or got
        diff = paired_difference(got, before)
        print(f"| {label} | {got} | {diff} | {seconds:.1f} |", flush=True)
        rows.append({"configuration": label, "damping": damping, "relative": relative, "fisher": fisher,
                     "weight_decay_in_curvature": with_decay, "lds": got.value, "interval": str(got),
                     "minus_before": str(diff), "difference": diff.value, "seconds": seconds,
                     "per_query": got.per_query.tolist()})
    OUT.mkdir(exist_ok=True)
    result = {"setting": args.setting, "description": description, "subsets": subsets, "seeds": seeds,
              "reliability": rel.reliability, "ground_truth_seconds": truth_seconds,
              "implied_damping": tdakit.attribution.implied_damping(run), "rows": rows}
    (OUT / f"influence_defaults_{args.setting}.json").write_text(json.dumps(result, indent=1))


def heuristic_scores(run, query, curvature, relative: float):
    """Influence with damping ``relative`` x each layer's mean loss eigenvalue: the same path as
    ``attribute(..., damping="heuristic")``, whose factor is 0.1, with the factor swapped for this call."""
    from tdakit.attribution import influence, staged

    original = influence.damped_inverse

    def with_factor(H, damping, run, relative=0.1, total_rate=None):
        return original(H, damping, run, relative=factor, total_rate=total_rate)

    factor = relative
    staged.damped_inverse = influence.damped_inverse = with_factor
    try:
        return tdakit.attribute(run, query, "influence", curvature=curvature, damping="heuristic", progress=False)
    finally:
        staged.damped_inverse = influence.damped_inverse = original


if __name__ == "__main__":
    main()
