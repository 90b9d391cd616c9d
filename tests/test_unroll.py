"""Exact unrolled differentiation against central finite differences of the weighted training run."""

import json

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


@pytest.mark.parametrize("every", [1, 2, 3, 7, 100])
def test_a_checkpointed_trajectory_serves_the_replayed_states_bit_for_bit(small_regression, every):
    from tdakit.attribution.trajectory import Trajectory

    train, _ = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=3, batch_size=10, momentum=0.9, weight_decay=1e-3)  # 21 steps
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), dtype=torch.float64, progress=False,
                       cache=False)
    whole = replay(run)
    walk = Trajectory(run, keep_every=every)
    assert torch.equal(walk.final, run.final)
    for k in reversed(range(run.num_steps + 1)):  # the order the reverse pass asks in
        assert torch.equal(walk[k], whole[k]), (every, k)
    T, P = run.num_steps, run.model.num_params
    expected = (T + 1) * P if every == 1 else 2 * -(-T // every) * P + min(every, T) * P  # checkpoints + a stretch
    assert walk.stored_values == expected


def test_checkpointed_unrolling_gives_the_same_scores_through_batchnorm_and_stages(small_regression):
    from tdakit.zoo import resnet9

    from .test_batchnorm import image_data

    data = image_data(16, seed=4, channels=3, side=8)
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(resnet9(num_classes=3, width=2), data, recipe, tdakit.Classification(), checkpoints=1,
                       dtype=torch.float64, progress=False, cache=False)
    query = data.subset(slice(0, 3))
    whole = tdakit.attribute(run, query, "unrolled", keep_every=1, progress=False).values
    for every in (2, 3):
        got = tdakit.attribute(run, query, "unrolled", keep_every=every, progress=False).values
        assert torch.equal(got, whole), every
    train, query = small_regression
    stages = [tdakit.Stage(train.subset(slice(0, 32)), tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, seed=0)),
              tdakit.Stage(train.subset(slice(32, 64)), tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, seed=1))]
    staged = tdakit.train_stages(smooth_mlp(), stages, tdakit.Regression(), dtype=torch.float64, progress=False,
                                 cache=False)
    a = tdakit.attribute(staged, query, "unrolled", keep_every=1, progress=False)
    b = tdakit.attribute(staged, query, "unrolled", keep_every=3, progress=False)
    assert all(torch.equal(x.values, y.values) for x, y in zip(a, b, strict=True))


def test_keep_every_is_checked():
    with pytest.raises(tdakit.TdakitError, match="keep_every"):
        tdakit.METHODS["unrolled"].configure(keep_every=0)


def test_the_gpu_checks_unrolling_phase_judges_the_first_queries(tmp_path):
    """benchmarks/gpu_cifar10.py's exact-unrolling phase, on a small BatchNorm CNN: the states it says it stores,
    and every method's LDS on the first Q queries against the same ground truth cut to those queries."""
    import importlib.util
    from pathlib import Path

    from tdakit.attribution.trajectory import auto_every
    from tdakit.evaluation import GroundTruth, groundtruth, lds

    from .distributed_job import problem

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_cifar10.py"
    spec = importlib.util.spec_from_file_location("gpu_cifar10", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model, data, query, recipe = problem()
    run = tdakit.train(model, data, recipe, tdakit.Classification(), checkpoints=2, dtype=torch.float64,
                       progress=False, cache=False)
    truth = groundtruth(run, query, subsets=10, seeds=1, cache=False, progress=False)
    scores = {"influence": tdakit.attribute(run, query, "influence", progress=False)}
    report = {"phases": {}}
    script.exact_unrolling(run, query, scores, truth, 3, torch.device("cpu"), report, tmp_path / "report.json")
    few = GroundTruth(truth.masks, truth.values[:, :, :3])
    reference = unrolled_scores(run, query.subset(slice(0, 3)), written_out=False, progress=False)
    got = report["unrolling"]
    assert got["steps"] == run.num_steps and got["keep_every"] == auto_every(run, torch.float64)
    assert got["lds"]["exact unrolling"][0] == round(lds(reference, few).value, 3)
    assert got["lds"]["influence"][0] == round(lds(scores["influence"].values[:3], few).value, 3)
    assert "exact unrolling (3 queries)" in report["phases"]
    assert json.loads((tmp_path / "report.json").read_text())["unrolling"] == got
