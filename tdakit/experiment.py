"""One experiment loop: named method configurations -> scores -> LDS against one ground truth -> a table.

    table = run_experiment(run, data.query, preset("concrete").methods(), truth, reference="exact unrolling")
    print(table); table.plot(); table.save("table.json")

Methods that share checkpoints share per-example gradients (``attribute_many``). Scores are cached on
disk (keyed by the run's recorded values, the query, the method and its settings), so a second run of
the same experiment only judges them; the table says "(from cache)" for those rows.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from . import deprecation, display, store
from .attribution import Scores, attribute_many, ensemble
from .datasets import Split
from .errors import SettingError
from .evaluation import GroundTruth, Interval, Reliability, lds, paired_difference, reliability, spearman
from .evaluation.ground_truth import describe_protocol, too_few
from .plots import lds_bars
from .stages import StagedRun
from .training import Run


@dataclass(frozen=True)
class Method:
    """A method configuration: ``Method("source", segments=3, curvature="ekfac")`` is what
    ``attribute(run, query, "source", segments=3, curvature="ekfac")`` computes."""

    method: str
    settings: dict = field(default_factory=dict)

    def __init__(self, method: str, settings: dict | None = None, **more):
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "settings", {**(settings or {}), **more})


@dataclass
class Row:
    """One method's line of a ``Table``. lds: mean over queries with its 95% interval; vs_reference: mean
    per-query Spearman correlation with the reference method's scores; difference: paired LDS difference
    from the baseline method; seconds: wall time that made the scores (even when read from the cache)."""

    label: str
    method: str
    lds: Interval
    seconds: float
    cached: bool = False
    vs_reference: float | None = None
    difference: Interval | None = None

    def as_dict(self) -> dict:
        out = {"label": self.label, "method": self.method, "lds": self.lds.value, "lds_low": self.lds.low,
               "lds_high": self.lds.high, "seconds": self.seconds, "from_cache": self.cached,
               "per_query": self.lds.per_query.tolist()}
        if self.vs_reference is not None:
            out["spearman_vs_reference"] = self.vs_reference
        if self.difference is not None:
            out["difference"] = {"value": self.difference.value, "low": self.difference.low,
                                 "high": self.difference.high}
        return out


@dataclass
class Table:
    """The result of an experiment: rows, the ground truth's reliability, and the scores themselves."""

    rows: list[Row]
    reliability: Reliability | None
    reference: str | None = None
    baseline: str | None = None
    title: str = ""
    scores: dict[str, Scores] = field(default_factory=dict, repr=False)
    warning: str | None = None  # set when the ground truth is too small for the intervals to mean much
    protocol: str = "fresh"  # the ground truth's retraining protocol (``groundtruth(protocol=)``)

    def __getitem__(self, label: str) -> Row:
        for row in self.rows:
            if row.label == label:
                return row
        raise KeyError(f"no row {label!r}; rows: {[r.label for r in self.rows]}")

    def __str__(self) -> str:
        return self.text()

    def text(self, seconds: bool = True, digits: int = 3) -> str:
        """The table as text; seconds=False leaves out the timing column (stable output for notebooks),
        digits rounds the LDS figures."""
        width = max([len(r.label) for r in self.rows] + [6])

        def interval(i: Interval) -> str:
            return f"{i.value:.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]"

        head = f"{'method':<{width}}  {'LDS [95% interval]':<24}"
        if self.reference:
            head += f"  {'vs ' + self.reference:>{max(14, len(self.reference) + 3)}}"
        if self.baseline:
            head += f"  {'- ' + self.baseline + ' (paired)':<28}"
        if seconds:
            head += f"  {'seconds':>16}"
        lines = [self.title] if self.title else []
        lines.append(head)
        for r in self.rows:
            line = f"{r.label:<{width}}  {interval(r.lds):<24}"
            if self.reference:
                cell = "" if r.vs_reference is None else f"{r.vs_reference:.3f}"
                line += f"  {cell:>{max(14, len(self.reference) + 3)}}"
            if self.baseline:
                line += f"  {'' if r.difference is None else interval(r.difference):<28}"
            if seconds:
                line += f"  {'(from cache)' if r.cached else f'{r.seconds:.1f}':>16}"
            lines.append(line)
        lines.append(f"ground truth: {describe_protocol(self.protocol)}")
        if self.reliability is not None:
            lines.append(f"ground truth: {self.reliability.text(digits)}")
        if self.warning:
            lines.append(f"warning: ground truth {self.warning}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        rel = self.reliability
        facts = {"protocol": describe_protocol(self.protocol), "ground truth": None if rel is None else rel.text(),
                 "warning": self.warning}
        header = ["method", "LDS", "95% interval"] + ([f"vs {self.reference}"] if self.reference else []) \
            + ([f"- {self.baseline} (paired)"] if self.baseline else []) + ["seconds"]
        rows = []
        for r in self.rows:
            row = [r.label, f"{r.lds.value:.3f}", f"[{r.lds.low:.3f}, {r.lds.high:.3f}]"]
            if self.reference:
                row.append("" if r.vs_reference is None else f"{r.vs_reference:.3f}")
            if self.baseline:
                row.append("" if r.difference is None else str(r.difference))
            rows.append([*row, "(from cache)" if r.cached else f"{r.seconds:.1f}"])
        return display.html_block(self.title or "LDS table", facts, header, rows)

    def as_dict(self) -> dict:
        rel = self.reliability
        return {"title": self.title, "reference": self.reference, "baseline": self.baseline, "protocol": self.protocol,
                "reliability": None if rel is None else rel.reliability,
                "ceiling": None if rel is None else rel.ceiling, "seeds": None if rel is None else rel.seeds,
                "rows": [r.as_dict() for r in self.rows]}

    def save(self, path: str | os.PathLike) -> None:
        """Write ``as_dict()`` as JSON, atomically (a temporary file moved into place)."""
        write_json_atomic(Path(path), self.as_dict())

    def plot(self, ax=None):
        """LDS per method with intervals and the ground truth's ceiling (``plots.lds_bars``)."""
        return lds_bars({r.label: r.lds for r in self.rows}, None if self.reliability is None
                        else self.reliability.ceiling, ax=ax, title=self.title or None, protocol=self.protocol)


def write_json_atomic(path: Path, value) -> None:
    store.write_atomic(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def run_fingerprint(run: Run) -> str:
    """Deprecated: ``run.fingerprint()``."""
    deprecation.warn("experiment.run_fingerprint(run)", "run.fingerprint()")
    return run.fingerprint()


def as_method(config) -> Method:
    if isinstance(config, Method):
        return config
    if isinstance(config, str):
        return Method(config)
    if isinstance(config, tuple) and len(config) == 2:
        return Method(config[0], dict(config[1]))
    raise SettingError(f"a method configuration is Method(name, **settings), a name or (name, settings); "
                       f"got {config!r}")


@dataclass
class Experiment:
    """Method configurations on a run, a pipeline's stage or an ensemble of runs, judged against one
    ground truth. ``run``: a Run, a list of Runs (every method averaged over them, an ensemble), or a
    StagedRun with ``stage`` (the stage whose points are attributed)."""

    run: Run | StagedRun | Sequence[Run]
    query: Split
    truth: GroundTruth
    methods: Mapping[str, Method | tuple | str]
    reference: str | None = None
    baseline: str | None = None
    stage: int | None = None
    title: str = ""
    scores: Mapping[str, Scores] | None = None  # already computed scores by label: judged, not recomputed

    def table(self, progress: bool = True, cache: store.CacheSpec = True) -> Table:
        """Compute (or read from the cache) every method's scores and judge them."""
        methods = {label: as_method(c) for label, c in self.methods.items()}
        for name, which in (("reference", self.reference), ("baseline", self.baseline)):
            if which is not None and which not in methods:
                raise SettingError(f"{name} {which!r} is not one of the methods {list(methods)}")
        pipeline = not isinstance(self.run, Sequence) and self.run.stages[0] is not self.run
        if pipeline and self.stage is None:
            raise SettingError("for a pipeline, say which stage's points the ground truth is about: stage=...")
        scores, cached = self.compute(methods, progress, cache)
        with warnings.catch_warnings():  # a ground truth too small is said once, in the table
            warnings.simplefilter("ignore", UserWarning)
            results = {label: lds(s.values, self.truth) for label, s in scores.items()}
        ref = None if self.reference is None else scores[self.reference].values.double()
        rows = []
        for label, s in scores.items():
            rows.append(Row(label, methods[label].method, results[label], s.seconds, cached[label],
                            None if ref is None else float(spearman(s.values.double(), ref).mean()),
                            None if self.baseline is None or label == self.baseline
                            else paired_difference(results[label], results[self.baseline])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            same = self.truth.protocol == "same"
            rel = reliability(self.truth) if self.truth.num_seeds >= 2 or same else None
        warning = too_few(*self.truth.masks.shape[:1], self.truth.values.shape[2],
                          None if same else self.truth.num_seeds)
        return Table(rows, rel, self.reference, self.baseline, self.title, scores, warning, self.truth.protocol)

    def __repr__(self) -> str:
        runs = len(self.run) if isinstance(self.run, Sequence) else 1
        return display.text_block(f"Experiment{': ' + self.title if self.title else ''}", {
            "run": f"an ensemble of {runs} runs" if isinstance(self.run, Sequence) else type(self.run).__name__,
            "queries": len(self.query), "ground truth": f"{self.truth.masks.shape[0]} subsets x "
            f"{self.truth.num_seeds} seeds, protocol {self.truth.protocol!r}", "methods": ", ".join(self.methods),
            "reference": self.reference,
            "baseline": self.baseline, "stage": self.stage})

    def compute(self, methods: dict[str, Method], progress: bool = True,
                cache: store.CacheSpec = True) -> tuple[dict[str, Scores], dict[str, bool]]:
        """Scores of ``methods`` (given ones as they are, cached ones read): ({label: Scores}, {label: cached})."""
        return compute_scores(self.run, self.query, methods, self.stage, progress, cache, self.scores)


def _members(run: Run | StagedRun | Sequence[Run]) -> list[Run]:
    """Every recorded run an experiment reads: an ensemble's members, or the stages of a run or pipeline."""
    return list(run) if isinstance(run, Sequence) else run.stages


def _scores_key(run: Run | StagedRun | Sequence[Run], query: Split, stage: int | None, method: Method) -> str:
    return store.key_of("scores", [r.fingerprint() for r in _members(run)], stage, query.fingerprint(),
                        method.method, sorted(method.settings.items(), key=lambda kv: kv[0]))


def _training_inputs(run: Run | StagedRun | Sequence[Run], stage: int | None) -> Tensor:
    """The training inputs whose scores a table holds (a pipeline's ``stage``, an ensemble's shared data)."""
    one = run[0] if isinstance(run, Sequence) else run
    return one.stages[stage if stage is not None else 0].train.x


def compute_scores(run: Run | StagedRun | Sequence[Run], query: Split, methods: Mapping[str, Method],
                   stage: int | None = None, progress: bool = True, cache: store.CacheSpec = True,
                   given: Mapping[str, Scores] | None = None) -> tuple[dict[str, Scores], dict[str, bool]]:
    """Every method's scores on a run (shared gradients), a pipeline's ``stage`` or an ensemble of runs, read
    from the disk cache where they are there: ({label: Scores}, {label: whether read from the cache})."""
    given = dict(given or {})
    found: dict[str, Scores] = {}
    for label, m in methods.items():
        if label in given:
            continue
        hit = store.load(cache, "scores", _scores_key(run, query, stage, m))
        if hit is not None:
            found[label] = Scores(hit["values"], m.method, float(hit["seconds"]), m.settings,
                                  inputs=_training_inputs(run, stage))
    todo = {label: m for label, m in methods.items() if label not in found and label not in given}
    if isinstance(run, Sequence):  # an ensemble: every method averaged over the members
        fresh = {label: ensemble(list(run), query, m.method, progress=progress, **m.settings)
                 for label, m in todo.items()}
    else:  # a run or a pipeline: the methods share their gradients
        fresh = attribute_many(run, query, {label: (m.method, m.settings) for label, m in todo.items()},
                               progress=progress)
    fresh = {label: got[stage] if stage is not None else got for label, got in fresh.items()}
    for label, s in fresh.items():
        store.save(cache, "scores", _scores_key(run, query, stage, methods[label]),
                   {"values": s.values.detach().cpu(), "seconds": torch.tensor(s.seconds, dtype=torch.float64)})
    ordered = {label: given.get(label) or found.get(label) or fresh[label] for label in methods}
    return ordered, {label: label in found for label in methods}


def run_experiment(run: Run | StagedRun | Sequence[Run], query: Split, methods: Mapping[str, Method | tuple | str],
                   truth: GroundTruth, reference: str | None = None, baseline: str | None = None,
                   stage: int | None = None, title: str = "", progress: bool = True,
                   cache: store.CacheSpec = True, scores: Mapping[str, Scores] | None = None) -> Table:
    """``Experiment(...).table()``: see ``Experiment`` and ``Table``. scores: {label: Scores} computed
    already (e.g. by ``attribute_many``), judged as they are."""
    return Experiment(run, query, truth, methods, reference, baseline, stage, title, scores).table(progress, cache)


def scores_of(table: Table) -> dict[str, Tensor]:
    """{label: scores [Q, N]} of a table (for plots that take tensors)."""
    return {label: s.values for label, s in table.scores.items()}
