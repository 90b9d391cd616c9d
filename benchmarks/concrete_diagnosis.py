"""Why SOURCE trails the influence function on converged Concrete (issue 3): a damping scan for EK-FAC
influence under three Fishers, SOURCE with L = 1 and 3, each SOURCE segment's share of the scores, and
the per-layer damping of kronfluence's heuristic against the recipe's implied damping.

    python benchmarks/concrete_diagnosis.py      # the R = 100 ground truth (lds_table.py --seeds 100, cached)
"""

from __future__ import annotations

import torch

import tdakit
from tdakit import curvature as curv
from tdakit.attribution import segment_scores
from tdakit.curvature import Kronecker
from tdakit.experiment import Method, run_experiment
from tdakit.presets import preset


def main() -> None:
    setting = preset("concrete")
    data = setting.data()
    run = setting.train(data, progress=False)
    q = data.query
    truth = tdakit.groundtruth(run, q, subsets=100, fraction=0.5, seeds=100, progress=False)
    implied = tdakit.attribution.implied_damping(run)
    print(f"implied damping 1/(eta_eff T) = {implied:.4f}; LDS at R = 100 below")
    methods = {f"influence, fisher={f}, damping={d}": Method("influence", curvature=Kronecker(fisher=f), damping=d)
               for f in ("ggn", "true", "empirical") for d in (0.002, "implied", 0.018, 0.05, "heuristic")}
    methods |= {f"SOURCE L={L}": Method("source", segments=L, curvature="ekfac") for L in (1, 3)}
    print(run_experiment(run, q, methods, truth, progress=False))
    parts = segment_scores(run, q, 3, "ekfac", progress=False)  # first segment first
    for seg, part in zip(tdakit.attribution.segments_of(run, 3), parts, strict=True):
        eta = float(run.effective_lrs[seg.start:seg.stop].mean())
        print(f"segment steps {seg.start}..{seg.stop}: score norm {float(part.norm()):.2f}, LDS alone "
              f"{tdakit.lds(part, truth)}, learn acts like damping 1/(eta K) = {1 / (eta * seg.steps):.4f}")
    print(f"last two segments: {tdakit.lds(parts[1] + parts[2], truth)}")
    H = curv.fit("ekfac", run.model, run.task, run.final[None], run.train, run.recipe.weight_decay)
    for layer in H.layers:
        e = layer.eigenvalues
        print(f"layer {layer.slot.name} {tuple(e.shape)}: heuristic damping 0.1 x mean = {0.1 * float(e.mean()):.2g}, "
              f"{float((e < implied).double().mean()):.0%} of eigenvalues below the implied damping")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
