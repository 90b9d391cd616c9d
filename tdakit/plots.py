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


def lds_bars(results: dict[str, Interval], ceiling: float | None = None, ax=None):
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
