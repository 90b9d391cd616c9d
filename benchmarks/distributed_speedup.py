"""How much two gloo processes buy on this machine: EK-FAC fitting, SOURCE's score products and ground-truth
retraining, timed with 1 and with 2 processes on the same cores.

    python benchmarks/distributed_speedup.py            # launches both with torchrun and prints a table

The job is the `mnist` preset on 1000 class-balanced images (567k parameters, 315 steps), 20 queries,
EK-FAC SOURCE (L = 3, C = 6) and a ground truth of 8 subsets x 1 seed. One process gets all the machine's
cores as threads; with two, each process gets half of them, so the comparison is between threads and
processes on the same hardware. Medians of --repeats runs; results in benchmarks/results/distributed_speedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def job(out: Path) -> None:
    """One timed pass of the three shared parts (run under torchrun)."""
    import tdakit
    from tdakit import distributed
    from tdakit.curvature.kronecker import kronecker_curvature
    from tdakit.datasets import balanced_subset
    from tdakit.evaluation import groundtruth

    distributed.init()
    setting = tdakit.preset("mnist")
    data = setting.data()
    run = setting.train(data, n_train=1000, progress=False, cache=False)
    query = balanced_subset(data.query, 20)
    times = {}

    def timed(label, fn):
        if distributed.active():
            torch.distributed.barrier()
        start = time.perf_counter()
        fn()
        if distributed.active():
            torch.distributed.barrier()
        times[label] = time.perf_counter() - start

    timed("EK-FAC fit (6 checkpoints)", lambda: kronecker_curvature(
        run.model, run.task, run.checkpoints, run.train, run.recipe.weight_decay))
    timed("SOURCE scores (L=3, C=6)", lambda: tdakit.attribute(run, query, "source", curvature="ekfac",
                                                               progress=False))
    timed("ground truth (8 x 1 retrainings)", lambda: groundtruth(run, query, subsets=8, seeds=1, models_per_chunk=2,
                                                                  cache=False, progress=False))
    if distributed.is_main():
        out.write_text(json.dumps(times))


def launch(processes: int, threads: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TDAKIT_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               __file__, "--job", str(out)]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.job:
        torch.set_num_threads(int(os.environ.get("TDAKIT_THREADS", "1")))
        job(Path(args.job))
        return
    cores = os.cpu_count() or 1
    results = {}
    tmp = RESULTS / "distributed_speedup.tmp"
    for processes in (1, 2):
        threads = max(1, cores // processes)
        runs = [launch(processes, threads, tmp) for _ in range(args.repeats)]
        results[processes] = {k: float(torch.tensor([r[k] for r in runs]).median()) for k in runs[0]}
        print(f"{processes} process(es) x {threads} thread(s): " +
              ", ".join(f"{k} {v:.1f} s" for k, v in results[processes].items()), flush=True)
    tmp.unlink(missing_ok=True)
    print(f"\n{'part':<36} {'1 process':>10} {'2 processes':>12} {'speed-up':>9}")
    for part in results[1]:
        one, two = results[1][part], results[2][part]
        print(f"{part:<36} {one:>9.1f}s {two:>11.1f}s {one / two:>8.2f}x")
    summary = {"cores": cores, "repeats": args.repeats, "median_seconds": results}
    (RESULTS / "distributed_speedup.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
