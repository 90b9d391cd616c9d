"""How results show themselves: short text reprs (no raw tensors) and small HTML blocks for Jupyter.

Result types (``Run``, ``Scores``, ``GroundTruth``, ``Table``, ``Experiment``) build their ``__repr__`` and
``_repr_html_`` from these helpers, so every one reads the same way: a title line, then ``name: value`` facts,
then at most one table.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence

from torch import Tensor


def shape_of(tensor: Tensor) -> str:
    """'float32 [3, 64]': a tensor's dtype and shape, never its values."""
    return f"{str(tensor.dtype).removeprefix('torch.')} [{', '.join(str(s) for s in tensor.shape)}]"


def count(n: int) -> str:
    """1234567 -> '1,234,567'."""
    return f"{n:,}"


def text_block(title: str, facts: dict[str, object]) -> str:
    """A few lines: the title, then one indented 'name: value' per fact (None values left out)."""
    lines = [title] + [f"  {name}: {value}" for name, value in facts.items() if value is not None]
    return "\n".join(lines)


def html_block(title: str, facts: dict[str, object], header: Sequence[str] = (),
               rows: Sequence[Sequence[object]] = (), note: str = "") -> str:
    """The same facts as ``text_block`` as HTML, with an optional table (header, rows) and a closing note."""
    parts = [f"<div class='tdakit-result'><b>{html.escape(title)}</b>"]
    listed = [f"<li>{html.escape(name)}: {html.escape(str(value))}</li>" for name, value in facts.items()
              if value is not None]
    if listed:
        parts.append("<ul style='margin:0.2em 0'>" + "".join(listed) + "</ul>")
    if rows:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    if note:
        parts.append(f"<div style='font-size:90%'>{html.escape(note)}</div>")
    return "".join(parts) + "</div>"


def as_image(x: Tensor) -> Tensor | None:
    """One input as an image [H, W] or [H, W, 3] for display, or None when it is not one: [C, H, W] with C 1 or 3,
    [H, W], or a flat vector of at least 64 values with a whole square root (MNIST's 784)."""
    x = x.detach().float().cpu()
    if x.dim() == 3 and x.shape[0] in (1, 3) and min(x.shape[1:]) >= 4:
        x = x[0] if x.shape[0] == 1 else x.permute(1, 2, 0)
    elif x.dim() == 1 and x.numel() >= 64 and math.isqrt(x.numel()) ** 2 == x.numel():
        side = math.isqrt(x.numel())
        x = x.reshape(side, side)
    elif not (x.dim() == 2 and min(x.shape) >= 4):
        return None
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low if high > low else 1.0)


def thumbnail(image: Tensor, caption: str, pixels: int = 40) -> str:
    """An image [H, W] or [H, W, 3] in [0, 1] as an inline PNG with a caption (HTML)."""
    import matplotlib.image

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, image.numpy(), cmap="gray", format="png")
    data = base64.b64encode(buffer.getvalue()).decode()
    return (f"<figure style='display:inline-block;margin:2px;text-align:center'><img src='data:image/png;base64,"
            f"{data}' width='{pixels}' height='{pixels}' style='image-rendering:pixelated'/>"
            f"<figcaption style='font-size:75%'>{html.escape(caption)}</figcaption></figure>")
