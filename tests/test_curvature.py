"""Dense curvature backends against torch.func references built independently, in float64."""

import pytest
import torch
from torch.func import jacrev

import tdakit
from tdakit import curvature as curv

from .references import dense_ggn, dense_hessian, smooth_mlp


@pytest.fixture(scope="module")
def setup(small_regression):
    train, _ = small_regression
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16, weight_decay=1e-2)
    run = tdakit.train(smooth_mlp(), train, recipe, tdakit.Regression(), checkpoints=2, dtype=torch.float64,
                       progress=False)
    return run, train


def test_dense_hessian_equals_torch_func_hessian(setup):
    run, train = setup
    H = curv.hessian(run.model, run.task, run.final, train, weight_decay=1e-2, chunk=7)
    assert torch.allclose(H, dense_hessian(run.model, run.task, run.final, train, 1e-2), atol=1e-10)


def test_sample_space_ggn_equals_the_dense_ggn_averaged_over_checkpoints(setup):
    run, train = setup
    G = curv.ggn_curvature(run.model, run.task, run.checkpoints, train, weight_decay=1e-2)
    assert G.rank <= 2 * len(train)
    reference = sum(dense_ggn(run.model, run.task, th, train, 1e-2) for th in run.checkpoints) / 2
    assert torch.allclose(G.dense(), reference, atol=1e-10)


def test_sample_space_ggn_for_softmax_cross_entropy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    data = tdakit.datasets.Split(x, torch.randint(3, (9,), generator=g))
    model = tdakit.FlatModel(tdakit.mlp(4, (5,), 3, "tanh"))
    theta = model.init(0, torch.float64)
    G = curv.ggn_curvature(model, tdakit.Classification(), theta[None], data, weight_decay=0.1)
    J = jacrev(lambda th: model(th, x))(theta)  # [n, 3, P]
    p = torch.softmax(model(theta, x), -1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    reference = torch.einsum("nap,nab,nbq->pq", J, lam, J) / 9 + 0.1 * torch.eye(model.num_params, dtype=x.dtype)
    assert torch.allclose(G.dense(), reference, atol=1e-10)


def test_apply_inverse_is_a_damped_solve(setup):
    run, train = setup
    G = curv.ggn_curvature(run.model, run.task, run.final[None], train, weight_decay=1e-2)
    v = torch.randn(3, run.model.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    reference = torch.linalg.solve(G.dense() + 0.3 * torch.eye(G.num_params, dtype=v.dtype), v.T).T
    assert torch.allclose(G.apply(curv.functions.inverse(0.3), v), reference, atol=1e-10)
    H = curv.hessian_curvature(run.model, run.task, run.final[None], train, weight_decay=1e-2)
    dense_h = curv.hessian(run.model, run.task, run.final, train, 1e-2)
    assert torch.allclose(H.apply(torch.exp, v), (torch.linalg.matrix_exp(dense_h) @ v.T).T, atol=1e-9)


def test_learn_function_limits_and_the_damping_it_implies():
    s = torch.logspace(-8, 4, 200, dtype=torch.float64)
    eta, K = 0.3, 100
    learn = curv.functions.learn(eta, K)(s)
    assert torch.allclose(curv.functions.learn(eta, K)(torch.zeros(1, dtype=torch.float64)),
                          torch.tensor([eta * K], dtype=torch.float64))
    ratio = learn / curv.functions.inverse(1 / (eta * K))(s)
    # (1 - e^-x)(1 + x)/x lies in [1, 1.3) for all x >= 0: unrolling ~ influence with damping 1/(eta K)
    assert (ratio >= 1 - 1e-12).all() and (ratio < 1.3).all()
    assert torch.allclose(learn[-1], 1 / s[-1], rtol=1e-6)


def test_power_form_matches_matrix_powers():
    H = torch.tensor([[2.0, 0.5], [0.5, 0.3]], dtype=torch.float64)
    evals, evecs = torch.linalg.eigh(H)
    C = curv.EigenCurvature(evecs, evals)
    eta, K = 0.2, 5
    step = torch.eye(2, dtype=torch.float64) - eta * H
    forget = torch.linalg.matrix_power(step, K)
    learn = sum(torch.linalg.matrix_power(step, j) * eta for j in range(K))
    eye = torch.eye(2, dtype=torch.float64)
    assert torch.allclose(C.apply(curv.functions.forget(eta, K, "power"), eye), forget, atol=1e-12)
    assert torch.allclose(C.apply(curv.functions.learn(eta, K, "power"), eye), learn, atol=1e-12)
    # beyond the edge of stability (eta s > 2) the power form explodes, the exp form stays bounded
    wild = curv.functions.forget(1.5, 50, "power")(torch.tensor([2.0], dtype=torch.float64))
    tame = curv.functions.forget(1.5, 50, "exp")(torch.tensor([2.0], dtype=torch.float64))
    assert wild.abs() > 1e10 and tame < 1e-10


def test_unknown_curvature_is_a_clear_error(setup):
    run, train = setup
    with pytest.raises(ValueError, match="unknown curvature .lissa.*hessian, hessian_clipped, ggn, ekfac, kfac"):
        curv.fit("lissa", run.model, run.task, run.final[None], train, 0.0)


def test_dense_hessian_refuses_large_models(concrete):
    model = tdakit.FlatModel(tdakit.mlp(8))
    with pytest.raises(ValueError, match="34305 parameters.*ggn"):
        curv.hessian(model, tdakit.Regression(), model.init(0), concrete.train, 0.0)
