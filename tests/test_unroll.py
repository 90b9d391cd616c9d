"""Exact unrolled differentiation against central finite differences of the weighted training run."""

import pytest
import torch

import tdakit
from tdakit.attribution.unroll import replay, unrolled_scores

from .references import measure_with_weights as _measure_with_weights
from .references import smooth_mlp


@pytest.mark.parametrize("written_out", [True, False], ids=["written-out step", "torch.func step"])
def test_unrolled_scores_equal_finite_differences(small_regression, written_out):
    train, query = small_regression
    # momentum, weight decay, a short last batch (64 = 6 x 10 + 4) and a warm-up schedule
    recipe = tdakit.Recipe(lr=0.05, epochs=4, batch_size=10, momentum=0.9, weight_decay=1e-3,
                           schedule="warmup_linear", warmup=0.2)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), dtype=torch.float64, progress=False)
    scores = tdakit.attribute(run, query, "unrolled", progress=False).values if written_out else \
        unrolled_scores(run, query, progress=False, written_out=False)
    eps = 1e-5
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(64, (6,), generator=g).tolist():
        up, down = torch.ones(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
        up[i] += eps
        down[i] -= eps
        fd = (_measure_with_weights(run, query, up) - _measure_with_weights(run, query, down)) / (2 * eps)
        rel = (fd - scores[:, i]).abs().max() / fd.abs().max()
        assert rel < 1e-5, (i, rel)


def test_unrolled_scores_for_classification_margin_equal_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    data = tdakit.datasets.Split(x, y)
    query = data.subset(slice(0, 4))
    recipe = tdakit.Recipe(lr=0.1, epochs=3, batch_size=8, momentum=0.5, weight_decay=1e-3)
    run = tdakit.train(tdakit.mlp(5, (8,), 3, "tanh"), data, recipe, tdakit.Classification(),
                       dtype=torch.float64, progress=False)
    scores = tdakit.attribute(run, query, "unrolled", progress=False).values
    eps = 1e-5
    for i in (0, 17, 39):
        up, down = torch.ones(40, dtype=torch.float64), torch.ones(40, dtype=torch.float64)
        up[i] += eps
        down[i] -= eps
        fd = (_measure_with_weights(run, query, up) - _measure_with_weights(run, query, down)) / (2 * eps)
        assert torch.allclose(scores[:, i], fd, rtol=1e-5, atol=1e-9 * fd.abs().max())


def test_replay_reproduces_the_run(small_regression):
    train, _ = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=2, batch_size=16), tdakit.Regression(),
                       dtype=torch.float64, progress=False)
    assert torch.equal(replay(run)[-1], run.final)


def test_trajectory_specific_leave_one_out_is_predicted_by_minus_the_score(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=3, batch_size=16, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), dtype=torch.float64, progress=False)
    scores = tdakit.attribute(run, query, "unrolled", progress=False).values
    points = list(range(0, 64, 4))
    actual = tdakit.leave_one_out(run, query, points, trajectory_specific=True, progress=False)  # [16, Q]
    predicted = -scores[:, points].T
    corr = torch.corrcoef(torch.stack([actual.flatten(), predicted.flatten()]))[0, 1]
    # removing a whole point (1 of 16 in its batches) is a finite step: first order is close, not exact
    assert corr > 0.95, corr
    assert ((actual - predicted).norm() / actual.norm()) < 0.3
