"""The paper's settings, written once: data, model, task, recipe, checkpoints and the methods to compare.

The demo, every benchmark and every notebook start from a preset, so a setting means the same thing
everywhere (docs/experiments.md lists them). ``preset("concrete").train()`` trains its run;
``.methods()`` names the method configurations the experiment runner compares on it.

- concrete: UCI Concrete, 896 train / 103 queries; MLP 3 x 128; SGD momentum 0.9, lr 3e-2, weight decay
  1e-5, batch 32, 20 epochs (560 steps); exact Gauss-Newton curvature; trained in float64 (in float32 its 560
  steps amplify another CPU's rounding into different runs).
- concrete_narrow: the same data and recipe with an MLP 2 x 32; full Hessian, negative eigenvalues clipped;
  float64.
- mnist: the embedded 4000-image MNIST subset, 100 queries; MLP 512-256-128; SGD momentum 0.9, lr 3e-2,
  weight decay 1e-3, batch 64, 20 epochs (1260 steps); EK-FAC.
- noisy_mnist: the same images with 30% random labels; lr 1e-2, weight decay 3e-5, 3 epochs (189 steps):
  not converged; EK-FAC.
- rotated_mnist: continual learning, three disjoint class-balanced parts (2000, 1000, 1000) at 0, 45 and
  90 degrees trained in stages; lr 1e-2, weight decay 1e-3, 3 epochs per stage; EK-FAC.
- cifar10: CIFAR-10 from a local folder (``data(root=...)``, default $TDAKIT_DATA or ~/.cache/tdakit/data),
  the paper's 3,072-image class-balanced subset and 100 queries; ResNet-9 (6.57M parameters, BatchNorm);
  SGD momentum 0.9, a triangular cyclic rate peaking at 0.4 after a fifth of training, weight decay 1e-3,
  batch 512, 25 epochs (150 steps); EK-FAC. cifar10_full: the same on all 50,000 training images.
- cifar10_cpu: the same pipeline shrunk for a CPU: 256 images, ResNet-9 of width 8 (104k parameters),
  batch 64, 8 epochs (32 steps), in float64: 32 steps at rate 0.4 are chaotic in float32 (another CPU's
  float path moves the trained parameters far), while in float64 runs on different paths agree to round-off
  (``benchmarks/float_path_chaos.py``, BENCHMARKS.md), so its figures are the same on every machine.
- sst2: SST-2 sentiment from a local folder (GLUE's tsv files): 5,000 class-balanced training phrases, 100
  balanced queries from dev.tsv; a one-block Transformer classifier (width 32, 3,000 words, 32 tokens); SGD
  momentum 0.9, a triangular rate peaking at 0.1, weight decay 1e-4, batch 32, 20 epochs; EK-FAC with the
  embeddings left out; the margin in nats.
- wikitext2: WikiText-2 from a local folder: 1,000 passages of 32 tokens from valid.txt (test.txt for queries);
  a one-block causal language model (width 32, 2,000 words); peak rate 0.5, 10 epochs; EK-FAC with the
  sampled Fisher, the embeddings left out; the passage's log-probability in nats.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from . import datasets
from .curvature import Kronecker
from .datasets import Dataset, Split
from .errors import SettingError
from .experiment import Method
from .recipe import Checkpoints, Recipe
from .stages import Stage, StagedRun, train_stages
from .task import Classification, LanguageModeling, Regression, Task
from .text_models import CausalLM, TransformerClassifier
from .training import Run, train
from .zoo import mlp, resnet9


def paper_methods(curvature) -> dict[str, Method]:
    """The comparison every preset runs by default, labelled as tables and plots show them."""
    return {
        "influence": Method("influence", curvature=curvature),
        "SOURCE (L=3, C=6)": Method("source", segments=3, curvature=curvature),
        "Fast-SOURCE (L=3)": Method("fast_source", segments=3, curvature=curvature),
        "TracIn": Method("tracin"),
        "TRAK": Method("trak"),
    }


@dataclass(frozen=True)
class Preset:
    """One of the paper's single-run settings (see the module docstring)."""

    name: str
    dataset: str
    hidden: tuple[int, ...]
    task: Task
    recipe: Recipe
    curvature: str
    label_noise: float | None = None
    checkpoints: int = 6
    description: str = ""
    architecture: str = "mlp"  # "mlp" (hidden widths) or "resnet9" (width hidden[0])
    n_train: int | None = None  # folder datasets: training images to draw (None: all)
    dtype: torch.dtype = torch.float32  # what train() trains in unless told otherwise

    def data(self, seed: int = 0, root=None, download: bool = False, progress: bool = True) -> Dataset:
        """The dataset (standardized; with the preset's label noise applied to the training split).
        CIFAR-10 is read from ``root`` (default: ``datasets.data_root()``), downloaded only if asked."""
        if self.dataset == "cifar10":
            return datasets.cifar10_folder(root or datasets.data_root(), seed=seed, n_train=self.n_train,
                                           download=download, progress=progress)
        data = datasets.load(self.dataset, seed=seed)
        if self.label_noise:
            noisy, _ = datasets.with_label_noise(data.train, self.label_noise, classes=10, seed=seed)
            data = dataclasses.replace(data, train=noisy)
        return data

    def model(self, in_features: int) -> nn.Module:
        """A fresh model for inputs with ``in_features`` features (channels for images)."""
        outputs = 10 if isinstance(self.task, Classification) else 1
        if self.architecture == "resnet9":
            return resnet9(outputs, in_features, width=self.hidden[0])
        return mlp(in_features, self.hidden, outputs)

    def train(self, data: Dataset | None = None, seed: int = 0, n_train: int | None = None,
              progress: bool = True, cache=True, placement: str = "middle", device=None,
              dtype: torch.dtype | None = None) -> Run:
        """The recorded run of this setting (recipe seed ``seed``; the first ``n_train`` training points,
        class-balanced for images), trained on ``device`` (default: where the data is; see
        ``hardware.default_device``) in ``dtype`` (default: the preset's). Every method and ground truth on the
        run then works there, in that dtype."""
        data = data or self.data()
        split = data.train if n_train is None else subset(data, n_train)
        if device is not None:
            split = split.to(device=device)
        recipe = dataclasses.replace(self.recipe, seed=seed)
        return train(self.model(split.x.shape[1]), split, recipe, self.task, progress=progress, cache=cache,
                     checkpoints=Checkpoints(self.checkpoints, placement), dtype=dtype or self.dtype)

    def methods(self) -> dict[str, Method]:
        return paper_methods(self.curvature)


@dataclass(frozen=True)
class StagedPreset:
    """A multi-stage setting: disjoint class-balanced parts of the training split, part s rotated by
    ``angles[s]`` and trained as stage s from the previous stage's final parameters."""

    name: str
    sizes: tuple[int, ...]
    angles: tuple[float, ...]
    hidden: tuple[int, ...]
    task: Task
    recipe: Recipe
    curvature: str
    checkpoints: int = 6
    description: str = ""

    def data(self, seed: int = 0) -> Dataset:
        return datasets.load("mnist5k", seed=seed)

    def stages(self, data: Dataset | None = None) -> list[Stage]:
        data = data or self.data()
        parts = datasets.balanced_parts(data.train, self.sizes, seed=0)
        return [Stage(datasets.rotated(part, a), dataclasses.replace(self.recipe, seed=s), name=f"{a:.0f} degrees")
                for s, (part, a) in enumerate(zip(parts, self.angles, strict=True))]

    def queries(self, data: Dataset | None = None, angles: tuple[float, ...] = (0.0, 90.0)) -> Split:
        """The query split rotated by each of ``angles``, concatenated: [len(angles) * Q] queries."""
        data = data or self.data()
        parts = [datasets.rotated(data.query, a) for a in angles]
        return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))

    def model(self) -> nn.Module:
        return mlp(784, self.hidden, 10)

    def train(self, data: Dataset | None = None, progress: bool = True, cache=True,
              placement: str = "middle") -> StagedRun:
        return train_stages(self.model(), self.stages(data), self.task, progress=progress, cache=cache,
                            checkpoints=Checkpoints(self.checkpoints, placement))

    def methods(self) -> dict[str, Method]:
        return {
            "SOURCE (L=3 per stage, C=6)": Method("source", segments=3, curvature=self.curvature),
            "Fast-SOURCE (L=3 per stage)": Method("fast_source", segments=3, curvature=self.curvature),
            "influence (final parameters, pooled data)": Method("influence", curvature=self.curvature),
            "TracIn": Method("tracin"),
        }


@dataclass(frozen=True)
class TextPreset:
    """A text setting: SST-2 sentences with a Transformer classifier, or WikiText-2 passages with a causal language
    model, from the data folder (``datasets.text``; put there by ``tdakit sst2|wikitext2 --archive FILE``)."""

    name: str
    dataset: str  # "sst2" or "wikitext2"
    task: Task
    recipe: Recipe
    n_train: int
    length: int
    width: int = 32
    heads: int = 2
    depth: int = 2
    vocab_size: int = 5000
    n_query: int = 100
    checkpoints: int = 6
    description: str = ""
    dtype: torch.dtype = torch.float32

    @property
    def curvature(self) -> Kronecker:
        """EK-FAC over the embeddings (a diagonal input factor), every Linear of the blocks and the head (LayerNorm
        left out: docs/text.md); a language model's Fisher sampled (one next token per position)."""
        fisher = "true" if isinstance(self.task, LanguageModeling) else "ggn"
        return Kronecker(fisher=fisher)

    def data(self, seed: int = 0, root=None, download: bool = False, progress: bool = True) -> Dataset:
        """The dataset from ``root`` (default: ``datasets.data_root()``), downloaded only if asked."""
        if self.dataset == "sst2":
            return datasets.sst2_folder(root, n_train=self.n_train, n_query=self.n_query, length=self.length,
                                        vocab_size=self.vocab_size, seed=seed, download=download)
        return datasets.wikitext2_folder(root, length=self.length, n_train=self.n_train, n_query=self.n_query,
                                         vocab_size=self.vocab_size, download=download)

    def model(self, vocabulary: int) -> nn.Module:
        """A fresh model for a vocabulary of that many ids."""
        if isinstance(self.task, LanguageModeling):
            return CausalLM(vocabulary, self.width, self.heads, self.depth, max_length=self.length)
        return TransformerClassifier(vocabulary, 2, self.width, self.heads, self.depth, max_length=self.length)

    def train(self, data: Dataset | None = None, seed: int = 0, progress: bool = True, cache=True,
              placement: str = "middle", device=None, dtype: torch.dtype | None = None) -> Run:
        """The recorded run (recipe seed ``seed``) on ``device`` in ``dtype`` (default: the preset's)."""
        data = data or self.data()
        split = data.train if device is None else data.train.to(device=device)
        return train(self.model(len(data.vocabulary)), split, dataclasses.replace(self.recipe, seed=seed), self.task,
                     progress=progress, cache=cache, checkpoints=Checkpoints(self.checkpoints, placement),
                     dtype=dtype or self.dtype)

    def methods(self) -> dict[str, Method]:
        return paper_methods(self.curvature)


TEXT_EMBEDDINGS = ("encoder.tokens", "encoder.positions")  # tdakit.text_models' embeddings, to leave them out


def subset(data: Dataset, n: int) -> Split:
    """The first n training points (class-balanced for classification: the split is in file order)."""
    if data.kind == "classification":
        return datasets.balanced_subset(data.train, n)
    return data.train.subset(slice(0, n))


# the paper's ResNet-9 recipe: a triangle peaking at 0.4 after a fifth of training
CIFAR_RECIPE = Recipe(lr=0.4, epochs=25, batch_size=512, momentum=0.9, weight_decay=1e-3, schedule="cyclic",
                      warmup=0.2)

PRESETS: dict[str, Preset | StagedPreset | TextPreset] = {
    "concrete": Preset(
        "concrete", "concrete", (128, 128, 128), Regression(),
        Recipe(lr=3e-2, epochs=20, batch_size=32, momentum=0.9, weight_decay=1e-5), curvature="ggn",
        description="the paper's MLP 3 x 128 and recipe (560 steps), exact Gauss-Newton curvature; float64, so "
                    "that every CPU trains the same run (BENCHMARKS.md, issue 19)", dtype=torch.float64),
    "concrete_narrow": Preset(
        "concrete_narrow", "concrete", (32, 32), Regression(),
        Recipe(lr=3e-2, epochs=20, batch_size=32, momentum=0.9, weight_decay=1e-5), curvature="hessian_clipped",
        description="UCI Concrete, a narrow MLP 2 x 32 (1,377 parameters: full Hessian, negative eigenvalues "
                    "clipped); float64", dtype=torch.float64),
    "mnist": Preset(
        "mnist", "mnist5k", (512, 256, 128), Classification(),
        Recipe(lr=3e-2, epochs=20, batch_size=64, momentum=0.9, weight_decay=1e-3), curvature="ekfac",
        description="MNIST (embedded 4000-image subset), the paper's MLP and recipe (1260 steps)"),
    "noisy_mnist": Preset(
        "noisy_mnist", "mnist5k", (512, 256, 128), Classification(),
        Recipe(lr=1e-2, epochs=3, batch_size=64, momentum=0.9, weight_decay=3e-5), curvature="ekfac",
        label_noise=0.3, description="MNIST with 30% random labels, 3 epochs: not converged (189 steps)"),
    "rotated_mnist": StagedPreset(
        "rotated_mnist", (2000, 1000, 1000), (0.0, 45.0, 90.0), (512, 256, 128), Classification(),
        Recipe(lr=1e-2, epochs=3, batch_size=64, momentum=0.9, weight_decay=1e-3), curvature="ekfac",
        description="continual learning: MNIST parts at 0, 45 and 90 degrees, trained in three stages"),
    "cifar10": Preset(
        "cifar10", "cifar10", (64,), Classification(),
        CIFAR_RECIPE,
        curvature="ekfac", architecture="resnet9", n_train=3072,
        description="CIFAR-10 (local folder), the paper's 3,072-image subset, ResNet-9 and recipe (150 steps)"),
    "cifar10_full": Preset(
        "cifar10_full", "cifar10", (64,), Classification(),
        CIFAR_RECIPE,
        curvature="ekfac", architecture="resnet9", n_train=None,
        description="CIFAR-10 (local folder), all 50,000 training images, ResNet-9 and the paper's recipe"),
    "cifar10_cpu": Preset(
        "cifar10_cpu", "cifar10", (8,), Classification(),
        dataclasses.replace(CIFAR_RECIPE, epochs=8, batch_size=64),
        curvature="ekfac", architecture="resnet9", n_train=256, dtype=torch.float64,
        description="CIFAR-10 shrunk for a CPU: 256 images, ResNet-9 of width 8, batch 64, 8 epochs (32 steps), "
                    "float64"),
    "sst2": TextPreset(
        "sst2", "sst2", Classification(),
        Recipe(lr=0.1, epochs=20, batch_size=32, momentum=0.9, weight_decay=1e-4, schedule="cyclic", warmup=0.2),
        n_train=5000, length=32, width=32, heads=2, depth=1, vocab_size=3000,
        description="SST-2 (local folder): 5,000 class-balanced training phrases, 100 balanced dev queries, a "
                    "one-block Transformer of width 32 (3,000-word vocabulary, 32 tokens), 3,140 steps"),
    "wikitext2": TextPreset(
        "wikitext2", "wikitext2", LanguageModeling(),
        Recipe(lr=0.5, epochs=10, batch_size=32, momentum=0.9, weight_decay=1e-4, schedule="cyclic", warmup=0.2),
        n_train=1000, length=32, width=32, heads=2, depth=1, vocab_size=2000, n_query=50,
        description="WikiText-2 (local folder): 1,000 passages of 32 tokens from valid.txt, 50 from test.txt, a "
                    "one-block causal language model of width 32 (2,000-word vocabulary), 320 steps"),
}


def preset(name: str) -> Preset | StagedPreset | TextPreset:
    """A named setting (see PRESETS)."""
    if name not in PRESETS:
        raise SettingError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
