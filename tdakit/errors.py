"""One family of errors for everything a user can fix.

Every problem tdakit reports about its input -- data, settings, a model it cannot handle, training that
diverged, a missing data folder -- is a ``TdakitError``, a ``ValueError`` whose message says what was wrong and
how to fix it. Anything else that escapes tdakit (a ``RuntimeError``, an ``IndexError``, ...) is a bug, and
callers such as the widgets let it surface instead of showing it as a hint:

    try:
        scores = tdakit.attribute(run, query, "source")
    except tdakit.TdakitError as problem:
        print("fix this:", problem)
"""

from __future__ import annotations

import typing


class TdakitError(ValueError):
    """A problem with what tdakit was given; the message says how to fix it."""


class InputError(TdakitError):
    """Data that does not fit: shapes, dtypes, non-finite values, labels out of range, empty splits."""


class SettingError(TdakitError):
    """An argument or setting out of range, of the wrong type, or not one of the accepted choices."""


class ModelError(TdakitError):
    """A model (or one of its layers) that a method or curvature backend cannot handle, with what to do instead."""


class TrainingError(TdakitError):
    """Training that diverged or produced non-finite values."""


class ResultError(TdakitError):
    """A computation whose result cannot be trusted (non-finite scores, a curvature a method refuses)."""


class DataNotFoundError(TdakitError):
    """A data folder or file that is missing or not in a layout tdakit reads."""


def check_choice(name: str, value: object, choices) -> None:
    """Raise a ``SettingError`` unless ``value`` is one of ``choices``: a ``Literal[...]`` type (how tdakit writes
    its string settings) or a tuple. The one check every string setting goes through."""
    allowed = typing.get_args(choices) if typing.get_origin(choices) is typing.Literal else tuple(choices)
    if isinstance(value, bool) or value not in allowed:
        raise SettingError(f"{name} must be one of {', '.join(repr(c) for c in allowed)}; got {value!r}")
