"""Datasets that ship with tdakit, split and standardized the way the paper does it.

``load("concrete")`` reads the embedded UCI Concrete CSV (credits in data/CREDITS.md), standardizes
features and target with training statistics, and returns a seeded 896 train / 103 query split (the
remaining 31 rows are kept as ``test``). Targets stay standardized for training; ``scaler`` maps
predictions and measurements back to MPa.

``load("mnist5k")`` reads the embedded class-balanced 5000-image MNIST subset: a seeded, class-stratified
4000 train / 100 query split (the other 900 images are ``test``; each part stays in file order, which
is sorted by digit, so take smaller training sets with ``balanced_subset``), pixels scaled to [0, 1] and
standardized with the training mean and std, images flattened to 784 features (``flatten=False`` keeps
[n, 1, 28, 28] for convolutional models). ``mnist_folder(root)`` reads the full MNIST from a local folder
in torchvision's layout (``root/MNIST/raw/*-ubyte[.gz]``) and never downloads unless asked.

``cifar10_folder(root)`` reads CIFAR-10 from a local folder (torchvision's python batches or an image
folder, see ``cifar``): a seeded class-balanced training subset (the paper's 3,072 images by default, or
all 50,000), queries and test images from the official test split, colour images [n, 3, 32, 32]
standardized per channel with the training subset's statistics.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import store
from ..errors import DataNotFoundError, InputError, SettingError

__all__ = ["Split", "Dataset", "Scaler", "load", "available", "mnist_folder", "mnist_arrays", "with_label_noise",
           "rotated", "balanced_subset", "balanced_parts", "cifar10_folder",
           "data_root"]


@dataclass(frozen=True)
class Split:
    """Examples x [n, *features] and targets y [n]."""

    x: Tensor
    y: Tensor

    def __post_init__(self):
        if self.x.shape[0] != self.y.shape[0]:
            raise InputError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index) -> Split:
        return Split(self.x[index], self.y[index])

    def to(self, dtype: torch.dtype | None = None, device=None) -> Split:
        """Cast features (and floating targets) to ``dtype``; move both to ``device``."""
        y_dtype = dtype if self.y.is_floating_point() else None
        return Split(self.x.to(device=device, dtype=dtype), self.y.to(device=device, dtype=y_dtype))

    def fingerprint(self) -> str:
        """Content hash of the examples and targets (used in cache keys; ``store.digest``)."""
        return store.digest(self.x, self.y)


@dataclass(frozen=True)
class Scaler:
    """Affine map between standardized and original target units: original = mean + std * value."""

    mean: float
    std: float
    unit: str = ""

    def to_original(self, value):
        return self.mean + self.std * value

    def scale(self, difference):
        """Convert a difference (e.g. a score or an error change) to original units."""
        return self.std * difference


@dataclass(frozen=True)
class Dataset:
    """A named dataset: ``train`` to train on, ``query`` to attribute, ``test`` left over."""

    name: str
    kind: str  # "regression" or "classification"
    train: Split
    query: Split
    test: Split
    scaler: Scaler | None = None
    feature_names: tuple[str, ...] = ()
    feature_scalers: tuple[Scaler, ...] = ()  # per feature, standardized -> original units (tabular data)
    image_shape: tuple[int, ...] = ()  # (H, W) for images stored flattened or not; (C, H, W) for colour
    channel_scalers: tuple[Scaler, ...] = ()  # per colour channel, standardized -> [0, 1] pixel values
    class_names: tuple[str, ...] = ()

    def features_original(self, x: Tensor) -> Tensor:
        """Tabular features [n, F] back in their original units (unchanged when no scalers are known)."""
        if not self.feature_scalers:
            return x
        mean = torch.tensor([s.mean for s in self.feature_scalers], dtype=torch.float64)
        std = torch.tensor([s.std for s in self.feature_scalers], dtype=torch.float64)
        return mean + std * x.double()

    def pixels(self, x: Tensor) -> Tensor:
        """Colour images [n, C, H, W] (standardized) -> displayable pixels [n, H, W, C] in [0, 1]."""
        if not self.channel_scalers:
            raise SettingError(f"{self.name} has no colour channels to restore")
        mean = torch.tensor([s.mean for s in self.channel_scalers], dtype=torch.float32)
        std = torch.tensor([s.std for s in self.channel_scalers], dtype=torch.float32)
        return (x.float().cpu().movedim(1, -1) * std + mean).clamp(0, 1)


def _concrete(seed: int, n_train: int = 896, n_query: int = 103) -> Dataset:
    path = resources.files("tdakit.datasets") / "data" / "concrete.csv"
    with path.open() as f:
        header = f.readline().strip().split(",")
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if n_train + n_query > len(table):
        raise SettingError(f"concrete has {len(table)} rows; n_train + n_query = {n_train + n_query}")
    order = np.random.default_rng(seed).permutation(len(table))
    train_rows, query_rows = order[:n_train], order[n_train:n_train + n_query]
    test_rows = order[n_train + n_query:]
    features, target = table[:, :-1], table[:, -1]
    mu, sd = features[train_rows].mean(0), features[train_rows].std(0)
    t_mu, t_sd = target[train_rows].mean(), target[train_rows].std()

    def split(rows) -> Split:
        x = torch.tensor((features[rows] - mu) / sd, dtype=torch.float32)
        y = torch.tensor((target[rows] - t_mu) / t_sd, dtype=torch.float32)
        return Split(x, y)

    return Dataset("concrete", "regression", split(train_rows), split(query_rows), split(test_rows),
                   Scaler(float(t_mu), float(t_sd), "MPa"), tuple(header[:-1]),
                   tuple(Scaler(float(m), float(d)) for m, d in zip(mu, sd, strict=True)))


def _stratified(labels: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Split indices into len(sizes) disjoint parts (the rest is the last part), each class spread
    evenly over the parts; seeded."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within
    rank = np.empty(len(labels))
    for c in np.unique(labels):  # position within its class, as a fraction: interleaves the classes
        members = order[labels[order] == c]
        rank[members] = (np.arange(len(members)) + rng.random()) / len(members)
    interleaved = np.argsort(rank, kind="stable")
    bounds = np.cumsum((0, *sizes))
    parts = [np.sort(interleaved[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return [*parts, np.sort(interleaved[bounds[-1]:])]


def _images_dataset(name: str, images: np.ndarray, labels: np.ndarray, parts: list[np.ndarray],
                    flatten: bool) -> Dataset:
    """uint8 images [n, H, W] -> standardized float32 features; labels -> int64."""
    train_pixels = images[parts[0]].astype(np.float64) / 255.0
    mu, sd = float(train_pixels.mean()), float(train_pixels.std())

    def split(rows) -> Split:
        x = torch.tensor((images[rows].astype(np.float32) / 255.0 - mu) / sd, dtype=torch.float32)
        x = x.reshape(len(rows), -1) if flatten else x[:, None]
        return Split(x, torch.tensor(labels[rows], dtype=torch.int64))

    return Dataset(name, "classification", split(parts[0]), split(parts[1]), split(parts[2]),
                   image_shape=tuple(images.shape[1:]))


def _mnist5k(seed: int, n_train: int = 4000, n_query: int = 100, flatten: bool = True) -> Dataset:
    path = resources.files("tdakit.datasets") / "data" / "mnist5k.npz"
    with path.open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    if n_train + n_query > len(labels):
        raise SettingError(f"mnist5k has {len(labels)} images; n_train + n_query = {n_train + n_query}")
    return _images_dataset("mnist5k", images, labels, _stratified(labels, (n_train, n_query), seed), flatten)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 8:
        raise DataNotFoundError(f"{path} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * d:8 + 4 * d], "big") for d in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist_arrays(root: str | Path, train: bool = True, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Full MNIST from a local folder in torchvision's layout: images uint8 [n, 28, 28], labels [n].

    Looks for ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or ``.gz``). With
    ``download=True`` and no files there, asks torchvision to download (needs it installed and a
    network); by default nothing is ever downloaded.
    """
    raw = Path(root).expanduser() / "MNIST" / "raw"
    prefix = "train" if train else "t10k"

    def find(stem: str) -> Path | None:
        return next((p for p in (raw / stem, raw / f"{stem}.gz") if p.exists()), None)

    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if download and any(find(s) is None for s in stems):
        try:
            from torchvision.datasets import MNIST
        except ImportError as e:
            raise ImportError("download=True needs torchvision (pip install torchvision)") from e
        MNIST(str(Path(root).expanduser()), train=train, download=True)
    found = [find(s) for s in stems]
    if None in found:
        missing = [s for s, p in zip(stems, found, strict=True) if p is None]
        raise DataNotFoundError(
            f"MNIST files {missing} not found under {raw}; put torchvision's MNIST there (e.g. "
            f"torchvision.datasets.MNIST({str(root)!r}, download=True) on a machine that is online) or "
            "call with download=True")
    images, labels = _read_idx(found[0]), _read_idx(found[1]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise DataNotFoundError(f"MNIST files under {raw} disagree: images {images.shape}, labels {labels.shape}")
    return images, labels


def mnist_folder(root: str | Path, seed: int = 0, n_train: int = 6144, n_query: int = 100,
                 flatten: bool = True, download: bool = False) -> Dataset:
    """A seeded split of the full MNIST training set read from ``root`` (see ``mnist_arrays``):
    n_train train / n_query query / the rest as test, standardized like ``load("mnist5k")``."""
    images, labels = mnist_arrays(root, train=True, download=download)
    if n_train + n_query > len(labels):
        raise SettingError(f"MNIST under {root} has {len(labels)} images; n_train + n_query = {n_train + n_query}")
    return _images_dataset("mnist", images, labels, _stratified(labels, (n_train, n_query), seed), flatten)


def data_root() -> Path:
    """Where folder datasets are looked for by default: $TDAKIT_DATA, else ~/.cache/tdakit/data."""
    return Path(os.environ.get("TDAKIT_DATA", Path.home() / ".cache" / "tdakit" / "data"))


def cifar10_folder(root: str | Path, seed: int = 0, n_train: int | None = 3072, n_query: int = 100,
                   n_test: int = 1000, download: bool = False, progress: bool = True) -> Dataset:
    """CIFAR-10 from a local folder (see ``cifar``): a seeded class-balanced training subset of n_train images
    (None: all 50,000), n_query queries and n_test test images drawn class-balanced from the official test
    split. x: float32 [n, 3, 32, 32], standardized per channel with the training subset's mean and std
    (``Dataset.pixels`` undoes it); y: int64 classes (``class_names``). Downloads only with download=True;
    progress: a bar while image files are decoded."""
    from . import cifar

    train_source = cifar.source(root, train=True, download=download)
    test_source = cifar.source(root, train=False)
    n_train = len(train_source) if n_train is None else n_train
    if not 0 < n_train <= len(train_source):
        raise SettingError(f"n_train must lie in 1..{len(train_source)}, got {n_train}")
    if n_query < 1 or n_test < 0 or n_query + n_test > len(test_source):
        raise SettingError(f"n_query + n_test must lie in 1..{len(test_source)} (the test split), got "
                         f"{n_query} + {n_test}")
    train_rows = (np.arange(len(train_source)) if n_train == len(train_source)
                  else _stratified(train_source.labels, (n_train,), seed)[0])
    query_rows, test_rows, _ = _stratified(test_source.labels, (n_query, n_test), seed)
    train_pixels = train_source.images(train_rows, progress).astype(np.float32) / 255.0  # [n, H, W, 3]
    mu = train_pixels.reshape(-1, 3).mean(0, dtype=np.float64)
    sd = train_pixels.reshape(-1, 3).std(0, dtype=np.float64)

    def split(pixels: np.ndarray, labels: np.ndarray) -> Split:
        x = (pixels.astype(np.float32) - mu.astype(np.float32)) / sd.astype(np.float32)
        return Split(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                     torch.as_tensor(labels, dtype=torch.int64))

    def from_test(rows: np.ndarray) -> Split:
        return split(test_source.images(rows, progress).astype(np.float32) / 255.0, test_source.labels[rows])

    return Dataset("cifar10", "classification", split(train_pixels, train_source.labels[train_rows]),
                   from_test(query_rows), from_test(test_rows), image_shape=(3, *train_pixels.shape[1:3]),
                   channel_scalers=tuple(Scaler(float(m), float(d)) for m, d in zip(mu, sd, strict=True)),
                   class_names=cifar.CLASSES)


def balanced_subset(split: Split, n: int, seed: int = 0) -> Split:
    """n examples of a classification split with the classes as equal as possible, seeded. Use it
    instead of a prefix: ``load("mnist5k")`` keeps each part in file order, which is sorted by digit."""
    if not 0 < n <= len(split):
        raise SettingError(f"n must lie in 1..{len(split)}, got {n}")
    return balanced_parts(split, (n,), seed)[0]


def balanced_parts(split: Split, sizes: tuple[int, ...], seed: int = 0) -> list[Split]:
    """Disjoint parts of a classification split with the given sizes, each with the classes as equal as
    possible (seeded): e.g. the data of the stages of a continual-learning pipeline. Slicing one balanced
    subset does not do this: parts keep file order, so consecutive slices hold different digits."""
    if split.y.is_floating_point():
        raise InputError("balanced parts need integer class labels; use split.subset(...) for regression")
    if any(n <= 0 for n in sizes) or sum(sizes) > len(split):
        raise SettingError(f"sizes must be positive and sum to at most {len(split)}, got {tuple(sizes)}")
    parts = _stratified(split.y.cpu().numpy(), tuple(sizes), seed)[:len(sizes)]
    return [split.subset(torch.as_tensor(rows)) for rows in parts]


def with_label_noise(split: Split, fraction: float, classes: int, seed: int = 0) -> tuple[Split, Tensor]:
    """A copy of ``split`` with round(fraction * n) labels replaced by a uniformly drawn *different*
    class (seeded). Returns (noisy split, bool mask [n] of the changed points)."""
    if not 0.0 <= fraction <= 1.0:
        raise SettingError(f"fraction must lie in [0, 1], got {fraction}")
    if split.y.is_floating_point():
        raise InputError("label noise needs integer class labels")
    g = torch.Generator().manual_seed(seed)
    n = len(split)
    changed = torch.zeros(n, dtype=torch.bool)
    changed[torch.randperm(n, generator=g)[:round(fraction * n)]] = True
    shift = torch.randint(1, classes, (n,), generator=g)  # never the original class
    y = torch.where(changed, (split.y + shift) % classes, split.y)
    return Split(split.x, y), changed


def rotated(split: Split, degrees: float, side: int = 28) -> Split:
    """Images rotated counter-clockwise by ``degrees`` about their centre (bilinear, zero padding in the
    standardized units' background value). x: [n, side*side] or [n, 1, side, side]; same shape back."""
    flat = split.x.dim() == 2
    images = split.x.reshape(-1, 1, side, side) if flat else split.x
    background = float(images.amin())
    angle = torch.tensor(degrees * torch.pi / 180.0, dtype=torch.float64)
    c, s = float(torch.cos(angle)), float(torch.sin(angle))
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=images.dtype).expand(len(images), 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(images - background, grid, align_corners=False) + background
    return Split(out.reshape(split.x.shape), split.y)


_LOADERS = {"concrete": _concrete, "mnist5k": _mnist5k}


def available() -> list[str]:
    """Names accepted by ``load``."""
    return sorted(_LOADERS)


def load(name: str, seed: int = 0, **kwargs) -> Dataset:
    """Load an embedded dataset by name, split with ``seed`` (same seed, same split)."""
    if name not in _LOADERS:
        raise SettingError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _LOADERS[name](seed, **kwargs)
