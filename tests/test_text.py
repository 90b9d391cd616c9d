"""Text: the SST-2 and WikiText-2 loaders, the vocabulary, the Transformer models, the language-model task, and
attention models on every path (default products against torch.func's per-example gradients, float64)."""

import subprocess
import sys
import tarfile

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import tdakit
from tdakit import errors
from tdakit.curvature import Kronecker
from tdakit.datasets import text
from tdakit.task import IGNORE
from tdakit.text_models import CausalLM, TransformerClassifier

POSITIVE = ["a fine , moving film", "warm and funny", "the best film of the year", "funny and moving",
            "a joy", "moving , warm and wise", "fine acting", "a wise film"]
NEGATIVE = ["a dull , lifeless film", "boring", "the worst film of the year", "dull and boring",
            "a mess", "lifeless , dull and long", "bad acting", "a long film"]


def write_sst2(folder, header=("label", "sentence"), rows=None):
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows or [(1, s) for s in POSITIVE] + [(0, s) for s in NEGATIVE]
    for name, part in (("train.tsv", rows), ("dev.tsv", rows[::2] + rows[1::2])):
        lines = ["\t".join(header)] + [f"{label}\t{sentence}" if header[0] == "label" else f"{sentence}\t{label}"
                                       for label, sentence in part]
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def write_wikitext(folder):
    folder.mkdir(parents=True, exist_ok=True)
    paragraph = " the cat sat on the mat . the dog sat on the cat . <unk> ran away . \n \n"
    (folder / "valid.txt").write_text(" = Cats = \n \n" + paragraph * 6)
    (folder / "test.txt").write_text(" = Dogs = \n \n" + paragraph * 4)
    return folder


# -- data --------------------------------------------------------------------------------------------------
def test_the_vocabulary_orders_words_by_count_then_alphabetically_and_round_trips():
    vocab = text.Vocabulary.build([["b", "a", "c", "a"], ["b", "a", "d"]], max_size=6)
    assert vocab.words == ("<pad>", "<unk>", "<eos>", "a", "b", "c")  # d: cut by max_size (c wins the tie)
    assert vocab.encode(["a", "zebra", "d"]) == [3, 1, 1]
    ids = vocab.padded([["a", "b"], ["c", "a", "b", "a"]], 3)
    assert ids.tolist() == [[3, 4, 0], [5, 3, 4]] and ids.dtype == torch.int64
    assert vocab.decode(ids[0]) == "a b" and vocab.decode([5, 1, 0]) == "c <unk>"
    with pytest.raises(errors.SettingError, match="special"):
        text.Vocabulary.build([["a"]], max_size=3)


@pytest.mark.parametrize("header", [("label", "sentence"), ("sentence", "label"), ("label", "content")])
def test_sst2_reads_glue_s_layout_balanced_with_queries_from_dev(tmp_path, header):
    write_sst2(tmp_path / "sst2", header)
    data = tdakit.datasets.sst2_folder(tmp_path, n_train=8, n_query=4, length=5)
    assert data.kind == "classification" and data.class_names == ("negative", "positive")
    assert data.train.x.shape == (8, 5) and data.train.x.dtype == torch.int64
    assert data.train.y.sum() == 4 and data.query.y.sum() == 2 and len(data.test) == 12
    assert set(data.texts(data.train.x)) <= {" ".join(s.split()[:5]) for s in POSITIVE + NEGATIVE}
    # the vocabulary comes from the chosen training sentences only
    train_words = {w for s in data.texts(data.train.x) for w in s.split()}
    assert set(data.vocabulary.words[3:]) == train_words - {"<unk>"}


def test_sst2_errors_name_the_file_the_line_and_the_layout(tmp_path):
    with pytest.raises(errors.DataNotFoundError, match="train.tsv and .*dev.tsv.*tdakit sst2 --archive"):
        tdakit.datasets.sst2_folder(tmp_path)
    folder = write_sst2(tmp_path / "sst2")
    (folder / "train.tsv").write_text("label\tsentence\n1\tfine\n2\tbad label\n")
    with pytest.raises(errors.InputError, match=r"train.tsv, line 3: expected label<TAB>sentence"):
        tdakit.datasets.sst2_folder(tmp_path, n_train=2, n_query=2)
    (folder / "train.tsv").write_text("words\tscore\n1\tfine\n")
    with pytest.raises(errors.InputError, match="header must name two tab-separated columns"):
        tdakit.datasets.sst2_folder(tmp_path, n_train=2, n_query=2)
    write_sst2(folder)
    with pytest.raises(errors.SettingError, match="n_train must lie in"):
        tdakit.datasets.sst2_folder(tmp_path, n_train=100)


def test_wikitext_blocks_predict_the_next_token(tmp_path):
    write_wikitext(tmp_path / "wikitext-2")
    data = tdakit.datasets.wikitext2_folder(tmp_path, length=6, n_query=2)
    assert data.kind == "language_model" and data.train.x.shape[1] == 6 == data.train.y.shape[1]
    assert torch.equal(data.train.x[0, 1:], data.train.y[0, :-1]) and torch.equal(data.train.x[1, 0],
                                                                                  data.train.y[0, -1])
    tokens = text.read_wikitext(tmp_path / "wikitext-2" / "valid.txt")
    assert tokens[:4] == ["=", "Cats", "=", "<eos>"] and "<unk>" in tokens
    assert data.vocabulary.index["<unk>"] == 1  # WikiText's own <unk> is the vocabulary's
    assert data.texts(data.train.x[:1])[0] == "= Cats = <eos> the cat"
    assert len(data.query) == 2 and len(data.test) == len(text.blocks(range(len(
        text.read_wikitext(tmp_path / "wikitext-2" / "test.txt"))), 6)) - 2
    with pytest.raises(errors.DataNotFoundError, match="valid.txt and .*test.txt"):
        tdakit.datasets.wikitext2_folder(tmp_path / "elsewhere")
    (tmp_path / "wikitext-2" / "test.txt").write_text("\n \n")
    with pytest.raises(errors.InputError, match="holds no tokens"):
        tdakit.datasets.wikitext2_folder(tmp_path)


def test_archives_unpack_into_the_data_folder_and_the_command_line_says_where(tmp_path):
    source = write_sst2(tmp_path / "made" / "glue" / "sst2")
    archive = tmp_path / "sst2.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(source, arcname="glue/sst2")
    root = tmp_path / "data"
    got = subprocess.run([sys.executable, "-m", "tdakit.cli", "sst2", "--archive", str(archive), "--root",
                          str(root)], capture_output=True, text=True)
    assert got.returncode == 0 and str(root / "sst2") in got.stdout
    assert (root / "sst2" / "train.tsv").is_file() and not list(root.glob(".*"))  # nothing half-written left
    assert text.install(archive, root, "sst2") == root / "sst2"  # there already: nothing to do
    with pytest.raises(errors.DataNotFoundError, match="holds no wikitext-2 layout"):
        text.install(archive, tmp_path / "other", "wikitext-2")
    missing = subprocess.run([sys.executable, "-m", "tdakit.cli", "wikitext2", "--root", str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "--download" in missing.stderr and "download=True" not in missing.stderr


# -- models and the language-model task --------------------------------------------------------------------
def test_padding_never_counts_and_causal_attention_never_looks_ahead():
    torch.manual_seed(0)
    classifier = TransformerClassifier(20, width=8, heads=2, depth=2, max_length=12).double()
    ids = torch.tensor([[5, 6, 7, 0, 0, 0]])
    longer = torch.cat([ids, torch.zeros(1, 6, dtype=torch.int64)], 1)
    assert torch.allclose(classifier(ids), classifier(longer), rtol=0, atol=1e-12)
    assert not torch.allclose(classifier(ids), classifier(torch.tensor([[5, 6, 8, 0, 0, 0]])))
    lm = CausalLM(20, width=8, heads=2, depth=2, max_length=12).double()
    a, b = lm(torch.tensor([[3, 4, 5, 6]])), lm(torch.tensor([[3, 4, 9, 9]]))
    assert torch.allclose(a[:, :2], b[:, :2], rtol=0, atol=1e-12) and not torch.allclose(a[:, 2], b[:, 2])
    with pytest.raises(errors.InputError, match="integer token ids"):
        classifier(torch.zeros(1, 3))
    with pytest.raises(errors.InputError, match="longer than the model's max_length"):
        classifier(torch.ones(1, 13, dtype=torch.int64))
    tied = CausalLM(20, width=8, tie=True)
    assert tied.head.weight is tied.encoder.tokens.weight


def test_the_language_model_task_is_torch_s_cross_entropy_and_ignores_what_it_should():
    torch.manual_seed(0)
    task = tdakit.LanguageModeling()
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    targets = torch.randint(0, 7, (3, 5))
    targets[1, :2] = IGNORE  # a prompt: not counted
    expected = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    counted = (targets != IGNORE).double()
    assert torch.allclose(task.loss(logits, targets), expected.sum(1) / counted.sum(1), rtol=1e-12)
    log_probs = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    assert torch.allclose(task.measurement(logits, targets), (log_probs * counted).sum(1), rtol=1e-12)
    assert task.higher_is_better and not tdakit.LanguageModeling(measure="loss").higher_is_better
    assert task.sample_targets(logits, torch.Generator().manual_seed(0)).shape == (3, 5)
    with pytest.raises(errors.InputError, match=r"token ids in 0..6"):
        task.check_targets(logits, torch.full((3, 5), 7))
    with pytest.raises(errors.InputError, match=r"outputs \[n, L, vocabulary\]"):
        task.check_targets(logits, torch.zeros(3, dtype=torch.int64))


# -- every path on attention models ------------------------------------------------------------------------
class TorchEncoderClassifier(nn.Module):
    """PyTorch's own nn.TransformerEncoderLayer (nn.MultiheadAttention inside), with a padding mask."""

    def __init__(self, vocabulary: int, width: int = 8):
        super().__init__()
        self.tokens = nn.Embedding(vocabulary, width)
        self.layer = nn.TransformerEncoderLayer(width, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, 2)

    def forward(self, ids):
        keep = ids != 0
        states = self.layer(self.tokens(ids), src_key_padding_mask=~keep)
        weights = keep.to(states.dtype)[..., None]
        return self.head((states * weights).sum(1) / weights.sum(1).clamp(min=1.0))


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    write_sst2(root / "sst2")
    return tdakit.datasets.sst2_folder(root, n_train=16, n_query=4, length=6)


@pytest.fixture(scope="module")
def passages(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    write_wikitext(root / "wikitext-2")
    return tdakit.datasets.wikitext2_folder(root, length=6, n_train=12, n_query=3)


EMBEDDINGS = ["encoder.tokens", "encoder.positions"]
PATHS = [("grad_dot", {}), ("tracin", {}), ("source", {"segments": 2, "curvature": "ggn"}),
         ("influence", {"curvature": Kronecker(fisher="true")}),  # the embeddings factored too
         ("source", {"segments": 2, "curvature": Kronecker(fisher="true", exclude=EMBEDDINGS)}),
         ("trak", {}), ("trak", {"exclude": EMBEDDINGS})]


@pytest.mark.parametrize("kind", ["classifier", "language model", "nn.TransformerEncoderLayer"])
def test_attention_models_score_the_same_on_the_default_path_as_with_per_example_torch_func(kind, sentences,
                                                                                          passages):
    data = passages if kind == "language model" else sentences
    vocab = len(data.vocabulary)
    model = {"classifier": lambda: TransformerClassifier(vocab, width=8, heads=2, depth=1, max_length=6),
             "language model": lambda: CausalLM(vocab, width=8, heads=2, depth=1, max_length=6),
             "nn.TransformerEncoderLayer": lambda: TorchEncoderClassifier(vocab)}[kind]()
    task = tdakit.LanguageModeling() if kind == "language model" else tdakit.Classification()
    run = tdakit.train(model, data.train, tdakit.Recipe(lr=0.1, epochs=2, batch_size=4, momentum=0.9,
                                                        weight_decay=1e-3), task, checkpoints=4,
                       dtype=torch.float64, progress=False, cache=False)
    paths = PATHS if kind != "nn.TransformerEncoderLayer" else PATHS[:3] + [  # attention's projections: factored
        ("influence", {"curvature": Kronecker()}), ("trak", {}), ("unrolled", {})]
    for method, settings in paths:
        if kind == "language model" and settings.get("curvature") == "ggn":
            continue  # the exact Gauss-Newton over L x V outputs: refused (next test)
        default = tdakit.attribute(run, data.query, method, progress=False, **settings).values
        flat = tdakit.attribute(run, data.query, method, progress=False, gradients="vmap", **settings).values
        assert torch.isfinite(default).all() and default.abs().max() > 0, method
        assert torch.allclose(default, flat, rtol=0, atol=1e-10 * float(flat.abs().max())), method


class HandWrittenEncoderClassifier(nn.Module):
    """TorchEncoderClassifier's computation with the attention written out: its packed in-projection as one
    nn.Linear [3E, E], the output projection as another, PyTorch's scaled_dot_product_attention in between."""

    def __init__(self, torch_model: TorchEncoderClassifier):
        super().__init__()
        layer = torch_model.layer
        self.tokens, self.head = torch_model.tokens, torch_model.head
        self.heads, width = layer.self_attn.num_heads, layer.self_attn.embed_dim
        self.in_proj, self.out_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        with torch.no_grad():
            self.in_proj.weight.copy_(layer.self_attn.in_proj_weight)
            self.in_proj.bias.copy_(layer.self_attn.in_proj_bias)
            self.out_proj.load_state_dict(layer.self_attn.out_proj.state_dict())
        self.linear1, self.linear2, self.norm1, self.norm2 = layer.linear1, layer.linear2, layer.norm1, layer.norm2

    def forward(self, ids):
        keep = ids != 0
        h = self.tokens(ids)
        n, length, width = h.shape
        q, k, v = (part.reshape(n, length, self.heads, -1).transpose(1, 2) for part in self.in_proj(h).chunk(3, -1))
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        h = self.norm1(h + self.out_proj(mixed.transpose(1, 2).reshape(n, length, width)))
        states = self.norm2(h + self.linear2(F.relu(self.linear1(h))))
        weights = keep.to(states.dtype)[..., None]
        return self.head((states * weights).sum(1) / weights.sum(1).clamp(min=1.0))


def test_multihead_attention_has_the_kronecker_factors_of_its_projections_written_as_linears(sentences):
    """nn.MultiheadAttention's in- and out-projection get the K-FAC/EK-FAC factors that the same model written
    with two nn.Linear layers gets: same training, same scores (float64)."""
    torch.manual_seed(0)
    torch_model = TorchEncoderClassifier(len(sentences.vocabulary))
    models = {"nn.MultiheadAttention": torch_model, "written out": HandWrittenEncoderClassifier(torch_model)}
    recipe = tdakit.Recipe(lr=0.1, epochs=2, batch_size=4, momentum=0.9, weight_decay=1e-3)
    scores = {}
    for label, model in models.items():
        init = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # the same weights, not a new draw
        run = tdakit.train(model, sentences.train, recipe, tdakit.Classification(), checkpoints=3, init=init,
                           dtype=torch.float64, progress=False, cache=False)
        scores[label] = [tdakit.attribute(run, sentences.query, method, progress=False, **settings,
                                          curvature=Kronecker(eigen_correction=ekfac, exclude=["tokens"])).values
                         for method, settings, ekfac in [("influence", {}, True), ("source", {"segments": 2}, False)]]
    for ours, written in zip(*scores.values(), strict=True):
        assert ours.abs().max() > 0
        assert torch.allclose(ours, written, rtol=0, atol=1e-8 * float(written.abs().max()))


class Bag(nn.Module):
    """Mean of tanh(embedding) over positions, then a Linear head; token 0 pads (padding_idx)."""

    def __init__(self, vocabulary: int, width: int = 6):
        super().__init__()
        self.tokens, self.head = nn.Embedding(vocabulary, width, padding_idx=0), nn.Linear(width, 2)

    def forward(self, ids):
        return self.head(torch.tanh(self.tokens(ids)).mean(1))


class OneHotBag(nn.Module):
    """Bag written as an nn.Linear [E, V] on one-hot rows (the padding column zero)."""

    def __init__(self, bag: Bag):
        super().__init__()
        self.tokens = nn.Linear(bag.tokens.num_embeddings, bag.tokens.embedding_dim, bias=False)
        self.head = bag.head
        with torch.no_grad():
            self.tokens.weight.copy_(bag.tokens.weight.T)

    def forward(self, ids):
        rows = (ids[..., None] == torch.arange(self.tokens.in_features)).to(torch.float64)  # built in float64
        rows[..., 0] = 0
        return self.head(torch.tanh(self.tokens(rows)).mean(1))


def test_an_embedding_has_the_kronecker_factors_of_a_linear_layer_on_one_hot_rows(sentences):
    """nn.Embedding's K-FAC/EK-FAC factors (a diagonal A, never formed as a matrix) and TRAK projections equal
    those of the same model with an nn.Linear on one-hot inputs: same training, same scores (float64)."""
    torch.manual_seed(0)
    bag = Bag(len(sentences.vocabulary)).double()  # OneHotBag makes float64 rows
    recipe = tdakit.Recipe(lr=0.5, epochs=3, batch_size=4, momentum=0.9, weight_decay=1e-3)
    scores = []
    for model in (bag, OneHotBag(bag).double()):
        init = torch.cat([p.detach().reshape(-1) for p in model.parameters()])  # the same weights in both
        run = tdakit.train(model, sentences.train, recipe, tdakit.Classification(), checkpoints=3, init=init,
                           dtype=torch.float64, progress=False, cache=False)
        scores.append([tdakit.attribute(run, sentences.query, method, progress=False, **settings).values
                       for method, settings in [("influence", {"curvature": "ekfac"}),
                                                ("source", {"segments": 2, "curvature": "kfac"}),
                                                ("trak", {"projection": 4})]])
    for ours, written in zip(*scores, strict=True):
        assert ours.abs().max() > 0
        assert torch.allclose(ours, written, rtol=0, atol=1e-8 * float(written.abs().max()))


def test_language_models_refuse_the_exact_gauss_newton_and_name_the_sampled_one_and_tied_embeddings(passages):
    run = tdakit.train(CausalLM(len(passages.vocabulary), width=8, heads=2, depth=1, max_length=6), passages.train,
                       tdakit.Recipe(lr=0.1, epochs=1, batch_size=4), tdakit.LanguageModeling(), checkpoints=2,
                       dtype=torch.float64, progress=False, cache=False)
    for curvature in ("ggn", Kronecker(exclude=EMBEDDINGS)):
        with pytest.raises(errors.ModelError, match=r"fisher='true'"):
            tdakit.attribute(run, passages.query, "influence", curvature=curvature, progress=False)
    factored = tdakit.attribute(run, passages.query, "influence", curvature=Kronecker(fisher="true"), progress=False)
    assert torch.isfinite(factored.values).all()  # embeddings factored too
    tied = tdakit.train(CausalLM(len(passages.vocabulary), width=8, heads=2, depth=1, max_length=6, tie=True),
                        passages.train, tdakit.Recipe(lr=0.1, epochs=1, batch_size=4), tdakit.LanguageModeling(),
                        checkpoints=2, dtype=torch.float64, progress=False, cache=False)
    with pytest.raises(errors.ModelError, match=r"'encoder.tokens' shares its parameter.*exclude=\['encoder.tokens', "
                                                r"'head'\]"):  # a tied embedding: named, with the exclude fix
        tdakit.attribute(tied, passages.query, "influence", curvature=Kronecker(fisher="true"), progress=False)


@pytest.mark.parametrize("name", ["sst2", "wikitext2"])
def test_the_text_presets_run_every_method(tmp_path, name):
    import dataclasses

    from tdakit.experiment import Method, compute_scores

    (write_sst2 if name == "sst2" else write_wikitext)(tmp_path / ("sst2" if name == "sst2" else "wikitext-2"))
    setting = tdakit.preset(name)
    small = dataclasses.replace(setting, n_train=8, n_query=2, length=6, vocab_size=40, width=8,
                                recipe=dataclasses.replace(setting.recipe, epochs=2, batch_size=4))
    data = small.data(root=tmp_path)
    run = small.train(data, progress=False, cache=False)
    methods = {**small.methods(), "exact unrolling": Method("unrolled"), "grad cos": Method("grad_cos"),
               "representation": Method("representation")}
    scores, _ = compute_scores(run, data.query, methods, progress=False, cache=False)
    for label, got in scores.items():
        assert got.values.shape == (2, 8) and torch.isfinite(got.values).all() and got.values.abs().max() > 0, label
    truth = tdakit.groundtruth(run, data.query, subsets=4, seeds=1, progress=False, cache=False)
    assert truth.values.shape == (4, 1, 2) and torch.isfinite(truth.values).all()


def test_a_continuation_query_measures_log_p_of_the_continuation_given_the_prompt():
    torch.manual_seed(0)
    vocab = text.Vocabulary.build([["the", "cat", "sat", "on", "mat"]])
    query = text.continuations(vocab, [("the cat", "sat on the mat")], length=8)
    ids = vocab.encode("the cat sat on the mat".split())
    assert query.x[0, :5].tolist() == ids[:5] and query.x[0, 5:].tolist() == [0, 0, 0]
    assert query.y[0].tolist() == [IGNORE] + ids[2:] + [IGNORE] * 3
    lm = CausalLM(len(vocab), width=8, heads=2, depth=1, max_length=8).double()
    with torch.no_grad():
        got = tdakit.LanguageModeling().measurement(lm(query.x), query.y)
        log_probs = torch.log_softmax(lm(torch.tensor([ids[:5]])), -1)[0]
    expected = sum(float(log_probs[t, ids[t + 1]]) for t in range(1, 5))  # sat | the cat, ..., mat | ... the
    assert float(got[0]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(errors.InputError, match="more than length"):
        text.continuations(vocab, [("the cat sat on the mat", "on the mat")], length=6)


@pytest.mark.parametrize("kind", ["sentences", "passages"])
def test_the_deletion_explorer_shows_text_rows_and_deletes_them(kind, sentences, passages):
    from tdakit.experiment import Method
    from tdakit.explore.whatif import WhatIf
    from tdakit.widgets import DeletionExplorer

    data = sentences if kind == "sentences" else passages
    model = (TransformerClassifier(len(data.vocabulary), width=8, heads=2, depth=1, max_length=6)
             if kind == "sentences" else CausalLM(len(data.vocabulary), width=8, heads=2, depth=1, max_length=6))
    task = tdakit.Classification() if kind == "sentences" else tdakit.LanguageModeling()
    run = tdakit.train(model, data.train, tdakit.Recipe(lr=0.1, epochs=2, batch_size=4), task, checkpoints=2,
                       dtype=torch.float64, progress=False, cache=False)
    ex = DeletionExplorer(WhatIf(run, data.query, {"grad dot": Method("grad_dot")}, seeds=1, cache=False), data, k=2,
                          threaded=False)
    assert ex.text and ex.units.unit == "nats" and ex.picker_image.value[:4] == b"\x89PNG"
    query_words = data.texts(data.query.x)[1]
    assert query_words in ex.query.options[1][0]
    x, y = ex._picker.centres[1]
    ex.click(x - 100, y + 1)  # anywhere on the line picks it
    assert ex.query.value == 1
    helpful, harmful = ex.blamed_points
    shown = ex.points_view.value
    assert query_words.split()[0] in shown and all(data.texts(data.train.x)[i].split()[0] in shown
                                                   for i in helpful + harmful)
    ex.delete(protocol="same")
    assert ex.last.query == 1 and "nats" in ex.result.value


def test_the_text_gpu_check_runs_at_tiny_sizes_on_a_cpu(tmp_path):
    """benchmarks/gpu_text.py --tiny: every phase of the GPU check, on a CPU, from an archive."""
    import json
    import os

    folder = tmp_path / "made" / "wikitext-2"
    folder.mkdir(parents=True)
    words = "the cat sat on the mat and the dog ran to the park with a ball ."
    for name, repeats in (("valid.txt", 300), ("test.txt", 40)):
        (folder / name).write_text("".join(f" {words} \n" for _ in range(repeats)))
    archive = tmp_path / "wt.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(folder, arcname="wikitext-2")
    out = tmp_path / "report.json"
    benchmarks = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
    got = subprocess.run([sys.executable, "gpu_text.py", "--archive", str(archive), "--tiny", "--out", str(out)],
                         cwd=benchmarks, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert got.returncode == 0, got.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["passages"] == 200 and report["steps"] > 0
    assert {"train", "EK-FAC fit (sampled Fisher)", "influence", "SOURCE (L=3)"} <= set(report["phases"])
    assert all(-1 <= v <= 1 for v in report["lds"].values())


def test_download_unpacks_the_official_layouts_when_asked(tmp_path, monkeypatch):
    """download=True: GLUE's SST-2.zip (sentence<TAB>label) and WikiText-2's zip (wiki.*.tokens), made here and
    handed over in place of the network."""
    import zipfile

    glue = write_sst2(tmp_path / "made" / "SST-2", header=("sentence", "label"))
    wiki = tmp_path / "made" / "wikitext-2"
    write_wikitext(wiki)
    zips = {}
    for name, folder, files in (("sst2", glue, {"train.tsv": "train.tsv", "dev.tsv": "dev.tsv"}),
                                ("wikitext-2", wiki, {"valid.txt": "wiki.valid.tokens",
                                                      "test.txt": "wiki.test.tokens"})):
        zips[name] = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(zips[name], "w") as z:
            for ours, theirs in files.items():
                z.write(folder / ours, f"{folder.name}/{theirs}")

    def fake_download(url, target):
        import shutil
        shutil.copy(zips["sst2" if "SST" in url else "wikitext-2"], target)

    monkeypatch.setattr(text.urllib.request, "urlretrieve", fake_download)
    root = tmp_path / "data"
    sst2 = tdakit.datasets.sst2_folder(root, n_train=8, n_query=4, length=5, download=True)
    assert sst2.train.y.sum() == 4 and (root / "sst2" / "dev.tsv").is_file()
    wikitext = tdakit.datasets.wikitext2_folder(root, length=6, n_query=2, download=True)
    assert wikitext.train.x.shape[1] == 6 and (root / "wikitext-2" / "valid.txt").is_file()
    assert not [p for p in root.iterdir() if p.name not in ("sst2", "wikitext-2")]  # nothing half-written left


class BroadcastPositions(nn.Module):
    """A position table looked up once for the whole batch ([L] ids, broadcast over examples)."""

    def __init__(self, vocabulary: int, width: int = 6):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocabulary, width), nn.Embedding(6, width)
        self.head = nn.Linear(width, 2)

    def forward(self, ids):
        states = self.tokens(ids) + self.positions(torch.arange(ids.shape[1]))
        return self.head(torch.tanh(states).mean(1))


def test_a_layer_that_does_not_see_the_batch_first_is_left_to_torch_func_or_named_with_the_fix(sentences):
    run = tdakit.train(BroadcastPositions(len(sentences.vocabulary)), sentences.train, tdakit.Recipe(lr=0.1, epochs=1),
                       tdakit.Classification(), checkpoints=2, dtype=torch.float64, progress=False, cache=False)
    slots, rest = tdakit.layers.hook_split(run.model, sentences.train.x[:1])
    assert [s.name for s in slots] == ["tokens", "head"] and len(rest) == 6 * 6  # the positions: torch.func
    default = tdakit.attribute(run, sentences.query, "grad_dot", progress=False).values
    flat = tdakit.attribute(run, sentences.query, "grad_dot", progress=False, gradients="vmap").values
    assert torch.allclose(default, flat, rtol=0, atol=1e-10 * float(flat.abs().max()))
    with pytest.raises(errors.ModelError, match=r"'positions' receives inputs whose first dimension is not the batch"
                                                r".*exclude=\['positions'\]"):
        tdakit.attribute(run, sentences.query, "influence", curvature="ekfac", progress=False)
    fixed = tdakit.attribute(run, sentences.query, "influence", progress=False,
                             curvature=Kronecker(exclude=["positions"]))
    assert torch.isfinite(fixed.values).all()
