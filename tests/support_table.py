"""The layer support table of docs/support.md, made by running every cell.

    python -m tests.support_table > docs/support.md

Each row is a tiny model built around one layer type; each column a method (or a curvature, or a product path).
A cell runs the method on a float64 run of that model and says what happened: "yes" (finite scores; for the hook
products, equal to the flat torch.func products), "exclude" (refused with a ModelError whose suggested
``exclude`` fix then gives finite scores: the layer's parameters score 0), or "no" with the error's class.
``tests/test_support.py`` rebuilds the table and fails when the page differs, so the page cannot drift.
"""

from __future__ import annotations

import ast
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import tdakit
from tdakit.attribution import ProductOptions
from tdakit.curvature import Kronecker

FEATURES, LENGTH, VOCAB = 4, 3, 7


class Sequence(nn.Module):
    """[n, LENGTH * FEATURES] -> a sequence [n, LENGTH, FEATURES] -> ``body`` -> mean over positions -> 1 output."""

    def __init__(self, body: nn.Module, width: int = FEATURES):
        super().__init__()
        self.body, self.head = body, nn.Linear(width, 1)

    def forward(self, x):
        h = self.body(x.reshape(len(x), LENGTH, FEATURES))
        return self.head((h[0] if isinstance(h, tuple) else h).mean(1))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(FEATURES, 2, batch_first=True)

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


class TransformerBlock(nn.Module):
    """tdakit's pre-LayerNorm block (text_models.Block: attention from four nn.Linear, an MLP), every position kept."""

    def __init__(self):
        super().__init__()
        from tdakit.text_models import Block

        self.block = Block(FEATURES, 2, 8)

    def forward(self, x):
        return self.block(x, torch.ones(x.shape[:2], dtype=torch.bool))


class Tokens(nn.Module):
    """Token ids (features rounded into 0..VOCAB-1) -> an Embedding -> mean -> Linear."""

    def __init__(self):
        super().__init__()
        self.embedding, self.head = nn.Embedding(VOCAB, 3), nn.Linear(3, 1)

    def forward(self, x):
        ids = ((x[:, :LENGTH] * 2).round().clamp(-3, 3) + 3).long()
        return self.head(self.embedding(ids).mean(1))


class Functional(nn.Module):
    """A custom module whose parameters enter through F.* calls, not through nn layers."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, LENGTH * FEATURES) * 0.3)
        self.w2 = nn.Parameter(torch.randn(1, 6) * 0.3)

    def forward(self, x):
        return F.linear(torch.tanh(F.linear(x, self.w1)), self.w2)


class Conv1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv1d(FEATURES, 3, 2), nn.Linear(3 * (LENGTH - 1), 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x.reshape(len(x), LENGTH, FEATURES).transpose(1, 2))).flatten(1))


class Conv2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 2, 2), nn.Linear(2 * 2 * 3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x.reshape(len(x), 1, LENGTH, FEATURES))).flatten(1))


def mlp_with(layer: nn.Module, width: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(LENGTH * FEATURES, width), layer, nn.Tanh(), nn.Linear(width, 1))


LAYERS = {
    "Linear": lambda: mlp_with(nn.Identity()),
    "Conv1d": Conv1d,
    "Conv2d": Conv2d,
    "BatchNorm1d": lambda: mlp_with(nn.BatchNorm1d(6)),
    "LayerNorm": lambda: mlp_with(nn.LayerNorm(6)),
    "Embedding": Tokens,
    "MultiheadAttention": lambda: Sequence(Attention()),
    "TransformerEncoderLayer": lambda: Sequence(nn.TransformerEncoderLayer(FEATURES, 2, 8, dropout=0.0,
                                                                           batch_first=True)),
    "tdakit Transformer block": lambda: Sequence(TransformerBlock()),
    "LSTM": lambda: Sequence(nn.LSTM(FEATURES, 3, batch_first=True), 3),
    "GRU": lambda: Sequence(nn.GRU(FEATURES, 3, batch_first=True), 3),
    "Dropout (off)": lambda: mlp_with(nn.Dropout(0.3)),
    "custom F.* module": Functional,
}

# column -> (method, settings, where the exclude fix goes: "curvature" or "setting" or None)
COLUMNS = {
    "exact unrolling": ("unrolled", {}, None),
    "influence, ggn": ("influence", {"curvature": "ggn"}, None),
    "influence, ekfac": ("influence", {"curvature": "ekfac"}, "curvature"),
    "SOURCE, ggn": ("source", {"curvature": "ggn", "segments": 2}, None),
    "SOURCE, ekfac": ("source", {"curvature": "ekfac", "segments": 2}, "curvature"),
    "TracIn": ("tracin", {}, None),
    "TRAK": ("trak", {"projection": 4}, "setting"),
    "grad_dot, gradients='hooks'": ("grad_dot", {"gradients": "hooks"}, None),
    "representation": ("representation", {}, None),
}


def run_of(name: str) -> tdakit.Run:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, LENGTH * FEATURES, generator=g, dtype=torch.float64)
    data = tdakit.Split(x, torch.tanh(x[:, :3].sum(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the dropout warning, and torch's batching fallbacks
        return tdakit.train(LAYERS[name]().double(), data, tdakit.Recipe(lr=0.05, epochs=2, batch_size=8),
                            tdakit.Regression(), checkpoints=4, dtype=torch.float64, progress=False, cache=False)


def cell(run: tdakit.Run, column: str) -> str:
    method, settings, fix_at = COLUMNS[column]
    query = run.train.subset(slice(0, 2))
    settings = dict(settings)
    gradients = settings.pop("gradients", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scores = tdakit.attribute(run, query, method, progress=False, **settings,
                                      **({"products": ProductOptions(gradients=gradients)} if gradients else {}))
            if gradients == "hooks":
                flat = tdakit.attribute(run, query, method, progress=False, **settings,
                                        products=ProductOptions(gradients="vmap"))
                if not torch.allclose(scores.values, flat.values, rtol=1e-8, atol=1e-10):
                    return "WRONG (hooks != vmap)"
    except tdakit.errors.ModelError as err:
        fixed = _excluded(err, run, query, method, settings, fix_at)
        return fixed or f"no ({type(err).__name__})"
    except tdakit.TdakitError as err:
        return f"no ({type(err).__name__})"
    return "yes" if torch.isfinite(scores.values).all() else "no (non-finite)"


def _excluded(err, run, query, method, settings, fix_at) -> str | None:
    """'exclude' when the message names layers to exclude and leaving them out works."""
    text = str(err)
    if fix_at is None or "exclude=[" not in text:
        return None
    names = ast.literal_eval(text[text.index("exclude=[") + len("exclude="):].split("]")[0] + "]")  # as suggested
    if fix_at == "curvature":
        settings = {**settings, "curvature": Kronecker(exclude=names)}
    else:
        settings = {**settings, "exclude": names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scores = tdakit.attribute(run, query, method, progress=False, **settings)
    return "exclude" if torch.isfinite(scores.values).all() else None


def table() -> str:
    lines = ["| layer | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name in LAYERS:
        run = run_of(name)
        lines.append(f"| {name} | " + " | ".join(cell(run, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


PAGE = """# Which layers each method supports

Generated by running every cell (`python -m tests.support_table > docs/support.md`; `tests/test_support.py` fails
when this page and the code disagree). Each row is a tiny float64 model around one layer type, trained with
tdakit; each cell attributes two queries with that method.

- **yes**: finite scores (for the hook products, equal to the flat torch.func products to 1e-8).
- **exclude**: refused with a `ModelError` naming the layer; the fix it suggests
  (`curvature=tdakit.curvature.Kronecker(exclude=[...])`, or `exclude=[...]` for TRAK) then gives scores, the
  layer's parameters contributing 0.
- **no (Error)**: refused with that error and its message.

Dropout is off in tdakit's training (docs/your-own-model.md). LSTM and GRU take a per-example loop where torch.func
has no batching rule: the same numbers, slower.

{table}
"""


if __name__ == "__main__":
    print(PAGE.format(table=table()), end="")
