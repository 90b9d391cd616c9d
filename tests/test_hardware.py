"""Chunk sizes and bf16 score products (float32 accumulation), on the CPU."""

import pytest
import torch

import tdakit
from tdakit import hardware
from tdakit.grads import rows_per_chunk

from .distributed_job import problem


def test_bf16_products_round_the_inputs_but_accumulate_in_float32():
    # 2**18 products of exactly representable numbers: a bf16 running sum would stall at 256 (8 bits of
    # mantissa); float32 accumulation gets the exact count
    u, g = torch.ones(2, 2 ** 18), torch.ones(3, 2 ** 18)
    assert torch.equal(hardware.products(u, g, "bf16"), torch.full((2, 3), 2.0 ** 18, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    u, g = torch.randn(4, 5000, generator=gen), torch.randn(6, 5000, generator=gen)
    exact = u.double() @ g.double().T
    rel = (hardware.products(u, g, "bf16") - exact).abs() / (u.double().abs() @ g.double().abs().T)
    assert float(rel.max()) < 2 ** -7  # each factor rounded to 8 significant bits
    assert torch.allclose(hardware.products(u, g), exact, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.products(u, g, "fp8")


def test_attribute_with_bf16_products_is_close_to_float32():
    model, data, query, recipe = problem()
    run = tdakit.train(model, data, recipe, tdakit.Classification(), checkpoints=3, progress=False, cache=False)
    full = tdakit.attribute(run, query, "source", progress=False)
    half = tdakit.attribute(run, query, "source", progress=False, precision="bf16")
    assert half.settings["precision"] == "bf16" and "precision" not in full.settings
    assert 0 < float((half.values - full.values).norm() / full.values.norm()) < 1e-2
    with pytest.raises(ValueError, match="precision must be one of"):
        tdakit.attribute(run, query, "source", progress=False, precision="half")


def test_chunks_follow_the_memory_budget():
    assert rows_per_chunk(1000, budget_elements=10_000) == 10
    assert rows_per_chunk(10 ** 9) == 1
    assert rows_per_chunk(100) == 512  # capped
    assert hardware.element_budget("cpu") == hardware.CPU_ELEMENTS
    assert hardware.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_attribute_many_and_the_runner_take_a_precision_per_method():
    from tdakit.attribution import attribute_many
    from tdakit.experiment import Method, compute_scores

    model, data, query, recipe = problem()
    run = tdakit.train(model, data, recipe, tdakit.Classification(), checkpoints=3, progress=False, cache=False)
    many = attribute_many(run, query, {"a": ("tracin", {}), "b": ("tracin", {"precision": "bf16"})}, progress=False)
    alone = tdakit.attribute(run, query, "tracin", progress=False, precision="bf16")
    assert torch.equal(many["b"].values, alone.values) and not torch.equal(many["a"].values, many["b"].values)
    scores, _ = compute_scores(run, query, {"bf16": Method("tracin", precision="bf16")}, progress=False, cache=False)
    assert torch.equal(scores["bf16"].values, alone.values)
