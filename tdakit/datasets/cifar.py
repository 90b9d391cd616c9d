"""CIFAR-10 from a local folder, without torchvision.

Two layouts are read, found under ``root`` (or ``root`` itself):

- torchvision's python format: ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch`` (pickled dicts
  with ``data`` uint8 [10000, 3072], channels first, and ``labels``);
- an image folder: ``train/<class>/*.png|jpg`` and ``test/<class>/...`` (classes in sorted order; Pillow
  reads the images). Only the images a split needs are decoded.

Nothing is downloaded unless ``download=True`` is passed (then the official python-format archive is
fetched into ``root``, which needs a network).
"""

from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataNotFoundError
from .core import unpack_tar

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
PICKLE_FOLDER = "cifar-10-batches-py"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class Source:
    """One split of a CIFAR-10 folder: every label known up front, images read on demand."""

    def __init__(self, labels: np.ndarray, read):
        self.labels = labels
        self._read = read

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, rows: np.ndarray, progress: bool = False) -> np.ndarray:
        """uint8 [len(rows), H, W, 3] in ``rows`` order (a progress bar while image files are decoded)."""
        return self._read(np.asarray(rows), progress)


def find(root: str | Path, download: bool = False) -> Path:
    """The folder that holds a CIFAR-10 layout under ``root``: ``root/cifar-10-batches-py``, ``root`` with
    ``train/`` and ``test/`` class folders, or ``root`` itself in either layout."""
    root = Path(root).expanduser()
    candidates = [root / PICKLE_FOLDER, root]
    for folder in candidates:
        if (folder / "data_batch_1").is_file() or (folder / "train").is_dir():
            return folder
    if download:
        fetch(root)
        return root / PICKLE_FOLDER
    raise DataNotFoundError(
        f"no CIFAR-10 found under {root}: expected {root / PICKLE_FOLDER}/data_batch_1..5 and test_batch "
        f"(torchvision's python format) or {root}/train/<class>/*.png|jpg and {root}/test/<class>/... (an image "
        "folder). Put one there, or pass download=True on a machine that is online")


def fetch(root: Path) -> None:
    """Download and unpack the official python-format archive into root (atomically: a partial download
    never looks like data)."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        try:
            urllib.request.urlretrieve(URL, archive)  # noqa: S310 (a fixed https URL)
        except OSError as err:
            raise OSError(f"could not download CIFAR-10 from {URL} ({err}); download it on a machine that is "
                          f"online and unpack it into {root}") from err
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(Path(tmp) / PICKLE_FOLDER, root / PICKLE_FOLDER)


def unpack(archive: str | Path, root: str | Path) -> Path:
    """Unpack a tar archive holding a CIFAR-10 layout (an image folder or the python batches) into ``root``,
    atomically; does nothing when ``root`` already holds CIFAR-10. Returns the CIFAR-10 folder."""
    root = Path(root).expanduser()
    try:
        return find(root)
    except DataNotFoundError:
        pass

    def place(unpacked: Path) -> None:
        try:
            found = find(unpacked)
        except DataNotFoundError as err:
            raise DataNotFoundError(f"{archive} holds no CIFAR-10 layout: {err}") from err
        for entry in ([found] if found.name == PICKLE_FOLDER else [found / "train", found / "test"]):
            os.replace(entry, root / entry.name)

    unpack_tar(archive, root, place)
    return find(root)


def source(root: str | Path, train: bool = True, download: bool = False) -> Source:
    """The train (50,000) or test (10,000) split of the CIFAR-10 folder under root."""
    folder = find(root, download)
    if (folder / "data_batch_1").is_file():
        return _pickled(folder, train)
    return _image_folder(folder / ("train" if train else "test"))


def _pickled(folder: Path, train: bool) -> Source:
    names = [f"data_batch_{b}" for b in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataNotFoundError(f"{path} is missing: torchvision's CIFAR-10 python format has data_batch_1..5 "
                                    "and test_batch")
        with open(path, "rb") as f:
            try:
                batch = pickle.load(f, encoding="bytes")
            except Exception as err:  # a truncated or foreign file
                raise DataNotFoundError(f"{path} is not a CIFAR-10 python batch (unpickling failed: {err})") from err
        data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
        found = batch.get(b"labels", batch.get("labels")) if isinstance(batch, dict) else None
        if data is None or found is None:
            raise DataNotFoundError(f"{path} is not a CIFAR-10 python batch: expected a dict with 'data' and 'labels'")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(found):
            raise DataNotFoundError(f"{path}: 'data' has shape {data.shape} and {len(found)} labels; expected "
                             "[n, 3072] uint8 (3 x 32 x 32, channels first) and n labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(found, dtype=np.int64))
    pixels, targets = np.concatenate(images), np.concatenate(labels)
    if targets.min() < 0 or targets.max() >= len(CLASSES):
        raise DataNotFoundError(f"labels under {folder} lie outside 0..9")
    return Source(targets, lambda rows, progress: pixels[rows])


def _image_folder(split: Path) -> Source:
    if not split.is_dir():
        raise DataNotFoundError(f"{split} is missing: the image-folder layout has train/<class>/ and test/<class>/")
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    if not classes:
        raise DataNotFoundError(f"{split} has no class folders; expected {split}/<class>/*.png|jpg, e.g. {split}/cat/")
    files, labels = [], []
    for c, name in enumerate(classes):
        found = sorted(p for p in (split / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [c] * len(found)
    if not files:
        raise DataNotFoundError(f"no .png or .jpg images in the class folders of {split}")

    def read(rows: np.ndarray, progress: bool) -> np.ndarray:
        from PIL import Image

        out = []
        for r in tqdm(rows, desc=f"read {split.name} images", disable=not progress, leave=False):
            with Image.open(files[r]) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            if out and pixels.shape != out[0].shape:
                raise DataNotFoundError(f"{files[r]} is {pixels.shape[1]}x{pixels.shape[0]} but {files[rows[0]]} is "
                                 f"{out[0].shape[1]}x{out[0].shape[0]}: all images must have one size")
            out.append(pixels)
        return np.stack(out) if out else np.zeros((0, 32, 32, 3), np.uint8)

    return Source(np.asarray(labels, dtype=np.int64), read)
