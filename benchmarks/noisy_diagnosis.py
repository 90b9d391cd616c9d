"""Why SOURCE leads EK-FAC influence by less than 0.1 on noisy 3-epoch MNIST (issue 4): the influence
function's LDS across dampings (the recipe's implied damping against the small, converged-optimum
dampings the paper's comparison uses), and SOURCE with L = 1, 3 and 6 segments (does curvature change
along this short run enough to matter?).

    python benchmarks/noisy_diagnosis.py     # the R = 5 ground truth of the noisy_mnist preset (cached)
"""

from __future__ import annotations

import torch

import tdakit
from tdakit.experiment import Method, run_experiment
from tdakit.presets import preset


def main() -> None:
    setting = preset("noisy_mnist")
    data = setting.data()
    run = setting.train(data, progress=False)
    truth = tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5, seeds=5, progress=False)
    implied = tdakit.attribution.implied_damping(run)
    print(f"implied damping 1/(eta_eff T) = {implied:.4f} (weight decay {setting.recipe.weight_decay:g} on top)")
    methods = {f"EK-FAC influence, damping {d}": Method("influence", curvature="ekfac", damping=d)
               for d in (1e-4, 1e-3, 0.01, "implied", 0.2, 1.0, "heuristic")}
    methods |= {f"SOURCE L={L}": Method("source", segments=L, curvature="ekfac") for L in (1, 3, 6)}
    print(run_experiment(run, data.query, methods, truth, baseline="EK-FAC influence, damping implied",
                         progress=False))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
