"""The what-if deletion explorer without a browser: selection, prediction, both kinds of retraining,
undo, the cache, and bad input."""

import pytest
import torch

import tdakit
from tdakit.experiment import Method
from tdakit.explore import whatif
from tdakit.explore.whatif import WhatIf

from .references import smooth_mlp

METHODS = {"exact unrolling": Method("unrolled"), "influence": Method("influence", curvature="ggn"),
           "SOURCE": Method("source", segments=2, curvature="ggn")}


@pytest.fixture(scope="module")
def explorer(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.02, epochs=4, batch_size=16, momentum=0.0, weight_decay=1e-3)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=4, dtype=torch.float64,
                       progress=False, cache=False)
    return WhatIf(run, query, METHODS, seeds=3, cache=False)


def test_same_trajectory_deletion_of_one_point_agrees_with_exact_unrolling_to_first_order(explorer):
    """Deleting one point moves its weight from 1 to 0: exact unrolling predicts the change to first order."""
    predicted, actual = [], []
    for point in (0, 11, 23, 40, 57):
        trial = explorer.delete(query=2, points=[point], protocol="same")
        predicted.append(trial.predicted["exact unrolling"])
        actual.append(trial.actual)
    predicted, actual = torch.tensor(predicted), torch.tensor(actual)
    assert (predicted - actual).abs().max() < 0.05 * actual.abs().max()
    assert all(t.spread == 0.0 for t in explorer.history[-5:])


def test_the_blamed_points_are_the_top_scores_and_fresh_seeds_are_paired_retrainings(explorer):
    helpful, harmful = explorer.blamed(0, "influence", 4)
    scores = explorer.scores("influence").values[0]
    # an error: helpful points have the most negative scores (deleting them raises the error)
    assert helpful == scores.argsort()[:4].tolist() and harmful == scores.argsort(descending=True)[:4].tolist()
    trial = explorer.delete(query=0, method="influence", k=4, protocol="fresh")
    assert trial.points == tuple(sorted(helpful)) and trial.chosen_by == "influence"
    assert trial.predicted["influence"] == pytest.approx(-float(scores[helpful].sum()))
    full = tdakit.evaluation.retrained_measurements(explorer.run, explorer.query, [], "fresh", seeds=3)
    without = tdakit.evaluation.retrained_measurements(explorer.run, explorer.query, helpful, "fresh", seeds=3)
    change = (without - full)[:, 0]
    assert trial.actual == pytest.approx(float(change.mean()))
    assert trial.spread == pytest.approx(float(change.std() / 3 ** 0.5))


def test_repeated_deletions_come_from_the_cache_and_undo_forgets_the_last(explorer, monkeypatch):
    explorer.delete(query=1, points=[3, 5], protocol="fresh")
    calls = []
    original = whatif.retrained_measurements
    monkeypatch.setattr(whatif, "retrained_measurements", lambda *a, **k: (calls.append(a), original(*a, **k))[1])
    before = len(explorer.history)
    again = explorer.delete(query=4, points=[5, 3], protocol="fresh")  # the same set, another query
    assert calls == [] and again.points == (3, 5)
    assert explorer.undo() is again and len(explorer.history) == before
    explorer.delete(query=4, points=[3, 5, 6], protocol="fresh")
    assert len(calls) == 1


def test_bad_input_gets_a_message_and_the_explorer_stays_usable(explorer, small_regression):
    n = explorer.run.num_train
    for kwargs, message in [({"query": 0, "method": "influence", "k": 0}, "k must be a whole number from 1"),
                            ({"query": 0, "method": "influence", "k": n}, f"from 1 to {n - 1}"),
                            ({"query": 0, "points": []}, "no points selected"),
                            ({"query": 99, "points": [1]}, "query must be an index in 0..5"),
                            ({"query": 0, "method": "lissa", "k": 3}, "unknown method 'lissa'"),
                            ({"query": 0}, "say what to delete"),
                            ({"query": 0, "points": [1], "protocol": "other"},
                             "protocol must be one of 'fresh', 'same'")]:
        with pytest.raises(ValueError, match=message):
            explorer.delete(**kwargs)
    assert explorer.delete(query=0, points=[1], protocol="same").points == (1,)  # still usable
    train, query = small_regression
    bare = tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=1), tdakit.Regression(), checkpoints=0,
                        dtype=torch.float64, progress=False, cache=False)
    mixed = WhatIf(bare, query, {"TracIn": Method("tracin"), "grad dot": Method("grad_dot")}, cache=False)
    assert mixed.available == ["grad dot"]
    with pytest.raises(ValueError, match="TracIn cannot run on this run: tracin needs checkpoints"):
        mixed.blamed(0, "TracIn", 3)
    assert set(mixed.predict(0, [1, 2])) == {"grad dot"}
    with pytest.raises(ValueError, match="none of the methods can run on this run"):
        WhatIf(bare, query, {"TracIn": Method("tracin")}, cache=False)
    fresh = WhatIf(bare, query, {"grad dot": Method("grad_dot")}, cache=False)
    with pytest.raises(ValueError, match="nothing to undo"):
        fresh.undo()
