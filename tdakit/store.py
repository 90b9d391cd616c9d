"""A small on-disk cache for expensive tensors (runs, ground truth), keyed by content.

Values are dicts of tensors saved with torch.save to a temporary file and moved into place with
os.replace, so an interrupted write never leaves a half-written entry: the next run recomputes it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

VERSION = 2  # bump when the meaning of cached values changes


def default_dir() -> Path:
    """$TDAKIT_CACHE, else ~/.cache/tdakit."""
    return Path(os.environ.get("TDAKIT_CACHE", Path.home() / ".cache" / "tdakit"))


def key_of(*parts) -> str:
    """A short stable hash of anything with a deterministic repr."""
    return hashlib.sha256(repr((VERSION, *parts)).encode()).hexdigest()[:24]


def save_atomic(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(value, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached(cache: str | os.PathLike | None, name: str, key: str, compute: Callable[[], dict]) -> dict:
    """compute() once per key; None as cache disables caching. Unreadable entries are recomputed."""
    if cache is None:
        return compute()
    path = Path(cache) / f"{name}-{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt entry is simply recomputed
            path.unlink(missing_ok=True)
    value = compute()
    save_atomic(path, value)
    return value
