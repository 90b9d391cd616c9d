import dataclasses

import pytest
import torch

import tdakit
from tdakit.attribution import checkpoint_rates, segments_of
from tdakit.attribution.unroll import replay
from tdakit.recipe import batch_order, seed_of
from tdakit.schedules import SCHEDULES, learning_rates
from tdakit.stacking import CONV_WEIGHT, CPU_STACKING_MFLOP, retraining_chunk, stack_models, step_flops
from tdakit.training import train_many

from .conftest import smooth_mlp

RECIPE = tdakit.Recipe(lr=0.05, epochs=3, batch_size=10, momentum=0.9, weight_decay=1e-3)

WD = 1e-3


def test_batch_order_visits_every_point_once_per_epoch_with_padding():
    order = batch_order(torch.arange(25), batch_size=10, epochs=2, seed=3)
    assert order.shape == (6, 10)
    for epoch in order.view(2, 30):
        real = epoch[epoch >= 0]
        assert sorted(real.tolist()) == list(range(25))
        assert (epoch < 0).sum() == 5


def test_same_seed_same_numbers(small_regression):
    train, _ = small_regression
    a = tdakit.train(smooth_mlp(), train, RECIPE, tdakit.Regression(), progress=False)
    b = tdakit.train(smooth_mlp(), train, RECIPE, tdakit.Regression(), progress=False)
    assert torch.equal(a.final, b.final)
    c = tdakit.train(smooth_mlp(), train, tdakit.Recipe(**{**RECIPE.__dict__, "seed": 1}), tdakit.Regression(),
                     progress=False)
    assert not torch.equal(a.final, c.final)


def test_training_lowers_the_loss_and_records_the_trajectory(small_regression):
    train, _ = small_regression
    run = tdakit.train(smooth_mlp(), train, RECIPE, tdakit.Regression(), checkpoints="all", progress=False)
    assert run.num_steps == 3 * 7 and run.checkpoints.shape == (21, run.model.num_params)
    assert torch.equal(run.checkpoints[0], run.init)
    assert run.losses[-7:].mean() < run.losses[:7].mean()
    assert torch.allclose(run.effective_lrs, run.lrs / 0.1)


def test_one_step_matches_the_written_out_update(small_regression):
    train, _ = small_regression
    recipe = tdakit.Recipe(lr=0.1, epochs=1, batch_size=64, momentum=0.5, weight_decay=0.01)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=[0, 1], dtype=torch.float64,
                       progress=False)
    model = run.model
    theta = run.init.clone().requires_grad_(True)
    loss = ((model(theta, train.x)[:, 0] - train.y) ** 2).mean()
    (g,) = torch.autograd.grad(loss, theta)
    expected = run.init - 0.1 * (g + 0.01 * run.init)
    assert torch.allclose(run.checkpoints[1], expected, atol=1e-12)


def test_vmap_training_equals_one_by_one_in_float64(small_regression):
    train, _ = small_regression
    model = tdakit.FlatModel(smooth_mlp())
    seeds = [0, 1, 2, 3]
    inits = model.init_many(seeds, torch.float64)
    orders = torch.stack([batch_order(torch.arange(64), 10, 3, seed_of("order", s)) for s in seeds])
    weights = torch.rand(4, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    together = train_many(model, train, RECIPE, tdakit.Regression(), inits, orders, weights, progress=False)
    for j, s in enumerate(seeds):
        alone = tdakit.train(model, train, tdakit.Recipe(**{**RECIPE.__dict__, "seed": s}), tdakit.Regression(),
                             weights=weights[j], dtype=torch.float64, progress=False)
        assert torch.allclose(together[j], alone.final, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_peak_at_lr_and_stay_positive(schedule):
    lrs = learning_rates(schedule, 0.4, 100, warmup=0.2)
    assert lrs.shape == (100,) and (lrs > 0).all() and lrs.max() <= 0.4 + 1e-12
    assert torch.isclose(lrs.max(), torch.tensor(0.4, dtype=torch.float64), rtol=0.05)


def test_cyclic_schedule_rises_then_falls():
    lrs = learning_rates("cyclic", 1.0, 100, warmup=0.3)
    peak = int(lrs.argmax())
    assert 25 <= peak <= 31
    assert (lrs[1:peak + 1] >= lrs[:peak]).all() and (lrs[peak + 1:] <= lrs[peak:-1]).all()


def test_run_cache_reuses_the_stored_run(small_regression, tmp_path, monkeypatch):
    train, _ = small_regression
    first = tdakit.train(smooth_mlp(), train, RECIPE, tdakit.Regression(), progress=False, cache=tmp_path)
    assert len(list(tmp_path.glob("run-*.pt"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(tdakit.training, "_trajectory", boom)
    second = tdakit.train(smooth_mlp(), train, RECIPE, tdakit.Regression(), progress=False, cache=tmp_path)
    assert torch.equal(first.final, second.final)


def test_step_flops_count_the_matrix_products_of_a_training_step():
    """Closed form for an MLP on a batch of B: every layer's forward and weight-gradient products cost
    2 B in out each, and every layer but the first also passes its input gradient back (2 B in out)."""
    widths = [20, 64, 32, 3]
    model = tdakit.FlatModel(tdakit.mlp(widths[0], widths[1:-1], widths[-1]))
    b = 16
    layers = list(zip(widths, widths[1:], strict=False))
    expected = sum(4 * b * i * o for i, o in layers) + sum(2 * b * i * o for i, o in layers[1:])
    x, y = torch.randn(b, widths[0]), torch.randint(0, 3, (b,))
    assert step_flops(model, tdakit.Classification(), x, y) == (expected, 0)


def test_models_are_stacked_only_while_a_step_is_small():
    """Stacking under vmap pays while one model's step is cheap next to a loop's per-step overhead: a small
    MLP is stacked, a wide one trains one at a time on a CPU, and a GPU always stacks."""
    task = tdakit.Classification()
    small = tdakit.FlatModel(tdakit.mlp(8, (16,), 3))
    wide = tdakit.FlatModel(tdakit.mlp(784, (2048, 2048), 10))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    wide_x = torch.randn(64, 784)
    assert step_flops(small, task, x, y)[0] < CPU_STACKING_MFLOP * 1e6 < step_flops(wide, task, wide_x, y)[0]
    assert stack_models(small, task, x, y)
    assert not stack_models(wide, task, wide_x, y)
    assert stack_models(wide, task, wide_x, y, device="cuda")
    data = tdakit.datasets.Split(wide_x, y)
    assert retraining_chunk(wide, task, data, 64, torch.float32) == 1
    assert retraining_chunk(small, task, tdakit.datasets.Split(x, y), 64, torch.float32) > 1


def test_convolution_flops_are_counted_apart_and_weigh_more():
    """A convolution's step FLOPs (closed form: forward 2 B C_out H W C_in k^2, weight gradient the same)
    are reported apart; a CNN whose weighted cost crosses the line trains one model at a time."""
    b, c_in, c_out, h, k = 8, 3, 16, 12, 3
    model = tdakit.FlatModel(torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, k, padding=1), torch.nn.Flatten(),
                                                 torch.nn.Linear(c_out * h * h, 2)))
    x, y = torch.randn(b, c_in, h, h), torch.randint(0, 2, (b,))
    matmul, conv = step_flops(model, tdakit.Classification(), x, y)
    assert conv == 2 * (2 * b * c_out * h * h * c_in * k * k)
    assert matmul == 3 * (2 * b * c_out * h * h * 2)
    big = torch.randn(600, c_in, h, h)
    heavy = step_flops(model, tdakit.Classification(), big, torch.zeros(600, dtype=torch.long))
    assert heavy[0] + CONV_WEIGHT * heavy[1] > CPU_STACKING_MFLOP * 1e6 > heavy[0] + heavy[1]
    assert not stack_models(model, tdakit.Classification(), big, torch.zeros(600, dtype=torch.long))


def test_one_model_alone_takes_the_same_steps_as_models_stacked(small_regression):
    """train_many with M = 1 skips vmap; it must train exactly as the stacked path does."""
    train, _ = small_regression
    model = tdakit.FlatModel(smooth_mlp())
    inits = model.init_many([0, 1], torch.float64)
    orders = torch.stack([batch_order(torch.arange(64), 10, 3, seed_of("order", s)) for s in (0, 1)])
    together = train_many(model, train, RECIPE, tdakit.Regression(), inits, orders, progress=False)
    for j in range(2):
        alone = train_many(model, train, RECIPE, tdakit.Regression(), inits[j:j + 1], orders[j:j + 1], progress=False)
        assert torch.allclose(together[j], alone[0], rtol=1e-10, atol=1e-12)


def test_checkpoints_are_kept_sorted_and_unsorted_runs_are_refused(small_regression):
    train, query = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(lr=0.05, epochs=2, batch_size=16), tdakit.Regression(),
                       checkpoints=[6, 2], dtype=torch.float64, progress=False, cache=False)
    assert run.checkpoint_steps.tolist() == [2, 6]
    thetas = replay(run)
    assert torch.equal(run.checkpoints[0], thetas[2]) and torch.equal(run.checkpoints[1], thetas[6])
    with pytest.raises(ValueError, match="checkpoint_steps must be sorted"):
        dataclasses.replace(run, checkpoint_steps=torch.tensor([6, 2]))


def test_checkpoints_sit_where_placed_and_segments_and_tracin_follow(small_regression):
    train, _ = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=15, batch_size=8, schedule="linear")  # T = 120
    end = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), dtype=torch.float64, progress=False,
                       cache=False, checkpoints=tdakit.Checkpoints(6, "end"))
    T = end.num_steps
    assert end.checkpoint_placement == "end" and end.checkpoint_steps.tolist() == [20, 40, 60, 80, 100, 120]
    assert torch.equal(end.checkpoints[-1], end.final)
    assert [p.checkpoints for p in segments_of(end, 3)] == [(0, 1), (2, 3), (4, 5)]
    rates = end.effective_lrs
    expected = torch.stack([rates[a:a + 20].sum() for a in range(0, T, 20)])
    assert torch.allclose(checkpoint_rates(end), expected, rtol=1e-12)
    middle = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), dtype=torch.float64, progress=False,
                          cache=False)  # the default: midpoints
    assert middle.checkpoint_placement == "middle" and middle.checkpoint_steps.tolist() == [10, 30, 50, 70, 90, 110]
    assert torch.allclose(checkpoint_rates(middle), expected, rtol=1e-12)  # the same pieces, nearest rule
    every = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints="all", dtype=torch.float64,
                         progress=False, cache=False)
    assert every.checkpoint_placement == "start" and torch.allclose(checkpoint_rates(every), rates, rtol=1e-12)
