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
from .methods import scores_per_stage, stage_of
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
        values = [s.values for s in scores_per_stage(run, query, method, progress, **settings)]
        total = values if total is None else [a + b for a, b in zip(total, values, strict=True)]
    seconds = time.perf_counter() - start
    label, used = f"{method} ensemble", {**settings, "members": len(runs)}
    return runs[0].per_stage([Scores(t / len(runs), label, seconds, used, stage_of(runs[0], s),
                                     inputs=runs[0].stages[s].train.x) for s, t in enumerate(total)])
