"""The layer view (tdakit.layers) under the Kronecker hooks: in-place operations, a block called twice and tied
weights give the per-example gradients and curvature autograd and the dense references give."""


import pytest
import torch
from torch import nn

import tdakit
from tdakit import curvature as curv
from tdakit.layers import gradient_factors
from tdakit.models import FlatModel

from .references import classification_data, dense_ggn, loop_grads, trained

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
