"""Why SOURCE leads EK-FAC influence by less than 0.1 on noisy 3-epoch MNIST (issue 4): the influence
function's LDS across dampings (the recipe's implied damping against the small, converged-optimum
dampings the paper's comparison uses), and SOURCE with L = 1, 3 and 6 segments (does curvature change
along this short run enough to matter?).

    python benchmarks/noisy_diagnosis.py     # uses the R = 5 ground truth of `beyond_convergence.py noisy`
"""

from __future__ import annotations

import torch
from beyond_convergence import NOISY_RECIPE

import tdakit


def main() -> None:
    cache = tdakit.store.default_dir()
    data = tdakit.datasets.load("mnist5k")
    train, _ = tdakit.datasets.with_label_noise(data.train, 0.3, classes=10, seed=0)
    model = tdakit.mlp(784, (512, 256, 128), 10)
    run = tdakit.train(model, train, NOISY_RECIPE, tdakit.Classification(), checkpoints=6, progress=False,
                       cache=cache)
    truth = tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5, seeds=5, cache=cache, progress=False)
    implied = tdakit.attribution.implied_damping(run)
    print(f"implied damping 1/(eta_eff T) = {implied:.4f} (weight decay {NOISY_RECIPE.weight_decay:g} on top)")
    for damping in (1e-4, 1e-3, 0.01, "implied", 0.2, 1.0, "heuristic"):
        s = tdakit.attribute(run, data.query, "influence", curvature="ekfac", damping=damping)
        print(f"| EK-FAC influence, damping {damping} | {tdakit.lds(s, truth)} |", flush=True)
    for segments in (1, 3, 6):
        s = tdakit.attribute(run, data.query, "source", segments=segments, curvature="ekfac")
        print(f"| SOURCE L={segments} | {tdakit.lds(s, truth)} |", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
