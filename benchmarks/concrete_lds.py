"""LDS of every dense method on UCI Concrete against subset retraining, with the ground truth's
reliability at R = 5 and at R seeds.

    python benchmarks/concrete_lds.py --model paper --seeds 100     # 3 x 128 MLP, exact GGN
    python benchmarks/concrete_lds.py --model narrow --seeds 100    # 2 x 32 MLP, full Hessian

Prints a markdown table and writes JSON next to --out. Ground truth is cached (TDAKIT_CACHE).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import tdakit
from tdakit.evaluation import reliability, spearman
from tdakit.evaluation.ground_truth import GroundTruth

MODELS = {"paper": ((128, 128, 128), "ggn"), "narrow": ((32, 32), "hessian")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=sorted(MODELS), default="paper")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--subsets", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    torch.manual_seed(0)
    hidden, curvature = MODELS[args.model]
    data = tdakit.datasets.load("concrete")
    model = tdakit.mlp(8, hidden)
    recipe = tdakit.Recipe(lr=3e-2, epochs=20, batch_size=32, momentum=0.9, weight_decay=1e-5)
    run = tdakit.train(model, data.train, recipe, tdakit.Regression(), checkpoints=6, progress=False)
    print(f"model {args.model}: {run.model.num_params} parameters, {run.num_steps} steps, "
          f"curvature {curvature}")

    t0 = time.perf_counter()
    truth = tdakit.groundtruth(run, data.query, subsets=args.subsets, fraction=0.5, seeds=args.seeds,
                               cache=tdakit.store.default_dir())
    gt_seconds = time.perf_counter() - t0
    truth5 = GroundTruth(truth.masks, truth.values[:, :5])
    rel5, rel = reliability(truth5), reliability(truth)
    print(f"ground truth: {args.subsets} subsets x {args.seeds} seeds in {gt_seconds:.0f} s")
    print(f"R = 5: {rel5}\nR = {args.seeds}: {rel}")

    damping = tdakit.attribution.implied_damping(run)
    methods = [
        ("exact unrolling", "unrolled", {}),
        (f"influence ({curvature}, damping 1/(eta_eff T) = {damping:.2g})", "influence",
         {"curvature": curvature}),
        ("SOURCE L=1, C=6", "source", {"segments": 1, "curvature": curvature}),
        ("SOURCE L=3, C=6", "source", {"segments": 3, "curvature": curvature}),
        ("Fast-SOURCE L=3", "fast_source", {"segments": 3, "curvature": curvature}),
    ]
    if curvature == "hessian":  # the full Hessian has negative eigenvalues: show SOURCE with them clipped
        methods += [(f"{label}, negative eigenvalues clipped", method, {**settings, "curvature": "hessian_clipped"})
                    for label, method, settings in methods[1:]]
    rows, exact = [], None
    for label, method, settings in methods:
        scores = tdakit.attribute(run, data.query, method, **settings)
        if exact is None:
            exact = scores.values
        agree = float(spearman(scores.values.double(), exact.double()).mean())
        lds5, ldsR = tdakit.lds(scores, truth5), tdakit.lds(scores, truth)
        rows.append({"method": label, "seconds": scores.seconds, "lds_R5": str(lds5),
                     f"lds_R{args.seeds}": str(ldsR), "spearman_vs_unrolled": agree,
                     "lds_R5_value": lds5.value, "lds_R_value": ldsR.value})
        print(f"| {label} | {lds5} | {ldsR} | {agree:.3f} | {scores.seconds:.1f} |", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"concrete_lds_{args.model}.json").write_text(json.dumps({
        "model": args.model, "parameters": run.model.num_params, "curvature": curvature,
        "seeds": args.seeds, "subsets": args.subsets, "groundtruth_seconds": gt_seconds,
        "reliability_R5": rel5.reliability, "ceiling_R5": rel5.ceiling,
        "reliability_R": rel.reliability, "ceiling_R": rel.ceiling, "rows": rows}, indent=2))
    print(f"\n| method | LDS (R=5) | LDS (R={args.seeds}) | Spearman vs unrolled | seconds |")
    for r in rows:
        print(f"| {r['method']} | {r['lds_R5']} | {r[f'lds_R{args.seeds}']} | "
              f"{r['spearman_vs_unrolled']:.3f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
