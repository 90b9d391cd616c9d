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

``sst2_folder(root)`` and ``wikitext2_folder(root)`` read SST-2 (GLUE's tsv files) and WikiText-2 (raw token
files) from a local folder, with a word vocabulary built from the training split (``text``): token ids [n, L].

Your own data: ``Split(x, y)`` wraps tensors, numpy arrays or pandas objects; ``from_arrays(x, y, task)`` and
``from_csv(path, target, task)`` make a seeded train/query/test Dataset from a table, standardized with the
training rows only (``Dataset.features_standardized`` applies the same map to new rows).
"""

from __future__ import annotations

from ..errors import SettingError
from .core import Dataset, Scaler, Split, as_tensor, data_root
from .images import cifar10_folder, mnist5k, mnist_arrays, mnist_folder
from .own import from_arrays, from_csv
from .tabular import concrete
from .text import Vocabulary, sst2_folder, wikitext2_folder
from .transforms import balanced_parts, balanced_subset, rotated, with_label_noise

__all__ = ["Split", "Dataset", "Scaler", "as_tensor", "from_arrays", "from_csv",
           "load", "available", "mnist_folder", "mnist_arrays", "with_label_noise",
           "rotated", "balanced_subset", "balanced_parts", "cifar10_folder", "data_root", "sst2_folder",
           "wikitext2_folder", "Vocabulary"]


_LOADERS = {"concrete": concrete, "mnist5k": mnist5k}


def available() -> list[str]:
    """Names accepted by ``load``."""
    return sorted(_LOADERS)


def load(name: str, seed: int = 0, **kwargs) -> Dataset:
    """Load an embedded dataset by name, split with ``seed`` (same seed, same split)."""
    if name not in _LOADERS:
        raise SettingError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _LOADERS[name](seed, **kwargs)
