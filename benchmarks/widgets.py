"""How responsive the explorers are: seconds from pressing Delete to the actual-change result, and from moving
an IF-to-SOURCE slider to the redrawn plot, headless (the same code the widgets run, without the browser).

    python benchmarks/widgets.py [--repeats 5]

Deletion: the explorer's scores are computed first (not timed); each timed press deletes a different set (the
k most helpful points of a different query), so no answer comes from the cache; the full-data reference is
retrained once beforehand. Concrete (R = 5 fresh seeds; the same trajectory) and MNIST (notebook 04's run:
1000 images; R = 3 fresh seeds; the same trajectory). Sliders: the narrow Concrete model of notebook 04; a new
horizon, a new damping, a new number of segments (first time: refits per checkpoint are already done), and a
setting seen before. Prints medians and writes benchmarks/results/widgets.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import tdakit
from tdakit.experiment import Method, compute_scores, write_json_atomic
from tdakit.explore.spectrum import Spectrum
from tdakit.explore.whatif import WhatIf
from tdakit.widgets import DeletionExplorer, IFToSourceExplorer

OUT = Path("benchmarks/results/widgets.json")


def press_delete(explorer: DeletionExplorer, queries, method: str, kind: str) -> list[float]:
    times = []
    for q in queries:
        start = time.perf_counter()
        explorer.delete(query=q, method=method, k=10, protocol=kind)
        explorer.wait()
        times.append(time.perf_counter() - start)
        assert explorer.last.query == q, explorer.message
    return times


def deletion(name: str, run, data, query, methods, seeds: int, repeats: int) -> dict:
    explorer = DeletionExplorer(WhatIf(run, query, methods, seeds=seeds), data, k=10, threaded=True)
    explorer.wait(3600)
    for kind in ("fresh", "same"):
        explorer.whatif.outcome([], kind)  # the full-data reference, once
    out = {}
    for kind in ("fresh", "same"):
        t = press_delete(explorer, range(1, 1 + repeats), "SOURCE", kind)
        out[kind] = {"median_s": statistics.median(t), "all_s": t}
        print(f"{name}: press Delete -> result, {kind} ({seeds if kind == 'fresh' else 1} models): "
              f"median {statistics.median(t):.1f} s over {len(t)} ({', '.join(f'{x:.1f}' for x in t)})", flush=True)
    start = time.perf_counter()
    explorer.delete(query=1, method="SOURCE", k=10, protocol="fresh")
    explorer.wait()
    out["repeated_s"] = time.perf_counter() - start
    print(f"{name}: a repeated deletion (from the cache): {out['repeated_s']:.2f} s", flush=True)
    return out


def sliders(repeats: int) -> dict:
    setting = tdakit.preset("concrete_narrow")
    data = setting.data()
    run = setting.train(data, progress=False, placement="end")
    unrolled = compute_scores(run, data.query, {"u": Method("unrolled")}, progress=False)[0]["u"]
    truth = tdakit.groundtruth(run, data.query, subsets=50, fraction=0.5, seeds=4, progress=False)
    start = time.perf_counter()
    spectrum = Spectrum(run, data.query, curvature=setting.curvature, truth=truth, reference=unrolled)
    explorer = IFToSourceExplorer(spectrum, threaded=True)
    explorer.wait()
    out = {"first_view_s": time.perf_counter() - start}

    def move(**settings) -> float:
        start = time.perf_counter()
        explorer.set(**settings)
        explorer.wait()
        return time.perf_counter() - start

    out["new_horizon_s"] = [move(horizon=h) for h in (0.1, 0.3, 3.0, 10.0, 30.0)[:repeats]]
    out["new_damping_s"] = [move(damping=d * spectrum.implied_damping) for d in (0.1, 0.3, 3.0, 10.0, 30.0)[:repeats]]
    out["new_segments_s"] = [move(segments=L) for L in (2, 3, 6)]
    explorer.set(segments=3, horizon=10.0)  # the first visit is a new setting: not timed
    explorer.wait()
    out["seen_before_s"] = [move(segments=L, horizon=10.0) for L in (2, 3, 2)]  # each one visited before
    for key in ("new_horizon_s", "new_damping_s", "new_segments_s", "seen_before_s"):
        print(f"IF-to-SOURCE slider, {key[:-2].replace('_', ' ')}: median {statistics.median(out[key]):.2f} s "
              f"({', '.join(f'{x:.2f}' for x in out[key])})", flush=True)
    print(f"IF-to-SOURCE: first view (curvature per checkpoint, gradients, L = 1): {out['first_view_s']:.1f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = {}
    concrete = tdakit.preset("concrete")
    data = concrete.data()
    run = concrete.train(data, progress=False)
    methods = {"influence": Method("influence", curvature="ggn"),
               "SOURCE": Method("source", segments=3, curvature="ggn"), "TracIn": Method("tracin")}
    results["concrete"] = deletion("Concrete", run, data, data.query, methods, 5, args.repeats)
    mnist = tdakit.preset("mnist")
    digits = mnist.data()
    mnist_run = mnist.train(digits, n_train=1000, progress=False)
    query = tdakit.datasets.balanced_subset(digits.query, 20)
    methods = {"influence": Method("influence", curvature="ekfac"),
               "SOURCE": Method("source", segments=3, curvature="ekfac"), "TracIn": Method("tracin")}
    results["mnist"] = deletion("MNIST", mnist_run, digits, query, methods, 3, args.repeats)
    results["sliders"] = sliders(args.repeats)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(OUT, results)


if __name__ == "__main__":
    main()
