"""What-if deletions, headless: pick a query, let a method name the points it blames, delete them, retrain,
and compare the change each method predicted with the change that actually happens.

``WhatIf`` holds the state an explorer needs (scores of every method, the trials so far) and does what a
click does, as plain method calls, so notebooks and tests can drive it without a browser:

    explorer = WhatIf(run, data.query, preset("concrete").methods(), seeds=5)
    trial = explorer.delete(query=0, method="SOURCE (L=3, C=6)", k=10, protocol="fresh")
    trial.predicted      # {method label: -sum of the deleted points' scores}, measurement units
    trial.actual         # mean change of f_q over the retrained seeds (same units), trial.spread its std error

Two protocols of "actually" (docs/evaluation.md): ``"fresh"`` retrains R models with new initialisations and
batch orders (the expected effect, what LDS judges); ``"same"`` reruns the recorded trajectory with the deleted
points' weights set to 0 (what exact unrolling linearises). Retrained outcomes are cached per (points, protocol),
so repeating a deletion is immediate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from .. import deprecation, store
from ..attribution import Scores, check_method
from ..concurrency import compute_lock
from ..datasets import Split
from ..errors import SettingError, TdakitError, check_choice
from ..evaluation.removal import Protocol, most_harmful_to_remove, retrained_measurements
from ..experiment import Method, as_method, compute_scores
from ..training import Run

SIDES = ("helpful", "harmful")


@dataclass(frozen=True)
class Trial:
    """One deletion: which query, whose choice (a method label, or None for a hand-picked set), which points,
    the change every method predicts for deleting them and the change retraining shows (measurement units)."""

    query: int
    chosen_by: str | None  # a method label, or None for points picked by hand
    side: str  # "helpful" or "harmful" (for a method's choice) or "picked"
    protocol: str
    points: tuple[int, ...]
    predicted: dict[str, float]
    actual: float
    spread: float
    seconds: float

    def error(self, method: str) -> float:
        """predicted - actual for one method."""
        return self.predicted[method] - self.actual

    @property
    def kind(self) -> str:
        """Deprecated: ``protocol``."""
        deprecation.warn("Trial.kind", "Trial.protocol")
        return self.protocol


@dataclass
class WhatIf:
    """Deletion explorer for one run and its queries (see the module docstring)."""

    run: Run
    query: Split
    methods: Mapping[str, Method | tuple | str]
    seeds: int = 5
    seed: int = 0
    cache: store.CacheSpec = True
    progress: bool = False
    history: list[Trial] = field(default_factory=list)

    def __post_init__(self):
        self.methods = {label: as_method(m) for label, m in self.methods.items()}
        if not self.methods:
            raise SettingError("give at least one method, e.g. {'SOURCE': Method('source')}")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise SettingError(f"seeds must be a whole number >= 1, got {self.seeds!r}")
        self._scores: dict[str, Scores] = {}
        self._outcomes: dict[tuple, Tensor] = {}
        self.unavailable: dict[str, str] = {}  # label -> why the method cannot run on this run
        for label, m in self.methods.items():
            try:
                check_method(self.run, self.query, m.method, m.settings)
            except TdakitError as error:
                self.unavailable[label] = str(error)
        if len(self.unavailable) == len(self.methods):
            raise SettingError("none of the methods can run on this run: " + "; ".join(
                f"{label}: {why}" for label, why in self.unavailable.items()))

    @property
    def available(self) -> list[str]:
        """The labels of the methods that can run on this run (the others are in ``unavailable``)."""
        return [label for label in self.methods if label not in self.unavailable]

    # -- scores and predictions -------------------------------------------------------------------------
    def scores(self, method: str) -> Scores:
        """The method's scores for every query [Q, N], computed once (shared gradients, disk cache)."""
        self._check_method(method)
        with compute_lock:  # an explorer's workers and the notebook may ask at the same time
            if method not in self._scores:
                todo = {label: self.methods[label] for label in self.available}
                got, _ = compute_scores(self.run, self.query, todo, progress=self.progress, cache=self.cache)
                self._scores.update(got)
        return self._scores[method]

    def blamed(self, query: int, method: str, k: int) -> tuple[list[int], list[int]]:
        """(most helpful, most harmful) training points of a query by a method, k of each: deleting the helpful
        ones is predicted to hurt the query most (raise its error, lower its margin), the harmful ones to help."""
        self._check_query(query)
        self._check_k(k)
        values = self.scores(method).values[query:query + 1]
        higher = self.run.task.higher_is_better
        helpful = most_harmful_to_remove(values, k, higher)[0].tolist()
        harmful = most_harmful_to_remove(values, k, not higher)[0].tolist()
        return helpful, harmful

    def predict(self, query: int, points: Sequence[int]) -> dict[str, float]:
        """The change of f_q every method predicts for deleting ``points``: -sum of their scores."""
        self._check_query(query)
        points = self._check_points(points)
        return {label: float(self.scores(label).predicted_change(points)[query]) for label in self.available}

    # -- what actually happens ---------------------------------------------------------------------------
    def outcome(self, points: Sequence[int], protocol: Protocol = "fresh",
                on_step: Callable[[float], object] | None = None) -> Tensor:
        """f_q of every query after deleting ``points`` and retraining, per seed: [R, Q] (cached).
        on_step: called after every training step (progress; raising there stops the retraining)."""
        check_choice("protocol", protocol, Protocol)
        key = (protocol, tuple(sorted(set(points))))
        with compute_lock:
            if key not in self._outcomes:
                self._outcomes[key] = retrained_measurements(self.run, self.query, list(key[1]), protocol, self.seeds,
                                                             self.seed, progress=self.progress, on_step=on_step)
        return self._outcomes[key]

    def is_cached(self, points: Sequence[int], protocol: Protocol) -> bool:
        """Whether deleting ``points`` (and the full-data reference) has been retrained already."""
        return all((protocol, key) in self._outcomes for key in (tuple(sorted(set(points))), ()))

    def actual(self, query: int, points: Sequence[int], protocol: Protocol = "fresh",
               on_step: Callable[[float], object] | None = None) -> tuple[float, float]:
        """(mean change of f_q, its standard error over seeds) when ``points`` are deleted; for "same" the
        error is 0 (one trajectory)."""
        self._check_query(query)
        points = self._check_points(points)
        change = self.outcome(points, protocol, on_step)[:, query] - self.outcome([], protocol, on_step)[:, query]
        spread = float(change.std() / len(change) ** 0.5) if len(change) > 1 else 0.0
        return float(change.mean()), spread

    # -- what a click does -------------------------------------------------------------------------------
    def choose(self, query: int, method: str | None = None, k: int | None = None,
               points: Sequence[int] | None = None, side: str = "helpful") -> list[int]:
        """The points a deletion removes: a method's k most helpful (or harmful) for the query, or ``points``."""
        if points is not None:
            return self._check_points(points)
        if method is None or k is None:
            raise SettingError("say what to delete: a method and k, or points=[...] picked by hand")
        if side not in SIDES:
            raise SettingError(f"side must be 'helpful' or 'harmful', got {side!r}")
        helpful, harmful = self.blamed(query, method, k)
        return sorted(helpful if side == "helpful" else harmful)

    def delete(self, query: int, method: str | None = None, k: int | None = None, points: Sequence[int] | None = None,
               protocol: Protocol = "fresh", side: str = "helpful", on_step: Callable[[float], object] | None = None,
               kind: str | None = None) -> Trial:
        """Delete a method's k most helpful (``side="harmful"``: most harmful) points for a query, or the
        hand-picked ``points``; retrain (``protocol``: "fresh" seeds or the "same" trajectory); record and return
        the trial. ``kind=`` is tdakit 0.2's name for ``protocol``."""
        if kind is not None:
            deprecation.warn("WhatIf.delete(kind=...)", "WhatIf.delete(protocol=...)")
            protocol = kind
        start = time.perf_counter()
        self._check_query(query)
        picked = points is not None
        points = self.choose(query, method, k, points, side)
        predicted = self.predict(query, points)
        actual, spread = self.actual(query, points, protocol, on_step)
        trial = Trial(query, None if picked else method, "picked" if picked else side, protocol, tuple(points),
                      predicted, actual, spread, time.perf_counter() - start)
        self.history.append(trial)
        return trial

    def undo(self) -> Trial:
        """Forget the last trial (its retrained models stay cached)."""
        if not self.history:
            raise SettingError("nothing to undo: no deletion has been made yet")
        return self.history.pop()

    # -- checks with messages a widget can show ----------------------------------------------------------
    def check(self, query: int | None = None, method: str | None = None, k: int | None = None) -> None:
        """Raise the TdakitError a deletion with these settings would raise, before any work is done."""
        if query is not None:
            self._check_query(query)
        if method is not None:
            self._check_method(method)
        if k is not None:
            self._check_k(k)

    def _check_method(self, method: str) -> None:
        if method not in self.methods:
            raise SettingError(f"unknown method {method!r}; this explorer has {', '.join(self.methods)}")
        if method in self.unavailable:
            raise SettingError(f"{method} cannot run on this run: {self.unavailable[method]}")

    def _check_query(self, query: int) -> None:
        if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < len(self.query):
            raise SettingError(f"query must be an index in 0..{len(self.query) - 1}, got {query!r}")

    def _check_k(self, k: int) -> None:
        n = self.run.num_train
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
            raise SettingError(f"k must be a whole number from 1 to {n - 1} (the run has {n} training points), "
                               f"got {k!r}")

    def _check_points(self, points: Sequence[int]) -> list[int]:
        chosen = sorted({int(p) for p in points})
        if not chosen:
            raise SettingError("no points selected: pick at least one training point to delete")
        n = self.run.num_train
        if chosen[0] < 0 or chosen[-1] >= n:
            raise SettingError(f"training point indices must lie in 0..{n - 1}")
        if len(chosen) >= n:
            raise SettingError("deleting every training point leaves nothing to train on; delete fewer")
        return chosen
