"""What the explorers show, as PNG bytes and HTML strings (thread-safe: matplotlib ``Figure`` objects, never
pyplot), plus the map from a click on a picture back to the query under it.

Units: values are shown in the measurement's original units where the data know them (``Units``): an
absolute error in a standardized target times the target's std (MPa for Concrete), a margin in nats.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from .. import plots
from ..datasets import Dataset, Split
from ..errors import TdakitError
from ..task import Classification, LanguageModeling, Regression, Task


@dataclass(frozen=True)
class Units:
    """How to show a measurement: value_shown = scale * value, with its unit's name."""

    scale: float = 1.0
    unit: str = ""

    def text(self, value: float, signed: bool = True, unit: bool = True) -> str:
        """A change in the measurement, rounded for display: e.g. "+0.412 MPa"."""
        body = f"{self.scale * value:+.3f}" if signed else f"{self.scale * value:.3f}"
        return f"{body} {self.unit}".strip() if unit else body


def units_of(task: Task, data: Dataset | None) -> Units:
    """The display units of a task's measurement on ``data`` (original units where a scaler is known)."""
    if isinstance(task, Classification | LanguageModeling):
        return Units(1.0, "nats")
    scaler = data.scaler if data is not None else None
    if isinstance(task, Regression) and scaler is not None:
        if task.measure == "abs_error":
            return Units(scaler.std, scaler.unit)
        return Units(scaler.std ** 2, f"{scaler.unit}²" if scaler.unit else "")
    return Units()


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes at its own dpi (pixel positions from ``positions`` stay valid)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def new_figure(width: float, height: float) -> Figure:
    """A figure in tdakit's style, detached from pyplot (safe on a worker thread)."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def is_text(data: Dataset | None) -> bool:
    return data is not None and data.vocabulary is not None


def short(text: str, width: int) -> str:
    """One line of at most ``width`` characters (an ellipsis where it was cut)."""
    return text if len(text) <= width else text[:width - 1].rstrip() + "…"


def is_images(data: Dataset | None, split: Split) -> bool:
    return data is not None and len(data.image_shape) == 2 and split.x[0].numel() == int(np.prod(data.image_shape))


# -- the picture a query is picked from ------------------------------------------------------------------
@dataclass(frozen=True)
class Picker:
    """A picture of the queries and where each one sits in it, in PNG pixels from the top left."""

    png: bytes
    width: int
    height: int
    centres: np.ndarray  # [Q, 2] (x, y) pixels
    radius: float  # a click farther than this from every centre picks nothing

    def query_at(self, x: float, y: float, shown_width: float | None = None,
                 shown_height: float | None = None) -> int | None:
        """The query under a click at (x, y) pixels of the picture as shown (``shown_width`` x
        ``shown_height`` on screen; default the PNG's own size), or None."""
        sx = self.width / shown_width if shown_width else 1.0
        sy = self.height / shown_height if shown_height else 1.0
        d = np.hypot(self.centres[:, 0] - x * sx, self.centres[:, 1] - y * sy)
        best = int(d.argmin())
        return best if d[best] <= self.radius else None


def _pixels(fig: Figure, ax, xy: np.ndarray) -> np.ndarray:
    disp = ax.transData.transform(xy)
    return np.stack([disp[:, 0], fig.bbox.height - disp[:, 1]], axis=1)


def scatter_picker(targets: Tensor, predictions: Tensor, unit: str = "", selected: int | None = None,
                   name: str = "target") -> Picker:
    """Queries as points (true value, model's prediction), both in ``unit``; click one to pick it."""
    with plots.style():
        fig = new_figure(4.2, 3.6)
        ax = fig.add_subplot()
        x, y = targets.double().numpy(), predictions.double().numpy()
        ax.scatter(x, y, s=14, color="tab:blue", alpha=0.7)
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([low, high], [low, high], color="k", lw=0.7, ls="--")
        if selected is not None:
            ax.scatter(x[selected:selected + 1], y[selected:selected + 1], s=90, facecolor="none",
                       edgecolor="tab:red", lw=2)
        suffix = f" ({unit})" if unit else ""
        ax.set_xlabel(f"true {name}{suffix}")
        ax.set_ylabel(f"model's prediction{suffix}")
        ax.set_title("Queries: click one to pick it")
        fig.canvas.draw()
        centres = _pixels(fig, ax, np.stack([x, y], axis=1))
        png = to_png(fig)
    return Picker(png, int(fig.bbox.width), int(fig.bbox.height), centres, radius=12.0)


def grid_picker(images: Tensor, labels: Sequence[str], selected: int | None = None, columns: int = 10) -> Picker:
    """Query images in a grid (label above each); click one to pick it. images [Q, H, W]."""
    q = len(images)
    rows = (q + columns - 1) // columns
    with plots.style():
        fig = new_figure(0.62 * columns, 0.7 * rows + 0.35)
        ax = fig.add_subplot()
        h, w = images.shape[1:]
        canvas = np.full((rows * (h + 2), columns * (w + 2)), np.nan)
        for i in range(q):
            r, c = divmod(i, columns)
            canvas[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = images[i].numpy()
        ax.imshow(canvas, cmap="gray", interpolation="nearest")
        centres_data = np.array([[(i % columns) * (w + 2) + 1 + w / 2, (i // columns) * (h + 2) + 1 + h / 2]
                                 for i in range(q)])
        for i, (cx, cy) in enumerate(centres_data):
            ax.text(cx, cy - h / 2 - 0.5, labels[i], ha="center", va="bottom", fontsize=6, color="k")
        if selected is not None:
            cx, cy = centres_data[selected]
            ax.add_patch(_box(cx, cy, w + 1, h + 1))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title("Queries: click one to pick it")
        fig.canvas.draw()
        centres = _pixels(fig, ax, centres_data - 0.5)
        png = to_png(fig)
        scale = fig.bbox.width / (columns * (w + 2))
    return Picker(png, int(fig.bbox.width), int(fig.bbox.height), centres, radius=0.5 * w * scale * 1.4)


def _box(cx: float, cy: float, w: float, h: float) -> Rectangle:
    return Rectangle((cx - w / 2 - 0.5, cy - h / 2 - 0.5), w, h, fill=False, edgecolor="tab:red", lw=2)


def text_picker(lines: Sequence[str], selected: int | None = None, width: int = 95, per_column: int = 25) -> Picker:
    """Queries as lines of text (a sentence with its label), in columns of ``per_column``; click one to pick it."""
    q = len(lines)
    columns = (q + per_column - 1) // per_column
    rows = min(q, per_column)
    with plots.style():
        fig = new_figure(5.6 * columns, 0.17 * rows + 0.45)
        ax = fig.add_subplot()
        ax.set_xlim(0, columns)
        ax.set_ylim(rows, 0)
        centres_data = np.array([[i // per_column + 0.5, i % per_column + 0.5] for i in range(q)])
        for i, line in enumerate(lines):
            left = i // per_column + 0.02
            ax.text(left, i % per_column + 0.5, short(line, width), ha="left", va="center", fontsize=6.5,
                    family="monospace", color="tab:red" if i == selected else "k",
                    weight="bold" if i == selected else "normal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title("Queries: click one to pick it", fontsize=9)
        fig.canvas.draw()
        centres = _pixels(fig, ax, centres_data)
        png = to_png(fig)
        line_height = float(fig.bbox.height) / (rows + 3)
    # a click picks the line it falls on: the centres are far apart across, so the radius is the column's half width
    return Picker(png, int(fig.bbox.width), int(fig.bbox.height), centres,
                  radius=float(fig.bbox.width) / (2 * columns) + line_height)


# -- the points a method blames --------------------------------------------------------------------------
def points_table(data: Dataset | None, split: Split, points: Sequence[int], scores: Tensor, units: Units,
                 title: str) -> str:
    """HTML table of training points: index, features and target in original units, score."""
    names = list(data.feature_names) if data is not None and data.feature_names else [
        f"x{j}" for j in range(split.x.shape[1])]
    x = data.features_original(split.x[list(points)]) if data is not None else split.x[list(points)].double()
    y = split.y[list(points)].double()
    if data is not None and data.scaler is not None:
        y = data.scaler.to_original(y)
    target = f"target ({data.scaler.unit})" if data is not None and data.scaler is not None else "target"
    head = "".join(f"<th>{html.escape(n.replace('_', ' '))}</th>" for n in ["point", *names, target,
                                                                          f"score ({units.unit or 'units'})"])
    body = []
    for row, i in enumerate(points):
        cells = [str(i), *(_number(v) for v in x[row]), _number(y[row]), units.text(float(scores[i]), unit=False)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<div class='tdakit-points'><b>{html.escape(title)}</b><table style='font-size:11px'>"
            f"<tr>{head}</tr>{''.join(body)}</table></div>")


def sentences_table(texts: Sequence[str], labels: Sequence[str] | None, points: Sequence[int], scores: Tensor,
                    units: Units, title: str) -> str:
    """HTML table of training sentences or passages: index, label (classification), the text, score."""
    head = "".join(f"<th>{h}</th>" for h in ["point", *(["label"] if labels is not None else []), "text",
                                            f"score ({html.escape(units.unit or 'units')})"])
    body = []
    for i in points:
        cells = [str(i), *([html.escape(labels[i])] if labels is not None else []),
                 f"<span style='font-family:monospace'>{html.escape(texts[i])}</span>",
                 units.text(float(scores[i]), unit=False)]
        body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
    return (f"<div class='tdakit-points'><b>{html.escape(title)}</b><table style='font-size:11px'>"
            f"<tr>{head}</tr>{''.join(body)}</table></div>")


def _number(value) -> str:
    """A feature or target for a table: 4 significant digits, float noise around 0 shown as 0."""
    return f"{round(float(value), 3) + 0.0:.4g}"


def points_images(images: Tensor, labels: Sequence[str], helpful: Sequence[int], harmful: Sequence[int],
                  query_image: Tensor, query_label: str) -> bytes:
    """PNG: the query, then the most helpful (green titles) and most harmful (red) training images."""
    k = max(len(helpful), len(harmful))
    images, query_image = images.numpy(), query_image.numpy()
    with plots.style():
        fig = new_figure(0.75 * (k + 1), 1.8)
        axes = fig.subplots(2, k + 1, squeeze=False)
        rows = (("helpful", helpful, "tab:green"), ("harmful", harmful, "tab:red"))
        for r, (name, chosen, colour) in enumerate(rows):
            axes[r, 0].imshow(query_image, cmap="gray")
            axes[r, 0].set_title(f"query {query_label}" if r == 0 else "", fontsize=7)
            axes[r, 0].set_ylabel(name, fontsize=7, color=colour)
            for c in range(k):
                ax = axes[r, c + 1]
                if c < len(chosen):
                    ax.imshow(images[chosen[c]], cmap="gray")
                    ax.set_title(f"#{chosen[c]} [{labels[chosen[c]]}]", fontsize=6, color=colour)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        return to_png(fig)


# -- trials so far --------------------------------------------------------------------------------------
def trials_plot(trials, units: Units, methods: Sequence[str]) -> bytes:
    """Every deletion so far: each method's predicted change against the actual one (original units), one
    colour per method; circles for fresh seeds (with their standard error), squares for the same trajectory."""
    with plots.style():
        fig = new_figure(4.6, 3.8)
        ax = fig.add_subplot()
        s = units.scale
        seen = set()
        values, actuals = [], []
        for t in trials:
            for label in methods:
                if label not in t.predicted:
                    continue
                px, py = s * t.predicted[label], s * t.actual
                values += [px, py]
                actuals.append(abs(py))
                marker = "o" if t.protocol == "fresh" else "s"
                ax.errorbar(px, py, yerr=s * t.spread if t.spread else None, fmt=marker, ms=5,
                            color=plots.color_of(label), label=None if label in seen else label, capsize=2)
                seen.add(label)
        if values:
            low, high = min(values), max(values)
            pad = 0.05 * (high - low or 1.0)
            ax.plot([low - pad, high + pad], [low - pad, high + pad], color="k", lw=0.7, ls="--", label="y = x")
            ax.legend(loc="upper left", fontsize=7)
            typical = max(max(actuals), 1e-12)
            if max(abs(v) for v in values) > 20 * typical:  # a wild prediction would squash the others
                ax.set_xscale("symlog", linthresh=typical)
                ax.set_yscale("symlog", linthresh=typical)
                ax.text(0.98, 0.02, f"axes logarithmic beyond ±{typical:.2g}", transform=ax.transAxes, ha="right",
                        va="bottom", fontsize=7, color="grey")
        suffix = f" ({units.unit})" if units.unit else ""
        ax.set_xlabel(f"predicted change{suffix}")
        ax.set_ylabel(f"actual change{suffix}")
        ax.set_title("Deletions so far: predicted vs actual\n(circles: fresh seeds, squares: same trajectory)")
        return to_png(fig)


def trial_html(trial, units: Units) -> str:
    """The last deletion as an HTML table: each method's prediction and the actual change."""
    what = (f"{len(trial.points)} points picked by hand" if trial.chosen_by is None else
            f"the {len(trial.points)} most {trial.side} points by {trial.chosen_by}")
    how = "fresh seeds" if trial.protocol == "fresh" else "the same trajectory"
    actual = units.text(trial.actual) + (f" ± {units.scale * trial.spread:.3f}" if trial.spread else "")
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td class='tdakit-predicted' data-method='{html.escape(label)}'>"
                   f"{units.text(value)}</td><td>{units.text(value - trial.actual)}</td></tr>"
                   for label, value in trial.predicted.items())
    return (f"<div class='tdakit-trial'><b>Query {trial.query}: deleted {what}; retrained on {how}</b>"
            f"<table style='font-size:12px'><tr><th>method</th><th>predicted change</th><th>predicted - actual</th>"
            f"</tr>{rows}<tr><td><b>actual</b></td><td class='tdakit-actual'><b>{actual}</b></td><td></td></tr>"
            f"</table><small>{len(trial.points)} points: {', '.join(map(str, trial.points[:30]))}"
            f"{' ...' if len(trial.points) > 30 else ''}; {trial.seconds:.1f} s</small></div>")


def as_float_images(split: Split, shape: Sequence[int]) -> Tensor:
    """Images [n, H, W] (float, any scale) from a split whose examples are flattened or [1, H, W]."""
    return split.x.reshape(len(split), *shape).float()


def error_html(message: str) -> str:
    return f"<div class='tdakit-error' style='color:#b00020'>⚠ {html.escape(message)}</div>"


def failure_html(error: BaseException) -> str:
    """A failed request: a ``TdakitError``'s message (what to fix), or, for anything else, that tdakit hit a bug."""
    if isinstance(error, TdakitError):
        return error_html(str(error))
    return error_html(f"tdakit hit an internal error ({type(error).__name__}: {error}); this is a bug, not "
                      "something to fix in your input: the traceback is in the log")


def info_html(message: str) -> str:
    return f"<div class='tdakit-info'>{html.escape(message)}</div>"


__all__ = ["Units", "units_of", "Picker", "scatter_picker", "grid_picker", "points_table", "points_images",
           "trials_plot", "trial_html", "to_png", "new_figure", "error_html", "info_html"]
