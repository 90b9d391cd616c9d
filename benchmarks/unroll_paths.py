"""Exact unrolling's reverse pass: the written-out step for Linear/activation stacks against torch.func.

    python benchmarks/unroll_paths.py                # the `concrete` preset, 103 queries x 896 points
    python benchmarks/unroll_paths.py --repeats 5

Both reverse passes run on the same replayed trajectory, alternated in one process (medians over repeats,
their ratio); the FLOPs of one step of each are counted exactly (torch.utils.flop_counter) to give the
rate reached. Also timed: the loss's output derivatives [B, o] and [B, o, o] per step, by per-example
torch.func transforms and by the one autograd call the written-out step uses. The largest difference
between the two results is printed too (float32 round-off). Writes benchmarks/results/unroll_paths.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from common import median_seconds
from torch.func import hessian, jacrev, vmap
from torch.utils.flop_counter import FlopCounterMode

import tdakit
from tdakit.attribution.unroll import replay, unrolled_adjoint
from tdakit.attribution.unroll_stack import StackStep
from tdakit.grads import measurement_grads, output_derivatives
from tdakit.presets import preset
from tdakit.sgd import batch_coefficients


def _addmm_flops(_input, a, b, *_, out_shape=None, **__) -> int:  # shapes: a [n, k], b [k, m]
    return 2 * a[0] * a[1] * b[1]


def _baddbmm_flops(_input, a, b, *_, out_shape=None, **__) -> int:  # a [batch, n, k], b [batch, k, m]
    return 2 * a[0] * a[1] * a[2] * b[2]


def reverse_step_flops(run, thetas, v, written_out: bool) -> int:
    """Matrix-product FLOPs of one reverse step: the run cut to its middle batch, counted exactly."""
    k = run.num_steps // 2
    one_step = dataclasses.replace(run, batches=run.batches[k:k + 1], lrs=run.lrs[k:k + 1],
                                   checkpoints=run.checkpoints[:0], checkpoint_steps=run.checkpoint_steps[:0])
    aten = torch.ops.aten
    # the in-place forms the written-out step accumulates with are not in the counter's registry
    in_place = {aten.addmm_: _addmm_flops, aten.baddbmm_: _baddbmm_flops}
    counter = FlopCounterMode(display=False, custom_mapping=in_place)
    with counter:
        unrolled_adjoint(one_step, v, progress=False, thetas=thetas[k:k + 2], written_out=written_out)
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    data = tdakit.datasets.load("concrete")
    run = preset("concrete").train(data, progress=False)
    thetas = replay(run)
    v = measurement_grads(run.model, run.task, thetas[-1], data.query)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {run.model.num_params} parameters, "
          f"{run.num_steps} steps, {len(v)} queries x {len(data.train)} points")

    times: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(args.repeats):
        for written_out in (True, False):
            start = time.perf_counter()
            results[written_out] = unrolled_adjoint(run, v, progress=False, thetas=thetas, written_out=written_out)[0]
            times[written_out].append(time.perf_counter() - start)
    seconds = {key: statistics.median(value) for key, value in times.items()}
    flops = {key: reverse_step_flops(run, thetas, v, key) * run.num_steps for key in (True, False)}
    difference = float((results[True] - results[False]).abs().max() / results[False].abs().max())
    for key, name in ((False, "torch.func vjp per step"), (True, "written-out step")):
        print(f"{name:>24}: {seconds[key]:.2f} s (median of {args.repeats}; runs "
              f"{', '.join(f'{t:.2f}' for t in times[key])}), {flops[key] / 1e9:.0f} GFLOP of matrix products, "
              f"{flops[key] / seconds[key] / 1e9:.0f} GFLOP/s")
    print(f"ratio written-out / torch.func: {seconds[True] / seconds[False]:.2f}; largest score difference "
          f"{difference:.1e} of the largest score")

    k = run.num_steps // 2
    idx = run.batches[k]
    outputs = run.model(thetas[k], data.train.x[idx])
    targets = data.train.y[idx]

    def example_loss(output, target):
        return run.task.loss(output[None], target[None])[0]

    per_example = (vmap(jacrev(example_loss)), vmap(hessian(example_loss)))
    _, func_s = median_seconds(lambda: [f(outputs, targets) for f in per_example], 50)
    _, autograd_s = median_seconds(lambda: output_derivatives(run.task, outputs, targets), 50)
    print(f"loss output derivatives per step: per-example torch.func {func_s * 1e3:.2f} ms, one autograd call "
          f"{autograd_s * 1e3:.2f} ms (medians of 50)")
    step = StackStep.for_model(run.model, run.task)
    params = run.model.parameter_tensors(thetas[k])
    mu = tuple(t.contiguous() for t in run.model.parameter_tensors(v))
    out = tuple(torch.zeros_like(t) for t in mu)
    c = batch_coefficients(idx, run.weights)
    _, step_s = median_seconds(lambda: step(params, data.train.x[idx], targets, c, mu, out), 50)
    print(f"one written-out step alone: {step_s * 1e3:.1f} ms (median of 50), "
          f"{flops[True] / run.num_steps / step_s / 1e9:.0f} GFLOP/s")

    out_path = Path(__file__).parent / "results" / "unroll_paths.json"
    out_path.write_text(json.dumps({"seconds": {"written_out": times[True], "torch_func": times[False]},
                                    "gflop": {"written_out": flops[True] / 1e9, "torch_func": flops[False] / 1e9},
                                    "max_relative_difference": difference,
                                    "output_derivative_ms": {"torch_func": func_s * 1e3, "autograd": autograd_s * 1e3},
                                    "step_ms": step_s * 1e3}, indent=1) + "\n")


if __name__ == "__main__":
    main()
