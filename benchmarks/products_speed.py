"""Score products through layer factors against flat per-example gradients, on the paper's MNIST setting.

    python benchmarks/products_speed.py              # MNIST 4000 train x 100 queries, medians of 3
    python benchmarks/products_speed.py --train 1000 --repeats 2

For EK-FAC influence, SOURCE (L = 3, C = 6, EK-FAC) and TracIn (6 checkpoints): seconds with the score
products made from flat per-example gradients (torch.func vmap(grad), how tdakit did it before) and from
layer factors (hooks: u . (d a^T) per layer, the default now), each a median of --repeats runs, alternated,
in one process; and SOURCE / influence ratios. Results in benchmarks/results/products_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import tdakit
from tdakit.datasets import balanced_subset

METHODS = {"EK-FAC influence": ("influence", {"curvature": "ekfac"}),
           "SOURCE (L=3, C=6)": ("source", {"segments": 3, "curvature": "ekfac"}),
           "TracIn": ("tracin", {})}


def timed(run, query, method: str, settings: dict, gradients: str) -> tuple[float, torch.Tensor]:
    """Seconds and scores of ``attribute`` with its score products made one way (``gradients=``)."""
    start = time.perf_counter()
    values = tdakit.attribute(run, query, method, progress=False, gradients=gradients, **settings).values
    return time.perf_counter() - start, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setting = tdakit.preset("mnist")
    data = setting.data()
    run = setting.train(data, n_train=None if args.train == 4000 else args.train, progress=False)
    query = data.query if args.train == 4000 else balanced_subset(data.query, 100)
    seconds: dict[str, dict[str, list[float]]] = {label: {"vmap": [], "hooks": []} for label in METHODS}
    agreement = {}
    for _ in range(args.repeats):
        for label, (method, settings) in METHODS.items():
            got = {}
            for gradients in ("vmap", "hooks"):
                s, got[gradients] = timed(run, query, method, settings, gradients)
                seconds[label][gradients].append(s)
            agreement[label] = float((got["hooks"] - got["vmap"]).norm() / got["vmap"].norm())
    medians = {label: {g: statistics.median(v) for g, v in per.items()} for label, per in seconds.items()}
    print(f"MNIST {run.num_train} train x {len(query)} queries, {run.model.num_params:,} parameters, "
          f"medians of {args.repeats}")
    print(f"{'method':<20} {'flat vmap(grad)':>16} {'layer factors':>14} {'speed-up':>9} {'rel. difference':>16}")
    for label, m in medians.items():
        print(f"{label:<20} {m['vmap']:>15.1f}s {m['hooks']:>13.1f}s {m['vmap'] / m['hooks']:>8.2f}x "
              f"{agreement[label]:>16.1e}")
    for g in ("vmap", "hooks"):
        ratio = medians["SOURCE (L=3, C=6)"][g] / medians["EK-FAC influence"][g]
        print(f"SOURCE / influence with {g}: {ratio:.2f}x")
    out = Path(__file__).parent / "results" / "products_speed.json"
    out.write_text(json.dumps({"train": run.num_train, "queries": len(query), "repeats": args.repeats,
                               "seconds": seconds, "median": medians, "relative_difference": agreement},
                              indent=1))


if __name__ == "__main__":
    main()
