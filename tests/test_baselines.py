"""Baselines (TracIn, TRAK, similarities) and ensembles against independent references."""

import dataclasses

import pytest
import torch

import tdakit
from tdakit.attribution.tracin import checkpoint_rates
from tdakit.grads import loss_grads, measurement_grads

from .conftest import smooth_mlp


@pytest.fixture(scope="module")
def run_and_query(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=4, batch_size=16, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=4, dtype=torch.float64,
                       progress=False)
    return run, query


def test_checkpoint_rates_partition_the_run(run_and_query):
    run, _ = run_and_query
    rates = checkpoint_rates(run)
    assert len(rates) == 4 and (rates > 0).all()
    assert float(rates.sum()) == pytest.approx(float(run.effective_lrs.sum()), rel=1e-12)


def test_tracin_over_every_step_approaches_unrolling_for_small_rates(small_regression):
    """Without momentum, TracIn over all steps is unrolling with the Hessian terms dropped: the gap
    shrinks like the learning rate."""
    train, query = small_regression
    gaps = []
    for lr in (1e-2, 1e-3):
        recipe = tdakit.Recipe(lr=lr, epochs=2, batch_size=16, momentum=0.0, weight_decay=0.0)
        run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints="all", dtype=torch.float64,
                           progress=False)
        exact = tdakit.attribute(run, query, "unrolled").values
        tracin = tdakit.attribute(run, query, "tracin").values
        gaps.append(float((tracin - exact).norm() / exact.norm()))
    assert gaps[1] < 0.02 and gaps[1] < gaps[0] / 5, gaps


def test_grad_dot_is_tracin_with_the_final_parameters(run_and_query):
    run, query = run_and_query
    final_only = dataclasses.replace(run, checkpoints=run.final[None], checkpoint_steps=torch.tensor([run.num_steps]))
    assert torch.allclose(tdakit.attribute(run, query, "grad_dot").values,
                          tdakit.attribute(final_only, query, "tracin").values, rtol=1e-10)


def test_grad_cos_and_representation_against_a_loop(run_and_query):
    run, query = run_and_query
    v = measurement_grads(run.model, run.task, run.final, query)
    g = loss_grads(run.model, run.task, run.final, run.train)
    cos = tdakit.attribute(run, query, "grad_cos").values
    for q in range(len(query)):
        for i in (0, 7, 63):
            expected = -torch.dot(v[q], g[i]) / (v[q].norm() * g[i].norm())
            assert float(cos[q, i]) == pytest.approx(float(expected), rel=1e-9)
    params = run.model.unflatten(run.final)
    hidden = lambda x: torch.tanh(x @ params["0.weight"].T + params["0.bias"])  # noqa: E731
    rep = tdakit.attribute(run, query, "representation").values
    similar = torch.nn.functional.cosine_similarity(hidden(query.x)[:, None], hidden(run.train.x)[None], dim=-1)
    # one output: the output-gradient cosine is sign(g_q - y_q) sign(g_i - y_i); a point whose residual has
    # the query's sign pulls the prediction the query's way: up-weighting it lowers the error (negative)
    side_q = torch.sign(run.model(run.final, query.x)[:, 0] - query.y)
    side_i = torch.sign(run.model(run.final, run.train.x)[:, 0] - run.train.y)
    assert torch.allclose(rep, -similar * side_q[:, None] * side_i[None], atol=1e-12)


def test_trak_without_projection_is_influence_with_the_empirical_fisher(run_and_query):
    run, query = run_and_query
    damping = 0.05
    g = loss_grads(run.model, run.task, run.final, run.train)
    v = measurement_grads(run.model, run.task, run.final, query)
    fisher = g.T @ g / len(g) + damping * torch.eye(g.shape[1], dtype=torch.float64)
    expected = -torch.linalg.solve(fisher, v.T).T @ g.T / len(g)
    trak = tdakit.attribute(run, query, "trak", projection=1000, damping=damping).values
    assert torch.allclose(trak, expected, rtol=1e-8, atol=1e-12 * float(expected.abs().max()))
    projected = tdakit.attribute(run, query, "trak", projection=6, damping=damping).values
    corr = torch.corrcoef(torch.stack([projected.flatten(), expected.flatten()]))[0, 1]
    assert 0.5 < corr < 1 - 1e-6  # projected: close, not equal


def test_train_ensemble_matches_separate_runs_and_averages_scores(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16, weight_decay=1e-3)
    runs = tdakit.train_ensemble(smooth_mlp(), train, recipe, tdakit.Regression(), members=2, first_seed=3,
                                 checkpoints=2,
                                 dtype=torch.float64, progress=False)
    for run in runs:
        alone = tdakit.train(smooth_mlp(), train, run.recipe, tdakit.Regression(), checkpoints=2,
                             dtype=torch.float64, progress=False)
        assert torch.allclose(run.final, alone.final, atol=1e-10)
        assert torch.allclose(run.checkpoints, alone.checkpoints, atol=1e-10)
        assert torch.equal(run.batches, alone.batches)
    mean = tdakit.ensemble(runs, query, "tracin")
    parts = [tdakit.attribute(r, query, "tracin").values for r in runs]
    assert mean.method == "tracin ensemble" and torch.allclose(mean.values, (parts[0] + parts[1]) / 2)
    with pytest.raises(ValueError, match="at least one run"):
        tdakit.ensemble([], query, "tracin")
