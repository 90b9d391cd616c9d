"""Is a run's training chaotic? The same-trajectory ground truth's jitter on every preset (issue 21's protocols).

    python benchmarks/chaos.py                       # every setting below, 1% removed, M = 20
    python benchmarks/chaos.py --settings concrete wikitext2
    python benchmarks/chaos.py --settings noisy_mnist wikitext2 --judge --queries 20   # and exact unrolling's LDS

For each setting, the preset's run and a same-trajectory ground truth (M subsets keeping 99%): its
``jitter_share``, how far moving every training weight by one part in a million (random signs) moves the rerun's
measurements, against their spread across the subsets (median over queries), and ``jitter_asymmetry``, whether the
opposite change moves them oppositely (0: in proportion; about 1: unrelated to the sign). A stable run moves by
about a millionth, in proportion; where the share passes 0.2 and the asymmetry 0.5 the run is chaotic (the
warning in tdakit.groundtruth), and the same-trajectory question has no stable answer. "convlm" is
benchmarks/conv1d_lds.py's convolutional language model on the wikitext2 preset's data and recipe. --judge adds
exact unrolling's and influence's LDS against that same-trajectory ground truth (the first --queries queries).
Writes benchmarks/results/chaos.json (chaos_judged_<settings>.json with --judge).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import tdakit
from tdakit.experiment import Method, run_experiment
from tdakit.presets import preset

SETTINGS = ("concrete", "mnist", "noisy_mnist", "cifar10_cpu", "wikitext2", "convlm", "sst2")


def run_of(name: str):
    if name == "convlm":
        from conv1d_lds import train_convlm

        setting = preset("wikitext2")
        data = setting.data()
        return train_convlm(setting, data), data
    setting = preset(name)
    data = setting.data(progress=False) if name.startswith("cifar") else setting.data()
    return setting.train(data, progress=False), data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--subsets", type=int, default=20)
    parser.add_argument("--judge", action="store_true", help="also exact unrolling and influence against it")
    parser.add_argument("--queries", type=int, default=None, help="the first Q queries only")
    args = parser.parse_args()
    rows = {}
    print("| setting | steps | dtype | jitter share (1% removed) | asymmetry | median jitter | seconds |", flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in args.settings:
        run, data = run_of(name)
        query = data.query if args.queries is None else data.query.subset(slice(0, args.queries))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the table says it
            truth = tdakit.groundtruth(run, query, subsets=args.subsets, fraction=0.99, protocol="same",
                                       progress=False)
        seconds = time.perf_counter() - start
        rows[name] = {"steps": run.num_steps, "dtype": str(run.final.dtype), "jitter_share": truth.jitter_share,
                      "jitter_asymmetry": truth.jitter_asymmetry, "median_jitter": float(truth.jitter.abs().median()),
                      "seconds": seconds}
        print(f"| {name} | {run.num_steps:,} | {str(run.final.dtype).replace('torch.', '')} | "
              f"{truth.jitter_share:.2g} | {truth.jitter_asymmetry:.2g} | {rows[name]['median_jitter']:.2g} | "
              f"{seconds:.0f} |", flush=True)
        if args.judge:
            influence = preset("wikitext2" if name == "convlm" else name).methods()["influence"]
            methods = {"exact unrolling": Method("unrolled"), "influence (the preset's)": influence}
            table = run_experiment(run, query, methods, truth, baseline="influence (the preset's)", progress=False,
                                   title=f"{name}, same trajectory, 1% removed")
            print(table, flush=True)
            rows[name]["lds"] = {row.label: row.lds.value for row in table.rows}
    out = Path("benchmarks/results")
    out.mkdir(exist_ok=True)
    name = f"chaos_judged_{'_'.join(args.settings)}.json" if args.judge else "chaos.json"
    (out / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
