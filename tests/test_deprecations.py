"""tdakit 0.2's names that changed in 0.3 keep working for one release, each with a DeprecationWarning that names
what to use now."""

import pytest
import torch

import tdakit
from tdakit.experiment import Method
from tdakit.explore.whatif import WhatIf

from .references import smooth_mlp


@pytest.mark.parametrize("old, new", [
    ("tdakit.models.mlp", "tdakit.zoo.mlp"), ("tdakit.models.resnet9", "tdakit.zoo.resnet9"),
    ("tdakit.models.LayerSlot", "tdakit.layers.LayerSlot"),
    ("tdakit.training.checkpoint_steps", "tdakit.recipe.checkpoint_steps"),
    ("tdakit.training.step_flops", "tdakit.stacking.step_flops"),
    ("tdakit.training.make_batch_gradient", "tdakit.sgd.make_batch_gradient"),
    ("tdakit.unroll.unrolled_scores", "tdakit.attribution.unroll.unrolled_scores"),
    ("tdakit.unroll_stack.StackStep", "tdakit.attribution.unroll_stack.StackStep"),
    ("tdakit.whatif.WhatIf", "tdakit.explore.whatif.WhatIf"),
    ("tdakit.spectrum.Spectrum", "tdakit.explore.spectrum.Spectrum"),
    ("tdakit.widgets.spectrum.IFToSourceExplorer", "tdakit.widgets.if_to_source.IFToSourceExplorer"),
])
def test_moved_names_warn_and_are_the_same_object(old, new):
    import importlib

    def resolve(dotted):
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)

    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        got = resolve(old)
    assert got is resolve(new)


def test_names_training_still_uses_stay_where_they_were():
    """seed_of, batch_order, batch_coefficients and retraining_chunk moved too; training.py imports them, so
    the old path gives the same objects (without a warning)."""
    from tdakit import recipe, sgd, stacking, training

    assert training.seed_of is recipe.seed_of and training.batch_order is recipe.batch_order
    assert training.batch_coefficients is sgd.batch_coefficients
    assert training.retraining_chunk is stacking.retraining_chunk


def test_renamed_arguments_warn_and_do_the_same(small_regression):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16)
    with pytest.warns(DeprecationWarning, match="Checkpoints"):
        old = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=3, placement="end",
                           dtype=torch.float64, progress=False, cache=False)
    new = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=tdakit.Checkpoints(3, "end"),
                       dtype=torch.float64, progress=False, cache=False)
    assert old.checkpoint_placement == new.checkpoint_placement == "end" and torch.equal(old.final, new.final)
    with pytest.warns(DeprecationWarning, match="query_chunk"):
        a = tdakit.attribute(new, query, "unrolled", chunk=2, progress=False)
    assert torch.equal(a.values, tdakit.attribute(new, query, "unrolled", query_chunk=2, progress=False).values)
    with pytest.warns(DeprecationWarning, match="models_per_chunk"):
        tdakit.groundtruth(new, query, subsets=2, seeds=1, chunk=2, cache=False, progress=False)
    explorer = WhatIf(new, query, {"TracIn": Method("tracin")}, seeds=1, cache=False)
    with pytest.warns(DeprecationWarning, match="protocol"):
        trial = explorer.delete(query=0, points=[1], kind="same")
    with pytest.warns(DeprecationWarning, match="protocol"):
        assert trial.kind == trial.protocol == "same"
    model = tdakit.FlatModel(smooth_mlp())
    with pytest.warns(DeprecationWarning, match="tdakit.layers.factored"):
        slots, _ = model.layers()
    assert [s.name for s in slots] == [s.name for s in tdakit.layers.factored(model)[0]]
