"""``Scores``: what every attribution method returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

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


def ensure_finite(values: Tensor, method: str) -> Tensor:
    """Raise an error naming the likely causes instead of returning NaN or inf scores."""
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise ResultError(
            f"{method} produced {bad} non-finite scores. Likely causes: a curvature with zero or negative "
            "eigenvalues and no damping (use damping='implied' or a number > 0, or curvature='hessian_clipped'/"
            "'ggn'/'ekfac'), learning rates so large that exp(-eta K s) overflows, or a run whose parameters "
            "are not finite")
    return values
