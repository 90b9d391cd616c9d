"""The method registry and the entry points ``attribute`` and ``attribute_many``.

A method is registered with its settings dataclass (``settings.py``): ``METHODS["source"].settings`` lists its
settings with defaults, help and cost, and ``attribute(run, query, "source", segments=2)`` checks them all
before any work. A run is a pipeline of one stage (``Run.stages``), so every method takes the same path for a
run and for a ``StagedRun``: it returns one result per stage, and the run shapes the answer
(``Run.per_stage``: one Scores; ``StagedRun.per_stage``: a list).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, make_dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .. import curvature as curv
from ..datasets import Split
from ..datasets.core import check_split
from ..errors import InputError, SettingError
from ..stages import StagedRun
from ..training import Run
from . import staged as _staged
from .influence import influence_plan
from .products import Plan, evaluate, iterates_plan, split_iterates
from .scores import Scores, ensure_finite
from .settings import (
    InfluenceSettings,
    NoSettings,
    ProductOptions,
    Settings,
    SourceSettings,
    TrakSettings,
    UnrolledSettings,
)
from .similarity import grad_cos_scores, grad_dot_plan, representation_scores
from .source import source_plan
from .tracin import tracin_plan
from .trak import trak_scores
from .unroll import unrolled_scores


@dataclass(frozen=True)
class Registered:
    """A registered method. ``compute(run, query, **settings, progress=...)`` returns a ``Plan`` (gradient-product
    terms, shareable with other methods) or a Tensor [Q, N]; ``staged(pipeline, query, **settings,
    progress=...)`` one of those per stage, or is None when the method needs a single run. ``settings``: the
    dataclass of its settings (``settings.Settings``)."""

    name: str
    compute: Callable[..., Plan | Tensor]
    settings: type[Settings] = NoSettings
    staged: Callable[..., list] | None = None
    needs_checkpoints: bool = False
    summary: str = ""

    def configure(self, **given) -> Settings:
        """The method's settings from keyword values (a SettingError names a wrong one and lists the rest)."""
        return self.settings.build(self.name, given)

    def accepted(self, staged: bool = False) -> list[str]:
        """The names of the method's settings."""
        return [f.name for f in fields(self.settings)]

    def per_stage(self, run: Run | StagedRun, query: Split, settings: Settings, progress: bool) -> list:
        """One Plan or Tensor [Q, N_s] per stage of ``run`` (a Run is a pipeline of one stage)."""
        if self.staged is not None:
            return self.staged(run, query, **settings.as_dict(), progress=progress)
        if len(run.stages) > 1:
            raise SettingError(f"{self.name} has no multi-stage form; for a pipeline use one of "
                               f"{', '.join(n for n, m in METHODS.items() if m.staged is not None)}")
        return [self.compute(run.stages[0], query, **settings.as_dict(), progress=progress)]


METHODS: dict[str, Registered] = {}


def register_method(name: str, compute: Callable[..., Plan | Tensor], staged: Callable[..., list] | None = None,
                    needs_checkpoints: bool = False, settings: type[Settings] | None = None,
                    summary: str = "") -> Registered:
    """Make ``attribute(run, query, name)`` available. compute(run, query, <settings>, progress) returns a Plan or
    scores [Q, N]; settings: its settings dataclass (default: one made from compute's keyword arguments and their
    defaults); staged: the pipeline form (docs/extending.md)."""
    if name in METHODS:
        raise SettingError(f"a method named {name!r} is already registered")
    METHODS[name] = Registered(name, compute, settings or settings_from_signature(name, compute), staged,
                               needs_checkpoints, summary or (inspect.getdoc(compute) or "").split("\n")[0])
    return METHODS[name]


def settings_from_signature(name: str, compute: Callable) -> type[Settings]:
    """A settings dataclass with one field per keyword argument of ``compute`` (after run and query; progress
    excluded), each with its default: for methods registered without one."""
    fixed = getattr(compute, "keywords", {})
    params = [p for p in list(inspect.signature(compute).parameters.values())[2:]
              if p.name != "progress" and p.name not in fixed and p.kind is not p.VAR_KEYWORD]
    made = [(p.name, Any, None if p.default is p.empty else p.default) for p in params]
    return make_dataclass(f"{name.title().replace('_', '')}Settings", made, bases=(Settings,), frozen=True)


register_method("unrolled", unrolled_scores, _staged.staged_unrolled, settings=UnrolledSettings,
                summary="exact unrolled differentiation through the recorded run (torch.func)")
register_method("influence", influence_plan, _staged.staged_influence, settings=InfluenceSettings,
                summary="influence function at the final parameters: -(1/N) grad f^T (H + damping)^-1 grad L")
register_method("source", source_plan, _staged.staged_source, needs_checkpoints=True, settings=SourceSettings,
                summary="SOURCE: segmented stationary unrolling over L segments of checkpoints")
register_method("fast_source", partial(source_plan, fast=True), partial(_staged.staged_source, fast=True),
                needs_checkpoints=True, settings=SourceSettings,
                summary="Fast-SOURCE: SOURCE with each segment's curvature and gradients at its mean parameters")
register_method("tracin", tracin_plan, _staged.staged_tracin, needs_checkpoints=True, settings=NoSettings,
                summary="TracIn: gradient products at the checkpoints, weighted by their learning rates")
register_method("trak", trak_scores, settings=TrakSettings,
                summary="TRAK: projected layer gradients and a damped kernel at the final parameters")
register_method("grad_dot", grad_dot_plan, settings=NoSettings,
                summary="gradient dot product at the final parameters, scaled by the run's summed rate")
register_method("grad_cos", grad_cos_scores, settings=NoSettings,
                summary="cosine of query and training gradients (unitless)")
register_method("representation", representation_scores, settings=NoSettings,
                summary="representation similarity of the last Linear layer's inputs (unitless)")


def prepare(run: Run | StagedRun, query: Split, method: str, given: Mapping[str, Any]) -> tuple[Registered, Settings]:
    """The registered method and its checked settings, after checking that the queries fit every stage and that
    the method can run on it: the errors ``attribute`` raises before any work."""
    if method not in METHODS:
        raise SettingError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    spec = METHODS[method]
    if len(run.stages) > 1 and spec.staged is None:
        raise SettingError(f"{method} has no multi-stage form; for a pipeline use one of "
                           f"{', '.join(n for n, m in METHODS.items() if m.staged is not None)}")
    settings = spec.configure(**given)
    if getattr(settings, "curvature", None) == "auto":
        name, why = auto_curvature(run, method, settings)
        settings = settings.with_note(f"curvature 'auto' chose {name!r}: {why}", curvature=name)
    for one in run.stages:
        check_query(one, query)
        if spec.needs_checkpoints and len(one.checkpoints) == 0:
            raise SettingError(f"{method} needs checkpoints, and this run has none; train with checkpoints=6 "
                               "(or more)")
    return spec, settings


def auto_curvature(run: Run | StagedRun, method: str, settings: Settings) -> tuple[str, str]:
    """What curvature="auto" stands for on this run: the exact GGN while it fits (``curvature.budget``), else
    EK-FAC when the model's layers can be factored. Returns (name, why)."""
    stage = max(run.stages, key=lambda one: one.num_train)
    together = 1  # parameter sets one fit averages: influence and Fast-SOURCE one, SOURCE a segment's checkpoints
    if method == "source" and isinstance(settings, SourceSettings) and len(stage.checkpoints):
        pieces = settings.segments if isinstance(settings.segments, int) else max(len(settings.segments) - 1, 1)
        together = -(-len(stage.checkpoints) // pieces)
    return curv.budget.auto(stage.model, stage.final, stage.train.x[:1], stage.num_train, together)


def plans(run: Run | StagedRun, query: Split, method: str, progress: bool = False, **settings) -> list[Plan | Tensor]:
    """What ``attribute`` computes before the shared score products, one entry per stage: a ``Plan`` (the method's
    gradient-product terms, for ``products.evaluate``) or the scores [Q, N_s] themselves."""
    spec, checked = prepare(run, query, method, settings)
    return spec.per_stage(run, query, checked, progress)


def check_method(run: Run | StagedRun, query: Split, method: str, settings: dict | None = None) -> None:
    """Raise the error ``attribute`` would raise before any work (unknown method or setting, a method that
    needs checkpoints on a run without them, queries that do not fit the run); return None when it can run."""
    settings = dict(settings or {})
    ProductOptions(settings.pop("precision", "float32"), settings.pop("gradients", "auto"))
    prepare(run, query, method, settings)


def check_query(run: Run, query: Split) -> None:
    """Raise a clear error when query examples do not fit the run's model and task."""
    check_split(query, "query")
    if len(query) == 0:
        raise InputError("the query split is empty; pass at least one query")
    if tuple(query.x.shape[1:]) != tuple(run.train.x.shape[1:]):
        raise InputError(f"query examples have shape {tuple(query.x.shape[1:])} but the run was trained on "
                         f"{tuple(run.train.x.shape[1:])}; pass queries from the same dataset (e.g. data.query)")
    if query.x.is_floating_point() and not bool(torch.isfinite(query.x).all()):
        row = int((~torch.isfinite(query.x.reshape(len(query), -1))).any(1).nonzero()[0, 0])
        raise InputError(f"query {row} has NaN or inf in its features (query.x row {row}); drop or fix it")
    out = run.model(run.final, query.subset(slice(0, 2)).to(run.final.dtype, run.final.device).x)
    run.task.check_targets(out, query.y[:2].to(run.final.device), "query targets (query.y)")
    run.task.check_values(out.shape[-1], query.y, "query targets (query.y)")


def _options(given: dict, default: ProductOptions) -> ProductOptions:
    """The product options of one call: ``precision=`` / ``gradients=`` given beside the method's settings
    override ``default``."""
    changes = {name: given.pop(name) for name in ("precision", "gradients") if name in given}
    return default.replace(**changes) if changes else default


def attribute(run: Run | StagedRun, query: Split, method: str = "source", progress: bool = True,
              products: ProductOptions | None = None, **settings) -> Scores | list[Scores]:
    """Scores of every training point of ``run`` for every query, by ``method`` (``METHODS`` lists them with
    their settings).

    settings go to the method (e.g. damping=, curvature=, segments=); they are checked before any work.
    progress: show bars for long loops (default on). products: how the shared score products are made
    (``ProductOptions``: precision "float32" or "bf16", gradients "auto" | "hooks" | "vmap"); ``precision=``
    and ``gradients=`` may also be given beside the settings. For a ``StagedRun`` (a pipeline): a list of
    Scores, one per stage."""
    return run.per_stage(scores_per_stage(run, query, method, progress, products, **settings))


def scores_per_stage(run: Run | StagedRun, query: Split, method: str, progress: bool = True,
                     products: ProductOptions | None = None, **settings) -> list[Scores]:
    """``attribute`` before the run shapes its answer: one Scores per stage (one for a run)."""
    settings = dict(settings)
    options = _options(settings, products or ProductOptions())
    spec, checked = prepare(run, query, method, settings)
    start = time.perf_counter()
    parts = spec.per_stage(run, query, checked, progress)
    planned = [p for p in parts if isinstance(p, Plan)]
    extra = [e for e in map(iterates_plan, planned) if e is not None]
    got = evaluate(planned + extra, options, progress=progress)
    values = iter(got[:len(planned)])
    diagnostics = iter(with_iterates(planned, got[len(planned):], run.final.dtype))
    seconds = time.perf_counter() - start
    recorded = {**checked.changed(), **options.recorded()}
    return [Scores(ensure_finite((next(values) if isinstance(p, Plan) else p).to(run.final.dtype), method),
                   method, seconds, recorded, stage_of(run, s), checked.notes(),
                   next(diagnostics) if isinstance(p, Plan) else {}, run.stages[s].train.x)
            for s, p in enumerate(parts)]


def with_iterates(plans: Sequence[Plan], iterate_values: Sequence[Tensor], dtype: torch.dtype) -> list[dict]:
    """Each plan's diagnostics, with "by_iteration": {iteration: scores [Q, N]} added for a plan whose refined
    solve recorded iterates (``Refine.record``); iterate_values: the scores of their ``iterates_plan``s, in order."""
    values = iter(iterate_values)
    out = []
    for plan in plans:
        diagnostics = dict(plan.diagnostics)
        if plan.terms and plan.terms[0].iterates:  # the plans iterates_plan made a plan of, in order
            diagnostics["by_iteration"] = {k: v.to(dtype) for k, v in split_iterates(plan, next(values)).items()}
        out.append(diagnostics)
    return out


def stage_of(run: Run | StagedRun, s: int) -> int | None:
    """What Scores.stage says for stage s: None for a run (the pipeline of itself), s for a pipeline's stage."""
    return None if run.stages[0] is run else s


def attribute_many(run: Run | StagedRun, query: Split, configs: Mapping[str, tuple[str, dict]], progress: bool = True,
                   products: ProductOptions | None = None, precision: str | None = None,
                   gradients: str | None = None) -> dict[str, Scores | list[Scores]]:
    """Several method configurations {label: (method, settings)} on one run (or pipeline: then a list of Scores
    per label, one per stage), sharing per-example gradients: every (checkpoint, training point) gradient is
    made once and multiplied by the query-side vectors of every method that needs it. Seconds: each method's own
    work plus its share of the shared products (split by the number of query rows it multiplies). products (or
    precision= / gradients=): the product options for every configuration that does not set its own; each
    distinct option shares its own pass."""
    default = (products or ProductOptions()).replace(**{k: v for k, v in (("precision", precision),
                                                                            ("gradients", gradients)) if v})
    options, prepared = {}, {}
    for label, (method, given) in configs.items():
        given = dict(given)
        options[label] = _options(given, default)
        prepared[label] = prepare(run, query, method, given)
    parts, seconds = {}, {}
    with curv.shared_fits():  # identical curvature fits (e.g. SOURCE and Fast-SOURCE's segments) made once
        for label, (spec, checked) in prepared.items():
            start = time.perf_counter()
            parts[label] = spec.per_stage(run, query, checked, progress)
            seconds[label] = time.perf_counter() - start
    planned = [(label, s) for label, got in parts.items() for s, part in enumerate(got) if isinstance(part, Plan)]
    rows = {key: sum(len(t.u) for t in parts[key[0]][key[1]].terms) for key in planned}
    values, extra = {}, dict.fromkeys(parts, 0.0)
    for kind in dict.fromkeys(options[label] for label, _ in planned):  # one shared pass per product option
        group = [key for key in planned if options[key[0]] == kind]
        start = time.perf_counter()
        values.update(zip(group, evaluate([parts[label][s] for label, s in group], kind, progress=progress),
                          strict=True))
        shared = time.perf_counter() - start
        total = max(sum(rows[key] for key in group), 1)
        for key in group:
            extra[key[0]] += shared * rows[key] / total
    diagnostics = {}
    for key in planned:  # recorded iterates of a refined solve: one more pass, for the configurations that ask
        plan = parts[key[0]][key[1]]
        extra_plan = iterates_plan(plan)
        more = evaluate([extra_plan], options[key[0]]) if extra_plan is not None else []
        diagnostics[key] = with_iterates([plan], more, run.final.dtype)[0]
    result = {}
    for label, (spec, checked) in prepared.items():
        recorded = {**checked.changed(), **options[label].recorded()}
        scores = [Scores(ensure_finite(values.get((label, s), part).to(run.final.dtype), spec.name), spec.name,
                         seconds[label] + extra[label], recorded, stage_of(run, s), checked.notes(),
                         diagnostics.get((label, s), {}), run.stages[s].train.x)
                  for s, part in enumerate(parts[label])]
        result[label] = run.per_stage(scores)
    return result
