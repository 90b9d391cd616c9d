"""The data types every part of tdakit passes around: ``Split`` (examples and targets), ``Dataset`` (train, query
and test splits with what is known about units and pixels) and ``Scaler`` (standardized <-> original units)."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import store
from ..errors import DataNotFoundError, InputError, SettingError


def as_tensor(value, name: str) -> Tensor:
    """A torch tensor from a tensor, a numpy array, a pandas Series/DataFrame or a (nested) list; float
    precision and integer labels are kept as given. Raises InputError for text, objects or ragged lists."""
    if isinstance(value, Tensor):
        return value
    if hasattr(value, "to_numpy"):  # pandas, without importing it
        value = value.to_numpy()
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:
        raise InputError(f"{name} could not be read as an array ({err}); pass a torch tensor, a numpy array, "
                         "a pandas object or a list of equal-length rows") from err
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array.dtype.kind not in "iuf":
        raise InputError(f"{name} holds values of type {array.dtype} (text or objects); convert them to numbers "
                         "first (class names to 0..K-1 labels; tdakit.datasets.from_arrays does both)")
    return torch.as_tensor(array)


@dataclass(frozen=True)
class Split:
    """Examples x [n, *features] (real features, or token ids [n, L]) and targets y [n] (class labels 0..K-1, or
    real values), or integer targets [n, L] per position of a sequence (a language model's next tokens).

    x and y may be torch tensors, numpy arrays, pandas objects or lists; they are converted once, here.
    Targets shaped [n, 1] (a one-column table) become [n]; other shapes are refused rather than broadcast.
    """

    x: Tensor
    y: Tensor

    def __post_init__(self):
        x, y = as_tensor(self.x, "x"), as_tensor(self.y, "y")
        if x.dim() == 0 or y.dim() == 0:
            raise InputError(f"x and y need one row per example; got x of shape {tuple(x.shape)} and y of shape "
                             f"{tuple(y.shape)}")
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1 and not (y.dim() == 2 and not y.is_floating_point()):
            raise InputError(f"y must hold one target per example, shape [n] (or [n, 1]), or integer token targets "
                             f"[n, L] for a sequence; got {tuple(y.shape)}. tdakit attributes one real target "
                             "(Regression) or one class label (Classification) per example")
        if x.shape[0] != y.shape[0]:
            raise InputError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; pass one target per example")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index) -> Split:
        return Split(self.x[index], self.y[index])

    def to(self, dtype: torch.dtype | None = None, device=None) -> Split:
        """Cast floating features and targets to ``dtype`` (integer ones, such as token ids and class labels, keep
        theirs); move both to ``device``."""
        x_dtype = dtype if self.x.is_floating_point() else None
        y_dtype = dtype if self.y.is_floating_point() else None
        return Split(self.x.to(device=device, dtype=x_dtype), self.y.to(device=device, dtype=y_dtype))

    def fingerprint(self) -> str:
        """Content hash of the examples and targets (used in cache keys; ``store.digest``)."""
        return store.digest(self.x, self.y)


def check_split(value, name: str) -> Split:
    """``value`` if it is a Split, else an InputError that says how to wrap it."""
    if not isinstance(value, Split):
        raise InputError(f"{name} must be a tdakit.Split(x, y), got {type(value).__name__}; wrap tensors, arrays "
                         f"or pandas objects as tdakit.Split(x, y)")
    return value


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
    kind: str  # "regression", "classification" or "language_model"
    train: Split
    query: Split
    test: Split
    scaler: Scaler | None = None
    feature_names: tuple[str, ...] = ()
    feature_scalers: tuple[Scaler, ...] = ()  # per feature, standardized -> original units (tabular data)
    image_shape: tuple[int, ...] = ()  # (H, W) for images stored flattened or not; (C, H, W) for colour
    channel_scalers: tuple[Scaler, ...] = ()  # per colour channel, standardized -> [0, 1] pixel values
    class_names: tuple[str, ...] = ()
    vocabulary: Any = None  # text: the ``datasets.text.Vocabulary`` mapping token ids to words

    def texts(self, x: Tensor) -> list[str]:
        """Token ids [n, L] -> one string per row (padding left out); only for text datasets."""
        if self.vocabulary is None:
            raise SettingError(f"{self.name} is not a text dataset (it has no vocabulary)")
        return [self.vocabulary.decode(row) for row in x]

    def features_standardized(self, x) -> Tensor:
        """New tabular inputs [n, F] in original units -> the standardized features the model takes (the same
        map as the training split's, fitted on it); unchanged when no scalers are known."""
        x = as_tensor(x, "x").double()
        if not self.feature_scalers:
            return x.float()
        if x.dim() != 2 or x.shape[1] != len(self.feature_scalers):
            raise InputError(f"{self.name} has {len(self.feature_scalers)} features; got inputs of shape "
                             f"{tuple(x.shape)}")
        mean = torch.tensor([s.mean for s in self.feature_scalers], dtype=torch.float64)
        std = torch.tensor([s.std for s in self.feature_scalers], dtype=torch.float64)
        return ((x - mean) / std).to(self.train.x.dtype)

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


def unpack_tar(archive: str | Path, root: Path, place: Callable[[Path], None]) -> None:
    """Extract a tar archive into a temporary folder inside ``root`` and let ``place(folder)`` move what it needs
    into ``root``; the rest goes with the temporary folder, so an interruption leaves nothing that looks like data.
    Errors name the archive when it is missing or not a tar archive."""
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise DataNotFoundError(f"archive {archive} not found")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.TarError as err:
            raise DataNotFoundError(f"{archive} is not a tar archive ({err})") from err
        place(Path(tmp))


def data_root() -> Path:
    """Where folder datasets are looked for by default: $TDAKIT_DATA, else ~/.cache/tdakit/data."""
    return Path(os.environ.get("TDAKIT_DATA", Path.home() / ".cache" / "tdakit" / "data"))
