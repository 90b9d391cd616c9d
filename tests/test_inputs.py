"""Bad input gets a clear error that says what was wrong and how to fix it."""

import pytest
import torch

import tdakit
from tdakit.datasets import Split

from .conftest import smooth_mlp


def test_concrete_split_and_scaler(concrete):
    assert (len(concrete.train), len(concrete.query), len(concrete.test)) == (896, 103, 31)
    assert concrete.train.x.mean(0).abs().max() < 1e-5
    assert (concrete.train.x.std(0, unbiased=False) - 1).abs().max() < 1e-4
    assert concrete.scaler.unit == "MPa" and 20 < concrete.scaler.mean < 50
    again = tdakit.datasets.load("concrete")
    assert torch.equal(again.query.x, concrete.query.x)
    assert not torch.equal(tdakit.datasets.load("concrete", seed=1).query.x, concrete.query.x)


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown dataset .cifar.; available: concrete, mnist5k"):
        tdakit.datasets.load("cifar")


def test_mismatched_shapes_are_refused(small_regression):
    train, _ = small_regression
    with pytest.raises(ValueError, match="x has 64 rows but y has 63"):
        Split(train.x, train.y[:-1])
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(5,\)"):
        tdakit.train(smooth_mlp(), Split(train.x[:, :5], train.y), tdakit.Recipe(), tdakit.Regression(),
                     progress=False)
    with pytest.raises(ValueError, match=r"weights must have shape \(64,\)"):
        tdakit.train(smooth_mlp(), train, tdakit.Recipe(), tdakit.Regression(), weights=torch.ones(3),
                     progress=False)
    with pytest.raises(ValueError, match="one output per example"):
        tdakit.train(tdakit.mlp(8, (4,), 2), train, tdakit.Recipe(), tdakit.Regression(), progress=False)


def test_nan_data_is_refused(small_regression):
    train, _ = small_regression
    x = train.x.clone()
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        tdakit.train(smooth_mlp(), Split(x, train.y), tdakit.Recipe(), tdakit.Regression(), progress=False)


def test_diverging_training_names_the_step(small_regression):
    train, _ = small_regression
    with pytest.raises(ValueError, match=r"training diverged at step \d+ \(epoch \d+\).*lower the learning rate"):
        tdakit.train(tdakit.mlp(8, (32,)), train, tdakit.Recipe(lr=50.0, momentum=0.9), tdakit.Regression(),
                     dtype=torch.float64, progress=False)


def test_bad_recipes_and_tasks():
    with pytest.raises(ValueError, match="momentum must lie in"):
        tdakit.Recipe(momentum=1.0)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        tdakit.Recipe(schedule="step").learning_rates(10)
    with pytest.raises(ValueError, match="unknown measurement 'accuracy'"):
        tdakit.Classification(measure="accuracy")
    with_buffer = torch.nn.Linear(3, 2)
    with_buffer.register_buffer("mask", torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"buffers \['mask'\].*only BatchNorm"):
        tdakit.FlatModel(with_buffer)


def test_classification_margin_and_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 2])
    margin = tdakit.Classification().measurement(logits, y)
    expected = torch.stack([2.0 - torch.logsumexp(torch.tensor([0.0, -1.0]), 0),
                            1.0 - torch.logsumexp(torch.tensor([0.0, 3.0]), 0)])
    assert torch.allclose(margin, expected)
    assert torch.allclose(tdakit.Classification().loss(logits, y), torch.nn.functional.cross_entropy(
        logits, y, reduction="none"))
    with pytest.raises(ValueError, match="must be class labels in 0..2"):
        tdakit.Classification().check_targets(logits, torch.tensor([0, 3]))


def test_raw_errors_of_a_first_hour_are_clear_messages(small_regression, concrete):
    train, query = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=2, batch_size=16), tdakit.Regression(),
                       dtype=torch.float64, progress=False, cache=False)
    with pytest.raises(ValueError, match="segments must be a whole number L or a list of boundaries"):
        tdakit.attribute(run, query, "source", segments=2.5, progress=False)
    with pytest.raises(ValueError, match=r"query examples have shape \(5,\) but the run was trained on \(8,\)"):
        tdakit.attribute(run, Split(query.x[:, :5], query.y), "influence", progress=False)
    with pytest.raises(ValueError, match="Classification needs integer class labels.*use Regression"):
        tdakit.train(tdakit.mlp(8, (4,), 3), concrete.train, tdakit.Recipe(), tdakit.Classification(), progress=False)
    with pytest.raises(ValueError, match="Classification needs one output per class"):
        tdakit.train(smooth_mlp(), Split(train.x, (train.y > 0).long()), tdakit.Recipe(), tdakit.Classification(),
                     progress=False)
    with pytest.raises(ValueError, match="subsets must be a whole number >= 2, got 0"):
        tdakit.groundtruth(run, query, subsets=0, seeds=2, progress=False)
    with pytest.raises(ValueError, match="seeds must be a whole number >= 1"):
        tdakit.groundtruth(run, query, subsets=4, seeds=0, progress=False)
    with pytest.raises(ValueError, match="query split is empty"):
        tdakit.groundtruth(run, query.subset(slice(0, 0)), subsets=4, seeds=2, progress=False)
    with pytest.raises(ValueError, match="checkpoints must be a count, 'all' or a list of steps"):
        tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=1), tdakit.Regression(), checkpoints="most")
    with pytest.raises(ValueError, match="damping must be a finite number >= 0"):
        tdakit.attribute(run, query, "influence", damping=-1.0, progress=False)
    no_checkpoints = tdakit.train(smooth_mlp(), train, tdakit.Recipe(epochs=1), tdakit.Regression(), checkpoints=0,
                                  dtype=torch.float64, progress=False, cache=False)
    with pytest.raises(ValueError, match="tracin needs checkpoints, and this run has none"):
        tdakit.attribute(no_checkpoints, query, "tracin", progress=False)


def test_presets_are_named_and_unknown_ones_listed():
    assert {"concrete", "mnist", "noisy_mnist", "rotated_mnist"} <= set(tdakit.presets.PRESETS)
    with pytest.raises(ValueError, match="unknown preset 'cifar'; choose one of concrete"):
        tdakit.preset("cifar")
    concrete = tdakit.preset("concrete")
    assert concrete.recipe.epochs == 20 and concrete.hidden == (128, 128, 128) and concrete.curvature == "ggn"
    noisy = tdakit.preset("noisy_mnist").data()
    clean = tdakit.preset("mnist").data()
    changed = float((noisy.train.y != clean.train.y).double().mean())
    assert 0.28 < changed < 0.32 and torch.equal(noisy.query.y, clean.query.y)
