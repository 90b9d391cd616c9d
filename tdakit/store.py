"""A small on-disk cache for expensive tensors (runs, ground truth), keyed by content.

Values are dicts of tensors saved with torch.save to a temporary file and moved into place with
os.replace, so an interrupted write never leaves a half-written entry: the next run recomputes it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import torch
from tqdm.auto import tqdm

VERSION = 3  # bump when the meaning of cached values changes


def default_dir() -> Path:
    """$TDAKIT_CACHE, else ~/.cache/tdakit."""
    return Path(os.environ.get("TDAKIT_CACHE", Path.home() / ".cache" / "tdakit"))


CacheSpec: TypeAlias = "bool | str | os.PathLike | None"


def folder(cache: CacheSpec) -> Path | None:
    """Where a ``cache=`` argument keeps things: True -> ``default_dir()``; False or None -> nowhere
    (recompute every time); a path -> that folder."""
    if cache is True:
        return default_dir()
    if cache is False or cache is None:
        return None
    return Path(cache)


def digest(*parts) -> str:
    """The one content hash of tdakit: tensors by dtype, shape and values, anything else by its repr (which must
    be deterministic: numbers, strings, tuples, frozen dataclasses of those). Stable across processes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(repr((str(part.dtype), tuple(part.shape))).encode())
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"\0")  # parts stay apart: ("ab", "c") is not ("a", "bc")
    return h.hexdigest()[:24]


def key_of(*parts) -> str:
    """A cache key: ``digest`` of the parts and the cache's format version."""
    return digest(VERSION, *parts)


def write_atomic(path: str | os.PathLike, write: Callable) -> None:
    """write(binary file) into a temporary file beside ``path``, then move it into place: readers never see
    a half-written file, and an interruption leaves the old one (or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~current_umask())  # as open() would create it (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_atomic(path: Path, value: dict) -> None:
    write_atomic(path, lambda f: torch.save(value, f))


def load(cache: CacheSpec, name: str, key: str) -> dict | None:
    """The entry saved under (name, key), or None when there is none (or it is unreadable: it is removed)."""
    where = folder(cache)
    if where is None:
        return None
    path = where / f"{name}-{key}.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt entry is simply recomputed
        path.unlink(missing_ok=True)
        return None


def save(cache: CacheSpec, name: str, key: str, value: dict) -> None:
    """Save value under (name, key), atomically; nothing when caching is off."""
    where = folder(cache)
    if where is not None:
        save_atomic(where / f"{name}-{key}.pt", value)


def notice(message: str) -> None:
    """One line for the user beside the progress bars, on stderr (callers say it only with progress=True)."""
    tqdm.write(message, file=sys.stderr)


def cached(cache: CacheSpec, name: str, key: str, compute: Callable[[], dict]) -> dict:
    """compute() once per key (``cache`` as in ``folder``). Unreadable entries are recomputed."""
    hit = load(cache, name, key)
    if hit is not None:
        return hit
    value = compute()
    save(cache, name, key, value)
    return value
