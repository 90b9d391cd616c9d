"""Multi-stage pipelines: exact unrolling through stages against finite differences, SOURCE against
unrolling, stage isolation, pipeline retraining, bad input."""

import dataclasses

import pytest
import torch

import tdakit
from tdakit.datasets import Split
from tdakit.evaluation import groundtruth_stages, retrain_stages
from tdakit.grads import measurements
from tdakit.stages import Stage, reseeded, train_stages, train_stages_ensemble

from .conftest import smooth_mlp


def staged_scores(staged, query, method, **settings):
    """Scores [Q, N_s] of every stage as tensors."""
    got = tdakit.attribute(staged, query, method, progress=False, **settings)
    assert [s.stage for s in got] == list(range(len(staged.runs)))
    return [s.values for s in got]


def two_stages(small_regression, batch_size=8, momentum=0.9, epochs=2):
    train, _ = small_regression
    first, second = train.subset(slice(0, 32)), train.subset(slice(32, 64))
    second = Split(second.x, -second.y)  # a different task: fine-tuning on flipped targets
    return [Stage(first, tdakit.Recipe(lr=0.05, epochs=epochs, batch_size=batch_size, momentum=momentum,
                                       weight_decay=1e-3), name="pretrain"),
            Stage(second, tdakit.Recipe(lr=0.02, epochs=epochs, batch_size=batch_size, momentum=momentum,
                                        weight_decay=1e-2, seed=1), name="finetune")]


def _final_with_weights(staged, stage, i, eps, query):
    """Rerun the recorded pipeline (same inits, batch orders) with w^(stage)_i = 1 + eps."""
    theta = staged.runs[0].init
    for s, run in enumerate(staged.runs):
        w = torch.ones(run.num_train, dtype=torch.float64)
        if s == stage:
            w[i] += eps
        theta = tdakit.train(run.model, run.train, run.recipe, run.task, checkpoints=[], weights=w,
                             dtype=torch.float64, progress=False, init=theta).final
    return measurements(staged.model, staged.task, theta, query)


def test_unrolling_through_two_stages_equals_finite_differences(small_regression):
    _, query = small_regression
    staged = train_stages(smooth_mlp(), two_stages(small_regression), tdakit.Regression(), checkpoints=2,
                          dtype=torch.float64, progress=False)
    scores = staged_scores(staged, query, "unrolled")
    assert [tuple(s.shape) for s in scores] == [(6, 32), (6, 32)]
    eps = 1e-5
    for stage, i in [(0, 3), (0, 30), (1, 0), (1, 17)]:
        fd = (_final_with_weights(staged, stage, i, eps, query) - _final_with_weights(staged, stage, i, -eps, query))
        fd = fd / (2 * eps)
        assert torch.allclose(scores[stage][:, i], fd, rtol=1e-5, atol=1e-9), (stage, i)


def test_power_source_with_one_step_segments_equals_unrolling_through_stages(small_regression):
    """Full-batch GD without momentum, checkpoints at every step, one segment per step: exact."""
    _, query = small_regression
    stages = two_stages(small_regression, batch_size=32, momentum=0.0, epochs=3)
    staged = train_stages(smooth_mlp(), stages, tdakit.Regression(), checkpoints="all", dtype=torch.float64,
                          progress=False)
    exact = staged_scores(staged, query, "unrolled")
    source = staged_scores(staged, query, "source", segments=3, curvature="hessian", form="power")
    for e, s in zip(exact, source, strict=True):
        assert torch.allclose(s, e, rtol=1e-9, atol=1e-12 * float(e.abs().max()))


def test_first_stage_points_see_later_stages_only_through_propagation(small_regression):
    """With the GGN, a regression stage's curvature does not depend on its targets. Changing stage 2's
    targets (same recorded checkpoints) changes stage 2's gradients, so its scores, but must leave
    stage 1's scores untouched: stage 2 acts on them only through its Sbar (curvature)."""
    _, query = small_regression
    staged = train_stages(smooth_mlp(), two_stages(small_regression), tdakit.Regression(), checkpoints=4,
                          dtype=torch.float64, progress=False)
    second = staged.runs[1]
    moved = dataclasses.replace(second, train=Split(second.train.x, second.train.y + 3.0))
    other = dataclasses.replace(staged, runs=[staged.runs[0], moved])
    a = staged_scores(staged, query, "source", segments=2, curvature="ggn")
    b = staged_scores(other, query, "source", segments=2, curvature="ggn")
    assert torch.allclose(a[0], b[0], rtol=1e-10)
    assert not torch.allclose(a[1], b[1], rtol=1e-3)


def test_retrain_stages_matches_a_loop_and_removal_changes_the_outcome(small_regression):
    _, query = small_regression
    staged = train_stages(smooth_mlp(), two_stages(small_regression), tdakit.Regression(), checkpoints=2,
                          dtype=torch.float64, progress=False)
    keep = torch.ones(3, 32, dtype=torch.bool)
    keep[1, :10] = False
    keep[2, :10] = False
    thetas = retrain_stages(staged, 0, keep, init_seeds=[5, 5, 5], order_seeds=[9, 9, 9])
    assert torch.allclose(thetas[1], thetas[2]) and not torch.allclose(thetas[0], thetas[1])
    truth = groundtruth_stages(staged, query, "pretrain", subsets=4, seeds=2, progress=False)
    assert truth.values.shape == (4, 2, 6) and torch.isfinite(truth.values).all()


def test_staged_influence_and_tracin_shapes_and_signs(small_regression):
    _, query = small_regression
    staged = train_stages(smooth_mlp(), two_stages(small_regression), tdakit.Regression(), checkpoints=2,
                          dtype=torch.float64, progress=False)
    for method, settings in (("influence", {"curvature": "ggn"}), ("tracin", {}),
                             ("fast_source", {"segments": 2, "curvature": "ggn"})):
        scores = staged_scores(staged, query, method, **settings)
        assert [tuple(s.shape) for s in scores] == [(6, 32), (6, 32)]
        assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in scores)
    with pytest.raises(ValueError, match="trak has no multi-stage form"):
        staged_scores(staged, query, "trak")


def test_bad_pipelines_are_refused(small_regression):
    stages = two_stages(small_regression)
    empty = dataclasses.replace(stages[1], data=stages[1].data.subset(slice(0, 0)))
    with pytest.raises(ValueError, match=r"stage 1 \(finetune\) has no training data"):
        train_stages(smooth_mlp(), [stages[0], empty], tdakit.Regression(), progress=False)
    other = dataclasses.replace(stages[1], model=smooth_mlp((7,)))
    with pytest.raises(ValueError, match="stage 1 \\(finetune\\)'s model does not match"):
        train_stages(smooth_mlp(), [stages[0], other], tdakit.Regression(), progress=False)
    with pytest.raises(ValueError, match="at least one stage"):
        train_stages(smooth_mlp(), [], tdakit.Regression())
    staged = train_stages(smooth_mlp(), stages, tdakit.Regression(), checkpoints=2, dtype=torch.float64,
                          progress=False)
    with pytest.raises(ValueError, match="no stage named 'fine'"):
        staged.stage("fine")
    with pytest.raises(ValueError, match="keep none of stage 0's points"):
        retrain_stages(staged, 0, torch.zeros(1, 32, dtype=torch.bool), [0], [0])


def test_pipeline_ensembles_are_seeded_independent_members(small_regression):
    _, query = small_regression
    stages = two_stages(small_regression)
    members = train_stages_ensemble(smooth_mlp(), stages, tdakit.Regression(), members=2, first_seed=1,
                                    checkpoints=2, dtype=torch.float64, progress=False)
    again = train_stages(smooth_mlp(), reseeded(stages, 2), tdakit.Regression(), checkpoints=2, dtype=torch.float64,
                         progress=False)
    torch.testing.assert_close(members[1].final, again.final, rtol=0, atol=0)  # reproducible
    assert not torch.allclose(members[0].runs[0].init, members[1].runs[0].init)  # independent inits
    assert not torch.equal(members[0].runs[1].batches, members[1].runs[1].batches)  # and batch orders
    assert [st.recipe.lr for st in reseeded(stages, 1)] == [st.recipe.lr for st in stages]
    mean = tdakit.ensemble(members, query, "tracin", progress=False)
    each = [staged_scores(m, query, "tracin") for m in members]
    for s in range(2):
        torch.testing.assert_close(mean[s].values, (each[0][s] + each[1][s]) / 2)
    with pytest.raises(ValueError, match="at least one run"):
        tdakit.ensemble([], query)
