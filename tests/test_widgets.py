"""The explorers without a browser: the background worker (superseding), the deletion explorer's controls
and messages, and the IF-to-SOURCE explorer against the library's own SOURCE and influence and against
closed forms (horizon -> infinity is undamped influence, horizon -> 0 a plain gradient product)."""

import threading
import time

import pytest
import torch

import tdakit
from tdakit import curvature as curv
from tdakit.datasets import Dataset
from tdakit.experiment import Method
from tdakit.explore.spectrum import Spectrum
from tdakit.explore.whatif import WhatIf
from tdakit.grads import loss_grads, measurement_grads
from tdakit.widgets import Background, DeletionExplorer, IFToSourceExplorer, Superseded, views

from .references import classification_data, small_cnn, smooth_mlp

METHODS = {"exact unrolling": Method("unrolled"), "influence": Method("influence", curvature="ggn"),
           "SOURCE": Method("source", segments=2, curvature="ggn"), "TracIn": Method("tracin")}


@pytest.fixture(scope="module")
def run_and_query(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.02, epochs=4, batch_size=16, momentum=0.0, weight_decay=1e-3)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=tdakit.Checkpoints(4, "end"),
                       dtype=torch.float64, progress=False, cache=False)  # the last checkpoint: the final parameters
    return run, query


@pytest.fixture()
def explorer(run_and_query, concrete):
    run, query = run_and_query
    return DeletionExplorer(WhatIf(run, query, METHODS, seeds=2, cache=False), concrete, k=3, threaded=False)


# -- the worker ----------------------------------------------------------------------------------------
def test_a_new_request_supersedes_a_running_one_and_only_the_newest_result_is_shown():
    shown, started = [], threading.Event()
    worker = Background(threaded=True)

    def slow(job):
        started.set()
        for _ in range(200):
            time.sleep(0.01)
            job.checkpoint()
        return "slow"

    worker.submit(slow, shown.append, lambda e: shown.append(e))
    assert started.wait(5)
    worker.submit(lambda job: "middle", shown.append, lambda e: shown.append(e))  # replaced before it runs
    worker.submit(lambda job: "newest", shown.append, lambda e: shown.append(e))
    assert worker.wait(10)
    assert shown == ["newest"] and worker.dropped == 2 and not worker.busy


def test_a_failing_job_reports_its_error_and_the_worker_keeps_working():
    got = []
    worker = Background(threaded=True)
    worker.submit(lambda job: 1 / 0, got.append, lambda e: got.append(type(e).__name__))
    assert worker.wait(5)
    worker.submit(lambda job: "fine", got.append, got.append)
    assert worker.wait(5) and got == ["ZeroDivisionError", "fine"]
    with pytest.raises(Superseded):
        job = worker.submit(lambda job: None, got.append, got.append)
        worker.latest += 1  # as if a newer request came in
        job.checkpoint()


# -- the deletion explorer -----------------------------------------------------------------------------
def test_pressing_delete_shows_what_the_headless_explorer_computes(explorer, run_and_query):
    run, query = run_and_query
    explorer.delete(query=2, method="SOURCE", k=3, protocol="fresh")
    trial = explorer.last
    reference = WhatIf(run, query, METHODS, seeds=2, cache=False).delete(2, "SOURCE", 3, protocol="fresh")
    assert trial.points == reference.points and trial.actual == pytest.approx(reference.actual)
    for label, value in reference.predicted.items():
        assert trial.predicted[label] == pytest.approx(value)
        assert explorer.units.text(value) in explorer.result.value  # the page shows the same numbers
    assert explorer.units.text(reference.actual) in explorer.result.value
    assert explorer.units.unit == "MPa" and explorer.units.scale == pytest.approx(explorer.data.scaler.std)
    # the blamed points are listed with features and targets in original units
    helpful, harmful = explorer.blamed_points
    assert sorted(helpful) == list(trial.points)
    cement = explorer.data.features_original(run.train.x[helpful[0]][None])[0, 0]
    shown = explorer.points_view.value
    assert f"{round(float(cement), 3) + 0.0:.4g}" in shown and "cement" in shown and ">-0<" not in shown


def test_query_from_the_list_or_a_click_and_both_kinds_and_undo(explorer):
    explorer.select_query(4)
    assert explorer.query.value == 4
    x, y = explorer._picker.centres[1]
    explorer.click(x + 2, y - 1)
    assert explorer.query.value == 1
    explorer.click(x * 2, y * 2, shown_width=2 * explorer._picker.width, shown_height=2 * explorer._picker.height)
    assert explorer.query.value == 1  # a picture shown at twice its size maps back to the same point
    explorer.click(-50, -50)
    assert "No query there" in explorer.message and explorer.query.value == 1
    explorer.delete(protocol="same")
    same = explorer.last
    assert same.protocol == "same" and same.spread == 0.0 and same.query == 1
    explorer.delete_picked("0, 5 7", protocol="fresh")
    assert explorer.last.points == (0, 5, 7) and explorer.last.chosen_by is None
    assert len(explorer.whatif.history) == 2
    explorer.undo()
    assert explorer.last is same and len(explorer.whatif.history) == 1 and "Undone" in explorer.message


def test_bad_input_shows_a_message_and_the_explorer_stays_usable(explorer, run_and_query):
    n = explorer.whatif.run.num_train
    explorer.delete(query=0, method="influence", k=0)
    assert "k must be a whole number from 1" in explorer.message
    explorer.delete(k=n + 5)
    assert f"from 1 to {n - 1}" in explorer.message
    explorer.delete_picked("")
    assert "no points selected" in explorer.message
    explorer.delete_picked("3, x")
    assert "separated by commas" in explorer.message
    explorer.delete_picked([n + 3])
    assert f"must lie in 0..{n - 1}" in explorer.message
    explorer.select_query(999)
    assert "query must be an index in 0..5" in explorer.message
    explorer.undo()
    assert "nothing to undo" in explorer.message
    explorer.delete(k=2)  # still usable
    assert explorer.last is not None and len(explorer.last.points) == 2
    # a method that needs checkpoints on a run without them: listed, refused with the reason
    run, query = run_and_query
    bare = tdakit.train(smooth_mlp(), run.train, tdakit.Recipe(epochs=1), tdakit.Regression(), checkpoints=0,
                        dtype=torch.float64, progress=False, cache=False)
    ex = DeletionExplorer(WhatIf(bare, query, {"grad dot": Method("grad_dot"), "TracIn": Method("tracin")},
                                 seeds=1, cache=False), threaded=False)
    ex.method.value = "TracIn"
    assert "TracIn cannot run on this run: tracin needs checkpoints" in ex.message
    ex.delete(method="grad dot", k=2, protocol="same")
    assert ex.last is not None and set(ex.last.predicted) == {"grad dot"}


def test_repeated_deletions_come_from_the_cache(explorer, monkeypatch):
    from tdakit.explore import whatif
    explorer.delete(query=0, method="influence", k=3, protocol="fresh")
    calls = []
    original = whatif.retrained_measurements
    monkeypatch.setattr(whatif, "retrained_measurements", lambda *a, **k: (calls.append(a), original(*a, **k))[1])
    explorer.delete(query=0, method="influence", k=3, protocol="fresh")
    assert calls == [] and explorer.message.startswith("Query 0: actual change")  # shown as a result
    assert explorer.whatif.history[-1].points == explorer.whatif.history[-2].points


def test_a_second_press_supersedes_a_running_deletion(run_and_query, monkeypatch):
    from tdakit.explore import whatif
    run, query = run_and_query
    ex = DeletionExplorer(WhatIf(run, query, METHODS, seeds=2, cache=False), k=3, threaded=True)
    assert ex.wait(60)
    original, started = whatif.retrained_measurements, threading.Event()

    def slow(*args, on_step=None, **kwargs):  # a retraining that takes a while, reporting its steps
        started.set()
        for _ in range(300):
            time.sleep(0.01)
            on_step(0.0)
        return original(*args, on_step=on_step, **kwargs)

    monkeypatch.setattr(whatif, "retrained_measurements", slow)
    ex.delete(query=0, method="SOURCE", k=3, protocol="same")
    assert started.wait(30)
    ex.delete(query=0, method="SOURCE", k=5, protocol="same")  # pressed again while the first is retraining
    assert ex.wait(120)
    assert ex._work.dropped == 1 and len(ex.whatif.history) == 1  # the first stopped, never recorded
    assert len(ex.last.points) == 5 and ex.whatif.history[-1] is ex.last


def test_image_data_get_a_grid_to_click_and_image_rows():
    data, query = classification_data(40, image=True, seed=0), classification_data(12, image=True, seed=1)
    run = tdakit.train(small_cnn(), data, tdakit.Recipe(lr=0.05, epochs=2, batch_size=10), tdakit.Classification(),
                       checkpoints=2, dtype=torch.float64, progress=False, cache=False)
    fake = Dataset("tiny", "classification", data, query, query, image_shape=(6, 6))
    ex = DeletionExplorer(WhatIf(run, query, {"grad dot": Method("grad_dot")}, seeds=1, cache=False), fake, k=2,
                          threaded=False)
    assert ex.images and ex.units == views.Units(1.0, "nats")
    x, y = ex._picker.centres[7]
    ex.click(x, y)
    assert ex.query.value == 7 and ex.points_image.value[:4] == b"\x89PNG"
    ex.delete(protocol="same")
    assert ex.last.query == 7 and "nats" in ex.result.value


# -- from influence to SOURCE --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spectrum(run_and_query):
    run, query = run_and_query
    unrolled = tdakit.attribute(run, query, "unrolled", progress=False)
    truth = tdakit.groundtruth(run, query, subsets=8, seeds=2, progress=False, cache=False)
    return Spectrum(run, query, curvature="ggn", truth=truth, reference=unrolled)


@pytest.mark.parametrize("segments", [1, 2, 4])
def test_at_the_run_s_own_horizon_it_is_source_and_influence_is_influence(spectrum, segments):
    run, query = spectrum.run, spectrum.query
    source = tdakit.attribute(run, query, "source", segments=segments, curvature="ggn", progress=False)
    assert torch.allclose(spectrum.source(segments, 1.0), source.values, rtol=1e-8, atol=1e-12)
    influence = tdakit.attribute(run, query, "influence", curvature="ggn", damping=3e-3, progress=False)
    assert torch.allclose(spectrum.influence(3e-3), influence.values, rtol=1e-8, atol=1e-12)


def test_dense_curvature_averaged_per_checkpoint_equals_fitting_all_at_once(spectrum):
    run = spectrum.run
    for kind in ("ggn", "hessian_clipped"):
        sp = Spectrum(run, spectrum.query, curvature=kind)
        for seg in tdakit.attribution.segments_of(run, 2):
            expected = curv.fit(kind, run.model, run.task, run.checkpoints[list(seg.checkpoints)], run.train,
                                run.recipe.weight_decay).dense()
            # atol: the sample-space GGN drops Gram eigenvalues below 1e-9 x the largest
            assert torch.allclose(sp.segment_curvature(seg.checkpoints).dense(), expected, rtol=1e-8, atol=1e-8)


def test_the_horizon_turns_source_into_influence_and_into_a_gradient_product(run_and_query):
    """One segment with the final parameters as its only checkpoint: (1 - exp(-c eta K s))/s -> 1/s as
    c -> infinity (undamped influence; weight decay keeps s > 0), and -> c eta K as c -> 0."""
    run, query = run_and_query
    last = tdakit.train(smooth_mlp(), run.train, run.recipe, run.task, checkpoints=[run.num_steps],
                        dtype=torch.float64, progress=False, cache=False)
    sp = Spectrum(last, query, curvature="ggn")
    H = curv.fit("ggn", last.model, last.task, last.final[None], last.train, last.recipe.weight_decay).dense()
    v = measurement_grads(last.model, last.task, last.final, query)
    g = loss_grads(last.model, last.task, last.final, last.train)
    closed_influence = -(torch.linalg.solve(H, v.T).T @ g.T) / last.num_train
    assert torch.allclose(sp.source(1, 1e9), closed_influence, rtol=1e-6, atol=1e-12)
    assert torch.allclose(sp.influence(0.0), closed_influence, rtol=1e-8, atol=1e-12)
    c = 1e-7
    closed_dot = -(c * sp.total_rate) * (v @ g.T) / last.num_train
    assert torch.allclose(sp.source(1, c), closed_dot, rtol=1e-5)


def test_with_one_checkpoint_per_segment_a_long_horizon_is_influence_at_the_matching_damping(spectrum):
    """The last segment holds only the final parameters: its exp(-c eta_L K_L H) forgets the earlier segments
    in every direction (GGN + weight decay > 0), and its gain tends to 1/(s + 1/(c eta_L K_L))."""
    L = spectrum.max_segments
    for c, tol in ((1e8, 1e-3), (1e10, 1e-5)):
        source = spectrum.source(L, c)
        influence = spectrum.influence(spectrum.matching_damping(L, c))
        assert (source - influence).norm() < tol * influence.norm()
    seg = tdakit.attribution.segments_of(spectrum.run, L)[-1]
    assert spectrum.last_rate(L) == pytest.approx(float(spectrum.run.effective_lrs[seg.start:seg.stop].sum()))


def test_the_explorer_sliders_show_the_spectrum_s_numbers(spectrum):
    ex = IFToSourceExplorer(spectrum, threaded=False)
    ex.set(segments=2, horizon=10.0, damping=1e-2, query=3)
    view = spectrum.view(2, 10.0, 1e-2)
    got = ex.numbers
    assert got["segments"] == 2 and got["horizon"] == pytest.approx(10.0)
    assert got["lds_source"] == pytest.approx(tdakit.lds(view.source, spectrum.truth).value)
    assert got["lds_influence"] == pytest.approx(tdakit.lds(view.influence, spectrum.truth).value)
    rho = float(tdakit.evaluation.metrics.spearman(view.source, spectrum.reference.double()).mean())
    assert got["agreement_source"] == pytest.approx(rho)
    assert f"{got['lds_source']:.3f}" in ex.table.value and ex.figure.value[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="horizon must be a positive number"):
        spectrum.source(2, 0.0)
    ex.set(segments=4)  # the largest L the slider allows: one checkpoint per segment
    assert ex.numbers["segments"] == 4 and ex.segments.max == spectrum.max_segments == 4


def test_the_refinement_slider_walks_ek_fac_toward_the_exact_influence(spectrum):
    """Spectrum.refinement: iteration 0 is EK-FAC influence, iteration t what refine=t gives through attribute,
    and 400 full-batch iterations end at the exact (dense Gauss-Newton) influence of the same damping."""
    from tdakit.attribution import Refine

    run, query, damping = spectrum.run, spectrum.query, 1e-2
    refined = spectrum.refinement(damping)
    assert refined.iterations == list(range(0, 101, 10)) and len(refined.residuals) == 100
    ekfac = tdakit.attribute(run, query, "influence", curvature="ekfac", damping=damping, progress=False).values
    assert torch.allclose(refined.scores[0], ekfac, rtol=0, atol=1e-12)
    thirty = tdakit.attribute(run, query, "influence", curvature="ekfac", damping=damping, refine=30, progress=False)
    assert torch.allclose(refined.scores[30], thirty.values, rtol=0, atol=1e-10)
    exact = spectrum.influence(damping)
    assert refined.agreement[0] < 0.9  # EK-FAC differs from the exact solve here: the next check can fail
    full = Spectrum(run, query, curvature="ggn", refine=Refine(iterations=400, batch=run.num_train,
                                                                halve_every=10 ** 6, record=(0, 400)))
    end = full.refinement(damping)
    assert (end.scores[400] - exact).norm() < 1e-3 * exact.norm()
    assert end.agreement[400] > 0.999 and end.residuals[-1] < 1e-3
    ex = IFToSourceExplorer(spectrum, threaded=False)
    assert ex.numbers["iterations"] == 0 and ex.numbers["lds_refined"] is None
    ex.set(damping=damping, iterations=30)
    got = ex.numbers
    assert got["iterations"] == 30 and got["agreement_refined"] == pytest.approx(refined.agreement[30])
    assert got["lds_refined"] == pytest.approx(tdakit.lds(thirty, spectrum.truth).value, abs=1e-9)
    assert "refined 30 iterations" in ex.table.value and ex.figure.value[:4] == b"\x89PNG"
