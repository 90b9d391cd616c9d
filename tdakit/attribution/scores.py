"""``Scores``: what every attribution method returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import display
from ..errors import ResultError


@dataclass
class Scores:
    """values: Tensor [n_query, n_train], in the measurement's units (unitless for the cosine baselines):
    score[q, i] = d f_q(theta_T(w)) / d w_i at w = 1; removing a set S is predicted to change f_q by
    -sum_{i in S} score[q, i]. seconds: wall time to compute; settings: what the method was given;
    stage: for a multi-stage pipeline, the stage whose points the columns are (else None)."""

    values: Tensor
    method: str
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)
    stage: int | None = None
    notes: tuple[str, ...] = ()  # what was decided for the user (e.g. the curvature "auto" chose)
    diagnostics: dict = field(default_factory=dict, repr=False)  # e.g. a refined solve's residual history
    inputs: Tensor | None = field(default=None, repr=False, compare=False)  # the training inputs, for thumbnails

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def predicted_change(self, removed) -> Tensor:
        """The change of every query's measurement predicted for deleting the points ``removed`` (indices,
        or a bool mask [N]): -sum_{i in removed} score[:, i], [Q]."""
        index = torch.as_tensor(removed)
        if index.dtype == torch.bool:
            index = index.nonzero()[:, 0]
        return -self.values[:, index.to(self.values.device)].sum(1)

    def _facts(self) -> dict[str, object]:
        settings = ", ".join(f"{k}={_short(v)}" for k, v in self.settings.items())
        return {"values": f"{self.shape[0]} queries x {self.shape[1]} training points "
                          f"({display.shape_of(self.values)}), in the measurement's units",
                "convention": "score[q, i] = d f_q / d w_i; deleting S changes f_q by about -sum_S score[q, i]",
                "settings": settings or "defaults", "stage": self.stage,
                **{"note" if len(self.notes) == 1 else f"note {k + 1}": note for k, note in enumerate(self.notes)}}

    def top(self, query: int, k: int = 3) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """The k training points that raise query ``query``'s measurement most (largest scores) and the k that
        lower it most (most negative), as (index, score) pairs."""
        row = self.values[query].detach().double().cpu()
        k = min(k, row.numel())
        raise_most = torch.topk(row, k)
        lower_most = torch.topk(-row, k)
        return ([(int(i), float(v)) for v, i in zip(raise_most.values, raise_most.indices, strict=True)],
                [(int(i), -float(v)) for v, i in zip(lower_most.values, lower_most.indices, strict=True)])

    def __repr__(self) -> str:
        return display.text_block(f"Scores: {self.method}", self._facts())

    def _repr_html_(self, queries: int = 3) -> str:
        rows = []
        for q in range(min(queries, self.shape[0])):
            up, down = self.top(q)
            rows.append((q, ", ".join(f"#{i} ({v:+.3g})" for i, v in up),
                         ", ".join(f"#{i} ({v:+.3g})" for i, v in down)))
        block = display.html_block(f"Scores: {self.method}", self._facts(),
                                   ("query", "raise f_q most: training point (score)", "lower f_q most"), rows,
                                   "Whether raising f_q helps depends on the measurement: a margin (higher is "
                                   "better) or an error or loss (lower is better).")
        return block + self._thumbnails(queries)

    def _thumbnails(self, queries: int, k: int = 3) -> str:
        """For image inputs: the training images that raise and lower each of the first queries' measurement most,
        as small pictures ('' for other inputs, or when the scores do not know their training inputs)."""
        if self.inputs is None or len(self.inputs) != self.shape[1] or display.as_image(self.inputs[0]) is None:
            return ""
        lines = []
        for q in range(min(queries, self.shape[0])):
            up, down = self.top(q, k)
            pictures = [display.thumbnail(display.as_image(self.inputs[i]), f"#{i} {v:+.2g}") for i, v in up + down]
            lines.append(f"<div>query {q}: raise most {''.join(pictures[:len(up)])} &nbsp; lower most "
                         f"{''.join(pictures[len(up):])}</div>")
        return "<div class='tdakit-thumbnails'>" + "".join(lines) + "</div>"


def _short(value) -> str:
    """A setting's value in a few characters (a tensor by its shape)."""
    if isinstance(value, Tensor):
        return display.shape_of(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def ensure_finite(values: Tensor, method: str) -> Tensor:
    """Raise an error naming the queries and the likely causes instead of returning NaN or inf scores."""
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        rows = (~torch.isfinite(values)).reshape(len(values), -1).any(1).nonzero()[:, 0].tolist()
        listed = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
        raise ResultError(
            f"{method} produced {bad} non-finite scores, for queries {listed}. If those queries have NaN or inf "
            "in their features or targets, fix them. Other likely causes: a curvature with zero or negative "
            "eigenvalues and no damping (use damping='implied' or a number > 0, or curvature='hessian_clipped'/"
            "'ggn'/'ekfac'), learning rates so large that exp(-eta K s) overflows, or a run whose parameters "
            "are not finite")
    return values
