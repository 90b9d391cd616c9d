"""Parameters used in more than one place: tied weights (one Parameter under two names), a Linear whose weight is
also read through F.linear (a tied decoder), and nn.MultiheadAttention (whose out_proj is never called; its
parent uses the weight). Every path must give the right numbers or refuse with a clear error: the forward pass,
training (against torch.optim on the nn.Module), exact unrolling (against finite differences), the default
(hook) score products (against flat torch.func gradients), and the Kronecker backends (refused, with a fix
that works)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tdakit
from tdakit.attribution.methods import plans
from tdakit.attribution.products import evaluate
from tdakit.attribution.settings import ProductOptions
from tdakit.datasets import Split
from tdakit.models import FlatModel

from .references import classification_data, finite_difference_scores, loop_grads


class Tied(nn.Module):
    """Two Linear layers sharing one weight matrix (``b.weight = a.weight``), each called once."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class TiedDecoder(nn.Module):
    """An encoder Linear whose weight the output layer reuses through F.linear (a tied decoder)."""

    def __init__(self):
        super().__init__()
        self.encode, self.mix = nn.Linear(5, 4), nn.Linear(4, 4)
        self.bias = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        h = torch.tanh(self.mix(torch.tanh(self.encode(x))))
        return F.linear(h, self.encode.weight.T, self.bias)[:, :3]


class Attention(nn.Module):
    """A token embedding, nn.MultiheadAttention over 3 positions, mean pooling and a Linear head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.embed(x.reshape(x.shape[0], 3, 5)))
        out, _ = self.attn(h, h, h, need_weights=False)
        return self.head(out.mean(1))


class SequenceFirstAttention(Attention):
    """Attention with nn.MultiheadAttention's default layout, [L, n, E] (batch_first=False)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        h = torch.tanh(self.embed(x.reshape(x.shape[0], 3, 5))).transpose(0, 1)
        out, _ = self.attn(h, h, h, need_weights=False)
        return self.head(out.mean(0))


class CrossAttention(Attention):
    """Attention whose keys and values are not its queries: the packed in-projection has no Kronecker form."""

    def forward(self, x):
        h = torch.tanh(self.embed(x.reshape(x.shape[0], 3, 5)))
        out, _ = self.attn(h, 2 * h, 2 * h, need_weights=False)
        return self.head(out.mean(1))


def sequence_data(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 15, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))


MODELS = {"tied": (Tied, classification_data), "tied decoder": (TiedDecoder, classification_data),
          "attention": (Attention, sequence_data), "cross attention": (CrossAttention, sequence_data),
          "sequence-first attention": (SequenceFirstAttention, sequence_data)}


def recipe():
    return tdakit.Recipe(lr=0.1, epochs=2, batch_size=8, momentum=0.9, weight_decay=1e-3)


def trained(name: str, checkpoints=2):
    make, data_of = MODELS[name]
    torch.manual_seed(0)
    data = data_of(24)
    run = tdakit.train(make(), data, recipe(), tdakit.Classification(), checkpoints=checkpoints,
                       dtype=torch.float64, progress=False, cache=False)
    return run, data_of(4, seed=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_flat_model_computes_what_the_module_computes(name):
    make, data_of = MODELS[name]
    module = make().double()
    model = FlatModel(module)
    x = data_of(6).x
    theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    assert torch.allclose(model(theta, x), module(x), atol=1e-12)
    assert torch.equal(model(theta, x), model(theta, x))  # no uninitialised memory: the same numbers twice
    if name == "tied":  # the tied weight is held once in theta, under its first name
        assert model.aliases == {"b.weight": "a.weight"}
        assert model.num_trainable == sum(p.numel() for p in module.parameters()) == len(theta)


@pytest.mark.parametrize("name", list(MODELS))
def test_training_equals_torch_optim_on_the_module(name):
    run, _ = trained(name)
    make, _ = MODELS[name]
    module = make().double()
    values = run.model.unflatten(run.init)
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.copy_(values[n])
    opt = torch.optim.SGD(module.parameters(), lr=1.0, momentum=0.9, weight_decay=1e-3)
    for k in range(run.num_steps):
        opt.param_groups[0]["lr"] = float(run.lrs[k])
        idx = run.batches[k][run.batches[k] >= 0]
        opt.zero_grad()
        F.cross_entropy(module(run.train.x[idx]), run.train.y[idx]).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    assert torch.allclose(run.final, flat, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["tied", "tied decoder"])
def test_exact_unrolling_matches_finite_differences(name):
    run, query = trained(name)
    scores = tdakit.attribute(run, query, "unrolled", progress=False).values
    for point in (0, 5):
        fd = finite_difference_scores(run, query, point)
        assert torch.allclose(scores[:, point], fd, rtol=1e-5, atol=1e-8 * float(fd.abs().max()))


@pytest.mark.parametrize("name", list(MODELS))
def test_default_score_products_equal_flat_gradients(name):
    """The hook path falls back to torch.func for parameters used outside their module's call (float64, 1e-10)."""
    run, query = trained(name, checkpoints=2)
    for method in ("grad_dot", "tracin", "influence"):
        settings = {"curvature": "ggn"} if method == "influence" else {}
        plan = plans(run, query, method, **settings)[0]
        hooks, flat = evaluate([plan])[0], evaluate([plan], ProductOptions(gradients="vmap"))[0]
        assert torch.allclose(hooks, flat, rtol=1e-10, atol=1e-12 * float(flat.abs().max())), method


def test_the_probe_finds_every_use_outside_a_modules_own_call():
    x = classification_data(2).x
    assert tdakit.layers.outside_uses(FlatModel(TiedDecoder()), x) == {"encode.weight": {"the model's own forward"}}
    attention = FlatModel(Attention())
    uses = tdakit.layers.outside_uses(attention, sequence_data(2).x)
    assert set(uses) == {"attn.out_proj.weight", "attn.out_proj.bias"} and uses["attn.out_proj.weight"] == {"attn"}
    slots, rest = tdakit.layers.hook_split(attention, sequence_data(2).x)  # self-attention: tap computes both
    assert [(s.name, s.kind) for s in slots] == [("embed", "layer"), ("attn", "attention_in"),
                                                 ("attn.out_proj", "attention_out"), ("head", "layer")]
    assert len(rest) == 0
    cross = FlatModel(CrossAttention())
    assert tdakit.layers.outside_uses(cross, sequence_data(2).x)["attn.in_proj_weight"] == {tdakit.layers.CROSS}
    slots, rest = tdakit.layers.hook_split(cross, sequence_data(2).x)  # its in-projection: left to torch.func
    assert [s.name for s in slots] == ["embed", "attn.out_proj", "head"] and len(rest) == 3 * 8 * 8 + 3 * 8
    assert tdakit.layers.outside_uses(FlatModel(tdakit.mlp(3, (4,), 2)), torch.zeros(1, 3)) == {}


def test_kronecker_backends_refuse_shared_weights_and_the_suggested_fix_works():
    run, query = trained("tied")
    with pytest.raises(tdakit.TdakitError, match=r"layer 'a' shares its parameter 'weight' with layer 'b'.*"
                                                 r"Kronecker\(exclude=\['a', 'b'\]\)"):
        tdakit.attribute(run, query, "influence", curvature="ekfac", progress=False)
    fixed = tdakit.attribute(run, query, "influence", progress=False,
                             curvature=tdakit.curvature.Kronecker(exclude=("a", "b")))
    assert torch.isfinite(fixed.values).all() and float(fixed.values.abs().max()) > 0
    dense = tdakit.attribute(run, query, "influence", curvature="ggn", progress=False)
    assert torch.isfinite(dense.values).all()
    attention, attention_query = trained("cross attention")
    with pytest.raises(tdakit.TdakitError, match=r"layer 'attn' \(nn.MultiheadAttention\) is called with different "
                                                 r"query, key and value.*Kronecker\(exclude=\['attn'\]\)"):
        tdakit.attribute(attention, attention_query, "influence", curvature="ekfac", progress=False)
    fixed = tdakit.attribute(attention, attention_query, "influence", progress=False,  # out_proj goes with attn
                             curvature=tdakit.curvature.Kronecker(exclude=("attn",)))
    assert torch.isfinite(fixed.values).all() and float(fixed.values.abs().max()) > 0
    attention, attention_query = trained("attention")  # self-attention: factored as it is
    factored = tdakit.attribute(attention, attention_query, "influence", curvature="ekfac", progress=False)
    assert torch.isfinite(factored.values).all() and float(factored.values.abs().max()) > 0


class ReadsAnotherLayersWeight(nn.Module):
    """The parent uses its child Linear's weight itself and never calls the child (as MultiheadAttention does)."""

    def __init__(self):
        super().__init__()
        self.out_proj = nn.Linear(5, 3)

    def forward(self, x):
        return F.linear(x, self.out_proj.weight, self.out_proj.bias)


def test_a_layer_whose_parent_uses_its_weight_is_refused_with_where():
    model = FlatModel(ReadsAnotherLayersWeight())
    with pytest.raises(tdakit.TdakitError, match=r"'out_proj'.*used outside its own forward call \(inside "
                                                 r"\"the model's own forward\"\)"):
        tdakit.layers.factored(model, example=torch.zeros(1, 5))
    assert tdakit.layers.hook_split(model, torch.zeros(1, 5)) is None  # no layer for hooks: flat torch.func


def test_per_example_gradients_of_tied_weights_sum_both_uses():
    """The flat gradient of a tied weight is the sum over its uses: compared with autograd on the nn.Module."""
    module = Tied().double()
    model = FlatModel(module)
    data = classification_data(3)
    theta = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    grads = loop_grads(model, tdakit.Classification(), theta, data)
    for i in range(len(data)):
        module.zero_grad()
        F.cross_entropy(module(data.x[i:i + 1]), data.y[i:i + 1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in module.parameters()])
        assert torch.allclose(grads[i], expected, atol=1e-12)
