"""The experiment runner: shared per-example gradients give the very scores of separate runs, the table
judges them against one ground truth, and scores come back from the cache."""

import json

import matplotlib
import pytest
import torch

import tdakit
from tdakit.attribution import products
from tdakit.evaluation import GroundTruth, lds, paired_difference, spearman
from tdakit.experiment import Method, run_experiment

from .references import smooth_mlp

matplotlib.use("Agg")

METHODS = {
    "influence": Method("influence", curvature="ggn"),
    "SOURCE": Method("source", segments=3, curvature="ggn"),
    "Fast-SOURCE": Method("fast_source", segments=3, curvature="ggn"),
    "TracIn": Method("tracin"),
    "grad dot": Method("grad_dot"),
    "grad cos": Method("grad_cos"),
    "unrolled": Method("unrolled"),
}


@pytest.fixture(scope="module")
def setting(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=6, batch_size=16, weight_decay=1e-3)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=6, dtype=torch.float64,
                       progress=False, cache=False)
    truth = tdakit.groundtruth(run, query, subsets=12, seeds=3, progress=False, cache=False)
    return run, query, truth


def test_shared_gradient_products_equal_separate_runs_and_are_made_once_per_parameters(setting, monkeypatch):
    run, query, _ = setting
    alone = {label: tdakit.attribute(run, query, m.method, progress=False, **m.settings).values
             for label, m in METHODS.items()}
    seen = []
    original = products.FactoredQueries.products  # the pass over the training points at one theta
    monkeypatch.setattr(products.FactoredQueries, "products", lambda self, task, theta, data, precision: (
        seen.append(theta.clone()), original(self, task, theta, data, precision))[1])
    together = tdakit.attribute_many(run, query, {k: (m.method, m.settings) for k, m in METHODS.items()},
                                     progress=False)
    for label, values in alone.items():
        assert torch.allclose(together[label].values, values, rtol=1e-10, atol=1e-14), label
    # 6 checkpoints (SOURCE and TracIn share them), the final parameters (influence and grad dot) and
    # Fast-SOURCE's 3 segment means: 10 distinct parameter vectors, one pass over the 64 points each
    assert len(seen) == 10
    assert len({tuple(t.tolist()) for t in seen}) == 10


def test_identical_curvature_fits_are_made_once_and_change_nothing(setting, monkeypatch):
    """Where fits coincide they are made once by attribute_many: influence at two dampings (one curvature at
    the final parameters), SOURCE and Fast-SOURCE with one checkpoint per segment (Fast-SOURCE's segment
    mean is then the checkpoint itself): 1 + 6 fits instead of 14, with the scores of separate runs."""
    run, query, _ = setting
    configs = {"influence": ("influence", {"curvature": "ggn"}),
               "influence, damping 0.1": ("influence", {"curvature": "ggn", "damping": 0.1}),
               "SOURCE": ("source", {"segments": 6, "curvature": "ggn"}),
               "Fast-SOURCE": ("fast_source", {"segments": 6, "curvature": "ggn"})}
    alone = {label: tdakit.attribute(run, query, m, progress=False, **kw).values for label, (m, kw) in configs.items()}
    fits = []
    original = tdakit.curvature.BACKENDS["ggn"]
    monkeypatch.setitem(tdakit.curvature.BACKENDS, "ggn", lambda *a, **k: (fits.append(a[2]), original(*a, **k))[1])
    together = tdakit.attribute_many(run, query, configs, progress=False)
    for label, values in alone.items():
        assert torch.allclose(together[label].values, values, rtol=1e-10, atol=1e-14), label
    assert len(fits) == 7
    tdakit.attribute(run, query, "fast_source", segments=6, curvature="ggn", progress=False)
    assert len(fits) == 13  # outside attribute_many nothing is kept


def test_table_judges_every_method_against_one_ground_truth(setting, tmp_path):
    run, query, truth = setting
    table = run_experiment(run, query, METHODS, truth, reference="unrolled", baseline="influence",
                           title="toy", progress=False, cache=tmp_path)
    assert [r.label for r in table.rows] == list(METHODS)
    source = table["SOURCE"]
    assert source.lds.value == pytest.approx(lds(table.scores["SOURCE"], truth).value)
    expected_gap = paired_difference(lds(table.scores["SOURCE"], truth), lds(table.scores["influence"], truth))
    assert source.difference.value == pytest.approx(expected_gap.value)
    assert table["unrolled"].vs_reference == pytest.approx(1.0)
    assert source.vs_reference == pytest.approx(float(spearman(table.scores["SOURCE"].values.double(),
                                                               table.scores["unrolled"].values.double()).mean()))
    assert table["influence"].difference is None and not any(r.cached for r in table.rows)
    text = str(table)
    assert text.startswith("toy") and "vs unrolled" in text and "- influence (paired)" in text
    table.save(tmp_path / "out" / "table.json")
    saved = json.loads((tmp_path / "out" / "table.json").read_text())
    assert saved["rows"][1]["label"] == "SOURCE"
    assert saved["reliability"] == pytest.approx(table.reliability.reliability)
    assert table.plot() is not None
    again = run_experiment(run, query, METHODS, truth, reference="unrolled", baseline="influence", progress=False,
                           cache=tmp_path)
    assert all(r.cached for r in again.rows) and "(from cache)" in str(again)
    assert all(torch.equal(again.scores[k].values, table.scores[k].values) for k in METHODS)


def test_ensembles_and_pipeline_stages_run_through_the_same_table(setting, small_regression):
    run, query, truth = setting
    members = [run] + tdakit.train_ensemble(run.model, run.train, run.recipe, run.task, members=1,
                                            dtype=torch.float64, progress=False)
    table = run_experiment(members, query, {"TracIn ensemble": Method("tracin")}, truth, progress=False, cache=False)
    mean = (tdakit.attribute(members[0], query, "tracin", progress=False).values
            + tdakit.attribute(members[1], query, "tracin", progress=False).values) / 2
    assert torch.allclose(table.scores["TracIn ensemble"].values, mean)
    train, _ = small_regression
    stages = [tdakit.Stage(train.subset(slice(0, 32)), tdakit.Recipe(epochs=2, batch_size=8), name="a"),
              tdakit.Stage(train.subset(slice(32, 64)), tdakit.Recipe(epochs=2, batch_size=8, seed=1), name="b")]
    staged = tdakit.train_stages(smooth_mlp(), stages, tdakit.Regression(), checkpoints=2, dtype=torch.float64,
                                 progress=False, cache=False)
    stage_truth = tdakit.groundtruth_stages(staged, query, 1, subsets=6, seeds=2, progress=False, cache=False)
    got = run_experiment(staged, query, {"SOURCE": Method("source", segments=2, curvature="ggn")}, stage_truth,
                         stage=1, progress=False, cache=False)
    assert got.scores["SOURCE"].shape == (6, 32)
    with pytest.raises(ValueError, match="say which stage"):
        run_experiment(staged, query, {"SOURCE": Method("source")}, stage_truth, progress=False, cache=False)
    with pytest.raises(ValueError, match="reference 'nope' is not one of the methods"):
        run_experiment(run, query, {"TracIn": Method("tracin")}, GroundTruth(truth.masks, truth.values),
                       reference="nope", progress=False, cache=False)


def test_a_registered_method_shares_gradients_and_runs_everywhere(setting):
    """The example of docs/extending.md: a Plan-returning method registered once."""
    from tdakit.attribution import METHODS, Plan, Term, register_method
    from tdakit.grads import measurement_grads

    run, query, truth = setting

    def last_checkpoint_dot(run, query, progress=True):
        theta = run.checkpoints[-1]
        v = measurement_grads(run.model, run.task, theta, query.to(theta.dtype))
        return Plan(run.model, run.task, run.train, [Term(theta, v, -1.0 / run.num_train)], len(query))

    register_method("last_dot_for_test", last_checkpoint_dot, needs_checkpoints=True)
    try:
        got = tdakit.attribute(run, query, "last_dot_for_test", progress=False).values
        rate = float(run.effective_lrs.sum())
        v = measurement_grads(run.model, run.task, run.checkpoints[-1], query)
        g = tdakit.grads.loss_grads(run.model, run.task, run.checkpoints[-1], run.train)
        assert torch.allclose(got, -(v @ g.T) / run.num_train)  # the plan's product, by hand
        # with the last checkpoint at the final parameters: grad_dot's scores divided by the run's summed rate
        end = tdakit.train(run.model, run.train, run.recipe, run.task, dtype=torch.float64, progress=False,
                           cache=False, checkpoints=tdakit.Checkpoints(6, "end"))
        got = tdakit.attribute(end, query, "last_dot_for_test", progress=False).values
        assert torch.allclose(got * rate, tdakit.attribute(end, query, "grad_dot", progress=False).values)
        table = run_experiment(run, query, {"mine": Method("last_dot_for_test"), "TracIn": Method("tracin")}, truth,
                               progress=False, cache=False)
        assert [r.label for r in table.rows] == ["mine", "TracIn"]
    finally:
        del METHODS["last_dot_for_test"]
