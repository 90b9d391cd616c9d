"""The same numbers on CUDA as on the CPU (float64, a small BatchNorm CNN): training, EK-FAC, SOURCE,
influence, TracIn, TRAK, ground truth and the bf16 products. Skipped on machines without CUDA."""

import pytest
import torch

import tdakit
from tdakit.attribution.unroll import unrolled_scores
from tdakit.evaluation import groundtruth

from .distributed_job import problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False on this machine)")


def _everything(device: str) -> dict:
    model, data, query, recipe = problem()
    data, query = data.to(torch.float64, device), query.to(torch.float64, device)
    run = tdakit.train(model, data, recipe, tdakit.Classification(), checkpoints=3, dtype=torch.float64,
                       progress=False, cache=False)
    out = {"final": run.final.cpu()}
    for method in ("influence", "source", "fast_source", "tracin", "trak"):
        out[method] = tdakit.attribute(run, query, method, progress=False).values.cpu()
    out["truth"] = groundtruth(run, query, subsets=4, seeds=2, cache=False, progress=False).values.cpu()
    return out


def test_cuda_gives_the_cpu_numbers():
    cpu, cuda = _everything("cpu"), _everything("cuda")
    assert torch.allclose(cpu["final"], cuda["final"], rtol=1e-8, atol=1e-10)
    for key in ("influence", "source", "fast_source", "tracin", "trak", "truth"):
        assert torch.allclose(cpu[key], cuda[key], rtol=1e-6, atol=1e-8 * float(cpu[key].abs().max())), key


def test_bf16_products_stay_close_to_float32_on_cuda():
    model, data, query, recipe = problem()
    run = tdakit.train(model, data.to(device="cuda"), recipe, tdakit.Classification(), checkpoints=3,
                       progress=False, cache=False)
    query = query.to(device="cuda")
    full = tdakit.attribute(run, query, "source", progress=False).values
    half = tdakit.attribute(run, query, "source", progress=False, precision="bf16").values
    assert float((half - full).norm() / full.norm()) < 2e-2


def test_exact_unrolling_on_cuda_gives_the_cpu_numbers(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16, momentum=0.9, weight_decay=1e-3)
    scores = {}
    for device in ("cpu", "cuda"):
        run = tdakit.train(tdakit.mlp(8, (12, 9), 1, "gelu"), train.to(device=device), recipe, tdakit.Regression(),
                           dtype=torch.float64, progress=False, cache=False)
        for written_out in (True, False):
            scores[device, written_out] = unrolled_scores(run, query.to(device=device), progress=False,
                                                          written_out=written_out).cpu()
    reference = scores["cpu", False]
    for key, value in scores.items():
        assert torch.allclose(value, reference, rtol=1e-8, atol=1e-10 * float(reference.abs().max())), key
