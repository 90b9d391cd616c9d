"""Every method's settings as data: a frozen dataclass per method, with defaults, help text and checks.

``tdakit.METHODS["source"].settings`` is ``SourceSettings``; ``attribute(run, query, "source", segments=2)``
builds ``SourceSettings(segments=2)``, which checks every value before any work starts. Each field's metadata
holds its help text and its cost, from which ``describe`` writes the table in docs/methods.md.

The score products that influence, SOURCE, Fast-SOURCE, TracIn and the gradient dot product share
(``products.evaluate``) have their own options, ``ProductOptions`` (precision, how training gradients are
made), passed where the products are made rather than mixed into any one method's settings.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import torch

from .. import curvature as curv
from .. import deprecation
from ..errors import SettingError, check_choice
from ..hardware import Precision
from .refine import Refine
from .trajectory import check_every

Damping = Literal["implied", "heuristic"]
Form = Literal["exp", "power"]
Gradients = Literal["auto", "hooks", "vmap"]


def setting(default: Any, help: str, cost: str = "") -> Any:  # noqa: A002 (the word the docs use)
    """A settings field: its default, one line of help, and what it costs (docs/methods.md)."""
    if isinstance(default, list | dict | set):
        raise TypeError("settings defaults must be immutable (use a tuple)")
    return field(default=default, metadata={"help": help, "cost": cost})


@dataclass(frozen=True)
class Settings:
    """Base of every method's settings (frozen dataclasses; subclasses add fields made with ``setting``)."""

    def as_dict(self) -> dict[str, Any]:
        """{name: value} for the method's function."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def notes(self) -> tuple[str, ...]:
        """What was decided for the user while preparing the method (e.g. what curvature 'auto' chose)."""
        return getattr(self, "_notes", ())

    def with_note(self, note: str, **changes) -> Settings:
        """A copy with ``changes`` and ``note`` added to ``notes()``."""
        out = dataclasses.replace(self, **changes)
        object.__setattr__(out, "_notes", (*self.notes(), note))
        return out

    def changed(self) -> dict[str, Any]:
        """Only the settings that differ from their defaults (what a Scores records)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    renamed: ClassVar[dict[str, str]] = {}  # tdakit 0.2's names of settings -> their names now

    @classmethod
    def build(cls, method: str, given: dict[str, Any]) -> Settings:
        """The settings from keyword values, with a SettingError that lists the accepted names for a wrong one
        (an old name in ``renamed`` still works, with a warning)."""
        for old, new in cls.renamed.items():
            if old in given:
                deprecation.warn(f"{method}'s setting {old}=", f"{new}=")
                given = {**{k: v for k, v in given.items() if k != old}, new: given[old]}
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            takes = ", ".join(names) if names else "no settings"
            raise SettingError(f"{method} does not take {', '.join(unknown)}; it takes {takes}")
        return cls(**given)

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str, str]]:
        """(name, default, help, cost) for every field."""
        return [(f.name, f.default, f.metadata.get("help", ""), f.metadata.get("cost", "")) for f in fields(cls)]


def check_damping(damping, choices=Damping) -> None:
    """Raise a clear error unless damping is a number >= 0 or one of ``choices`` ("implied", "heuristic")."""
    if isinstance(damping, str):
        check_choice("damping", damping, choices)
        return
    if isinstance(damping, bool) or not isinstance(damping, float | int) or not damping >= 0 \
            or not math.isfinite(damping):
        names = ", ".join(repr(c) for c in typing.get_args(choices))
        raise SettingError(f"damping must be a finite number >= 0 or one of {names}, got {damping!r}")


def check_curvature(curvature) -> None:
    """A registered curvature name or an options object with a ``fit`` method (``curvature.Kronecker``)."""
    if isinstance(curvature, str):
        check_choice("curvature", curvature, ("auto", *curv.BACKENDS))
    elif not callable(getattr(curvature, "fit", None)):
        raise SettingError(f"curvature must be 'auto', a name ({', '.join(curv.BACKENDS)}) or an options object with a "
                           f"fit method such as tdakit.curvature.Kronecker(...), got {curvature!r}")


def _whole(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SettingError(f"{name} must be a whole number >= {least}, got {value!r}")


@dataclass(frozen=True)
class NoSettings(Settings):
    """A method without settings."""


@dataclass(frozen=True)
class UnrolledSettings(Settings):
    dtype: torch.dtype | None = setting(None, "dtype of the replay and the reverse pass (None: the run's; "
                                              "torch.float64 for checks against finite differences)",
                                        "float64 is slower than float32")
    query_chunk: int = setting(128, "queries carried back together",
                               "memory: the trajectory plus ~5 [query_chunk, P] adjoints")
    written_out: bool = setting(True, "take the written-out reverse step for Linear/activation stacks "
                                      "(False: torch.func's vjp everywhere, same numbers)",
                                "the written-out step is the faster where it applies (BENCHMARKS.md)")

    keep_every: int | str = setting("auto", "replayed states stored: 1 (every step's parameters), k (every k-th, "
                                            "each stretch recomputed on the way back) or 'auto' (all while they "
                                            "fit 2 GiB and a quarter of the free memory, else every "
                                            "ceil(sqrt(2T)))",
                                    "k > 1: about (2T/k + k) x P values instead of (T + 1) x P, one more forward "
                                    "pass")

    renamed: ClassVar[dict[str, str]] = {"chunk": "query_chunk"}

    def __post_init__(self):
        _whole("query_chunk", self.query_chunk, 1)
        check_every(self.keep_every)
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise SettingError(f"dtype must be a floating torch dtype or None, got {self.dtype!r}")


@dataclass(frozen=True)
class InfluenceSettings(Settings):
    damping: float | str = setting("implied", "a number >= 0, 'implied' (1 / sum_k eta_k/(1 - momentum), what "
                                              "unrolling the whole run behaves like) or 'heuristic' (0.1 x the "
                                              "mean loss eigenvalue, per layer for Kronecker curvature; better on "
                                              "converged runs, worse on short ones: BENCHMARKS.md, issue 24)")
    curvature: Any = setting("auto", "'auto' (the exact Gauss-Newton 'ggn' while it fits, else 'ekfac'; the "
                                     "scores record which), a curvature backend name ('ggn', 'hessian', "
                                     "'hessian_clipped', 'ekfac', 'kfac') or tdakit.curvature.Kronecker(...)",
                             "one curvature fit at the final parameters")
    theta: torch.Tensor | None = setting(None, "the parameters [P] to take it at (default: the final ones)")
    refine: Any = setting(0, "iterations refining a Kronecker curvature's answer toward the exact damped "
                             "Gauss-Newton solve (0: none), or tdakit.attribution.Refine(...) for all its settings",
                          "one minibatch Gauss-Newton product per iteration for all queries together")

    def __post_init__(self):
        check_damping(self.damping)
        check_curvature(self.curvature)
        Refine.of(self.refine)


@dataclass(frozen=True)
class SourceSettings(Settings):
    segments: int | tuple[int, ...] = setting(3, "L equal segments, or the boundaries [0, b_1, ..., T]",
                                              "one curvature fit per segment")
    curvature: Any = setting("auto", "'auto' (as influence's), a positive semi-definite curvature backend name "
                                     "or Kronecker(...) (the raw 'hessian' only with form='power')",
                             "fitted at every checkpoint of a segment (Fast-SOURCE: at their mean)")
    form: str = setting("exp", "'exp': exp(-eta K H) (the paper's); 'power': (I - eta H)^K, exact unrolling for "
                               "full-batch gradient descent without momentum")
    refine: Any = setting(0, "iterations refining each segment's Kronecker answer toward the exact solve with "
                             "damping 1/(eta_l K_l) (0: none), or tdakit.attribution.Refine(...)",
                          "per iteration one minibatch Gauss-Newton product per checkpoint of the segment")

    def __post_init__(self):
        if isinstance(self.segments, list):
            object.__setattr__(self, "segments", tuple(self.segments))
        if isinstance(self.segments, bool) or not isinstance(self.segments, int | tuple):
            raise SettingError(f"segments must be a whole number L or a list of boundaries [0, ..., T], "
                               f"got {self.segments!r}")
        check_curvature(self.curvature)
        check_choice("form", self.form, Form)
        Refine.of(self.refine)


@dataclass(frozen=True)
class TrakSettings(Settings):
    projection: int = setting(32, "rows and columns kept per side of each layer's gradient matrix",
                              "features: sum over layers of projection^2; one pass over the training set")
    damping: float | str = setting("implied", "a number >= 0, 'implied' or 'heuristic' (of the kernel)")
    seed: int = setting(0, "seed of the random projections")
    exclude: tuple[str, ...] = setting((), "layers to leave out (their scores contributions become 0)")

    def __post_init__(self):
        _whole("projection", self.projection, 1)
        check_damping(self.damping)
        if isinstance(self.exclude, list | str):
            object.__setattr__(self, "exclude", (self.exclude,) if isinstance(self.exclude, str)
                               else tuple(self.exclude))


@dataclass(frozen=True)
class ProductOptions:
    """How the shared score products u . grad L(z_i, theta) are made (influence, SOURCE, Fast-SOURCE, TracIn,
    grad_dot). precision: "float32" (the run's dtype) or "bf16" (bfloat16 inputs, float32 accumulation: tensor
    cores on a GPU). gradients: "hooks" (layer inputs and output gradients of every factored layer, torch.func for
    the other parameters), "vmap" (flat per-example gradients from torch.func) or "auto" (hooks where the
    model has such layers). The default is right; the others are for comparisons."""

    precision: str = "float32"
    gradients: str = "auto"

    def __post_init__(self):
        check_choice("precision", self.precision, Precision)
        check_choice("gradients", self.gradients, Gradients)

    def recorded(self) -> dict[str, str]:
        """What a Scores notes about the products: the precision, when not the default."""
        return {} if self.precision == "float32" else {"precision": self.precision}

    def replace(self, **changes) -> ProductOptions:
        return dataclasses.replace(self, **changes)


def methods_markdown(methods: dict) -> str:
    """docs/methods.md: every registered method with its settings, their defaults, meaning and cost (generated
    from the settings dataclasses; ``tests/test_methods.py`` keeps the page equal to this)."""
    lines = ["# Methods and their settings", "",
             "Generated from the settings classes (`tdakit.METHODS[name].settings`); `tests/test_methods.py` fails "
             "when this page and the code disagree. Every method returns scores in one convention "
             "(conventions.md): score[q, i] = d f_q / d w_i, in the measurement's units.", "",
             "Besides its settings, every call takes `progress=` (bars on or off) and the product options "
             "`precision=` (\"float32\" or \"bf16\") and `gradients=` (\"auto\", \"hooks\" or \"vmap\"), which "
             "influence, SOURCE, Fast-SOURCE, TracIn and the gradient dot product share (`ProductOptions`).", ""]
    for name, spec in methods.items():
        lines += [f"## `{name}`", "", spec.summary + ("" if spec.summary.endswith(".") else "."), ""]
        extra = []
        if spec.needs_checkpoints:
            extra.append("needs checkpoints")
        extra.append("pipelines: yes" if spec.staged is not None else "pipelines: no (one run)")
        lines += [f"*{'; '.join(extra)}*", ""]
        described = spec.settings.describe()
        if not described:
            lines += ["No settings.", ""]
            continue
        lines += ["| setting | default | meaning | cost |", "|---|---|---|---|"]
        for field_name, default, help_text, cost in described:
            lines.append(f"| `{field_name}` | `{default!r}` | {help_text} | {cost} |")
        lines.append("")
    return "\n".join(lines)
