"""SOURCE and influence functions against exact unrolling, closed forms and each other (float64)."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import tdakit
from tdakit import curvature as curv
from tdakit.attribution import implied_damping, segments_of
from tdakit.datasets import Split
from tdakit.evaluation import spearman

from .conftest import smooth_mlp
from .references import dense_ggn, dense_hessian, loop_grads, trained

WD = 1e-3


def test_power_form_source_equals_unrolling_for_full_batch_gd(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.1, epochs=15, batch_size=64, momentum=0.0, weight_decay=1e-2,
                           schedule="linear")
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints="all",
                       dtype=torch.float64, progress=False)
    exact = tdakit.attribute(run, query, "unrolled", progress=False).values
    source = tdakit.attribute(run, query, "source", segments=run.num_steps, curvature="hessian",
                              form="power").values
    assert torch.allclose(source, exact, rtol=1e-9, atol=1e-12 * exact.abs().max())


def test_exp_form_approaches_power_form_for_small_steps(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.002, epochs=10, batch_size=64, momentum=0.0, weight_decay=1e-2)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=2,
                       dtype=torch.float64, progress=False)
    # the exp form refuses negative eigenvalues (see test_exp_source_refuses_an_indefinite_curvature): compare
    # both forms on the clipped Hessian, one fixed matrix per segment
    power = tdakit.attribute(run, query, "source", segments=2, curvature="hessian_clipped", form="power").values
    exp = tdakit.attribute(run, query, "source", segments=2, curvature="hessian_clipped", form="exp").values
    assert ((power - exp).norm() / power.norm()) < 1e-2


@pytest.fixture(scope="module")
def converged(small_regression):
    train, _ = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=30, batch_size=16, momentum=0.9, weight_decay=1e-2)
    return tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=[recipe.epochs * 4],
                        dtype=torch.float64, progress=False)


def test_one_segment_source_with_long_training_is_influence_with_damping_one_over_eta_k(converged,
                                                                                        small_regression):
    _, query = small_regression
    errors = []
    for scale in (1.0, 1e2, 1e4):
        run = dataclasses.replace(converged, lrs=converged.lrs * scale)  # eta K grows, curvature fixed
        eta_k = float(run.effective_lrs.sum())
        source = tdakit.attribute(run, query, "source", segments=1).values
        influence = tdakit.attribute(run, query, "influence", damping=1 / eta_k).values
        errors.append(float((source - influence).norm() / influence.norm()))
    assert errors[0] < 0.3 and errors[2] < 1e-3 and errors[2] < errors[1] < errors[0], errors


def test_duplicate_checkpoints_give_the_same_scores_as_one(converged, small_regression):
    _, query = small_regression
    once = tdakit.attribute(converged, query, "source", segments=1).values
    twice = dataclasses.replace(converged, checkpoints=converged.checkpoints.repeat(2, 1),
                                checkpoint_steps=converged.checkpoint_steps.repeat(2))
    assert torch.allclose(tdakit.attribute(twice, query, "source", segments=1).values, once, rtol=1e-10)


def test_fast_source_equals_source_with_one_checkpoint_per_segment(small_regression):
    train, query = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=6, batch_size=16), tdakit.Regression(),
                       checkpoints=3, dtype=torch.float64, progress=False)
    source = tdakit.attribute(run, query, "source", segments=3).values
    fast = tdakit.attribute(run, query, "fast_source", segments=3).values
    assert torch.allclose(source, fast, rtol=1e-10)
    two = tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=6, batch_size=16), tdakit.Regression(),
                       checkpoints=6, dtype=torch.float64, progress=False)
    assert not torch.allclose(tdakit.attribute(two, query, "source", segments=3).values,
                              tdakit.attribute(two, query, "fast_source", segments=3).values)


def test_influence_equals_the_closed_form_for_linear_regression():
    rng = np.random.default_rng(0)
    n, d, wd = 50, 3, 0.05
    x, w_true = rng.normal(size=(n, d)), rng.normal(size=d)
    y = x @ w_true + 0.3 * rng.normal(size=n)
    xq = rng.normal(size=(4, d))
    yq = xq @ w_true
    X = np.hstack([x, np.ones((n, 1))])  # nn.Linear packs weight then bias
    Xq = np.hstack([xq, np.ones((4, 1))])
    # ridge optimum of mean (g - y)^2 + wd/2 |theta|^2 with per-example weights w
    def optimum(w):
        return np.linalg.solve(2 * X.T @ (w[:, None] * X) / n + wd * np.eye(d + 1), 2 * X.T @ (w * y) / n)

    theta = optimum(np.ones(n))
    data = tdakit.datasets.Split(torch.tensor(x), torch.tensor(y))
    query = tdakit.datasets.Split(torch.tensor(xq), torch.tensor(yq))
    recipe = tdakit.Recipe(lr=0.01, epochs=1, batch_size=n, momentum=0.0, weight_decay=wd)
    run = tdakit.train(torch.nn.Linear(d, 1), data, recipe, tdakit.Regression(), dtype=torch.float64,
                       progress=False)
    run = dataclasses.replace(run, final=torch.tensor(theta))
    # exact derivative of |g_q - y_q| at the optimum, by finite differences of the closed form
    eps = 1e-6
    expected = np.zeros((4, n))
    for i in range(n):
        up, down = np.ones(n), np.ones(n)
        up[i] += eps
        down[i] -= eps
        expected[:, i] = (np.abs(Xq @ optimum(up) - yq) - np.abs(Xq @ optimum(down) - yq)) / (2 * eps)
    for curvature in ("hessian", "ggn"):
        scores = tdakit.attribute(run, query, "influence", damping=0.0, curvature=curvature).values
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_implied_damping_is_one_over_the_summed_effective_rate(converged):
    assert implied_damping(converged) == pytest.approx(1 / (0.05 / 0.1 * converged.num_steps))


def test_segment_specs(converged):
    T = converged.num_steps
    run = dataclasses.replace(converged, checkpoint_steps=torch.tensor([10, 50, T]),
                              checkpoints=converged.checkpoints.repeat(3, 1))
    parts = segments_of(run, [0, 40, T])
    assert [(p.start, p.stop, p.checkpoints) for p in parts] == [(0, 40, (0,)), (40, T, (1, 2))]
    with pytest.raises(ValueError, match="segment 1 .* contains no checkpoint"):
        segments_of(run, [0, 60, 100, T])
    with pytest.raises(ValueError, match="increase strictly from 0"):
        segments_of(run, [0, 40, 30, T])
    with pytest.raises(ValueError, match="increase strictly from 0"):
        segments_of(run, [5, T])
    with pytest.raises(ValueError, match="between 1 and the number of steps"):
        segments_of(run, T + 1)


def test_unknown_method_lists_the_available_ones(converged, small_regression):
    with pytest.raises(ValueError, match="unknown method 'lissa'; available: unrolled, influence, source, fast_source"):
        tdakit.attribute(converged, small_regression[1], "lissa")


def test_unknown_settings_say_what_the_method_takes(converged, small_regression):
    with pytest.raises(ValueError, match="influence does not take segments; it takes damping, curvature, theta"):
        tdakit.attribute(converged, small_regression[1], "influence", segments=3)
    with pytest.raises(ValueError, match="fast_source does not take damping"):
        tdakit.attribute(converged, small_regression[1], "fast_source", damping=0.1)


def _relu_run(small_regression, wd=1e-3):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=6, batch_size=16, weight_decay=wd)
    return tdakit.train(tdakit.mlp(8, (10,)), train, recipe, tdakit.Regression(), checkpoints=3, dtype=torch.float64,
                        progress=False, cache=False), query


def test_source_refuses_an_indefinite_curvature_instead_of_overflowing(small_regression):
    run, query = _relu_run(small_regression)
    H = dense_hessian(run.model, run.task, run.final, run.train, run.recipe.weight_decay)
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-3  # the premise: a negative eigenvalue
    for scale in (1.0, 1e3):
        scaled = dataclasses.replace(run, lrs=run.lrs * scale)
        with pytest.raises(ValueError, match="negative eigenvalue.*hessian_clipped"):
            tdakit.attribute(scaled, query, "source", segments=1, curvature="hessian", progress=False)
        clipped = tdakit.attribute(scaled, query, "source", segments=1, curvature="hessian_clipped", progress=False)
        assert torch.isfinite(clipped.values).all()


def test_influence_without_damping_on_a_singular_curvature_names_the_fix(small_regression):
    run, query = _relu_run(small_regression, wd=0.0)
    with pytest.raises(ValueError, match="zero eigenvalue.*positive damping"):
        tdakit.attribute(run, query, "influence", damping=0, curvature="ggn", progress=False)
    assert torch.isfinite(tdakit.attribute(run, query, "influence", curvature="ggn", progress=False).values).all()


def test_non_finite_parameters_give_an_error_not_nan_scores(small_regression):
    run, query = _relu_run(small_regression)
    broken = dataclasses.replace(run, final=run.final * float("nan"))
    with pytest.raises(ValueError, match="non-finite scores"):
        tdakit.attribute(broken, query, "grad_dot", progress=False)


def test_representation_similarity_follows_the_score_convention(concrete):
    """Its scores rank like exact unrolling (the previous +cosine ranked against it on Concrete)."""
    train, query = concrete.train.subset(slice(0, 200)), concrete.query.subset(slice(0, 20))
    run = tdakit.train(tdakit.mlp(8, (32, 32)), train, tdakit.Recipe(epochs=10), tdakit.Regression(),
                       progress=False, cache=False)
    exact = tdakit.attribute(run, query, "unrolled", progress=False).values.double()
    rep = tdakit.attribute(run, query, "representation", progress=False).values.double()
    assert float(spearman(rep, exact).mean()) > 0.2
    assert float(spearman(-rep.abs(), exact).mean()) < float(spearman(rep, exact).mean())


def test_heuristic_damping_is_a_tenth_of_the_mean_loss_eigenvalue(small_regression):
    """Weight decay excluded from the mean, whatever the backend; per layer for Kronecker curvature; with the
    weight decay left out of the curvature too, the kronfluence heuristic exactly."""
    train, query = small_regression
    run = trained(smooth_mlp((6,)), train, tdakit.Regression(), wd=0.05)
    v = tdakit.grads.measurement_grads(run.model, run.task, run.final, query)
    g = loop_grads(run.model, run.task, run.final, train)
    G = dense_ggn(run.model, run.task, run.final, train, 0.05)
    P = run.model.num_params
    damping = 0.1 * (float(G.trace()) / P - 0.05)
    expected = -torch.linalg.solve(G + damping * torch.eye(P, dtype=G.dtype), v.T).T @ g.T / run.num_train
    got = tdakit.attribute(run, query, "influence", curvature="ggn", damping="heuristic", progress=False).values
    assert torch.allclose(got, expected, rtol=1e-8)
    for include in (True, False):
        K = curv.Kronecker(include_weight_decay=include)
        H = K.fit(run.model, run.task, run.final[None], train, 0.05)
        M = H.dense()
        u = torch.zeros_like(v)
        for layer in H.layers:
            idx = torch.zeros(P, dtype=torch.bool)
            idx[layer.slot.weight] = True
            idx[layer.slot.bias] = True
            block = M[idx][:, idx]
            mean_loss = float(block.trace()) / len(block) - (0.05 if include else 0.0)
            u[:, idx] = torch.linalg.solve(block + 0.1 * mean_loss * torch.eye(len(block), dtype=M.dtype),
                                           v[:, idx].T).T
        got = tdakit.attribute(run, query, "influence", curvature=K, damping="heuristic", progress=False).values
        assert torch.allclose(got, -u @ g.T / run.num_train, rtol=1e-8), include


def test_power_form_source_equals_unrolling_on_a_weighted_run(small_regression):
    """Curvature, gradients and 1/N of a run trained with weights w (some zero): still the exact identity."""
    train, query = small_regression
    w = torch.rand(len(train), generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    w[[1, 7, 30]] = 0.0
    recipe = tdakit.Recipe(lr=0.1, epochs=10, batch_size=len(train), momentum=0.0, weight_decay=1e-2)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints="all", weights=w,
                       dtype=torch.float64, progress=False, cache=False)
    exact = tdakit.attribute(run, query, "unrolled", progress=False).values
    source = tdakit.attribute(run, query, "source", segments=run.num_steps, curvature="hessian", form="power",
                              progress=False).values
    assert torch.allclose(source, exact, rtol=1e-9, atol=1e-12 * float(exact.abs().max()))


def test_weighted_influence_equals_the_closed_form_for_linear_regression():
    rng = np.random.default_rng(1)
    n, d, wd = 40, 3, 0.05
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    xq = rng.normal(size=(3, d))
    yq = xq @ rng.normal(size=d)
    X, Xq = np.hstack([x, np.ones((n, 1))]), np.hstack([xq, np.ones((3, 1))])
    w0 = rng.uniform(0.3, 2.0, size=n)
    w0[:4] = 0.0

    def optimum(w):
        return np.linalg.solve(2 * X.T @ (w[:, None] * X) / n + wd * np.eye(d + 1), 2 * X.T @ (w * y) / n)

    eps, expected = 1e-6, np.zeros((3, n))
    for i in range(n):
        up, down = w0.copy(), w0.copy()
        up[i] += eps
        down[i] -= eps
        expected[:, i] = (np.abs(Xq @ optimum(up) - yq) - np.abs(Xq @ optimum(down) - yq)) / (2 * eps)
    data, query = Split(torch.tensor(x), torch.tensor(y)), Split(torch.tensor(xq), torch.tensor(yq))
    recipe = tdakit.Recipe(lr=0.01, epochs=1, batch_size=n, momentum=0.0, weight_decay=wd)
    run = tdakit.train(nn.Linear(d, 1), data, recipe, tdakit.Regression(), weights=torch.tensor(w0),
                       dtype=torch.float64, progress=False, cache=False)
    run = dataclasses.replace(run, final=torch.tensor(optimum(w0)))
    for curvature in ("hessian", "ggn", "ekfac"):
        scores = tdakit.attribute(run, query, "influence", damping=0.0, curvature=curvature, progress=False).values
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6, atol=1e-9, err_msg=curvature)
