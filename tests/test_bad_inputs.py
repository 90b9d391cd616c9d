"""Your own data and model: every input checked at the door, every message's suggested fix works.

The table below is what a user bringing their own work gets wrong. Each case must raise the named TdakitError
subclass with a message that names the argument; where the message suggests a fix, the fix is applied and must
give a result. A seeded random search over shapes, dtypes and label ranges then checks that each case gives a
correct result or a TdakitError, never another exception and never a silent broadcast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import tdakit
from tdakit import errors
from tdakit.cli import main as cli
from tdakit.curvature import Kronecker
from tdakit.datasets import Split, from_arrays, from_csv

QUICK = tdakit.Recipe(lr=0.05, epochs=2, batch_size=16)


def regression_data(n: int = 48, features: int = 4, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    return Split(x, x @ torch.linspace(-1, 1, features, dtype=torch.float64) + 0.1 * torch.randn(n, generator=g,
                                                                                                  dtype=torch.float64))


def class_data(n: int = 48, features: int = 4, classes: int = 3, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    return Split(x, (x[:, 0] * 2).floor().clamp(-1, 1).long() + 1 if classes == 3 else
                 torch.randint(classes, (n,), generator=g))


def mlp(features: int = 4, outputs: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, outputs))


def with_grouped_conv(features: int = 4) -> nn.Module:
    """A layer with no Kronecker form (a grouped nn.Conv1d, at index 1) between factorable ones."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Unflatten(1, (2, features // 2)), nn.Conv1d(2, 4, 1, groups=2), nn.Flatten(), nn.Tanh(),
                         nn.Linear(2 * features, 1))


def train(model, data, task=None, **kw):
    return tdakit.train(model, data, kw.pop("recipe", QUICK), task or tdakit.Regression(),
                        checkpoints=kw.pop("checkpoints", 2), dtype=torch.float64, progress=False, cache=False, **kw)


@pytest.fixture(scope="module")
def runs():
    reg, cls = regression_data(), class_data()
    return {"reg": train(mlp(), reg), "cls": train(mlp(outputs=3), cls, tdakit.Classification()),
            "norm": train(with_grouped_conv(), reg), "reg_data": reg, "cls_data": cls}


@dataclass
class Case:
    """A bad input: the call, the error it must raise, words its message must hold (the argument it names), and
    the fix the message suggests, applied (None when the message suggests no runnable change)."""

    what: str
    call: Callable[[], object]
    error: type
    names: tuple[str, ...]
    fix: Callable[[], object] | None = None


def with_row(split: Split, row: int, x=None, y=None) -> Split:
    x_new, y_new = split.x.clone(), split.y.clone()
    if x is not None:
        x_new[row] = x
    if y is not None:
        y_new[row] = y
    return Split(x_new, y_new)


def cases(runs) -> list[Case]:
    reg, cls = runs["reg_data"], runs["cls_data"]
    r, c, norm = runs["reg"], runs["cls"], runs["norm"]
    q_reg, q_cls = reg.subset(slice(0, 4)), cls.subset(slice(0, 4))
    three = tdakit.Classification()
    label_7 = with_row(cls, 10, y=7)
    return [
        # training: the data
        Case("a class label 7 at row 10 of a 3-class set", lambda: train(mlp(outputs=3), label_7, three),
             errors.InputError, ("row 10", "0..2"), lambda: train(mlp(outputs=3), Split(label_7.x, label_7.y % 3),
                                                                  three)),
        Case("a negative class label", lambda: train(mlp(outputs=3), with_row(cls, 5, y=-1), three),
             errors.InputError, ("row 5",)),
        Case("real-valued labels for classification", lambda: train(mlp(outputs=3), Split(cls.x, cls.y + 0.5), three),
             errors.InputError, ("Regression()",), lambda: train(mlp(), Split(cls.x, cls.y + 0.5))),
        Case("targets of shape [n, 2]", lambda: Split(reg.x, torch.stack([reg.y, reg.y], 1)), errors.InputError,
             ("shape [n]",)),
        Case("NaN in the training features", lambda: train(mlp(), with_row(reg, 3, x=float("nan"))),
             errors.InputError, ("row 3",)),
        Case("inf in a regression target", lambda: train(mlp(), with_row(reg, 7, y=float("inf"))),
             errors.InputError, ("data.y", "row 7")),
        Case("x and y of different lengths", lambda: Split(reg.x, reg.y[:-1]), errors.InputError, ("rows",)),
        Case("data as a tuple", lambda: train(mlp(), (reg.x, reg.y)), errors.InputError, ("tdakit.Split",),
             lambda: train(mlp(), tdakit.Split(reg.x, reg.y))),
        Case("a function as the model", lambda: train(lambda x: x, reg), errors.ModelError, ("nn.Module",)),
        Case("a model for 5 features on 4", lambda: train(mlp(features=5), reg), errors.InputError,
             ("inputs of shape",)),
        Case("Regression with a 3-output model", lambda: train(mlp(outputs=3), reg), errors.InputError,
             ("width 1", "Classification()"), lambda: train(mlp(outputs=3), cls, three)),
        Case("Classification with a 1-output model", lambda: train(mlp(), cls, three), errors.InputError,
             ("Regression()",)),
        Case("text labels in a Split", lambda: Split(reg.x, np.array(["a", "b"] * 24)), errors.InputError,
             ("from_arrays",), lambda: from_arrays(reg.x.numpy(), np.array(["a", "b"] * 24), "classification")),
        Case("an empty training split", lambda: train(mlp(), reg.subset(slice(0, 0))), errors.InputError,
             ("empty",)),
        Case("a scalar as y", lambda: Split(reg.x, np.float64(1.0)), errors.InputError, ("one row per example",)),
        # training: the settings
        Case("a negative learning rate", lambda: tdakit.Recipe(lr=-1.0), errors.SettingError, ("lr",)),
        Case("zero epochs", lambda: tdakit.Recipe(epochs=0), errors.SettingError, ("epochs",)),
        Case("weights of the wrong length", lambda: train(mlp(), reg, weights=torch.ones(5)), errors.InputError,
             ("weights",)),
        Case("init of the wrong length", lambda: train(mlp(), reg, init=torch.zeros(3)), errors.InputError,
             ("init",)),
        Case("a checkpoint spec that is not one", lambda: train(mlp(), reg, checkpoints="sometimes"),
             errors.SettingError, ("checkpoints",)),
        Case("training that diverges", lambda: train(mlp(), reg, recipe=tdakit.Recipe(lr=1e6, epochs=2)),
             errors.TrainingError, ("lower the learning rate",), lambda: train(mlp(), reg)),
        Case("an ensemble of 0 members", lambda: tdakit.train_ensemble(mlp(), reg, QUICK, tdakit.Regression(),
                                                                       members=0, progress=False, cache=False),
             errors.SettingError, ("members",)),
        # attribution
        Case("a query labelled 9 for a 3-class model", lambda: tdakit.attribute(c, with_row(q_cls, 2, y=9), "tracin",
                                                                                progress=False),
             errors.InputError, ("query.y", "row 2", "0..2")),
        Case("NaN in a query's features", lambda: tdakit.attribute(r, with_row(q_reg, 2, x=float("nan")),
                                                                   "influence", progress=False),
             errors.InputError, ("query 2",)),
        Case("queries of another shape", lambda: tdakit.attribute(r, Split(torch.zeros(2, 3), torch.zeros(2)),
                                                                  "tracin", progress=False),
             errors.InputError, ("query examples",)),
        Case("a query that is not a Split", lambda: tdakit.attribute(r, q_reg.x, "tracin", progress=False),
             errors.InputError, ("Split",)),
        Case("an empty query", lambda: tdakit.attribute(r, q_reg.subset(slice(0, 0)), "tracin", progress=False),
             errors.InputError, ("empty",)),
        Case("an unknown method", lambda: tdakit.attribute(r, q_reg, "sauce"), errors.SettingError,
             ("unknown method", "source")),
        Case("a setting the method does not take", lambda: tdakit.attribute(r, q_reg, "tracin", damping=1.0),
             errors.SettingError, ("damping",)),
        Case("a fractional segment count", lambda: tdakit.attribute(r, q_reg, "source", segments=2.5),
             errors.SettingError, ("segments",), lambda: tdakit.attribute(r, q_reg, "source", segments=2,
                                                                          progress=False)),
        Case("an unknown curvature", lambda: tdakit.attribute(r, q_reg, "influence", curvature="exact"),
             errors.SettingError, ("curvature", "'ggn'"), lambda: tdakit.attribute(r, q_reg, "influence",
                                                                                   curvature="ggn", progress=False)),
        Case("a negative damping", lambda: tdakit.attribute(r, q_reg, "influence", damping=-1.0),
             errors.SettingError, ("damping",)),
        Case("an unknown precision", lambda: tdakit.attribute(r, q_reg, "tracin", precision="fp8"),
             errors.SettingError, ("precision",)),
        Case("a grouped Conv1d under EK-FAC", lambda: tdakit.attribute(norm, q_reg, "influence", curvature="ekfac",
                                                                  progress=False),
             errors.ModelError, ("Kronecker(exclude=['1'])",),
             lambda: tdakit.attribute(norm, q_reg, "influence", curvature=Kronecker(exclude=["1"]), progress=False)),
        Case("a grouped Conv1d under TRAK", lambda: tdakit.attribute(norm, q_reg, "trak", progress=False),
             errors.ModelError, ("exclude=['1'] for TRAK",),
             lambda: tdakit.attribute(norm, q_reg, "trak", exclude=["1"], progress=False)),
        # ground truth and LDS
        Case("a ground truth with one subset", lambda: tdakit.groundtruth(r, q_reg, subsets=1), errors.SettingError,
             ("subsets",)),
        Case("a ground truth with no seeds", lambda: tdakit.groundtruth(r, q_reg, seeds=0), errors.SettingError,
             ("seeds",)),
        Case("a ground truth keeping 150%", lambda: tdakit.groundtruth(r, q_reg, fraction=1.5), errors.SettingError,
             ("fraction",)),
        Case("a ground truth for queries with labels out of range",
             lambda: tdakit.groundtruth(c, with_row(q_cls, 1, y=3), subsets=2, seeds=1, progress=False, cache=False),
             errors.InputError, ("query.y", "row 1")),
        Case("scores of another shape against a ground truth",
             lambda: tdakit.lds(torch.zeros(3, 5), tdakit.evaluation.GroundTruth(torch.ones(4, 48, dtype=torch.bool),
                                                                                 torch.zeros(4, 2, 4))),
             errors.InputError, ("scores",)),
        Case("reliability of a one-seed ground truth",
             lambda: tdakit.reliability(tdakit.evaluation.GroundTruth(torch.ones(12, 48, dtype=torch.bool),
                                                                      torch.zeros(12, 1, 6))),
             errors.InputError, ("seeds=2",)),
        # your own table
        Case("a misspelt task", lambda: from_arrays(reg.x, reg.y, "regresion"), errors.SettingError, ("task",)),
        Case("a held-out share above 1", lambda: from_arrays(reg.x, reg.y, "regression", query=1.5),
             errors.SettingError, ("query",)),
        Case("features as one column", lambda: from_arrays(reg.x[:, 0], reg.y, "regression"), errors.InputError,
             ("x[:, None]",), lambda: from_arrays(reg.x[:, 0][:, None], reg.y, "regression")),
        Case("a missing CSV file", lambda: from_csv("/nonexistent/table.csv", "y", "regression"),
             errors.DataNotFoundError, ("/nonexistent/table.csv",)),
    ]


def test_every_bad_input_gets_a_clear_error_and_every_suggested_fix_works(runs):
    table = cases(runs)
    assert len(table) >= 40
    clear = 0
    for case in table:
        with pytest.raises(tdakit.TdakitError) as caught:
            case.call()
        message = str(caught.value)
        assert isinstance(caught.value, case.error), (case.what, type(caught.value).__name__, message)
        for word in case.names:
            assert word in message, (case.what, word, message)
        if case.fix is not None:
            result = case.fix()
            assert result is not None, case.what
            values = getattr(result, "values", None)
            if values is not None:
                assert torch.isfinite(values).all(), case.what
        clear += 1
    print(f"bad inputs tried: {len(table)}; clear errors: {clear}; silent: {len(table) - clear}")  # BENCHMARKS.md


def test_a_csv_file_with_bad_cells_names_line_and_column(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b,target\n1,2,3\n4,five,6\n")
    with pytest.raises(errors.InputError, match=r"line 3, column 'b': 'five' is not a number"):
        from_csv(path, "target", "regression")
    with pytest.raises(errors.InputError, match="its columns are a, b, target"):
        from_csv(path, "strength", "regression")
    data = from_csv(path, "target", "regression", features=["a"], query=0)  # the fix: leave the column out
    assert data.feature_names == ("a",) and len(data.train) == 2


def test_the_command_line_names_its_flags(tmp_path, capsys):
    assert cli(["cifar10", "--root", str(tmp_path / "none")]) == 2
    said = capsys.readouterr().err
    assert "--download" in said and "download=True" not in said
    assert cli(["demo", "--queries", "0"]) == 2
    assert "--queries" in capsys.readouterr().err


def test_targets_shaped_n_by_1_train_exactly_as_shaped_n():
    data = regression_data()
    column = Split(data.x.numpy(), data.y.numpy()[:, None])  # what df[["target"]].to_numpy() gives
    assert column.y.shape == (48,)
    a, b = train(mlp(), data), train(mlp(), column)
    assert torch.equal(a.final, b.final)


def test_numpy_and_pandas_like_inputs_are_converted_once():
    data = regression_data()

    class Frame:  # what a pandas DataFrame / Series offers
        def __init__(self, values):
            self.values = values

        def to_numpy(self):
            return self.values

    split = Split(Frame(data.x.numpy()), Frame(data.y.numpy()))
    assert isinstance(split.x, torch.Tensor) and split.x.dtype == torch.float64
    assert torch.equal(split.x, data.x) and torch.equal(split.y, data.y)
    labels = Split(np.zeros((3, 2), dtype=np.float32), np.array([0, 2, 1]))
    assert labels.y.dtype == torch.int64 and labels.x.dtype == torch.float32
    assert tdakit.Split is Split


def test_a_table_is_split_and_standardized_on_its_training_rows_only():
    g = np.random.default_rng(3)
    x = g.normal(5.0, 3.0, size=(200, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 10.0
    data = from_arrays(x, y, "regression", query=0.1, test=20, seed=4, unit="kg")
    assert (len(data.train), len(data.query), len(data.test)) == (160, 20, 20)
    assert data.train.x.double().mean(0).abs().max() < 1e-6  # the training rows, standardized
    assert (data.train.x.double().std(0, unbiased=False) - 1).abs().max() < 1e-5
    assert data.query.x.double().mean(0).abs().max() > 1e-3  # the held-out rows, by the training statistics
    again = from_arrays(x, y, "regression", query=0.1, test=20, seed=4)
    assert torch.equal(again.query.x, data.query.x)
    # new rows go through the same map, and the scaler takes targets back to their units
    rows = np.concatenate([data.features_original(data.query.x[:2]).numpy()])
    assert torch.allclose(data.features_standardized(rows), data.query.x[:2], atol=1e-6)
    assert data.scaler.unit == "kg"
    restored = data.scaler.to_original(data.train.y.double()).numpy()
    assert np.abs(restored[:, None] - y[None, :]).min(1).max() < 1e-4  # each a target of the table, in its units


def test_class_names_of_any_kind_become_labels():
    x = np.arange(12, dtype=float).reshape(6, 2)
    data = from_arrays(x, ["cat", "dog", "cat", "emu", "dog", "cat"], "classification", query=0, seed=0)
    assert data.class_names == ("cat", "dog", "emu")
    names = [data.class_names[int(k)] for k in data.train.y]
    originals = {tuple(row): label for row, label in zip(x.tolist(), ["cat", "dog", "cat", "emu", "dog", "cat"],
                                                         strict=True)}
    restored = data.features_original(data.train.x).tolist()
    assert [originals[tuple(round(v, 6) for v in row)] for row in restored] == names


def test_short_reprs_and_html_for_results(runs):
    r, q = runs["reg"], runs["reg_data"].subset(slice(0, 3))
    scores = tdakit.attribute(r, q, "grad_dot", progress=False)
    truth = tdakit.groundtruth(r, q, subsets=4, seeds=2, progress=False, cache=False)
    for value in (r, scores, truth):
        text = repr(value)
        assert len(text) < 800 and "tensor(" not in text, text
        assert "<" in value._repr_html_()
    assert "3 queries x 48 training points" in repr(scores)
    best, worst = scores.top(0, k=2)
    row = scores.values[0]
    assert best[0][0] == int(row.argmax()) and worst[0][0] == int(row.argmin())
    assert "too small" in repr(truth)
    experiment = tdakit.Experiment(r, q, truth, {"grad": "grad_dot", "TracIn": "tracin"}, title="two baselines")
    assert "methods: grad, TracIn" in repr(experiment) and len(repr(experiment)) < 400
    table = experiment.table(progress=False, cache=False)
    assert repr(table) == table.text() and "<table>" in table._repr_html_() and "TracIn" in table._repr_html_()


def test_scores_html_shows_the_top_training_images_as_thumbnails(runs):
    images = tdakit.datasets.load("mnist5k").train.subset(slice(0, 40))  # flat [40, 784]: 28 x 28 images
    run = tdakit.train(tdakit.mlp(784, (8,), 10), images, tdakit.Recipe(lr=0.05, epochs=1, batch_size=20),
                       tdakit.Classification(), progress=False, cache=False)
    scores = tdakit.attribute(run, images.subset(slice(0, 2)), "grad_dot", progress=False)
    page = scores._repr_html_()
    assert page.count("data:image/png;base64,") == 2 * 6  # two queries, three up and three down each
    best, _ = scores.top(0)
    assert f"#{best[0][0]} " in page
    r, q = runs["reg"], runs["reg_data"].subset(slice(0, 3))
    assert "<img" not in tdakit.attribute(r, q, "grad_dot", progress=False)._repr_html_()  # a table, no images


def test_lds_and_reliability_warn_when_too_small(runs):
    r, q = runs["reg"], runs["reg_data"].subset(slice(0, 3))
    truth = tdakit.groundtruth(r, q, subsets=4, seeds=2, progress=False, cache=False)
    scores = tdakit.attribute(r, q, "grad_dot", progress=False)
    with pytest.warns(UserWarning, match="4 subsets"):
        tdakit.lds(scores, truth)
    with pytest.warns(UserWarning, match="3 queries"):
        tdakit.reliability(truth)
    table = tdakit.run_experiment(r, q, {"grad": "grad_dot"}, truth, progress=False, cache=False)
    assert "warning: ground truth too small" in table.text()


def test_dropout_is_off_on_every_path_and_said_once():
    data = regression_data()
    torch.manual_seed(0)
    with_dropout = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 1))
    torch.manual_seed(0)
    without = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Identity(), nn.Linear(8, 1))
    with pytest.warns(UserWarning, match=r"without dropout: the layers \['2'\]"):
        run = train(with_dropout, data)
    assert torch.equal(run.final, train(without, data).final)
    assert "dropout: off in 2" in repr(run)
    # with BatchNorm too (its training step used to run the module in train mode, dropout on)
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 1))
    with pytest.warns(UserWarning):
        a = train(bn, data)
    torch.manual_seed(0)
    bn_plain = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Identity(), nn.Linear(8, 1))
    assert torch.equal(a.final, train(bn_plain, data).final)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(2, 3, batch_first=True)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        hidden, _ = self.rnn(x)
        return self.out(hidden[:, -1])


def test_an_lstm_gets_influence_against_a_dense_float64_reference():
    """nn.LSTM has no vmap rule for its forward: every method that needs per-example outputs must still work.
    Influence with the exact GGN is compared with the formula written out with plain autograd."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 2, generator=g, dtype=torch.float64)
    data = Split(x, x.sum((1, 2)).tanh())
    recipe = tdakit.Recipe(lr=0.05, epochs=2, batch_size=8, weight_decay=0.0)
    module = Recurrent().double()
    run = tdakit.train(module, data, recipe, tdakit.Regression(), checkpoints=2, dtype=torch.float64,
                       progress=False, cache=False)
    query = data.subset(slice(0, 2))
    damping = 0.1
    scores = tdakit.attribute(run, query, "influence", curvature="ggn", damping=damping, progress=False).values

    flat = run.model

    def outputs(theta, xs):
        return flat(theta, xs)[:, 0]

    theta = run.final
    J = torch.stack([torch.autograd.functional.jacobian(lambda t, xi=xi: outputs(t, xi[None])[0], theta)
                     for xi in data.x])  # [N, P]
    P = theta.numel()
    ggn = 2 * J.T @ J / len(data)  # squared error: Lambda = 2
    g_train = 2 * (outputs(theta, data.x) - data.y)[:, None] * J  # [N, P]
    residual_q = outputs(theta, query.x) - query.y
    g_query = torch.sign(residual_q)[:, None] * torch.stack([
        torch.autograd.functional.jacobian(lambda t, xi=xi: outputs(t, xi[None])[0], theta) for xi in query.x])
    expected = -(g_query @ torch.linalg.solve(ggn + damping * torch.eye(P, dtype=torch.float64), g_train.T)) \
        / len(data)
    assert torch.allclose(scores, expected, rtol=1e-6, atol=1e-9), (scores - expected).abs().max()
    for method, settings in (("tracin", {}), ("grad_dot", {}), ("source", {"segments": 2}),
                             ("fast_source", {"segments": 2}), ("unrolled", {})):
        assert torch.isfinite(tdakit.attribute(run, query, method, progress=False, **settings).values).all(), method


def test_train_ensemble_is_cached(tmp_path):
    data = regression_data()
    first = tdakit.train_ensemble(mlp(), data, QUICK, tdakit.Regression(), members=2, progress=False,
                                  cache=tmp_path, dtype=torch.float64)
    assert len(list(tmp_path.glob("ensemble-*.pt"))) >= 1
    again = tdakit.train_ensemble(mlp(), data, QUICK, tdakit.Regression(), members=2, progress=False,
                                  cache=tmp_path, dtype=torch.float64)
    assert all(torch.equal(a.final, b.final) for a, b in zip(first, again, strict=True))


def test_a_run_or_ensemble_from_the_cache_says_so_only_with_progress(tmp_path, capsys):
    data = regression_data()
    tdakit.train(mlp(), data, QUICK, tdakit.Regression(), progress=True, cache=tmp_path)
    assert "from the cache" not in capsys.readouterr().err  # trained, not read
    tdakit.train(mlp(), data, QUICK, tdakit.Regression(), progress=False, cache=tmp_path)
    assert capsys.readouterr().err == ""
    tdakit.train(mlp(), data, QUICK, tdakit.Regression(), progress=True, cache=tmp_path)
    assert "train: the run" in capsys.readouterr().err
    tdakit.train_ensemble(mlp(), data, QUICK, tdakit.Regression(), members=2, progress=False, cache=tmp_path)
    tdakit.train_ensemble(mlp(), data, QUICK, tdakit.Regression(), members=2, progress=True, cache=tmp_path)
    assert "train_ensemble: 2 of 2 members read from the cache" in capsys.readouterr().err


def test_report_files_follow_the_umask(tmp_path):
    from tdakit.store import write_atomic

    old = __import__("os").umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", lambda f: f.write(b"{}"))
    finally:
        __import__("os").umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_a_resumed_ground_truth_says_how_much_came_from_the_cache(runs, tmp_path, capsys):
    r, q = runs["reg"], runs["reg_data"].subset(slice(0, 6))
    tdakit.groundtruth(r, q, subsets=10, seeds=1, progress=True, cache=tmp_path, models_per_chunk=5)
    capsys.readouterr()
    tdakit.groundtruth(r, q, subsets=10, seeds=2, progress=True, cache=tmp_path, models_per_chunk=5)
    assert "10 of 20 models read from the cache" in capsys.readouterr().err


def test_the_demo_keeps_one_report_per_configuration(tmp_path, monkeypatch):
    from tdakit.demo import check_folder, report_folder

    monkeypatch.chdir(tmp_path)
    full = {"model": "paper", "subsets": 100, "seeds": 5, "epochs": None, "queries": None, "train_points": None}
    quick = {**full, "train_points": 100}
    assert str(report_folder(None, full)) == "tdakit-report"
    assert str(report_folder(None, quick)) == "tdakit-report-train100"
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "configuration.json").write_text(__import__("json").dumps(full))
    check_folder(folder, full, force=False)  # the same configuration may be rewritten
    with pytest.raises(errors.SettingError, match="another configuration"):
        check_folder(folder, quick, force=False)
    check_folder(folder, quick, force=True)


def test_auto_curvature_is_exact_while_it_fits_and_ekfac_beyond(runs, monkeypatch):
    from tdakit.curvature import budget

    r, q = runs["reg"], runs["reg_data"].subset(slice(0, 3))
    exact = tdakit.attribute(r, q, "influence", progress=False)
    assert exact.settings["curvature"] == "ggn" and "chose 'ggn'" in exact.notes[0]
    assert torch.equal(exact.values, tdakit.attribute(r, q, "influence", curvature="ggn", progress=False).values)
    monkeypatch.setattr(budget, "AUTO_ROWS", 10)
    big = tdakit.attribute(r, q, "influence", progress=False)
    assert big.settings["curvature"] == "ekfac" and "chose 'ekfac'" in repr(big)
    assert torch.allclose(big.values, tdakit.attribute(r, q, "influence", curvature="ekfac", progress=False).values)
    # an explicit exact GGN that would not fit is refused before it allocates, naming the cheaper choice
    monkeypatch.setattr(budget, "available_bytes", lambda device="cpu": 1000)
    with pytest.raises(errors.SettingError, match="curvature='ekfac'"):
        tdakit.attribute(r, q, "influence", curvature="ggn", progress=False)


@pytest.mark.parametrize("seed", range(24))
def test_random_inputs_give_a_result_or_a_tdakit_error(seed):
    """Random shapes, dtypes and label ranges: each case trains and attributes correctly or raises a TdakitError;
    never another exception, never a silent broadcast (checked: the run's targets have one value per example)."""
    g = np.random.default_rng(seed)
    n, features = int(g.integers(0, 20)), int(g.integers(1, 4))
    classification = bool(g.integers(2))
    classes = int(g.integers(1, 4))
    x_dtype = [np.float32, np.float64, np.int64][int(g.integers(3))]
    x = g.normal(size=(n, features)).astype(x_dtype)
    if g.random() < 0.2 and n:
        x[int(g.integers(n))] = np.nan if x_dtype != np.int64 else 0
    if classification:
        y = g.integers(-1 if g.random() < 0.2 else 0, classes + int(g.random() < 0.3), size=n)
    else:
        y = g.normal(size=(n, 1) if g.random() < 0.5 else (n,))
    outputs = classes if classification else [1, 2][int(g.random() < 0.2)]
    task = tdakit.Classification() if classification else tdakit.Regression()
    try:
        split = Split(x, y)
        run = tdakit.train(mlp(features, outputs, seed), split, tdakit.Recipe(lr=0.05, epochs=1, batch_size=8), task,
                           checkpoints=1, progress=False, cache=False)
        scores = tdakit.attribute(run, split.subset(slice(0, 2)), "grad_dot", progress=False)
    except tdakit.TdakitError:
        return
    # it trained: every input was valid
    assert n >= 1 and np.isfinite(x.astype(float)).all()
    assert run.train.y.shape == (n,)
    if classification:
        assert outputs >= 2 and 0 <= y.min() and y.max() < outputs
    else:
        assert outputs == 1
    assert scores.values.shape == (min(2, n), n) and torch.isfinite(scores.values).all()


def test_a_long_exact_ggn_fit_shows_its_progress(runs, monkeypatch, capsys):
    from tdakit.curvature import dense

    r = runs["reg"]
    monkeypatch.setattr(dense, "LONG_ROWS", 10)
    quiet = dense.ggn_curvature(r.model, r.task, r.final[None], r.train, 1e-5, progress=False)
    assert "exact GGN" not in capsys.readouterr().err
    shown = dense.ggn_curvature(r.model, r.task, r.final[None], r.train, 1e-5, progress=True)
    assert "exact GGN (48 rows): factors, Gram, eigendecomposition" in capsys.readouterr().err
    assert torch.equal(quiet.eigenvalues, shown.eigenvalues)
