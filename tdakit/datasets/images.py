"""Image datasets: the embedded 5000-image MNIST subset, full MNIST and CIFAR-10 from local folders (never
downloaded unless asked), split class-stratified and seeded, standardized with the training images' statistics."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..errors import DataNotFoundError, SettingError
from . import cifar
from .core import Dataset, Scaler, Split


def stratified(labels: np.ndarray, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
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


def mnist5k(seed: int, n_train: int = 4000, n_query: int = 100, flatten: bool = True) -> Dataset:
    path = resources.files("tdakit.datasets") / "data" / "mnist5k.npz"
    with path.open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    if n_train + n_query > len(labels):
        raise SettingError(f"mnist5k has {len(labels)} images; n_train + n_query = {n_train + n_query}")
    return _images_dataset("mnist5k", images, labels, stratified(labels, (n_train, n_query), seed), flatten)


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
    return _images_dataset("mnist", images, labels, stratified(labels, (n_train, n_query), seed), flatten)


def cifar10_folder(root: str | Path, seed: int = 0, n_train: int | None = 3072, n_query: int = 100,
                   n_test: int = 1000, download: bool = False, progress: bool = True) -> Dataset:
    """CIFAR-10 from a local folder (see ``cifar``): a seeded class-balanced training subset of n_train images
    (None: all 50,000), n_query queries and n_test test images drawn class-balanced from the official test
    split. x: float32 [n, 3, 32, 32], standardized per channel with the training subset's mean and std
    (``Dataset.pixels`` undoes it); y: int64 classes (``class_names``). Downloads only with download=True;
    progress: a bar while image files are decoded."""
    train_source = cifar.source(root, train=True, download=download)
    test_source = cifar.source(root, train=False)
    n_train = len(train_source) if n_train is None else n_train
    if not 0 < n_train <= len(train_source):
        raise SettingError(f"n_train must lie in 1..{len(train_source)}, got {n_train}")
    if n_query < 1 or n_test < 0 or n_query + n_test > len(test_source):
        raise SettingError(f"n_query + n_test must lie in 1..{len(test_source)} (the test split), got "
                         f"{n_query} + {n_test}")
    train_rows = (np.arange(len(train_source)) if n_train == len(train_source)
                  else stratified(train_source.labels, (n_train,), seed)[0])
    query_rows, test_rows, _ = stratified(test_source.labels, (n_query, n_test), seed)
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
