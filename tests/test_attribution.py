"""SOURCE and influence functions against exact unrolling, closed forms and each other (float64)."""

import dataclasses

import numpy as np
import pytest
import torch

import tdakit
from tdakit.attribution import implied_damping, segments_of

from .conftest import smooth_mlp


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
