"""Defects a review found, each pinned by a test that failed before its fix: in-place operations and reused
layers under the Kronecker hooks, checkpoint order, non-finite scores, the sign of representation
similarity, the heuristic damping's definition, weighted runs, and where checkpoints sit."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import tdakit
from tdakit import curvature as curv
from tdakit.attribution import checkpoint_rates, segments_of
from tdakit.attribution.unroll import replay
from tdakit.datasets import Split
from tdakit.evaluation import spearman
from tdakit.layers import gradient_factors
from tdakit.models import FlatModel

from .references import classification_data, dense_ggn, dense_hessian, loop_grads, smooth_mlp, trained

WD = 1e-3


class Residual(nn.Module):
    """Linear -> ReLU -> Linear, a residual add and ReLU, then a head; in place or not."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace
        self.inp, self.mid, self.head = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.act = nn.ReLU(inplace=inplace)

    def forward(self, x):
        h = self.act(self.inp(x))
        out = self.mid(h)
        if self.inplace:
            out += h
        else:
            out = out + h
        return self.head(self.act(out))


class Reused(nn.Module):
    """One block called twice in a forward pass."""

    def __init__(self):
        super().__init__()
        self.inp, self.block, self.head = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.block(h))
        return self.head(torch.tanh(self.block(h)))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _hook_gradients(model: FlatModel, theta, data):
    slots, _ = tdakit.layers.factored(model)
    inputs, grads = gradient_factors(model, tdakit.Classification(), theta, data, "empirical", slots)
    out = torch.zeros(len(data), model.num_params, dtype=torch.float64)
    for slot, a, d in zip(slots, inputs, grads, strict=True):
        slot.scatter(torch.einsum("nto,nti->noi", d[0], a), out)
    return out


@pytest.mark.parametrize("module", [lambda: Residual(inplace=True), Reused], ids=["in-place", "reused block"])
def test_hook_gradients_equal_autograd_with_in_place_operations_and_reused_layers(module):
    data = classification_data(12)
    model = FlatModel(module())
    theta = model.init(0, torch.float64)
    reference = loop_grads(model, tdakit.Classification(), theta, data)
    assert torch.allclose(_hook_gradients(model, theta, data), reference, atol=1e-12)


def test_in_place_operations_do_not_change_kronecker_curvature_or_scores():
    data, query = classification_data(24), classification_data(5, seed=3)
    runs = {inplace: trained(Residual(inplace), data, tdakit.Classification(), wd=WD) for inplace in (False, True)}
    assert torch.equal(runs[False].final, runs[True].final)
    for kind in ("ekfac", "kfac"):
        a, b = (curv.fit(kind, r.model, r.task, r.final[None], data, WD).dense() for r in runs.values())
        assert torch.allclose(a, b, atol=1e-12), kind
    for method, settings in (("influence", {}), ("source", {"segments": 2})):
        a, b = (tdakit.attribute(r, query, method, curvature="ekfac", progress=False, **settings).values
                for r in runs.values())
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), method


def test_ekfac_of_a_reused_block_is_the_exact_curvature_diagonal_in_its_basis():
    data = classification_data(16)
    run = trained(Reused(), data, tdakit.Classification(), wd=WD)
    K = curv.fit("ekfac", run.model, run.task, run.final[None], data, WD)
    G = dense_ggn(run.model, run.task, run.final, data, WD)
    block = next(layer for layer in K.layers if layer.slot.name == "block")
    for o, i in [(0, 0), (3, 5), (5, 6)]:
        v = torch.zeros(run.model.num_params, dtype=torch.float64)
        block.slot.scatter(torch.outer(block.S_vectors[:, o], block.A_vectors[:, i]), v)
        assert float(v @ G @ v) == pytest.approx(float(block.eigenvalues[o, i]) + WD, rel=1e-9)


def test_parameters_shared_by_two_layers_are_refused_by_name():
    model = FlatModel(Tied())
    with pytest.raises(tdakit.TdakitError, match="layer 'a' shares its parameter 'weight' with layer 'b'"):
        tdakit.layers.factored(model)


def test_checkpoints_are_kept_sorted_and_unsorted_runs_are_refused(small_regression):
    train, query = small_regression
    run = tdakit.train(smooth_mlp(), train, tdakit.Recipe(lr=0.05, epochs=2, batch_size=16), tdakit.Regression(),
                       checkpoints=[6, 2], dtype=torch.float64, progress=False, cache=False)
    assert run.checkpoint_steps.tolist() == [2, 6]
    thetas = replay(run)
    assert torch.equal(run.checkpoints[0], thetas[2]) and torch.equal(run.checkpoints[1], thetas[6])
    with pytest.raises(ValueError, match="checkpoint_steps must be sorted"):
        dataclasses.replace(run, checkpoint_steps=torch.tensor([6, 2]))


def _relu_run(small_regression, wd=1e-3):
    train, query = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=6, batch_size=16, weight_decay=wd)
    return tdakit.train(tdakit.mlp(8, (10,)), train, recipe, tdakit.Regression(), checkpoints=3, dtype=torch.float64,
                        progress=False, cache=False), query


def test_source_refuses_an_indefinite_curvature_instead_of_overflowing(small_regression):
    run, query = _relu_run(small_regression)
    H = dense_hessian(run.model, run.task, run.final, run.train, run.recipe.weight_decay)
    assert float(torch.linalg.eigvalsh(H).min()) < -1e-3  # the premise: a negative eigenvalue
    for scale in (1.0, 1e3):
        scaled = dataclasses.replace(run, lrs=run.lrs * scale)
        with pytest.raises(ValueError, match="negative eigenvalue.*hessian_clipped"):
            tdakit.attribute(scaled, query, "source", segments=1, curvature="hessian", progress=False)
        clipped = tdakit.attribute(scaled, query, "source", segments=1, curvature="hessian_clipped", progress=False)
        assert torch.isfinite(clipped.values).all()


def test_influence_without_damping_on_a_singular_curvature_names_the_fix(small_regression):
    run, query = _relu_run(small_regression, wd=0.0)
    with pytest.raises(ValueError, match="zero eigenvalue.*positive damping"):
        tdakit.attribute(run, query, "influence", damping=0, curvature="ggn", progress=False)
    assert torch.isfinite(tdakit.attribute(run, query, "influence", curvature="ggn", progress=False).values).all()


def test_non_finite_parameters_give_an_error_not_nan_scores(small_regression):
    run, query = _relu_run(small_regression)
    broken = dataclasses.replace(run, final=run.final * float("nan"))
    with pytest.raises(ValueError, match="non-finite scores"):
        tdakit.attribute(broken, query, "grad_dot", progress=False)


def test_representation_similarity_follows_the_score_convention(concrete):
    """Its scores rank like exact unrolling (the previous +cosine ranked against it on Concrete)."""
    train, query = concrete.train.subset(slice(0, 200)), concrete.query.subset(slice(0, 20))
    run = tdakit.train(tdakit.mlp(8, (32, 32)), train, tdakit.Recipe(epochs=10), tdakit.Regression(),
                       progress=False, cache=False)
    exact = tdakit.attribute(run, query, "unrolled", progress=False).values.double()
    rep = tdakit.attribute(run, query, "representation", progress=False).values.double()
    assert float(spearman(rep, exact).mean()) > 0.2
    assert float(spearman(-rep.abs(), exact).mean()) < float(spearman(rep, exact).mean())


def test_heuristic_damping_is_a_tenth_of_the_mean_loss_eigenvalue(small_regression):
    """Weight decay excluded from the mean, whatever the backend; per layer for Kronecker curvature; with the
    weight decay left out of the curvature too, the kronfluence heuristic exactly."""
    train, query = small_regression
    run = trained(smooth_mlp((6,)), train, tdakit.Regression(), wd=0.05)
    v = tdakit.grads.measurement_grads(run.model, run.task, run.final, query)
    g = loop_grads(run.model, run.task, run.final, train)
    G = dense_ggn(run.model, run.task, run.final, train, 0.05)
    P = run.model.num_params
    damping = 0.1 * (float(G.trace()) / P - 0.05)
    expected = -torch.linalg.solve(G + damping * torch.eye(P, dtype=G.dtype), v.T).T @ g.T / run.num_train
    got = tdakit.attribute(run, query, "influence", curvature="ggn", damping="heuristic", progress=False).values
    assert torch.allclose(got, expected, rtol=1e-8)
    for include in (True, False):
        K = curv.Kronecker(include_weight_decay=include)
        H = K.fit(run.model, run.task, run.final[None], train, 0.05)
        M = H.dense()
        u = torch.zeros_like(v)
        for layer in H.layers:
            idx = torch.zeros(P, dtype=torch.bool)
            idx[layer.slot.weight] = True
            idx[layer.slot.bias] = True
            block = M[idx][:, idx]
            mean_loss = float(block.trace()) / len(block) - (0.05 if include else 0.0)
            u[:, idx] = torch.linalg.solve(block + 0.1 * mean_loss * torch.eye(len(block), dtype=M.dtype),
                                           v[:, idx].T).T
        got = tdakit.attribute(run, query, "influence", curvature=K, damping="heuristic", progress=False).values
        assert torch.allclose(got, -u @ g.T / run.num_train, rtol=1e-8), include


def test_power_form_source_equals_unrolling_on_a_weighted_run(small_regression):
    """Curvature, gradients and 1/N of a run trained with weights w (some zero): still the exact identity."""
    train, query = small_regression
    w = torch.rand(len(train), generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    w[[1, 7, 30]] = 0.0
    recipe = tdakit.Recipe(lr=0.1, epochs=10, batch_size=len(train), momentum=0.0, weight_decay=1e-2)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints="all", weights=w,
                       dtype=torch.float64, progress=False, cache=False)
    exact = tdakit.attribute(run, query, "unrolled", progress=False).values
    source = tdakit.attribute(run, query, "source", segments=run.num_steps, curvature="hessian", form="power",
                              progress=False).values
    assert torch.allclose(source, exact, rtol=1e-9, atol=1e-12 * float(exact.abs().max()))


def test_weighted_influence_equals_the_closed_form_for_linear_regression():
    rng = np.random.default_rng(1)
    n, d, wd = 40, 3, 0.05
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
    xq = rng.normal(size=(3, d))
    yq = xq @ rng.normal(size=d)
    X, Xq = np.hstack([x, np.ones((n, 1))]), np.hstack([xq, np.ones((3, 1))])
    w0 = rng.uniform(0.3, 2.0, size=n)
    w0[:4] = 0.0

    def optimum(w):
        return np.linalg.solve(2 * X.T @ (w[:, None] * X) / n + wd * np.eye(d + 1), 2 * X.T @ (w * y) / n)

    eps, expected = 1e-6, np.zeros((3, n))
    for i in range(n):
        up, down = w0.copy(), w0.copy()
        up[i] += eps
        down[i] -= eps
        expected[:, i] = (np.abs(Xq @ optimum(up) - yq) - np.abs(Xq @ optimum(down) - yq)) / (2 * eps)
    data, query = Split(torch.tensor(x), torch.tensor(y)), Split(torch.tensor(xq), torch.tensor(yq))
    recipe = tdakit.Recipe(lr=0.01, epochs=1, batch_size=n, momentum=0.0, weight_decay=wd)
    run = tdakit.train(nn.Linear(d, 1), data, recipe, tdakit.Regression(), weights=torch.tensor(w0),
                       dtype=torch.float64, progress=False, cache=False)
    run = dataclasses.replace(run, final=torch.tensor(optimum(w0)))
    for curvature in ("hessian", "ggn", "ekfac"):
        scores = tdakit.attribute(run, query, "influence", damping=0.0, curvature=curvature, progress=False).values
        np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6, atol=1e-9, err_msg=curvature)


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
