"""BatchNorm in functional training: against ordinary nn.Module training, against removal from the batch,
and exact unrolling against finite differences through a short BatchNorm run."""

import pytest
import torch
from torch import nn

import tdakit
from tdakit.attribution.unroll import replay
from tdakit.datasets import Split
from tdakit.grads import loss_grads, measurements
from tdakit.models import FlatModel
from tdakit.zoo import resnet9

from . import references


def bn_cnn(activation=nn.Tanh) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), activation(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(36, 5), nn.BatchNorm1d(5), activation(), nn.Linear(5, 3))


def image_data(n: int, seed: int = 0, channels: int = 2, side: int = 6) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, side, side, generator=g, dtype=torch.float64) + 0.5
    return Split(x, torch.randint(0, 3, (n,), generator=g))


def module_at(model: FlatModel, module: nn.Module, theta: torch.Tensor) -> nn.Module:
    """An ordinary nn.Module holding theta's parameters and running statistics."""
    values = model.unflatten(theta)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(values[name])
        for name in model.state_names:
            module.get_buffer(name).copy_(values[name])
    return module


def test_functional_training_equals_nn_module_training_with_batchnorm():
    data = image_data(32)
    recipe = tdakit.Recipe(lr=0.05, epochs=3, batch_size=8, momentum=0.9, weight_decay=1e-3, schedule="cosine")
    run = tdakit.train(bn_cnn(), data, recipe, tdakit.Classification(), checkpoints=2, dtype=torch.float64,
                       progress=False, cache=False)
    module = module_at(run.model, bn_cnn().double(), run.init).train()
    opt = torch.optim.SGD(module.parameters(), lr=1.0, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    for k in range(run.num_steps):
        for group in opt.param_groups:
            group["lr"] = float(run.lrs[k])
        idx = run.batches[k]
        opt.zero_grad()
        nn.functional.cross_entropy(module(data.x[idx]), data.y[idx]).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()]
                     + [module.get_buffer(n).reshape(-1) for n in run.model.state_names])
    assert run.model.num_state == 2 * (4 + 5)
    assert torch.allclose(run.final, flat, rtol=1e-9, atol=1e-11)
    # evaluation mode: the running statistics recorded in theta, as nn.Module.eval() uses its buffers
    assert torch.allclose(run.model(run.final, data.x), module.eval()(data.x), atol=1e-11)
    assert not torch.equal(run.final[run.model.state_slice], run.init[run.model.state_slice])


def test_a_point_with_weight_zero_is_absent_from_the_batch_statistics():
    model = FlatModel(bn_cnn())
    theta = model.init(0, torch.float64)
    x = image_data(6).x
    c = torch.full((6,), 1 / 6, dtype=torch.float64)
    c[2] = 0.0
    out, state = model.train_forward(theta, x, c)
    keep = [0, 1, 3, 4, 5]
    module = module_at(model, bn_cnn().double(), theta).train()
    expected = module(x[keep])
    assert torch.allclose(out[keep], expected, atol=1e-12)
    reference_state = torch.cat([module.get_buffer(n).reshape(-1) for n in model.state_names])
    assert torch.allclose(state, reference_state, atol=1e-12)


def test_gradients_never_reach_the_running_statistics():
    data = image_data(5)
    model, task = FlatModel(bn_cnn()), tdakit.Classification()
    theta = model.init(1, torch.float64)
    grads = loss_grads(model, task, theta, data)
    assert torch.all(grads[:, model.state_slice] == 0)
    assert torch.allclose(grads, references.loop_grads(model, task, theta, data), atol=1e-12)


def test_unrolled_scores_through_batchnorm_equal_finite_differences():
    """The unrolled derivative differentiates the training steps (weighted batch statistics included) and
    holds the recorded running statistics fixed in the measurement; the finite difference does the same."""
    data = image_data(24, seed=2)
    query = image_data(3, seed=3)
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(bn_cnn(), data, recipe, tdakit.Classification(), dtype=torch.float64, progress=False,
                       cache=False)
    scores = tdakit.attribute(run, query, "unrolled", progress=False).values
    state = run.model.state_slice

    def measure(weights):
        theta = replay(run, torch.float64, weights)[-1].clone()
        theta[state] = run.final[state]
        return measurements(run.model, run.task, theta, query)

    eps = 1e-6
    for i in (0, 9, 23):
        up, down = torch.ones(24, dtype=torch.float64), torch.ones(24, dtype=torch.float64)
        up[i] += eps
        down[i] -= eps
        fd = (measure(up) - measure(down)) / (2 * eps)
        assert torch.allclose(scores[:, i], fd, rtol=1e-5, atol=1e-7 * fd.abs().max()), i


def test_unsupported_buffers_and_batchnorm_settings_are_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.register_buffer("count", torch.zeros(()))

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(ValueError, match=r"buffers \['count'\]"):
        FlatModel(Counter())
    with pytest.raises(ValueError, match="track_running_stats=False"):
        FlatModel(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False)))
    with pytest.raises(ValueError, match="momentum=None"):
        FlatModel(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, momentum=None)))


def test_resnet9_is_the_paper_model_and_its_norms_are_left_out_of_the_kronecker_factors():
    model = FlatModel(resnet9())
    assert model.num_trainable == 6_573_120  # the paper's ResNet-9 (6.57M parameters)
    small = FlatModel(resnet9(width=4))
    slots, excluded = tdakit.layers.factored(small)
    assert [s.name for s in slots] == ["0.0", "1.0", "3.block.0.0", "3.block.1.0", "4.0", "6.0", "8.block.0.0",
                                       "8.block.1.0", "11"]
    covered = sum(s.stop - s.start for s in excluded) + sum(
        (s.weight.stop - s.weight.start) + (0 if s.bias is None else s.bias.stop - s.bias.start) for s in slots)
    assert covered == small.num_params


@pytest.fixture(scope="module")
def tiny_resnet9_run():
    data = image_data(16, seed=4, channels=3, side=8)
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(resnet9(num_classes=3, width=2), data, recipe, tdakit.Classification(), checkpoints=1,
                       dtype=torch.float64, progress=False, cache=False)
    return run, data


def test_resnet9_hook_gradients_equal_a_loop_of_autograd(tiny_resnet9_run):
    """In-place ReLU and in-place residual adds: the hooks' per-example layer gradients d a^T equal autograd's."""
    from tdakit.layers import gradient_factors

    run, data = tiny_resnet9_run
    few = data.subset(slice(0, 5))
    reference = references.loop_grads(run.model, run.task, run.final, few)
    assert torch.allclose(loss_grads(run.model, run.task, run.final, few, chunk=2), reference, atol=1e-12)
    slots, _ = tdakit.layers.factored(run.model)
    inputs, grads = gradient_factors(run.model, run.task, run.final, few, "empirical", slots)
    for slot, a, d in zip(slots, inputs, grads, strict=True):
        assert torch.allclose(torch.einsum("nto,nti->noi", d[0], a), slot.matrix(reference), atol=1e-12), slot.name


def test_resnet9_ekfac_eigenvalues_are_the_gauss_newton_diagonal_in_the_kronecker_basis(tiny_resnet9_run):
    """v^T G v for v = s_o a_i^T of each layer's Kronecker basis, G the Gauss-Newton matrix at the final
    parameters (eval mode), from Jacobian-vector products and the loss's output Hessians (autograd)."""
    from torch.func import hessian, jvp

    run, data = tiny_resnet9_run
    wd = run.recipe.weight_decay
    K = tdakit.curvature.fit("ekfac", run.model, run.task, run.final[None], data, wd)

    def ggn_quadratic(v):
        outputs, tangent = jvp(lambda th: run.model(th, data.x), (run.final,), (v,))
        total = 0.0
        for o, t, y in zip(outputs, tangent, data.y, strict=True):
            lam = hessian(lambda out, y=y: run.task.loss(out[None], y[None])[0])(o)
            total += float(t @ lam @ t)
        return total / len(data)

    for layer, o, i, v in references.kronecker_basis_directions(K, run.model.num_params, 2):
        expected = float(layer.eigenvalues[o, i])
        assert ggn_quadratic(v) == pytest.approx(expected, rel=1e-8, abs=1e-12), layer.slot.name


def test_models_trained_together_with_vmap_equal_models_trained_alone():
    """train_many stacks BatchNorm models under vmap (the GPU path for convolutional models); each model's
    parameters and running statistics equal its training alone."""
    from tdakit.evaluation.retrain import retrain

    data = image_data(24, seed=5)
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(bn_cnn(), data, recipe, tdakit.Classification(), dtype=torch.float64, progress=False,
                       cache=False)
    keep = torch.rand(3, 24, generator=torch.Generator().manual_seed(0)) < 0.7
    keep[:, 0] = True
    keep[1] = keep[0]  # two models with the same count train in one vmap batch
    together = retrain(run, keep, init_seeds=[1, 2, 3], order_seeds=[4, 5, 6], models_per_chunk=3, progress=False)
    alone = retrain(run, keep, init_seeds=[1, 2, 3], order_seeds=[4, 5, 6], models_per_chunk=1, progress=False)
    assert torch.allclose(together, alone, rtol=1e-10, atol=1e-12)
    assert not torch.equal(together[0, run.model.state_slice], run.init[run.model.state_slice])


def _reference_training(run, data, weights, skip_empty_statistics=True):
    """The run's steps on an nn.Module with torch.optim.SGD: a batch whose points all have weight 0 contributes no
    loss (zero gradients: momentum and weight decay still act) and no running-statistics update."""
    module = module_at(run.model, bn_cnn().double(), run.init).train()
    opt = torch.optim.SGD(module.parameters(), lr=1.0, momentum=run.recipe.momentum,
                          weight_decay=run.recipe.weight_decay)
    for k in range(run.num_steps):
        opt.param_groups[0]["lr"] = float(run.lrs[k])
        idx = run.batches[k][run.batches[k] >= 0]
        kept = idx[weights[idx] > 0]
        opt.zero_grad()
        if len(kept):
            (nn.functional.cross_entropy(module(data.x[kept]), data.y[kept], reduction="sum") / len(idx)).backward()
        else:
            for p in module.parameters():
                p.grad = torch.zeros_like(p)
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()]
                     + [module.get_buffer(n).reshape(-1) for n in run.model.state_names])


def test_a_batch_of_deleted_points_trains_as_an_empty_batch():
    """Deleting the lone point of a short last batch (weight 0) used to make BatchNorm's statistics 0/0 and stop
    training as 'diverged'; the batch now adds no loss term and leaves the running statistics alone, as an
    nn.Module step with zero gradients and no forward pass does."""
    data = image_data(17, seed=6)  # batches of 8, 8 and 1
    recipe = tdakit.Recipe(lr=0.05, epochs=1, batch_size=8, momentum=0.9, weight_decay=1e-3)
    full = tdakit.train(bn_cnn(), data, recipe, tdakit.Classification(), dtype=torch.float64, progress=False,
                        cache=False)
    lone = int(full.batches[2][0])
    weights = torch.ones(17, dtype=torch.float64)
    weights[lone] = 0.0
    run = tdakit.train(bn_cnn(), data, recipe, tdakit.Classification(), dtype=torch.float64, progress=False,
                       cache=False, weights=weights)
    assert torch.isfinite(run.final).all()
    assert torch.allclose(run.final, _reference_training(run, data, weights), rtol=1e-9, atol=1e-11)
    # every path that replays the trajectory agrees: stacked retraining (the what-if explorer's "same" kind)
    same = tdakit.evaluation.removal.retrained_measurements(full, data.subset(slice(0, 3)), [lone], protocol="same")
    assert torch.allclose(same[0], measurements(run.model, run.task, run.final, data.subset(slice(0, 3))),
                          rtol=1e-9, atol=1e-11)
    assert torch.allclose(replay(run, torch.float64)[-1], run.final, rtol=1e-12, atol=1e-13)


def test_batchnorm1d_with_one_example_in_a_batch_skips_the_running_statistics_update():
    """A BatchNorm1d batch of one example has no unbiased variance (0/0; PyTorch refuses it in training mode).
    It normalises to 0 and leaves the running statistics as they were, the same on every path: train, the
    stacked retraining of train_many and replay."""
    data = image_data(17, seed=7)  # the third batch of every epoch holds one example
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, momentum=0.9, weight_decay=1e-3)
    run = tdakit.train(bn_cnn(), data, recipe, tdakit.Classification(), checkpoints="all", dtype=torch.float64,
                       progress=False, cache=False)
    thetas = torch.cat([run.checkpoints, run.final[None]])
    assert torch.isfinite(thetas).all()
    for k in range(run.num_steps):
        for name, one_value in (("1.running_var", False), ("6.running_mean", True), ("6.running_var", True)):
            where = run.model.slices[name]  # BatchNorm2d: 36 values per channel even for one image
            changed = not torch.equal(thetas[k + 1, where], thetas[k, where])
            assert changed == (k % 3 != 2 or not one_value), (k, name)  # steps 2 and 5: one example
    stacked = tdakit.training.train_many(run.model, data, recipe, run.task, run.init[None].expand(2, -1),
                                         run.batches[None].expand(2, -1, -1), progress=False)
    assert torch.allclose(stacked[0], run.final, rtol=1e-12, atol=1e-13) and torch.isfinite(stacked).all()
    assert torch.allclose(replay(run, torch.float64)[-1], run.final, rtol=1e-12, atol=1e-13)
