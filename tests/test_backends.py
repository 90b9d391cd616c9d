"""Every registered curvature backend, checked by one parametrised comparison over shared cases against
dense float64 references (tests/references.py), weighted runs included, and against the contract."""

import pytest
import torch

import tdakit
from tdakit import curvature as curv

from .references import classification_data, dense_ggn, dense_hessian, small_cnn, smooth_mlp, trained

WD = 1e-3


def _regression_case(weights=None):
    data = tdakit.datasets.load("concrete").train.subset(slice(0, 24)).to(torch.float64)
    return trained(smooth_mlp((6,)), data, tdakit.Regression(), wd=WD, weights=weights), data


def _classification_case(image=False, weights=None):
    data = classification_data(20, image)
    module = small_cnn() if image else tdakit.mlp(5, (6,), 3, "tanh")
    return trained(module, data, tdakit.Classification(), wd=WD, weights=weights), data


def _weights(n, seed=0):
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5 + 0.25
    w[:3] = 0.0  # deleted points
    return w


CASES = {
    "mlp regression": lambda: _regression_case(),
    "mlp classification": lambda: _classification_case(),
    "cnn classification": lambda: _classification_case(image=True),
    "weighted mlp regression": lambda: _regression_case(_weights(24)),
    "weighted mlp classification": lambda: _classification_case(weights=_weights(20, 1)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    run, data = CASES[request.param]()
    return request.param, run, data


def _fit(kind, run, data, thetas=None):
    thetas = run.checkpoints if thetas is None else thetas
    return curv.fit(kind, run.model, run.task, thetas, data, WD, weights=run.weights)


def _reference_ggn(run, data, thetas):
    return sum(dense_ggn(run.model, run.task, th, data, WD, run.weights) for th in thetas) / len(thetas)


def _reference_hessian(run, data, thetas):
    return sum(dense_hessian(run.model, run.task, th, data, WD, run.weights) for th in thetas) / len(thetas)


# drawn from the registry: a backend registered in tdakit is tested here without being listed
REGISTERED = sorted(curv.BACKENDS)


@pytest.mark.parametrize("kind", REGISTERED)
def test_backend_meets_the_contract(kind, case):
    """Protocol members; apply and apply_many agree with the backend's own dense matrix; eigenvalues are
    those of that matrix; a damped inverse is a solve."""
    _, run, data = case
    H = _fit(kind, run, data)
    assert isinstance(H, curv.Curvature) and H.nbytes > 0 and H.weight_decay == pytest.approx(WD)
    M = H.dense()
    assert torch.allclose(M, M.T, atol=1e-10)
    v = torch.randn(3, run.model.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    inverse = curv.functions.inverse(0.2)
    expected = torch.linalg.solve(M + 0.2 * torch.eye(len(M), dtype=M.dtype), v.T).T
    assert torch.allclose(H.apply(inverse, v), expected, rtol=1e-7, atol=1e-9)
    fns = [curv.functions.learn(0.1, 30), curv.functions.forget(0.1, 30), inverse]
    for got, fn in zip(H.apply_many(fns, v), fns, strict=True):
        assert torch.allclose(got, H.apply(fn, v), atol=1e-10)
    dense_eigenvalues = torch.linalg.eigvalsh(M)
    stored = H.eigenvalues.double().sort().values
    rest = torch.full((run.model.num_params - len(stored),), H.floor, dtype=torch.float64)
    assert torch.allclose(torch.cat([stored, rest]).sort().values, dense_eigenvalues, atol=1e-8)


@pytest.mark.parametrize("kind", curv.dense.DENSE_KINDS)
def test_dense_backends_equal_the_float64_references(kind, case):
    """Averaged over the run's checkpoints, with the run's training weights."""
    _, run, data = case
    H = _fit(kind, run, data).dense()
    if kind == "ggn":
        assert torch.allclose(H, _reference_ggn(run, data, run.checkpoints), atol=1e-10)
        return
    reference = _reference_hessian(run, data, run.checkpoints)
    if kind == "hessian_clipped":
        values, vectors = torch.linalg.eigh(reference)
        reference = vectors @ torch.diag(values.clamp(min=0)) @ vectors.T
    assert torch.allclose(H, reference, atol=1e-9)


@pytest.mark.parametrize("kind", ["ekfac", "kfac"])
def test_kronecker_backends_are_exact_where_their_form_is(kind, case):
    """EK-FAC's eigenvalues are the exact (weighted) GGN diagonal in its Kronecker basis; K-FAC and EK-FAC
    of a single example at a layer with one position equal that layer's GGN block."""
    name, run, data = case
    K = _fit(kind, run, data)
    G = _reference_ggn(run, data, run.checkpoints)
    if kind == "ekfac":
        for layer in K.layers:
            for o, i in [(0, 0), (layer.slot.out_dim - 1, layer.slot.in_dim - 1), (layer.slot.out_dim // 2, 1)]:
                v = torch.zeros(run.model.num_params, dtype=torch.float64)
                layer.slot.scatter(torch.outer(layer.S_vectors[:, o], layer.A_vectors[:, i]), v)
                assert float(v @ G @ v) == pytest.approx(float(layer.eigenvalues[o, i]) + WD, rel=1e-8, abs=1e-12)
    if "cnn" in name:
        return
    one = data.subset(slice(5, 6))  # an example with weight w_5 (not deleted)
    w = run.weights[5:6]
    single = curv.fit(kind, run.model, run.task, run.final[None], one, WD, weights=w).dense()
    reference = dense_ggn(run.model, run.task, run.final, one, WD, w)
    for layer in K.layers:
        idx = torch.zeros(run.model.num_params, dtype=torch.bool)
        idx[layer.slot.weight] = True
        idx[layer.slot.bias] = True
        assert torch.allclose(single[idx][:, idx], reference[idx][:, idx], atol=1e-10)


def test_zero_weight_points_leave_the_curvature_untouched():
    run, data = _regression_case(_weights(24))
    kept = run.weights > 0
    for kind in ("ggn", "hessian", "ekfac"):
        full = _fit(kind, run, data).dense()
        # the same points without the deleted ones, their weights rescaled for the 1/N of the mean
        part = data.subset(kept)
        w = run.weights[kept] * kept.sum() / len(kept)
        alone = curv.fit(kind, run.model, run.task, run.checkpoints, part, WD, weights=w).dense()
        assert torch.allclose(full, alone, atol=1e-9), kind


def test_backends_register_themselves_and_a_new_one_serves_every_method(small_regression):
    """A backend added with @register works wherever a curvature name does (here: a scaled GGN); every
    registered backend is either dense (compared with the float64 references) or Kronecker-factored."""
    assert {"ggn", "hessian", "hessian_clipped", "ekfac", "kfac"} <= set(curv.BACKENDS)
    assert set(REGISTERED) <= set(curv.dense.DENSE_KINDS) | {"ekfac", "kfac"}, "a new backend needs a reference"
    train, query = small_regression
    run = trained(smooth_mlp((6,)), train, tdakit.Regression(), wd=WD)

    @curv.register("twice_ggn_for_test")
    def twice(model, task, thetas, data, weight_decay, weights=None, progress=False):
        G = curv.ggn_curvature(model, task, thetas, data, weight_decay, weights=weights)
        values, vectors = torch.linalg.eigh(2 * G.dense())
        return curv.EigenCurvature(vectors, values, weight_decay=2 * weight_decay)

    try:
        with pytest.raises(ValueError, match="already registered"):
            curv.register("twice_ggn_for_test")(twice)
        got = tdakit.attribute(run, query, "influence", curvature="twice_ggn_for_test", damping=0.2, progress=False)
        ggn = tdakit.attribute(run, query, "influence", curvature="ggn", damping=0.1, progress=False)
        assert torch.allclose(got.values, ggn.values / 2, rtol=1e-8)  # (2G + 0.2)^-1 = (G + 0.1)^-1 / 2
    finally:
        del curv.BACKENDS["twice_ggn_for_test"]
