"""The written-out reverse step for Linear/activation stacks against dense float64 Hessians and
per-example gradients, and the whole reverse pass against the torch.func path."""

import pytest
import torch
from torch import nn
from torch.func import hessian, jacrev, vmap

import tdakit
from tdakit.attribution.unroll import unrolled_adjoint, unrolled_scores
from tdakit.attribution.unroll_stack import StackStep, linear_stack
from tdakit.grads import output_derivatives
from tdakit.models import FlatModel

from .references import loop_grads, small_cnn


def _stack(*layers):
    return nn.Sequential(*layers)


MODELS = {
    "relu regression": (lambda: tdakit.mlp(4, (6, 5), 1, "relu"), tdakit.Regression(), (4,)),
    "smooth activations": (lambda: _stack(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 5), nn.Softplus(),
                                          nn.Linear(5, 5), nn.ELU(), nn.Linear(5, 4), nn.SiLU(),
                                          nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 3), nn.Tanh(),
                                          nn.Linear(3, 1)), tdakit.Regression(), (4,)),
    "leaky relu, approximate gelu": (lambda: _stack(nn.Linear(4, 6), nn.LeakyReLU(0.1), nn.Linear(6, 5),
                                                    nn.GELU(approximate="tanh"), nn.Linear(5, 1)),
                                     tdakit.Regression(measure="loss"), (4,)),
    "classification, flatten, no bias, in-place relu": (
        lambda: _stack(nn.Flatten(), nn.Linear(12, 7, bias=False), nn.ReLU(inplace=True), nn.Identity(),
                       nn.Linear(7, 3)), tdakit.Classification(), (3, 4)),
    "one linear layer": (lambda: _stack(nn.Linear(5, 3)), tdakit.Classification(), (5,)),
    "one activation instance used twice": (lambda: _shared_activation(), tdakit.Regression(), (4,)),
}


def _shared_activation():
    act = nn.Tanh()
    return _stack(nn.Linear(4, 6), act, nn.Linear(6, 5), act, nn.Linear(5, 1))


def _tied_linear():
    tied = nn.Linear(5, 5)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), tied, nn.ReLU(), tied, nn.ReLU(), nn.Linear(5, 1))


@pytest.mark.parametrize("name", list(MODELS))
def test_stack_step_equals_dense_hessian_and_per_example_gradients(name):
    make, task, features = MODELS[name]
    torch.manual_seed(0)
    model = FlatModel(make())
    theta = model.init(0, torch.float64)
    b, q = 7, 3
    x = torch.randn(b, *features, dtype=torch.float64)
    classes = 3 if isinstance(task, tdakit.Classification) else None
    y = torch.randint(0, classes, (b,)) if classes else torch.randn(b, dtype=torch.float64)
    c = torch.rand(b, dtype=torch.float64) / b
    c[2] = 0.0  # a point with weight 0 (or a padding slot): its score must still come out
    mu = torch.randn(q, model.num_params, dtype=torch.float64)

    def batch_loss(th):
        return (c * task.loss(model(th, x), y)).sum()

    expected_hvp = mu @ hessian(batch_loss)(theta)  # the Hessian is symmetric
    expected_dc = mu @ loop_grads(model, task, theta, tdakit.datasets.Split(x, y)).T  # [Q, B]

    out = tuple(torch.zeros_like(t) for t in model.parameter_tensors(mu))
    dc = StackStep.for_model(model, task)(model.parameter_tensors(theta), x, y, c, model.parameter_tensors(mu), out)
    hvp = torch.cat([t.flatten(1) for t in out], 1)
    assert torch.allclose(hvp, expected_hvp, rtol=1e-10, atol=1e-12 * expected_hvp.abs().max())
    assert torch.allclose(dc, expected_dc, rtol=1e-10, atol=1e-12 * expected_dc.abs().max())
    assert dc[:, 2].abs().max() > 0


def test_stack_step_adds_into_what_it_is_given():
    make, task, features = MODELS["relu regression"]
    model = FlatModel(make())
    theta = model.init(1, torch.float64)
    x, y, c = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64), torch.full((5,), 0.2,
                                                                                                    dtype=torch.float64)
    mu = torch.randn(2, model.num_params, dtype=torch.float64)
    step = StackStep.for_model(model, task)
    zero = tuple(torch.zeros_like(t) for t in model.parameter_tensors(mu))
    step(model.parameter_tensors(theta), x, y, c, model.parameter_tensors(mu), zero)
    start = torch.randn_like(mu)
    accumulated = tuple(t.clone() for t in model.parameter_tensors(start))
    step(model.parameter_tensors(theta), x, y, c, model.parameter_tensors(mu), accumulated)
    for a, z, s in zip(accumulated, zero, model.parameter_tensors(start), strict=True):
        assert torch.allclose(a, s + z, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("module", [
    small_cnn(),
    nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 1)),
    nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 1)),
    nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 1), nn.Sigmoid()),
    nn.Sequential(nn.ReLU(), nn.Linear(4, 1)),
    nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.1), nn.Linear(5, 1)),
    nn.Sequential(nn.Linear(4, 5), nn.Softmax(-1), nn.Linear(5, 1)),
    _tied_linear(),
], ids=["cnn", "batchnorm", "two linear", "activation last", "activation first", "dropout", "softmax", "tied"])
def test_models_that_are_not_plain_stacks_take_the_generic_path(module):
    assert linear_stack(FlatModel(module)) is None
    assert StackStep.for_model(FlatModel(module), tdakit.Regression()) is None


@pytest.mark.parametrize("task", [tdakit.Regression(), tdakit.Classification()], ids=["regression", "classification"])
def test_output_derivatives_equal_per_example_torch_func(task):
    g = torch.Generator().manual_seed(3)
    outputs = torch.randn(6, 1 if isinstance(task, tdakit.Regression) else 4, generator=g, dtype=torch.float64)
    targets = torch.randn(6, generator=g, dtype=torch.float64) if isinstance(task, tdakit.Regression) else \
        torch.randint(0, 4, (6,), generator=g)

    def example_loss(o, y):
        return task.loss(o[None], y[None])[0]

    gradient, hessians = output_derivatives(task, outputs, targets)
    assert torch.allclose(gradient, vmap(jacrev(example_loss))(outputs, targets), rtol=1e-12, atol=1e-14)
    assert torch.allclose(hessians, vmap(hessian(example_loss))(outputs, targets), rtol=1e-12, atol=1e-14)


def test_a_shared_activation_instance_counts_at_every_use():
    _, layers = linear_stack(FlatModel(_shared_activation()))
    assert [layer.activation is not None for layer in layers] == [True, True, False]


def test_written_out_reverse_pass_equals_the_torch_func_one(small_regression):
    train, query = small_regression
    weights = torch.ones(len(train), dtype=torch.float64)
    weights[[3, 10]] = 0.0  # removed points still get scores
    weights[20] = 2.5
    recipe = tdakit.Recipe(lr=0.05, epochs=3, batch_size=10, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(tdakit.mlp(8, (12, 9), 1, "relu"), train, recipe, tdakit.Regression(), weights=weights,
                       dtype=torch.float64, progress=False, cache=False)
    v = torch.randn(5, run.model.num_params, dtype=torch.float64)
    written, initial_written = unrolled_adjoint(run, v, progress=False)
    generic, initial_generic = unrolled_adjoint(run, v, progress=False, written_out=False)
    assert torch.allclose(written, generic, rtol=1e-10, atol=1e-12 * generic.abs().max())
    assert torch.allclose(initial_written, initial_generic, rtol=1e-10, atol=1e-12 * initial_generic.abs().max())
    assert generic[:, [3, 10]].abs().max() > 0
    # and through the query measurements, with queries split into chunks
    scores = unrolled_scores(run, query, query_chunk=4, progress=False)
    assert torch.allclose(scores, unrolled_scores(run, query, progress=False, written_out=False), rtol=1e-10,
                          atol=1e-12 * scores.abs().max())
