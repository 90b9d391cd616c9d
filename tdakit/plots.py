"""Matplotlib figures for the things tdakit teaches. Each function draws on an Axes (or makes one)
and returns it; scores are in the measurement's units, in the one convention d f_q / d w_i."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from .curvature import functions
from .evaluation.metrics import Interval, predictions, spearman


def _axes(ax):
    return ax if ax is not None else plt.subplots(figsize=(4, 4))[1]


def scores_against(reference, other, ax=None, max_points: int = 20000, seed: int = 0):
    """Scatter of other's scores against reference's (all query x point pairs, subsampled)."""
    ax = _axes(ax)
    a, b = reference.values.flatten().double(), other.values.flatten().double()
    pick = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))[:max_points]
    ax.scatter(a[pick], b[pick], s=2, alpha=0.3)
    rho = float(spearman(reference.values.double(), other.values.double()).mean())
    ax.set_xlabel(f"{reference.method} score")
    ax.set_ylabel(f"{other.method} score")
    ax.set_title(f"{other.method} vs {reference.method}\nmean per-query Spearman {rho:.2f}", fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    return ax


def predicted_vs_actual(scores, truth, query: int = 0, ax=None):
    """For one query: the predicted measurement of each subset model (sum of kept points' scores,
    centred) against the measurement after actual retraining (seed mean, centred)."""
    ax = _axes(ax)
    pred = predictions(scores.values.double(), truth.masks)[:, query]
    actual = truth.mean[:, query].double()
    ax.scatter(pred - pred.mean(), actual - actual.mean(), s=8)
    rho = float(spearman(pred, actual))
    ax.set_xlabel("predicted change (sum of kept scores)")
    ax.set_ylabel("actual change after retraining")
    ax.set_title(f"{scores.method}, query {query}: Spearman {rho:.2f}", fontsize=9)
    return ax


def lds_bars(results: dict[str, Interval], ceiling: float | None = None, ax=None, title: str | None = None):
    """LDS per method with 95% intervals; the ground truth's ceiling as a dashed line."""
    ax = ax if ax is not None else plt.subplots(figsize=(6, 3))[1]
    names = list(results)
    values = np.array([results[n].value for n in names])
    err = np.array([[results[n].value - results[n].low, results[n].high - results[n].value] for n in names]).T
    ax.bar(names, values, yerr=err, capsize=4, color="tab:blue")
    if ceiling is not None:
        ax.axhline(ceiling, ls="--", color="tab:red", label=f"ceiling of the ground truth ~{ceiling:.2f}")
        ax.legend(fontsize=8)
    ax.set_ylabel("LDS")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return ax


def eigenvalue_functions(eta: float, steps: int, damping: float | None = None, ax=None):
    """What each method does to a curvature direction of eigenvalue s: the influence function's
    1/(s + damping) against SOURCE's (1 - exp(-eta K s))/s (both 'how much a gradient in this
    direction moves the parameters', up to the 1/N)."""
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.5))[1]
    damping = 1.0 / (eta * steps) if damping is None else damping
    s = torch.logspace(-6, 3, 400, dtype=torch.float64)
    ax.loglog(s, functions.inverse(0.0)(s), color="grey", ls=":", label="1/s (undamped influence)")
    ax.loglog(s, functions.inverse(damping)(s), label=f"1/(s + {damping:.2g}) (influence)")
    ax.loglog(s, functions.learn(eta, steps)(s), ls="--", label=f"(1 - exp(-eta K s))/s, eta K = {eta * steps:.3g}")
    ax.axvline(1 / (eta * steps), color="k", lw=0.5)
    ax.set_xlabel("curvature eigenvalue s")
    ax.set_ylabel("gain")
    ax.legend(fontsize=8)
    return ax


def top_images(query_image, train_images, scores: dict, higher_is_better: bool = True, k: int = 5,
               label=None, train_labels=None, axes=None):
    """For one query: per method (a row), the k most helpful and the k most harmful training images.

    query_image [H, W]; train_images [N, H, W]; scores {method: Tensor [N]} (this query's row).
    Helpful: up-weighting the point moves the measurement the good way (up for a margin, down for an
    error); removing it is predicted to hurt the query."""
    rows = len(scores)
    if axes is None:
        _, axes = plt.subplots(rows, 2 * k + 1, figsize=(1.1 * (2 * k + 1), 1.25 * rows), squeeze=False)
    for r, (method, row) in enumerate(scores.items()):
        row = torch.as_tensor(row).double()
        order = row.argsort(descending=higher_is_better)
        picks = [*order[:k].tolist(), *order.flip(0)[:k].tolist()]
        axes[r, 0].imshow(query_image, cmap="gray")
        axes[r, 0].set_title("query" + (f" ({label})" if label is not None else ""), fontsize=7)
        axes[r, 0].set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
        for c, i in enumerate(picks, start=1):
            axes[r, c].imshow(train_images[i], cmap="gray")
            kind = "helpful" if c <= k else "harmful"
            tag = f"{kind}" + (f" [{int(train_labels[i])}]" if train_labels is not None else "")
            axes[r, c].set_title(tag, fontsize=6, color="tab:green" if c <= k else "tab:red")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return axes


def agreement(scores: dict, ax=None):
    """Heatmap of the mean per-query Spearman correlation between every pair of methods' scores."""
    names = list(scores)
    m = np.array([[float(spearman(torch.as_tensor(scores[a]).double(), torch.as_tensor(scores[b]).double()).mean())
                   for b in names] for a in names])
    ax = ax if ax is not None else plt.subplots(figsize=(0.6 * len(names) + 2, 0.6 * len(names) + 1.5))[1]
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    plt.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("agreement: mean per-query Spearman", fontsize=9)
    return ax
