"""Ways to reshape a split: class-balanced subsets and disjoint parts (stages of a pipeline), label noise, and
rotated images; all seeded."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError, SettingError
from .core import Split
from .images import stratified


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
    parts = stratified(split.y.cpu().numpy(), tuple(sizes), seed)[:len(sizes)]
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
