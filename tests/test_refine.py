"""Refined inverse products: the EK-FAC-preconditioned iteration against the exact damped Gauss-Newton solve."""

import pytest
import torch

import tdakit
from tdakit import curvature as curv
from tdakit.attribution.influence import damped_inverse
from tdakit.attribution.refine import Refine, damping_vector, refined_solve
from tdakit.grads import measurement_grads, output_jacobians


@pytest.fixture(scope="module")
def classifier():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] ** 2 > 1).long() + (x[:, 2] > 0.5).long()
    data = tdakit.Split(x, y)
    recipe = tdakit.Recipe(lr=0.1, epochs=5, batch_size=32, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(tdakit.mlp(6, (16, 16), 3, "tanh"), data, recipe, tdakit.Classification(),
                       dtype=torch.float64, progress=False, cache=False)
    return run, data.subset(slice(0, 5))


def exact_solve(run, H, fn, v, theta=None):
    """(G + D)^{-1} v on the parameters the curvature covers, G the dense Gauss-Newton from output Jacobians at
    theta (default: the final parameters)."""
    A = output_jacobians(run.model, run.task, run.final if theta is None else theta, run.train)  # [n, o, P]
    G = torch.einsum("nop,noq->pq", A, A) / run.num_train
    D, kept = damping_vector(H, fn, v.shape[-1], v.dtype, v.device)
    out = torch.zeros_like(v)
    out[:, kept] = torch.linalg.solve(G[kept][:, kept] + torch.diag(D[kept]), v[:, kept].T).T
    return out


@pytest.mark.parametrize("damping, iterations, tolerance", [(1e-2, 400, 1e-5), ("heuristic", 600, 1e-2)])
def test_the_refined_solve_reaches_the_exact_damped_gauss_newton_solve(classifier, damping, iterations, tolerance):
    run, query = classifier
    H = curv.Kronecker(fisher="ggn", include_weight_decay=True).fit(run.model, run.task, run.final[None], run.train,
                                                                    run.recipe.weight_decay)
    fn = damped_inverse(H, damping, run)
    v = measurement_grads(run.model, run.task, run.final, query)
    exact = exact_solve(run, H, fn, v)
    start = float((H.apply(fn, v) - exact).norm() / exact.norm())
    assert start > 0.5  # EK-FAC alone is far off here: the test can fail
    full = refined_solve(H, fn, v, run.model, run.task, run.final, run.train, None,
                         Refine(iterations=iterations, batch=run.num_train, halve_every=10 ** 6))
    assert float((full.x - exact).norm() / exact.norm()) < tolerance
    assert full.history[-1] < full.history[0] / 100
    noisy = refined_solve(H, fn, v, run.model, run.task, run.final, run.train, None, Refine(iterations=200, batch=64))
    assert float((noisy.x - exact).norm() / exact.norm()) < start / 2  # minibatches: closer, not exact


def test_zero_iterations_are_the_kronecker_answer_bit_for_bit_and_the_solve_is_deterministic(classifier):
    run, query = classifier
    plain = tdakit.attribute(run, query, "influence", curvature="ekfac", progress=False)
    assert torch.equal(plain.values, tdakit.attribute(run, query, "influence", curvature="ekfac", refine=0,
                                                      progress=False).values)
    a = tdakit.attribute(run, query, "influence", curvature="ekfac", refine=20, progress=False)
    b = tdakit.attribute(run, query, "influence", curvature="ekfac", refine=Refine(iterations=20), progress=False)
    assert torch.equal(a.values, b.values) and not torch.equal(a.values, plain.values)
    assert len(a.diagnostics["residuals"]) == 20 and a.settings["refine"] == 20
    other = tdakit.attribute(run, query, "influence", curvature="ekfac", refine=Refine(iterations=20, seed=1),
                             progress=False)
    assert not torch.equal(other.values, a.values)  # the seed draws the minibatches


@pytest.mark.parametrize("method, settings", [("influence", {}), ("source", {"segments": 2})])
def test_recorded_iterates_score_as_the_solve_of_that_many_iterations(classifier, method, settings):
    run, query = classifier
    got = tdakit.attribute(run, query, method, curvature="ekfac", refine=Refine(iterations=30, record=(0, 10, 30)),
                           progress=False, **settings)
    by_iteration = got.diagnostics["by_iteration"]
    assert sorted(by_iteration) == [0, 10, 30]
    for t in (0, 10):  # computed separately: what refine=t returns
        alone = tdakit.attribute(run, query, method, curvature="ekfac", refine=t, progress=False, **settings).values
        assert torch.allclose(by_iteration[t], alone, rtol=0, atol=1e-12 * float(alone.abs().max()))
    assert torch.allclose(by_iteration[30], got.values, rtol=0, atol=1e-12 * float(got.values.abs().max()))
    assert not torch.allclose(by_iteration[10], by_iteration[0])
    many = tdakit.attribute_many(run, query, {"r": (method, {"curvature": "ekfac", "refine": Refine(10, record=(0,)),
                                                             **settings})}, progress=False)["r"]
    assert torch.allclose(many.diagnostics["by_iteration"][0], by_iteration[0], rtol=0, atol=1e-12)


def test_refine_settings_are_checked(classifier):
    run, query = classifier
    for bad in (-1, 1.5, True):
        with pytest.raises(tdakit.TdakitError, match="refine"):
            tdakit.attribute(run, query, "influence", curvature="ekfac", refine=bad, progress=False)
    for record in ((0, 21), [0, 5], (0.5,)):
        with pytest.raises(tdakit.TdakitError, match="record"):
            Refine(iterations=20, record=record)
    with pytest.raises(tdakit.TdakitError, match="Kronecker curvature"):
        tdakit.attribute(run, query, "influence", curvature="ggn", refine=5, progress=False)


def test_source_refines_each_segment_toward_the_exact_solve_with_damping_one_over_eta_k(classifier):
    from tdakit.attribution.source import segments_of, source_walk

    run, query = classifier
    plain = tdakit.attribute(run, query, "source", segments=2, curvature="ekfac", progress=False)
    assert torch.equal(plain.values, tdakit.attribute(run, query, "source", segments=2, curvature="ekfac", refine=0,
                                                      progress=False).values)
    refined = tdakit.attribute(run, query, "source", segments=2, curvature="ekfac", refine=5, progress=False)
    assert len(refined.diagnostics["residuals"]) == 2 and not torch.equal(refined.values, plain.values)
    # one segment of Fast-SOURCE: u = (G(theta_bar) + weight decay + 1/(eta K))^{-1} v, refined from EK-FAC's Fbar v
    v = measurement_grads(run.model, run.task, run.final, query)
    plan, _ = source_walk(run, v, segments=1, curvature="ekfac", fast=True, progress=False,
                          refine=Refine(iterations=400, batch=run.num_train, halve_every=10 ** 6))
    segment = segments_of(run, 1)[0]
    theta_bar = run.checkpoints[list(segment.checkpoints)].mean(0)
    eta = float(run.effective_lrs[segment.start:segment.stop].mean())
    H = curv.fit("ekfac", run.model, run.task, theta_bar[None], run.train, run.recipe.weight_decay)
    exact = exact_solve(run, H, curv.functions.inverse(1.0 / (eta * segment.steps)), v, theta_bar)
    got = plan.terms[0].u
    assert float((got - exact).norm() / exact.norm()) < 1e-4


def test_gauss_newton_products_and_the_refined_solve_through_convolutions_and_pooling():
    from torch import nn

    from tdakit.attribution.refine import gauss_newton_products

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 6, 6, generator=g, dtype=torch.float64)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()
    data = tdakit.Split(x, y)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 3))
    recipe = tdakit.Recipe(lr=0.05, epochs=5, batch_size=10, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(net, data, recipe, tdakit.Classification(), dtype=torch.float64, progress=False, cache=False)
    v = measurement_grads(run.model, run.task, run.final, data.subset(slice(0, 3)))
    A = output_jacobians(run.model, run.task, run.final, run.train)
    G = torch.einsum("nop,noq->pq", A, A) / len(data)
    weights = torch.full((60,), 1 / 60, dtype=torch.float64)
    products = gauss_newton_products(run.model, run.task, run.final, data.x, data.y, weights, v)
    assert torch.allclose(products, v @ G, rtol=1e-10, atol=1e-14)
    H = curv.fit("ekfac", run.model, run.task, run.final[None], run.train, run.recipe.weight_decay)
    fn = damped_inverse(H, "implied", run)
    exact = exact_solve(run, H, fn, v)
    solve = refined_solve(H, fn, v, run.model, run.task, run.final, run.train, None,
                          Refine(iterations=500, batch=60, halve_every=10 ** 6))
    assert float((solve.x - exact).norm() / exact.norm()) < 1e-8
