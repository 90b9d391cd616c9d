"""The CIFAR-10 GPU check: ResNet-9 on the paper's 3,072-image subset, EK-FAC SOURCE and influence for 100
queries, a reduced LDS, and exact unrolling through all 150 steps for the first few queries (issue 21), with
seconds and peak memory for every phase.

    python benchmarks/gpu_cifar10.py --archive cifar10-jpeg.tar.xz      # one GPU (about 5 minutes planned)
    python benchmarks/gpu_cifar10.py --archive cifar10-jpeg.tar.xz --tiny   # a CPU: the cifar10_cpu slice
    python benchmarks/gpu_cifar10.py --archive cifar10-jpeg.tar.xz --full   # also all 50,000 images (issue 12)

The data is a CIFAR-10 folder (--root, default $TDAKIT_DATA or ~/.cache/tdakit/data) or a tar archive of
one (--archive, unpacked into a temporary folder). Prints one line per phase and a JSON summary, and
writes it to benchmarks/results/gpu_cifar10_<device>.json (atomically, after every phase, so a run stopped
by a time limit keeps what it measured). Nothing is cached: every phase is measured from scratch.

Exact unrolling (--unroll Q, default 5; 0 leaves it out) carries Q queries back through every step with a
checkpointed trajectory (keep_every="auto"), judged on those queries beside influence and SOURCE on the same
ones. Its cost, measured on a CPU at the preset's size (one reverse step at batch 512, ResNet-9 width 64):
about 3 training steps of compute and 5 GiB for one query plus 3.2 GiB for each further query carried
together, so about 18 GiB for 5 queries.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import torch

import tdakit
from tdakit import hardware
from tdakit.attribution import attribute_many
from tdakit.attribution.trajectory import auto_every, stored_values
from tdakit.datasets import balanced_subset, cifar, data_root
from tdakit.evaluation import GroundTruth, groundtruth, lds
from tdakit.presets import preset
from tdakit.store import write_atomic


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def save(report: dict, out: Path) -> None:
    write_atomic(out, lambda f: f.write(json.dumps(report, indent=1).encode()))


def timed(label: str, fn, device: torch.device, report: dict, out: Path):
    """fn(), its seconds and peak memory printed and recorded in ``report``, which is then saved to ``out``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    report["phases"][label] = {"seconds": round(seconds, 2), "peak_GiB": round(peak_gib(device), 3)}
    print(f"{label:<34} {seconds:8.1f} s   peak {peak_gib(device):6.2f} GiB", flush=True)
    save(report, out)
    return result


def exact_unrolling(run, query, scores: dict, truth: GroundTruth, unroll: int, device: torch.device, report: dict,
                    out: Path) -> None:
    """Exact unrolling of the first ``unroll`` queries through every step, and the LDS of every method on them."""
    few = query.subset(slice(0, unroll))
    every = auto_every(run, run.final.dtype)
    stored = stored_values(run.num_steps, run.final.numel(), every) * run.final.element_size() / 2 ** 30
    report["unrolling"] = {"steps": run.num_steps, "keep_every": every, "stored_trajectory_GiB": round(stored, 3)}
    print(f"exact unrolling: T = {run.num_steps}, keep_every = {every} ({stored:.2f} GiB of states)", flush=True)
    unrolled = timed(f"exact unrolling ({unroll} queries)", lambda: tdakit.attribute(
        run, few, "unrolled", progress=False), device, report, out)
    few_truth = GroundTruth(truth.masks, truth.values[:, :, :unroll], truth.protocol)
    with warnings.catch_warnings():  # a handful of queries: the interval is wide, and the report says how many
        warnings.simplefilter("ignore", UserWarning)
        judged = {label: lds(s.values[:unroll], few_truth) for label, s in scores.items()}
        judged["exact unrolling"] = lds(unrolled.values, few_truth)
    report["unrolling"]["lds"] = {}
    for label, interval in judged.items():
        report["unrolling"]["lds"][label] = [round(interval.value, 3), round(interval.low, 3), round(interval.high, 3)]
        print(f"LDS on {unroll} queries, {label:<26} {interval.value:6.3f} [{interval.low:.3f}, {interval.high:.3f}]")
    save(report, out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="CIFAR-10 folder (default: $TDAKIT_DATA or ~/.cache/tdakit/data)")
    parser.add_argument("--archive", default=None, help="a tar archive of a CIFAR-10 folder, unpacked to a temp dir")
    parser.add_argument("--tiny", action="store_true", help="the CPU setting: cifar10_cpu, 20 queries, M=6, R=1")
    parser.add_argument("--queries", type=int, default=None, help="queries (default 100; 20 with --tiny)")
    parser.add_argument("--subsets", type=int, default=None, help="LDS subsets M (default 20; 6 with --tiny)")
    parser.add_argument("--seeds", type=int, default=None, help="LDS seeds R (default 2; 1 with --tiny)")
    parser.add_argument("--width", type=int, default=None, help="ResNet-9 width (the paper: 64; --tiny: 8)")
    parser.add_argument("--precision", choices=hardware.PRECISIONS, default="float32",
                        help="score products in float32 or bf16 (float32 accumulation)")
    parser.add_argument("--unroll", type=int, default=None,
                        help="exact unrolling for the first Q queries (default 5; 2 with --tiny; 0: none)")
    parser.add_argument("--full", action="store_true",
                        help="then train on all 50,000 images (cifar10_full) and time influence and SOURCE there")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_cifar10_<device>.json)")
    args = parser.parse_args(argv)
    if args.unroll is not None and args.unroll < 0:
        parser.error(f"--unroll takes a number of queries >= 0 (0: no exact unrolling), got {args.unroll}")

    device = hardware.default_device()
    setting = preset("cifar10_cpu" if args.tiny else "cifar10")
    if args.width:
        setting = dataclasses.replace(setting, hidden=(args.width,), name=f"{setting.name} (width {args.width})")
    queries = args.queries or (20 if args.tiny else 100)
    subsets, seeds = args.subsets or (6 if args.tiny else 20), args.seeds or (1 if args.tiny else 2)
    unroll = min(queries, (2 if args.tiny else 5) if args.unroll is None else args.unroll)
    out = Path(args.out or Path(__file__).parent / "results" / f"gpu_cifar10_{device.type}.json")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    report = {"date": date.today().isoformat(), "device": name, "setting": setting.name, "queries": queries,
              "subsets_M": subsets, "seeds_R": seeds, "unrolled_queries": unroll, "precision": args.precision,
              "torch": torch.__version__, "phases": {}}
    print(f"{report['date']} | {name} | setting {setting.name} | {queries} queries | LDS with M = {subsets}, "
          f"R = {seeds} (the paper: M = 100, R = 5) | products in {args.precision}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = cifar.unpack(args.archive, tmp) if args.archive else Path(args.root or data_root())
        data = timed("load CIFAR-10", lambda: setting.data(root=root, progress=False), device, report, out)
    query = balanced_subset(data.query, queries)
    run = timed(f"train ResNet-9 ({setting.n_train} images)",
                lambda: setting.train(data, device=device, progress=False, cache=False), device, report, out)
    test = data.test.to(device=device)
    with torch.no_grad():
        accuracy = float((run.model(run.final, test.x).argmax(1) == test.y).float().mean())
    report["test_accuracy"] = round(accuracy, 4)
    report["parameters"] = run.model.num_trainable
    report["width"] = setting.hidden[0]
    print(f"{'test accuracy':<34} {accuracy:8.3f}   ({len(test)} images; {run.model.num_trainable:,} parameters)")

    configs = {"influence (EK-FAC)": ("influence", {"curvature": "ekfac"}),
               "SOURCE (L=3, C=6, EK-FAC)": ("source", {"segments": 3, "curvature": "ekfac"})}
    scores = {}
    for label, config in configs.items():  # one at a time, so that each has its own seconds and memory
        scores.update(timed(label, lambda label=label, config=config: attribute_many(
            run, query, {label: config}, progress=False, precision=args.precision), device, report, out))
    truth = timed(f"ground truth ({subsets * seeds} retrainings)", lambda: groundtruth(
        run, query, subsets=subsets, seeds=seeds, cache=False, progress=False), device, report, out)
    report["lds"] = {}
    for label, s in scores.items():
        interval = lds(s.values, truth)
        report["lds"][label] = [round(interval.value, 3), round(interval.low, 3), round(interval.high, 3)]
        print(f"LDS {label:<30} {interval.value:6.3f} [{interval.low:.3f}, {interval.high:.3f}]")
    save(report, out)
    if unroll:
        exact_unrolling(run, query, scores, truth, unroll, device, report, out)
    if args.full:  # the same methods on all 50,000 training images (no ground truth there)
        full_setting = dataclasses.replace(preset("cifar10_full"), hidden=setting.hidden)
        with tempfile.TemporaryDirectory() as tmp:
            root = cifar.unpack(args.archive, tmp) if args.archive else Path(args.root or data_root())
            full = timed("load all 50,000 training images", lambda: full_setting.data(root=root, progress=False),
                         device, report, out)
        full_run = timed("train ResNet-9 (50,000 images)", lambda: full_setting.train(
            full, device=device, progress=False, cache=False), device, report, out)
        for label, config in configs.items():
            timed(f"{label}, 50,000 images", lambda config=config: attribute_many(
                full_run, query, {"full": config}, progress=False, precision=args.precision), device, report, out)
    report["total_seconds"] = round(sum(p["seconds"] for p in report["phases"].values()), 1)
    print(f"{'total':<34} {report['total_seconds']:8.1f} s")
    save(report, out)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
