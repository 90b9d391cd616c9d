"""LDS, reliability, ground truth and removal against synthetic truths and actual retraining."""

import dataclasses

import pytest
import scipy.stats
import torch

import tdakit
import tdakit.evaluation.ground_truth as ground_truth_module
from tdakit.evaluation import (
    GroundTruth,
    groundtruth,
    lds,
    random_subsets,
    rankdata,
    reliability,
    retrain,
    spearman,
    subset_removal,
)

from .conftest import smooth_mlp


def test_rankdata_and_spearman_match_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (5, 40), generator=g).double()  # many ties
    b = torch.randn(5, 40, generator=g, dtype=torch.float64)
    for row_a, row_b in zip(a, b, strict=True):
        assert torch.allclose(rankdata(row_a), torch.tensor(scipy.stats.rankdata(row_a.numpy())))
        assert float(spearman(row_a, row_b)) == pytest.approx(scipy.stats.spearmanr(row_a, row_b)[0], abs=1e-12)


def _synthetic_truth(true_scores, subsets=200, seeds=4, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = random_subsets(true_scores.shape[1], subsets, 0.5, seed)
    signal = masks.double() @ true_scores.T  # [M, Q]
    values = signal[:, None] + noise * torch.randn(subsets, seeds, true_scores.shape[0], generator=g,
                                                   dtype=torch.float64)
    return GroundTruth(masks, values)


def test_lds_of_a_perfect_predictor_is_one_and_of_random_scores_near_zero():
    g = torch.Generator().manual_seed(1)
    true_scores = torch.randn(30, 80, generator=g, dtype=torch.float64)
    truth = _synthetic_truth(true_scores)
    perfect = lds(true_scores, truth)
    assert perfect.value == pytest.approx(1.0) and perfect.low == pytest.approx(1.0)
    noise = lds(torch.randn(30, 80, generator=g, dtype=torch.float64), truth)
    assert abs(noise.value) < 0.05 and noise.low < 0 < noise.high
    flipped = lds(-true_scores, truth)
    assert flipped.value == pytest.approx(-1.0)


def test_reliability_matches_the_theory_of_averaged_noise():
    # signal variance across subsets ~ N/4 per unit-variance score; noise sigma per seed
    g = torch.Generator().manual_seed(2)
    true_scores = torch.randn(40, 100, generator=g, dtype=torch.float64)
    signal_sd = (0.25 * 100) ** 0.5
    for seeds, sigma in ((4, signal_sd), (16, 2 * signal_sd)):
        truth = _synthetic_truth(true_scores, subsets=300, seeds=seeds, noise=sigma)
        expected = 1 / (1 + sigma**2 / (signal_sd**2 * seeds))
        got = reliability(truth).reliability
        assert got == pytest.approx(expected, abs=0.06), (seeds, got, expected)
        # an exact predictor reaches about the ceiling
        assert lds(true_scores, truth).value == pytest.approx(reliability(truth).ceiling, abs=0.06)


def test_lds_rejects_mismatched_scores():
    truth = _synthetic_truth(torch.randn(3, 10, dtype=torch.float64), subsets=5)
    with pytest.raises(ValueError, match="do not match the ground truth's 3 queries x 10 training points"):
        lds(torch.zeros(3, 11), truth)


@pytest.fixture(scope="module")
def tiny_run(small_regression):
    train, _ = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=4, batch_size=8, momentum=0.9, weight_decay=1e-3, seed=7)
    return tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), dtype=torch.float64, progress=False)


def test_retraining_on_kept_points_equals_training_on_the_subset(tiny_run):
    keep = torch.zeros(1, 64, dtype=torch.bool)
    kept = torch.tensor([3, 5, 8, 13, 21, 34, 40, 41, 50, 55, 60, 63])
    keep[0, kept] = True
    theta = retrain(tiny_run, keep, init_seeds=[7], order_seeds=[tdakit.recipe.seed_of("order", 7)],
                    progress=False)
    direct = tdakit.train(tiny_run.model, tiny_run.train.subset(kept), tiny_run.recipe, tiny_run.task,
                          dtype=torch.float64, progress=False)
    assert torch.allclose(theta[0], direct.final, rtol=1e-10, atol=1e-12)


def test_groundtruth_is_cached_per_chunk_and_resumes(tiny_run, small_regression, tmp_path, monkeypatch):
    _, query = small_regression
    truth = groundtruth(tiny_run, query, subsets=6, seeds=2, models_per_chunk=4, cache=tmp_path, progress=False)
    assert truth.values.shape == (6, 2, len(query)) and truth.masks.sum(1).eq(32).all()
    chunks = sorted(tmp_path.glob("groundtruth-*.pt"))
    assert len(chunks) == 3
    chunks[1].write_bytes(b"interrupted half-write")  # a corrupt chunk is recomputed, the others reused
    calls = []
    original = ground_truth_module.retrain
    monkeypatch.setattr(ground_truth_module, "retrain",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    again = groundtruth(tiny_run, query, subsets=6, seeds=2, models_per_chunk=4, cache=tmp_path, progress=False)
    assert len(calls) == 1 and torch.equal(again.values, truth.values)
    more = groundtruth(tiny_run, query, subsets=6, seeds=3, models_per_chunk=6, cache=tmp_path / "more",
                       progress=False)
    calls.clear()
    fewer = groundtruth(tiny_run, query, subsets=6, seeds=2, models_per_chunk=6, cache=tmp_path / "more",
                        progress=False)
    assert not calls and torch.equal(fewer.values, more.values[:, :2])  # seeds are added, not recomputed
    assert torch.equal(fewer.values, truth.values)


def test_seeds_differ_and_rerun_is_identical(tiny_run, small_regression):
    _, query = small_regression
    a = groundtruth(tiny_run, query, subsets=3, seeds=2, progress=False)
    b = groundtruth(tiny_run, query, subsets=3, seeds=2, progress=False)
    assert torch.equal(a.values, b.values)
    assert not torch.allclose(a.values[:, 0], a.values[:, 1])


def test_removing_the_most_helpful_points_hurts_more_than_removing_random_ones(small_regression):
    # a convex problem trained to convergence: seeds barely matter and influence is accurate,
    # so the expected removal curve is known to rise with k and to beat random removal
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.02, epochs=40, batch_size=16, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(torch.nn.Linear(8, 1), train, recipe, tdakit.Regression(), dtype=torch.float64,
                       progress=False)
    scores = tdakit.attribute(run, query, "influence", curvature="hessian")
    top = subset_removal(run, query, scores, ks=[1, 4, 12], seeds=2, progress=False)
    rand = tdakit.evaluation.random_removal(run, query, ks=[1, 4, 12], seeds=2, progress=False)
    assert top.change.shape == (3, len(query))
    # absolute error: removing helpful points raises it, more for more points, more than at random
    curve = top.change.mean(1)
    assert 0 < curve[0] < curve[1] < curve[2], curve
    assert (curve > rand.change.mean(1)).all()


def test_removal_of_more_points_than_exist_is_refused(tiny_run, small_regression):
    with pytest.raises(ValueError, match="k must lie in 1..63"):
        subset_removal(tiny_run, small_regression[1], torch.zeros(6, 64), ks=[64], progress=False)
    with pytest.raises(ValueError, match="indices must lie in 0..63"):
        tdakit.leave_one_out(tiny_run, small_regression[1], [64], progress=False)


def test_leave_one_out_with_seeds_returns_changes(tiny_run, small_regression):
    change = tdakit.leave_one_out(tiny_run, small_regression[1], [0, 1], seeds=2, progress=False)
    assert change.shape == (2, 6) and torch.isfinite(change).all() and (change != 0).any()


def test_flipped_counts_correct_queries_whose_margin_turns_nonpositive():
    before = torch.tensor([1.0, 0.5, -0.2, 2.0])
    after = torch.tensor([[0.8, 0.1, -0.5, 1.0], [-0.1, 0.2, 0.3, 1.5], [-1.0, -0.3, 1.0, 0.0]])
    removal = tdakit.evaluation.Removal([1, 2, 3], after - before, before, after)
    assert removal.flipped().tolist() == [0.0, 1 / 3, 1.0]


def test_full_data_models_do_not_depend_on_the_number_of_removals(tiny_run, small_regression):
    _, query = small_regression
    scores = torch.randn(len(query), tiny_run.num_train, generator=torch.Generator().manual_seed(0))
    one = subset_removal(tiny_run, query, scores, ks=[2], seeds=2, progress=False)
    many = subset_removal(tiny_run, query, scores, ks=[1, 2, 5], seeds=2, progress=False)
    rand = tdakit.evaluation.random_removal(tiny_run, query, ks=[3], seeds=2, progress=False)
    # the same seeds and batch orders; only the vmap batch (how many models train together) differs
    torch.testing.assert_close(one.before, many.before)
    torch.testing.assert_close(one.before, rand.before)


def test_runs_that_differ_only_in_seed_share_one_ground_truth(small_regression, tmp_path):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16)
    runs = [tdakit.train(smooth_mlp(), train, dataclasses.replace(recipe, seed=s), tdakit.Regression(),
                         dtype=torch.float64, progress=False, cache=False) for s in (0, 1)]
    first = tdakit.groundtruth(runs[0], query, subsets=4, seeds=2, progress=False, cache=tmp_path)
    entries = len(list(tmp_path.iterdir()))
    second = tdakit.groundtruth(runs[1], query, subsets=4, seeds=2, progress=False, cache=tmp_path)
    assert torch.equal(first.values, second.values) and len(list(tmp_path.iterdir())) == entries


def test_trajectory_specific_leave_one_out_keeps_the_runs_own_weights(tiny_run, small_regression):
    """A run that already leaves points 0..3 out (weight 0): leaving out point 0 again changes nothing, and
    leaving out point 10 equals training with points 0..3 and 10 at weight 0 (an independent train call)."""
    train, query = small_regression
    weights = torch.ones(64, dtype=torch.float64)
    weights[:4] = 0.0
    run = tdakit.train(tiny_run.model, train, tiny_run.recipe, tiny_run.task, weights=weights, dtype=torch.float64,
                       progress=False, cache=False)
    changes = tdakit.leave_one_out(run, query, [0, 10], trajectory_specific=True, progress=False)
    assert float(changes[0].abs().max()) < 1e-12
    fewer = weights.clone()
    fewer[10] = 0.0
    direct = tdakit.train(tiny_run.model, train, tiny_run.recipe, tiny_run.task, weights=fewer, dtype=torch.float64,
                          progress=False, cache=False)
    measure = tdakit.grads.measurements
    expected = measure(run.model, run.task, direct.final, query) - measure(run.model, run.task, run.final, query)
    assert torch.allclose(changes[1], expected, rtol=1e-9, atol=1e-12) and float(expected.abs().max()) > 1e-4


def test_the_ground_truth_progress_bar_never_passes_its_total(monkeypatch):
    """Training steps move the bar by fractions of a model; their float sum passed the total (5 models in 280
    steps of 5/280 sum to 5.0000000000000115, so tqdm warned 'clamping frac to range [0, 1]' and showed a
    negative time left in make demo). The bar now stops at each chunk's end."""
    import tqdm.auto

    seen = []

    class Watched(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            seen.append((self.n, self.total))
            return out

    def retrain_jobs(keep, init_seeds, order_seeds, on_step):  # 280 training steps of the chunk's models
        for _ in range(280):
            on_step(len(keep) / 280)
        return torch.zeros(len(keep), 1)

    monkeypatch.setattr(ground_truth_module, "tqdm", Watched)
    masks = torch.ones(5, 4, dtype=torch.bool)
    ground_truth_module.collect(masks, 2, 3, torch.float32, 0, retrain_jobs, lambda theta: torch.zeros(len(theta), 3),
                                "key", 5, False, True, "ground truth")
    assert seen and all(n <= total for n, total in seen)
    assert seen[-1] == (10, 10)


def test_a_same_trajectory_ground_truth_is_the_run_retrained_with_the_removed_points_weighted_zero(
        tiny_run, small_regression):
    _, query = small_regression
    truth = groundtruth(tiny_run, query, subsets=4, fraction=0.9, protocol="same", progress=False, cache=False)
    assert truth.protocol == "same" and truth.values.shape == (4, 1, len(query))
    assert "same trajectory" in repr(truth)
    for m in range(4):  # the reference: tdakit.train with the run's recipe (same seed: same init and batch order)
        again = tdakit.train(tiny_run.model, tiny_run.train, tiny_run.recipe, tiny_run.task,
                             weights=truth.masks[m].double(), dtype=torch.float64, progress=False, cache=False)
        expected = tdakit.grads.measurements(tiny_run.model, tiny_run.task, again.final, query)
        assert torch.allclose(truth.values[m, 0], expected, rtol=1e-9, atol=1e-12)
    fresh = groundtruth(tiny_run, query, subsets=4, fraction=0.9, seeds=1, progress=False, cache=False)
    assert not torch.allclose(fresh.values, truth.values)  # another question: new seeds


def test_exact_unrolling_predicts_the_same_trajectory_protocol_and_not_fresh_seeds(tiny_run, small_regression):
    """What the protocol choice teaches: exact unrolling is exact to first order for its own trajectory, so with
    5% of the points removed it ranks the same-trajectory retrainings almost perfectly; fresh seeds add the
    randomness of training, which no estimate of this run can predict."""
    _, query = small_regression
    scores = tdakit.attribute(tiny_run, query, "unrolled", progress=False)
    same = groundtruth(tiny_run, query, subsets=30, fraction=0.95, protocol="same", progress=False, cache=False)
    fresh = groundtruth(tiny_run, query, subsets=30, fraction=0.95, seeds=2, progress=False, cache=False)
    on_same, on_fresh = lds(scores, same).value, lds(scores, fresh).value
    assert on_same > 0.8, on_same  # measured 0.91 (0.18 with halves removed: far from linear there)
    assert on_fresh < on_same - 0.4, (on_fresh, on_same)  # measured -0.12


def test_the_same_protocol_has_one_deterministic_retraining_and_says_its_reliability(tiny_run, small_regression):
    _, query = small_regression
    with pytest.raises(tdakit.TdakitError, match="seeds=1"):
        groundtruth(tiny_run, query, subsets=4, seeds=3, protocol="same", progress=False)
    with pytest.raises(tdakit.TdakitError, match="protocol"):
        groundtruth(tiny_run, query, subsets=4, protocol="sam", progress=False)
    truth = groundtruth(tiny_run, query, subsets=10, protocol="same", progress=False, cache=False)
    rel = reliability(truth)
    assert rel.reliability == 1.0 and "by construction" in str(rel)
    table = tdakit.run_experiment(tiny_run, query, {"influence": tdakit.experiment.Method("influence")}, truth)
    assert "same trajectory" in table.text() and "by construction" in table.text()
    assert "warning" not in table.text()  # one seed is the protocol, not a too-small ground truth


def test_same_and_fresh_ground_truths_are_cached_apart(tiny_run, small_regression, tmp_path):
    _, query = small_regression
    fresh = groundtruth(tiny_run, query, subsets=4, seeds=1, cache=tmp_path, progress=False)
    same = groundtruth(tiny_run, query, subsets=4, protocol="same", cache=tmp_path, progress=False)
    assert not torch.equal(fresh.values, same.values)
    assert torch.equal(same.values, groundtruth(tiny_run, query, subsets=4, protocol="same", cache=tmp_path,
                                                progress=False).values)


def test_the_same_protocols_jitter_is_exact_unrollings_linear_response_and_flags_chaotic_training():
    """The jittered rerun (every weight moved by +-1e-6) against exact unrolling's first-order prediction on a
    stable run, and the warning on a run whose rate makes it chaotic (a 64-point classifier, float64)."""
    import warnings

    from tdakit.evaluation.ground_truth import JITTER, jitter_signs

    from .references import classification_data

    data, query = classification_data(64), classification_data(6, seed=5)

    def run_at(lr):
        return tdakit.train(tdakit.mlp(5, (16,), 3, "tanh"), data, tdakit.Recipe(lr=lr, epochs=30, batch_size=8,
                            momentum=0.9), tdakit.Classification(), dtype=torch.float64, progress=False, cache=False)

    stable = run_at(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on a stable run
        truth = groundtruth(stable, query, subsets=10, fraction=0.95, protocol="same", progress=False, cache=False)
    scores = tdakit.attribute(stable, query, "unrolled", progress=False).values
    predicted = JITTER * scores @ (jitter_signs(len(data)) * stable.weights.double())
    assert torch.allclose(truth.jitter, torch.stack([predicted, -predicted]), rtol=1e-4, atol=0)
    assert truth.jitter_share < 1e-4 and truth.jitter_asymmetry < 1e-3 and str(reliability(truth)) == (
        "reliability 1 by construction (same trajectory: retraining is deterministic), LDS ceiling 1")
    chaotic = run_at(1.0)  # measured: jitter 0.91 x the spread across subsets, asymmetry 2.9
    with pytest.warns(UserWarning, match="chaotic"):
        truth = groundtruth(chaotic, query, subsets=10, fraction=0.95, protocol="same", progress=False, cache=False)
    assert truth.jitter_share > 0.1 and truth.jitter_asymmetry > 0.5
    assert "chaotic training" in str(reliability(truth)) and "not in proportion" in repr(truth)
