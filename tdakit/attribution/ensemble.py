"""Ensembles: average any method's scores over independently trained runs (``train_ensemble`` trains
them together with vmap). Same convention and units as the method."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..datasets import Split
from ..training import Run
from . import Scores, attribute


def ensemble(runs: Sequence[Run], query: Split, method: str = "source", progress: bool = False, **settings):
    """Scores averaged over ``runs`` (their seconds summed): a ``Scores`` named "<method> ensemble"."""
    if not runs:
        raise ValueError("ensemble needs at least one run; train some with tdakit.train_ensemble")
    start = time.perf_counter()
    total = None
    for run in runs:
        values = attribute(run, query, method, progress=progress, **settings).values
        total = values if total is None else total + values
    return Scores(total / len(runs), f"{method} ensemble", time.perf_counter() - start,
                  {**settings, "members": len(runs)})
