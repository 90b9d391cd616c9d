"""The method registry and the entry points ``attribute`` and ``attribute_many``."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from .. import curvature as curv
from ..datasets import Split
from ..errors import InputError, SettingError
from ..hardware import check_precision
from ..stages import StagedRun
from ..training import Run
from ..unroll import unrolled_scores
from . import staged as _staged
from .influence import influence_plan
from .products import Plan, check_gradients, evaluate
from .scores import Scores, ensure_finite
from .similarity import grad_cos_scores, grad_dot_plan, representation_scores
from .source import source_plan
from .tracin import tracin_plan
from .trak import trak_scores


@dataclass(frozen=True)
class Registered:
    """A registered method. ``compute(run, query, **settings)`` returns a ``Plan`` (gradient-product
    terms, shareable with other methods) or a Tensor [Q, N]; ``staged(pipeline, query, **settings)``
    returns one of those per stage, or is None when the method has no pipeline form."""

    name: str
    compute: Callable[..., Plan | Tensor]
    staged: Callable[..., list] | None = None
    needs_checkpoints: bool = False

    def accepted(self, staged: bool = False) -> list[str]:
        """The settings the method takes (``progress`` included)."""
        fn = self.staged if staged else self.compute
        fixed = getattr(fn, "keywords", {})  # settings a partial already pins (fast=True)
        return [n for n in inspect.signature(fn).parameters if n not in ("run", "staged", "query", *fixed)]


METHODS: dict[str, Registered] = {}


def register_method(name: str, compute: Callable[..., Plan | Tensor], staged: Callable[..., list] | None = None,
                    needs_checkpoints: bool = False) -> Registered:
    """Make ``attribute(run, query, name)`` available (see ``Registered``)."""
    if name in METHODS:
        raise SettingError(f"a method named {name!r} is already registered")
    METHODS[name] = Registered(name, compute, staged, needs_checkpoints)
    return METHODS[name]


register_method("unrolled", unrolled_scores, _staged.staged_unrolled)
register_method("influence", influence_plan, _staged.staged_influence)
register_method("source", source_plan, _staged.staged_source, needs_checkpoints=True)
register_method("fast_source", functools.partial(source_plan, fast=True),
                functools.partial(_staged.staged_source, fast=True), needs_checkpoints=True)
register_method("tracin", tracin_plan, _staged.staged_tracin, needs_checkpoints=True)
register_method("trak", trak_scores)
register_method("grad_dot", grad_dot_plan)
register_method("grad_cos", grad_cos_scores)
register_method("representation", representation_scores)


def _prepare(run: Run | StagedRun, query: Split, method: str, settings: dict,
             progress: bool) -> tuple[Registered, dict]:
    if method not in METHODS:
        raise SettingError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    spec = METHODS[method]
    staged = isinstance(run, StagedRun)
    if staged and spec.staged is None:
        raise SettingError(f"{method} has no multi-stage form; for a pipeline use one of "
                         f"{', '.join(n for n, m in METHODS.items() if m.staged is not None)}")
    accepted = spec.accepted(staged)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise SettingError(f"{method} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(a for a in accepted if a != 'progress')}")
    for one in (run.runs if staged else [run]):
        check_query(one, query)
        if spec.needs_checkpoints and len(one.checkpoints) == 0:
            raise SettingError(f"{method} needs checkpoints, and this run has none; train with checkpoints=6 "
                             "(or more)")
    full = dict(settings)
    if "progress" in accepted:
        full["progress"] = progress
    return spec, full


def check_method(run: Run | StagedRun, query: Split, method: str, settings: dict | None = None) -> None:
    """Raise the error ``attribute`` would raise before any work (unknown method or setting, a method that
    needs checkpoints on a run without them, queries that do not fit the run); return None when it can run."""
    settings = dict(settings or {})
    check_precision(settings.pop("precision", "float32"))
    check_gradients(settings.pop("gradients", "auto"))
    _prepare(run, query, method, settings, False)


def check_query(run: Run, query: Split) -> None:
    """Raise a clear error when query examples do not fit the run's model and task."""
    if not isinstance(query, Split):
        raise InputError(f"query must be a datasets.Split of examples and targets, got {type(query).__name__}")
    if len(query) == 0:
        raise InputError("the query split is empty; pass at least one query")
    if tuple(query.x.shape[1:]) != tuple(run.train.x.shape[1:]):
        raise InputError(f"query examples have shape {tuple(query.x.shape[1:])} but the run was trained on "
                         f"{tuple(run.train.x.shape[1:])}; pass queries from the same dataset (e.g. data.query)")
    out = run.model(run.final, query.x[:2].to(run.final.device, run.final.dtype))
    run.task.check_targets(out, query.y[:2].to(run.final.device))


def attribute(run: Run | StagedRun, query: Split, method: str = "source", progress: bool = True,
              **settings) -> Scores | list[Scores]:
    """Scores of every training point of ``run`` for every query, by ``method`` (see METHODS).

    settings go to the method (e.g. damping=, curvature=, segments=). progress: show bars for long
    loops (default on). precision="bf16" makes the score products u . grad L(z_i) (influence, SOURCE,
    Fast-SOURCE, TracIn, grad_dot) in bfloat16 with float32 accumulation (see ``hardware.products``); other
    methods ignore it. gradients= "auto" | "hooks" | "vmap" says how those products get the training
    points' gradients (``products.evaluate``; the default is right, the others are for comparisons). For a
    ``StagedRun`` (a pipeline): a list of Scores, one per stage."""
    precision = check_precision(settings.pop("precision", "float32"))
    gradients = check_gradients(settings.pop("gradients", "auto"))
    spec, full = _prepare(run, query, method, settings, progress)
    start = time.perf_counter()
    if isinstance(run, StagedRun):
        parts = spec.staged(run, query, **full)
        plans = [p for p in parts if isinstance(p, Plan)]
        values = iter(evaluate(plans, progress=progress, precision=precision, gradients=gradients))
        seconds = time.perf_counter() - start
        return [Scores(ensure_finite((next(values) if isinstance(p, Plan) else p).to(run.final.dtype), method),
                       method, seconds, settings, stage=s) for s, p in enumerate(parts)]
    out = spec.compute(run, query, **full)
    values = (evaluate([out], progress=progress, precision=precision, gradients=gradients)[0]
              if isinstance(out, Plan) else out)
    if precision != "float32":
        settings = {**settings, "precision": precision}
    return Scores(ensure_finite(values.to(run.final.dtype), method), method, time.perf_counter() - start, settings)


def attribute_many(run: Run, query: Split, configs: Mapping[str, tuple[str, dict]],
                   progress: bool = True, precision: str = "float32", gradients: str = "auto") -> dict[str, Scores]:
    """Several method configurations {label: (method, settings)} on one run, sharing per-example gradients:
    every (checkpoint, training point) gradient is made once and multiplied by the query-side vectors of
    every method that needs it. Seconds: each method's own work plus its share of the shared products
    (split by the number of query rows it multiplies). precision: as in ``attribute``, for every
    configuration that does not set its own (``settings["precision"]``); each precision shares its own pass.
    gradients: as in ``attribute``, for every configuration."""
    check_gradients(gradients)
    precisions, prepared = {}, {}
    for label, (method, settings) in configs.items():
        settings = dict(settings)
        precisions[label] = check_precision(settings.pop("precision", precision))
        prepared[label] = _prepare(run, query, method, settings, progress)
    outs, seconds = {}, {}
    with curv.shared_fits():  # identical curvature fits (e.g. SOURCE and Fast-SOURCE's segments) made once
        for label, (spec, full) in prepared.items():
            start = time.perf_counter()
            outs[label] = spec.compute(run, query, **full)
            seconds[label] = time.perf_counter() - start
    planned = [label for label, out in outs.items() if isinstance(out, Plan)]
    rows = {label: sum(len(t.u) for t in outs[label].terms) for label in planned}
    values, extra = {}, {}
    for kind in dict.fromkeys(precisions[label] for label in planned):  # one shared pass per precision
        group = [label for label in planned if precisions[label] == kind]
        start = time.perf_counter()
        values.update(zip(group, evaluate([outs[label] for label in group], progress=progress, precision=kind,
                                          gradients=gradients), strict=True))
        shared = time.perf_counter() - start
        total = max(sum(rows[label] for label in group), 1)
        extra.update({label: shared * rows[label] / total for label in group})
    result = {}
    for label, (spec, _) in prepared.items():
        got = values[label] if label in values else outs[label]
        settings = dict(configs[label][1])
        if precisions[label] != "float32":
            settings["precision"] = precisions[label]
        result[label] = Scores(ensure_finite(got.to(run.final.dtype), spec.name), spec.name,
                               seconds[label] + extra.get(label, 0.0), settings)
    return result

