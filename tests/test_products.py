"""Score products through layer factors (hooks: u . (d a^T) per layer, torch.func for other parameters) against
flat per-example gradients from torch.func, on models mixing supported and unsupported layers."""

import pytest
import torch
from torch import nn

import tdakit
from tdakit.attribution.methods import plans
from tdakit.attribution.products import evaluate
from tdakit.attribution.settings import ProductOptions

from .references import classification_data, small_cnn
from .test_batchnorm import bn_cnn, image_data
from .test_kronecker import WithNorm


class Reused(nn.Module):
    """One linear layer called twice, a grouped convolution (no Kronecker form) and a LayerNorm."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.conv = nn.Conv2d(4, 3, 3, stride=2)
        self.square = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(torch.tanh(self.grouped(x)))).mean((2, 3))
        return self.head(self.norm(torch.tanh(self.square(torch.tanh(self.square(h))))))


CASES = {
    "mlp": (lambda: tdakit.mlp(5, (8, 6), 3, "tanh"), lambda n, s: classification_data(n, seed=s)),
    "cnn": (small_cnn, lambda n, s: classification_data(n, True, seed=s)),
    "batchnorm cnn": (bn_cnn, lambda n, s: image_data(n, seed=s)),
    "layernorm mlp": (WithNorm, lambda n, s: classification_data(n, seed=s)),
    "reused, grouped": (Reused, lambda n, s: image_data(n, seed=s)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_factored_products_equal_flat_gradient_products(case):
    module, data_of = CASES[case]
    data, query = data_of(40, 0), data_of(4, 1)
    run = tdakit.train(module(), data, tdakit.Recipe(lr=0.05, epochs=2, batch_size=8), tdakit.Classification(),
                       checkpoints=6, dtype=torch.float64, progress=False, cache=False)
    methods = [("tracin", {}), ("grad_dot", {})]  # query gradients at 6 checkpoints and at the final parameters
    if case == "mlp":
        methods.append(("source", {"curvature": "ggn"}))  # walked vectors u
    for method, settings in methods:
        plan = plans(run, query, method, **settings)[0]
        flat = evaluate([plan], ProductOptions(gradients="vmap"), chunk=16)[0]
        factored = evaluate([plan], ProductOptions(gradients="hooks"), chunk=16)[0]
        assert torch.allclose(factored, flat, rtol=1e-10, atol=1e-12 * float(flat.abs().max())), method
        assert float(flat.abs().max()) > 0


def test_the_split_covers_every_parameter_once():
    model = tdakit.models.FlatModel(Reused())
    slots, rest = tdakit.layers.hook_split(model)
    assert [s.name for s in slots] == ["conv", "square", "head"]
    covered = torch.zeros(model.num_trainable, dtype=torch.int64)
    for s in slots:
        covered[s.weight] += 1
        covered[s.bias] += 1
    covered[rest] += 1
    assert torch.all(covered == 1)
    assert len(rest) == 4 * 1 * 9 + 4 + 2 * 3  # the grouped convolution (weight [4, 1, 3, 3]) and the LayerNorm


def test_hooks_need_a_factorable_layer_and_untied_weights():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.LayerNorm(32))
    data = image_data(8)
    run = tdakit.train(model, data, tdakit.Recipe(epochs=1, batch_size=8), tdakit.Classification(), checkpoints=2,
                       progress=False, cache=False)
    assert tdakit.layers.hook_split(run.model) is None
    plan = plans(run, data, "grad_dot")[0]
    with pytest.raises(ValueError, match="gradients='hooks' needs"):
        evaluate([plan], ProductOptions(gradients="hooks"))
    assert torch.allclose(evaluate([plan])[0], evaluate([plan], ProductOptions(gradients="vmap"))[0])  # auto falls back
    tied = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    tied[2].weight = tied[0].weight
    assert tdakit.layers.hook_split(tdakit.models.FlatModel(tied)) is None


def test_trak_features_from_layer_factors_equal_projected_flat_gradients():
    from tdakit.attribution.trak import _projections, project, project_factors
    from tdakit.grads import loss_grads
    from tdakit.layers import gradient_factors

    data = image_data(10)
    model, task = tdakit.models.FlatModel(bn_cnn()), tdakit.Classification()
    theta = model.init(0, torch.float64)
    slots, _ = tdakit.layers.factored(model)
    proj = _projections(slots, 3, 0, torch.float64, "cpu")  # 3 rows/columns: every layer is projected
    flat = project(slots, proj, loss_grads(model, task, theta, data))
    factored = project_factors(slots, proj, *gradient_factors(model, task, theta, data, "empirical", slots))
    assert flat.shape == factored.shape and torch.allclose(flat, factored, rtol=1e-10, atol=1e-13)


def test_attribute_takes_the_gradients_setting_and_refuses_unknown_ones():
    """gradients= reaches the score products through attribute and attribute_many: "vmap" and "hooks" give
    the same scores (float64), and a misspelt value is named."""
    train, query = classification_data(30, seed=1), classification_data(4, seed=2)
    run = tdakit.train(tdakit.mlp(5, (8,), 3, "tanh"), train, tdakit.Recipe(lr=0.1, epochs=2, batch_size=10),
                       tdakit.Classification(), dtype=torch.float64, progress=False, cache=False)
    hooks = tdakit.attribute(run, query, "tracin", progress=False, gradients="hooks").values
    flat = tdakit.attribute(run, query, "tracin", progress=False, gradients="vmap").values
    assert torch.allclose(hooks, flat, rtol=1e-10, atol=1e-14)
    many = tdakit.attribute_many(run, query, {"TracIn": ("tracin", {})}, progress=False, gradients="vmap")
    assert torch.allclose(many["TracIn"].values, flat, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="gradients must be one of"):
        tdakit.attribute(run, query, "tracin", progress=False, gradients="autograd")
