"""Why SOURCE trails the influence function on converged Concrete (issue 3): a damping scan for EK-FAC
influence under three Fishers, SOURCE with L = 1 and 3, each SOURCE segment's share of the scores, and
the per-layer damping of kronfluence's heuristic against the recipe's implied damping.

    python benchmarks/concrete_diagnosis.py      # needs the R = 100 ground truth (lds_table.py --seeds 100)
"""

from __future__ import annotations

import torch
from common import setup

import tdakit
from tdakit import curvature as curv
from tdakit.curvature import Kronecker
from tdakit.grads import gradient_products, measurement_grads


def main() -> None:
    cache = tdakit.store.default_dir()
    data, _, _, recipe, run = setup("concrete", cache=cache)
    q = data.query
    truth = tdakit.groundtruth(run, q, subsets=100, fraction=0.5, seeds=100, cache=cache, progress=False)
    implied = tdakit.attribution.implied_damping(run)
    print(f"implied damping 1/(eta_eff T) = {implied:.4f}; LDS at R = 100 below")
    for fisher in ("ggn", "true", "empirical"):
        for damping in (0.002, "implied", 0.018, 0.05, "heuristic"):
            s = tdakit.attribute(run, q, "influence", curvature=Kronecker(fisher=fisher), damping=damping)
            print(f"influence, fisher={fisher}, damping={damping}: {tdakit.lds(s, truth)}")
    for segments in (1, 3):
        s = tdakit.attribute(run, q, "source", segments=segments, curvature="ekfac")
        print(f"SOURCE L={segments}: {tdakit.lds(s, truth)}")
    # each segment's share of SOURCE's scores (the query-side walk written out)
    v = measurement_grads(run.model, run.task, run.final, q)
    parts = []
    for seg in tdakit.attribution.segments_of(run, 3)[::-1]:
        thetas = run.checkpoints[list(seg.checkpoints)]
        eta = float(run.effective_lrs[seg.start:seg.stop].mean())
        H = curv.fit("ekfac", run.model, run.task, thetas, run.train, recipe.weight_decay)
        u = H.apply(curv.functions.learn(eta, seg.steps), v)
        parts.append(-gradient_products(run.model, run.task, thetas, run.train, u) / run.num_train)
        v = H.apply(curv.functions.forget(eta, seg.steps), v)
        print(f"segment steps {seg.start}..{seg.stop}: score norm {float(parts[-1].norm()):.2f}, "
              f"learn acts like damping 1/(eta K) = {1 / (eta * seg.steps):.4f}")
    print(f"last segment only: {tdakit.lds(parts[0], truth)}")
    print(f"last two segments: {tdakit.lds(parts[0] + parts[1], truth)}")
    print(f"first segment only: {tdakit.lds(parts[2], truth)}")
    H = curv.fit("ekfac", run.model, run.task, run.final[None], run.train, recipe.weight_decay)
    for layer in H.layers:
        e = layer.eigenvalues
        print(f"layer {layer.slot.name} {tuple(e.shape)}: heuristic damping 0.1 x mean = {0.1 * float(e.mean()):.2g}, "
              f"{float((e < implied).double().mean()):.0%} of eigenvalues below the implied damping")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
