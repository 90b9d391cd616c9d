"""One family of errors: everything a user can fix raises a TdakitError (a ValueError), and everything else is
a bug that the widgets let surface instead of showing it as a hint."""

import ast
from pathlib import Path

import pytest
import torch

import tdakit
from tdakit import errors
from tdakit.experiment import Method
from tdakit.explore.whatif import WhatIf
from tdakit.widgets import Background, DeletionExplorer, views

from .references import smooth_mlp

PACKAGE = Path(tdakit.__file__).parent
# builtin exceptions that a user error must not be raised as (the family replaces them)
REPLACED = {"ValueError", "FileNotFoundError", "KeyError", "TypeError", "IndexError"}
# the few places where such a raise is not about the user's input, and why
ALLOWED = {
    ("experiment.py", "KeyError"): "Table[label] is a mapping lookup",
    ("curvature/functions.py", "TypeError"): "calling a per-block function without its block is a programming error",
    ("attribution/settings.py", "TypeError"): "a mutable default in a settings class is a programming error",
}


def test_no_user_error_is_raised_as_a_bare_builtin_exception():
    """Every raise in the package names a TdakitError subclass (or one of the listed exceptions), so callers
    can catch what users can fix with one except clause."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in REPLACED and (rel, name) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} raises {name}")
    assert not found, found


def test_the_family_is_a_value_error_and_exported():
    assert issubclass(tdakit.TdakitError, ValueError)
    for cls in (errors.InputError, errors.SettingError, errors.ModelError, errors.TrainingError, errors.ResultError,
                errors.DataNotFoundError):
        assert issubclass(cls, tdakit.TdakitError)


@pytest.fixture(scope="module")
def tiny(small_regression):
    train, query = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(lr=0.05, epochs=2, batch_size=16), tdakit.Regression(),
                       checkpoints=2, dtype=torch.float64, progress=False, cache=False)
    return run, query


def _mistakes(run, query, train):
    """(what the user did, the call, the subclass expected): one per kind of mistake, across the API."""
    nan = tdakit.datasets.Split(train.x.clone(), train.y.clone())
    nan.x[3, 2] = float("nan")
    return [
        ("an unknown method", lambda: tdakit.attribute(run, query, "sauce"), errors.SettingError),
        ("a setting the method does not take", lambda: tdakit.attribute(run, query, "tracin", damping=1.0),
         errors.SettingError),
        ("queries of another shape", lambda: tdakit.attribute(run, tdakit.datasets.Split(torch.zeros(2, 3),
                                                                                         torch.zeros(2)), "tracin"),
         errors.InputError),
        ("NaN in the training data", lambda: tdakit.train(smooth_mlp(), nan, tdakit.Recipe(), tdakit.Regression()),
         errors.InputError),
        ("a negative learning rate", lambda: tdakit.Recipe(lr=-1.0), errors.SettingError),
        ("training that diverges", lambda: tdakit.train(smooth_mlp(), train, tdakit.Recipe(lr=1e6, epochs=2),
                                                        tdakit.Regression(), cache=False, progress=False),
         errors.TrainingError),
        ("a bad segment spec", lambda: tdakit.attribute(run, query, "source", segments=2.5), errors.SettingError),
        ("an unknown curvature", lambda: tdakit.attribute(run, query, "influence", curvature="exact"),
         errors.SettingError),
        ("a ground truth with one subset", lambda: tdakit.groundtruth(run, query, subsets=1), errors.SettingError),
        ("a missing MNIST folder", lambda: tdakit.datasets.mnist_folder("/nonexistent"), errors.DataNotFoundError),
        ("an unknown preset", lambda: tdakit.preset("imagenet"), errors.SettingError),
    ]


def test_user_mistakes_raise_members_of_the_family(tiny, small_regression):
    run, query = tiny
    train, _ = small_regression
    for what, call, expected in _mistakes(run, query, train):
        with pytest.raises(tdakit.TdakitError) as caught:
            call()
        assert isinstance(caught.value, expected), (what, type(caught.value), str(caught.value))


def test_the_worker_reports_user_errors_and_lets_bugs_surface():
    got = []
    worker = Background(threaded=False)

    def user_mistake(job):
        raise errors.SettingError("k must be at least 1")

    worker.submit(user_mistake, got.append, got.append)
    assert isinstance(got[-1], errors.SettingError)

    def bug(job):
        return [][1]

    with pytest.raises(IndexError):  # a bug is raised to the caller, not passed off as a hint
        worker.submit(bug, got.append, got.append)
    assert isinstance(got[-1], IndexError) and not worker.busy  # the explorer heard of it and stays usable
    worker.submit(lambda job: "fine", got.append, got.append)
    assert got[-1] == "fine"


def test_the_deletion_explorer_shows_a_hint_for_a_user_error_and_says_a_bug_is_a_bug(tiny, concrete, monkeypatch):
    run, query = tiny
    explorer = DeletionExplorer(WhatIf(run, query, {"TracIn": Method("tracin")}, seeds=1, cache=False), concrete,
                                k=2, threaded=False)
    explorer.delete_picked("3, 999")  # a training point that does not exist: a hint, no exception
    assert "training point indices must lie in" in explorer.status.value and "bug" not in explorer.status.value

    def broken(*args, **kwargs):
        raise RuntimeError("something inside tdakit broke")

    monkeypatch.setattr(explorer.whatif, "delete", broken)
    with pytest.raises(RuntimeError):
        explorer.delete(query=0, method="TracIn", k=2, protocol="same")
    assert "internal error" in explorer.status.value and "bug" in explorer.status.value
    assert views.failure_html(errors.SettingError("fix me")) == views.error_html("fix me")
