"""Attribution methods. All return ``Scores`` in one convention (DESIGN.md section 1):

    score[q, i] = d f_q(theta_T(w)) / d w_i at w = 1, in the measurement's units,

the first-order effect of up-weighting training point i on query q. Removing a set S is predicted
as delta f_q ~= -sum_{i in S} score[q, i].
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ..datasets import Split
from ..training import Run
from ..unroll import unrolled_scores
from .influence import implied_damping, influence_scores
from .similarity import grad_cos_scores, grad_dot_scores, representation_scores
from .source import Segment, segments_of, source_scores
from .tracin import tracin_scores
from .trak import trak_scores


@dataclass
class Scores:
    """values: Tensor [n_query, n_train], units of the measurement; seconds: wall time to compute."""

    values: Tensor
    method: str
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def shape(self):
        return tuple(self.values.shape)


METHODS: dict[str, Callable[..., Tensor]] = {
    "unrolled": unrolled_scores,
    "influence": influence_scores,
    "source": source_scores,
    "fast_source": functools.partial(source_scores, fast=True),
    "tracin": tracin_scores,
    "trak": trak_scores,
    "grad_dot": grad_dot_scores,
    "grad_cos": grad_cos_scores,
    "representation": representation_scores,
}


def attribute(run: Run, query: Split, method: str = "source", progress: bool = False, **settings) -> Scores:
    """Scores of every training point of ``run`` for every query, by ``method`` (see METHODS).

    settings go to the method (e.g. damping=, curvature=, segments=); progress shows a bar where the
    method has long loops."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    fn = METHODS[method]
    fixed = getattr(fn, "keywords", {})  # settings a partial already pins (fast=True)
    accepted = [name for name in inspect.signature(fn).parameters if name not in ("run", "query", *fixed)]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise ValueError(f"{method} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    if "progress" in accepted:
        settings["progress"] = progress
    start = time.perf_counter()
    values = fn(run, query, **settings)
    return Scores(values, method, time.perf_counter() - start, settings)


from .ensemble import ensemble  # noqa: E402  (uses Scores and attribute defined above)

__all__ = ["Scores", "attribute", "ensemble", "METHODS", "unrolled_scores", "influence_scores", "source_scores",
           "tracin_scores", "trak_scores", "grad_dot_scores", "grad_cos_scores", "representation_scores",
           "implied_damping", "segments_of", "Segment"]
