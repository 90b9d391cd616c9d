"""Wall seconds of each line of the README's Python snippets, run as a newcomer would (a fresh, empty
cache; progress bars off so that they do not count), then the same lines again (from the cache).

    python benchmarks/readme_snippets.py
"""

from __future__ import annotations

import os
import tempfile
import time


def timed(label: str, fn, results: dict):
    start = time.perf_counter()
    out = fn()
    results.setdefault(label, []).append(time.perf_counter() - start)
    return out


def snippets(results: dict) -> None:
    import tdakit
    from tdakit.experiment import Method, run_experiment

    setting = tdakit.preset("concrete")
    data = timed("data = setting.data()", setting.data, results)
    run = timed("run = setting.train(data)", lambda: setting.train(data, progress=False), results)
    timed("unrolled", lambda: tdakit.attribute(run, data.query, "unrolled", progress=False), results)
    timed("influence", lambda: tdakit.attribute(run, data.query, "influence", damping="implied", progress=False),
          results)
    timed("source", lambda: tdakit.attribute(run, data.query, "source", segments=3, curvature="ggn", progress=False),
          results)
    truth = timed("groundtruth (100 x 5)", lambda: tdakit.groundtruth(run, data.query, subsets=100, fraction=0.5,
                                                                      seeds=5, progress=False), results)
    timed("run_experiment (exact + 5 methods)", lambda: run_experiment(
        run, data.query, {"exact": Method("unrolled"), **setting.methods()}, truth, reference="exact",
        baseline="influence", progress=False), results)
    mnist = tdakit.preset("mnist")
    mdata = mnist.data()
    mrun = timed("mnist: run = mnist.train(data)", lambda: mnist.train(mdata, progress=False), results)
    timed("mnist: source (ekfac)", lambda: tdakit.attribute(mrun, mdata.query, "source", curvature="ekfac",
                                                            progress=False), results)


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TDAKIT_CACHE"] = cache
        results: dict[str, list[float]] = {}
        snippets(results)  # cold: an empty cache
        snippets(results)  # the same lines again
    print("| README line | first run (s) | again (s) |\n|---|---|---|")
    for label, (cold, warm) in results.items():
        print(f"| {label} | {cold:.1f} | {warm:.1f} |")


if __name__ == "__main__":
    main()
