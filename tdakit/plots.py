"""Matplotlib figures for the things tdakit teaches, in one style (``style()``: readable at notebook width,
titles that say what is shown, units on the axes). Each function draws on an Axes (or makes one) and
returns it; scores are in the measurement's units, in the one convention d f_q / d w_i."""

from __future__ import annotations

import contextlib
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import store
from .curvature import functions
from .evaluation.metrics import Interval, predictions, spearman

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 150, "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "figure.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
    "figure.constrained_layout.use": True,
}
# one colour per method family, the same in every figure
COLORS = {"exact unrolling": "tab:gray", "unrolled": "tab:gray", "influence": "tab:blue", "SOURCE": "tab:orange",
          "source": "tab:orange", "Fast-SOURCE": "tab:red", "fast_source": "tab:red", "TracIn": "tab:green",
          "tracin": "tab:green", "TRAK": "tab:purple", "trak": "tab:purple"}


def color_of(label: str) -> str:
    """The colour of a method label (by its longest known prefix); grey-blue for anything else."""
    hits = [k for k in COLORS if label.startswith(k)]
    return COLORS[max(hits, key=len)] if hits else "tab:cyan"


@contextlib.contextmanager
def style():
    """``with plots.style(): ...``: tdakit's figure style for the figures made inside."""
    with plt.rc_context(STYLE):
        yield


def use_style() -> None:
    """Make tdakit's figure style the default (notebooks call it once)."""
    plt.rcParams.update(STYLE)


def save(fig, path: str | os.PathLike) -> None:
    """Save a figure as PNG at 150 dpi, atomically (a temporary file moved into place)."""
    store.write_atomic(path, lambda f: fig.savefig(f, dpi=150, format="png"))


def _axes(ax, size=(4, 4)):
    return ax if ax is not None else plt.subplots(figsize=size)[1]


def scores_against(reference, other, ax=None, max_points: int = 20000, seed: int = 0, unit: str = "",
                   scale: float = 1.0, labels: tuple[str, str] | None = None):
    """Scatter of other's scores against reference's (all query x point pairs, subsampled), with the
    diagonal y = x. scale multiplies scores (e.g. a target's std to show original units)."""
    ax = _axes(ax)
    names = labels or (reference.method, other.method)
    a, b = reference.values.flatten().double() * scale, other.values.flatten().double() * scale
    pick = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))[:max_points]
    ax.scatter(a[pick], b[pick], s=2, alpha=0.3, color=color_of(names[1]))
    low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([low, high], [low, high], color="k", lw=0.7, ls="--", label="y = x")
    rho = float(spearman(reference.values.double(), other.values.double()).mean())
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"{names[0]} score{suffix}")
    ax.set_ylabel(f"{names[1]} score{suffix}")
    ax.set_title(f"{names[1]}\nmean per-query Spearman {rho:.2f}")
    ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    return ax


def predicted_vs_actual(scores, truth, query: int = 0, ax=None, unit: str = "", scale: float = 1.0,
                        label: str | None = None):
    """For one query: the predicted change of each subset model's measurement (sum of the kept points'
    scores) against the actual one after retraining (seed mean), both centred, with the diagonal."""
    ax = _axes(ax)
    name = label or scores.method
    pred = predictions(scores.values.double(), truth.masks)[:, query]
    actual = truth.mean[:, query].double()
    x, y = (pred - pred.mean()) * scale, (actual - actual.mean()) * scale
    ax.scatter(x, y, s=10, color=color_of(name))
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([low, high], [low, high], color="k", lw=0.7, ls="--", label="y = x")
    rho = float(spearman(pred, actual))
    suffix = f" ({unit})" if unit else ""
    ax.set_xlabel(f"predicted change{suffix}")
    ax.set_ylabel(f"actual change after retraining{suffix}\n({PROTOCOL_LABELS[truth.protocol]})")
    ax.set_title(f"{name}: Spearman {rho:.2f}")
    return ax


PROTOCOL_LABELS = {"fresh": "retrained with fresh seeds", "same": "retrained along the same trajectory"}


def lds_bars(results: dict[str, Interval], ceiling: float | None = None, ax=None, title: str | None = None,
             protocol: str = "fresh"):
    """LDS per method with 95% intervals; the ground truth's ceiling as a dashed line; the ground truth's
    protocol in the axis label. Method names are written under the bars, turned so that they never overlap."""
    ax = _axes(ax, (0.9 * len(results) + 2.5, 3.8))
    names = list(results)
    values = np.array([results[n].value for n in names])
    err = np.array([[results[n].value - results[n].low, results[n].high - results[n].value] for n in names]).T
    ax.bar(range(len(names)), values, yerr=err, capsize=4, color=[color_of(n) for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", rotation_mode="anchor")
    if ceiling is not None:
        ax.axhline(ceiling, ls="--", color="tab:red", label=f"ceiling of the ground truth ~{ceiling:.2f}")
        ax.legend(loc="upper right")
    ax.set_ylabel(f"LDS (Spearman, mean over queries)\nground truth {PROTOCOL_LABELS[protocol]}")
    ax.set_title(title or "Linear datamodeling score, 95% intervals over queries")
    return ax


def refinement_curves(residuals, lds_by_iteration: dict[int, float] | None = None, reference: float | None = None,
                      at: int | None = None, ax=None):
    """A refined inverse product's progress (``Scores.diagnostics`` of ``refine=``, or ``Spectrum.refinement``):
    the relative residual |r_t| / |v| before each iteration t on a log axis (left); the LDS of the scores
    recorded at some iterations {t: LDS} on the right axis, with ``reference`` (e.g. the exact solve's LDS)
    dashed; ``at`` marks the iteration being shown."""
    ax = _axes(ax, (5, 3.5))
    ax.semilogy(range(len(residuals)), residuals, color="tab:blue", lw=1, label="residual |r_t| / |v|")
    ax.set_xlabel("iteration t (iteration 0: EK-FAC)")
    ax.set_ylabel("relative residual (minibatch)", color="tab:blue")
    if at is not None:
        ax.axvline(at, color="k", lw=0.7, ls=":")
    if lds_by_iteration:
        twin = ax.twinx()
        twin.grid(False)
        steps = sorted(lds_by_iteration)
        twin.plot(steps, [lds_by_iteration[t] for t in steps], "o-", color="tab:orange", ms=3, label="LDS")
        if reference is not None:
            twin.axhline(reference, color="tab:orange", ls="--", lw=0.8, label="LDS of the exact solve")
        twin.set_ylabel("LDS", color="tab:orange")
        twin.legend(fontsize=7, loc="upper right")
    ax.set_title("Refining EK-FAC toward the exact solve")
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
    ax.set_ylabel("gain (parameter change per unit gradient)")
    ax.set_title("What influence and SOURCE do to one curvature direction")
    ax.legend()
    return ax


def top_images(query_image, train_images, scores: dict, higher_is_better: bool = True, k: int = 5,
               label=None, train_labels=None, axes=None, class_names=None):
    """For one query: per method (a row), the k most helpful and the k most harmful training images.

    query_image [H, W] (grey) or [H, W, 3] (colour, values in [0, 1]); train_images [N, H, W] or
    [N, H, W, 3]; scores {method: Tensor [N]} (this query's row); class_names: shown instead of label numbers.
    Helpful: up-weighting the point moves the measurement the good way (up for a margin, down for an
    error); removing it is predicted to hurt the query."""
    def name(c):
        return class_names[int(c)] if class_names is not None else str(int(c))

    pixelated = "nearest" if np.ndim(query_image) == 3 else None  # colour: sharp pixels, small PNGs
    rows = len(scores)
    if axes is None:
        _, axes = plt.subplots(rows, 2 * k + 1, figsize=(1.1 * (2 * k + 1), 1.25 * rows), squeeze=False)
    for r, (method, row) in enumerate(scores.items()):
        row = torch.as_tensor(row).double()
        order = row.argsort(descending=higher_is_better)
        picks = [*order[:k].tolist(), *order.flip(0)[:k].tolist()]
        axes[r, 0].imshow(query_image, cmap="gray", interpolation=pixelated)
        axes[r, 0].set_title("query" + (f" ({name(label)})" if label is not None else ""), fontsize=7)
        axes[r, 0].set_ylabel(method, fontsize=7, rotation=0, ha="right", va="center")
        for c, i in enumerate(picks, start=1):
            axes[r, c].imshow(train_images[i], cmap="gray", interpolation=pixelated)
            kind = "helpful" if c <= k else "harmful"
            tag = f"{kind}" + (f" [{name(train_labels[i])}]" if train_labels is not None else "")
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
