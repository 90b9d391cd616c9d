"""The same numbers on CUDA as on the CPU (float64, a small BatchNorm CNN): training, EK-FAC, SOURCE,
influence, TracIn, TRAK, checkpointed exact unrolling, ground truth and the bf16 products. Skipped on machines
without CUDA."""

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
    out["unrolled"] = tdakit.attribute(run, query, "unrolled", keep_every=2, progress=False).values.cpu()
    out["truth"] = groundtruth(run, query, subsets=4, seeds=2, cache=False, progress=False).values.cpu()
    return out


def test_cuda_gives_the_cpu_numbers():
    cpu, cuda = _everything("cpu"), _everything("cuda")
    assert torch.allclose(cpu["final"], cuda["final"], rtol=1e-8, atol=1e-10)
    for key in ("influence", "source", "fast_source", "tracin", "trak", "unrolled", "truth"):
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


@pytest.mark.parametrize("language_model", [False, True])
def test_a_transformer_on_cuda_gives_the_cpu_numbers(language_model):
    from tdakit.curvature import Kronecker
    from tdakit.text_models import CausalLM, TransformerClassifier

    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 30, (24, 8), generator=g)
    x[:, 6:] = 0  # padding
    if language_model:
        data, query = tdakit.Split(x, torch.roll(x, -1, 1)), tdakit.Split(x[:3], torch.roll(x[:3], -1, 1))
        task, curvature = tdakit.LanguageModeling(), Kronecker(fisher="true")  # the embeddings factored too
    else:
        y = (x[:, 0] > 15).long()
        data, query = tdakit.Split(x, y), tdakit.Split(x[:3], y[:3])
        task, curvature = tdakit.Classification(), "ggn"
    out = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = (CausalLM(30, width=8, heads=2, depth=1, max_length=8) if language_model
                 else TransformerClassifier(30, width=8, heads=2, depth=1, max_length=8))
        run = tdakit.train(model, data.to(device=device), tdakit.Recipe(lr=0.1, epochs=2, batch_size=6), task,
                           checkpoints=2, dtype=torch.float64, progress=False, cache=False)
        q = query.to(device=device)
        out[device] = [run.final.cpu(), tdakit.attribute(run, q, "source", curvature=curvature, segments=2,
                                                         progress=False).values.cpu(),
                       tdakit.attribute(run, q, "unrolled", progress=False).values.cpu()]
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8 * float(a.abs().max()))
