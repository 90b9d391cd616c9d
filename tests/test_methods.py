"""Every registered method, drawn from the registry: it runs on a small run and gives finite scores of the right
shape, its settings are a documented dataclass checked before any work, and docs/methods.md lists them as the code
has them."""

from dataclasses import fields
from pathlib import Path

import pytest
import torch

import tdakit
from tdakit.attribution import METHODS
from tdakit.attribution.settings import methods_markdown

from .references import smooth_mlp

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


@pytest.fixture(scope="module")
def small(small_regression):
    train, query = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(lr=0.05, epochs=2, batch_size=16, weight_decay=1e-3),
                       tdakit.Regression(), checkpoints=4, dtype=torch.float64, progress=False, cache=False)
    return run, query


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_scores_every_query_and_point(name, small):
    run, query = small
    scores = tdakit.attribute(run, query, name, progress=False)
    assert scores.shape == (len(query), run.num_train) and torch.isfinite(scores.values).all()
    assert float(scores.values.abs().max()) > 0 and scores.method == name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_setting_has_help_and_a_wrong_one_is_named(name, small):
    run, query = small
    spec = METHODS[name]
    for f in fields(spec.settings):
        assert f.metadata.get("help"), f"{name}.{f.name} has no help text"
    spec.configure()  # the defaults are valid
    with pytest.raises(tdakit.TdakitError, match=f"{name} does not take colour"):
        tdakit.attribute(run, query, name, colour="blue", progress=False)


def test_settings_are_checked_before_any_work(small):
    run, query = small
    for method, bad in (("influence", {"damping": -1.0}), ("source", {"form": "cubic"}),
                        ("source", {"curvature": "exact"}), ("trak", {"projection": 0}),
                        ("unrolled", {"chunk": 0}), ("tracin", {"precision": "fp8"})):
        with pytest.raises(tdakit.TdakitError):
            tdakit.attribute(run, query, method, progress=False, **bad)


def test_docs_methods_page_is_generated_from_the_settings():
    assert DOC.read_text() == methods_markdown(METHODS) + "\n", (
        "docs/methods.md is out of date: regenerate it with\n"
        "python -c 'import tdakit; from tdakit.attribution.settings import methods_markdown; "
        "print(methods_markdown(tdakit.METHODS))' > docs/methods.md")
