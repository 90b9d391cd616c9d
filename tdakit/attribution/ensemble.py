"""Ensembles: average any method's scores over independently trained runs (``train_ensemble`` trains
them together with vmap) or pipelines (``train_stages_ensemble``). Same convention and units as the
method."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..datasets import Split
from ..errors import SettingError
from ..stages import StagedRun
from ..training import Run
from .methods import attribute
from .scores import Scores


def ensemble(runs: Sequence[Run] | Sequence[StagedRun], query: Split, method: str = "source", progress: bool = True,
             **settings) -> Scores | list[Scores]:
    """Scores averaged over ``runs`` (their seconds summed): a ``Scores`` named "<method> ensemble", or for
    pipelines (``StagedRun``s from ``train_stages_ensemble``) one such Scores per stage."""
    if not runs:
        raise SettingError("ensemble needs at least one run; train some with tdakit.train_ensemble")
    start = time.perf_counter()
    total = None
    for run in runs:
        got = attribute(run, query, method, progress=progress, **settings)
        values = [s.values for s in got] if isinstance(got, list) else got.values
        if total is None:
            total = values
        elif isinstance(values, list):
            total = [a + b for a, b in zip(total, values, strict=True)]
        else:
            total = total + values
    seconds = time.perf_counter() - start
    label, used = f"{method} ensemble", {**settings, "members": len(runs)}
    if isinstance(total, list):
        return [Scores(t / len(runs), label, seconds, used, stage=s) for s, t in enumerate(total)]
    return Scores(total / len(runs), label, seconds, used)
