"""How a notebook's printed output is compared with the output stored in the notebook.

Text is compared exactly; the numbers inside it are compared with a tolerance. A float path (the CPU's vector
width, the math library's kernels, the number of threads) changes the last bits of every sum, and hundreds of
training steps carry that into printed digits, so digit-for-digit comparison fails on every machine but the one
that stored the outputs. Comparing the words exactly and the numbers within a measured tolerance still fails a
wrong method: a flipped sign, a changed ranking or an LDS moved by more than its float-path spread.

The rules, in order:

- the text around the numbers (and the count of numbers) must be identical;
- a number equal to the stored one passes;
- every number may differ by one unit in its last printed digit: a value that sits on a rounding edge (0.0749 on
  one machine, 0.0751 on another) prints one unit apart however small the float difference;
- a cell may widen that in its metadata, ``{"tdakit": {"tolerance": {"abs": A, "rel": R}}}``: then a number
  passes when |test - stored| <= one unit + A + R |stored|. BENCHMARKS.md ("Notebooks across float paths")
  records each cell's measured spread and the tolerance chosen from it; ``benchmarks/notebook_spread.py``
  measures them.

Numbers that are identifiers rather than figures (a layer named "3.block.0.0", a seed, a shape) are compared like
any other number; they do not move between float paths, so the default (one unit) is exact enough for them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# a number as printed: optional sign, digits with an optional fraction, optional exponent; not part of a word
NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])")


@dataclass(frozen=True)
class Tolerance:
    """|test - stored| <= unit + abs + rel * |stored|, unit = one unit in the stored number's last printed digit."""

    abs: float = 0.0
    rel: float = 0.0

    @classmethod
    def of_cell(cls, metadata: dict) -> Tolerance:
        spec = (metadata.get("tdakit") or {}).get("tolerance") or {}
        unknown = set(spec) - {"abs", "rel"}
        if unknown:
            raise ValueError(f"cell tolerance takes 'abs' and 'rel', not {sorted(unknown)}")
        return cls(float(spec.get("abs", 0.0)), float(spec.get("rel", 0.0)))

    def allows(self, stored: str, test: str) -> bool:
        a, b = float(stored), float(test)
        if a == b:
            return True
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        return abs(b - a) <= last_unit(stored) * (1 + 1e-9) + self.abs + self.rel * abs(a)


def last_unit(printed: str) -> float:
    """One unit in the last printed digit: '0.26' -> 0.01, '3.1e-04' -> 1e-05, '560' -> 1."""
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """text -> (the pieces of text between numbers [k + 1], the numbers as printed [k])."""
    numbers = NUMBER.findall(text)
    return NUMBER.split(text), numbers


def differences(stored: str, test: str, tolerance: Tolerance = Tolerance()) -> list[str]:
    """What does not match between a stored output and a new one, as readable lines (empty: they match)."""
    stored_text, stored_numbers = split_numbers(stored)
    test_text, test_numbers = split_numbers(test)
    if stored_text != test_text:
        for s, t in zip(stored_text, test_text, strict=False):
            if s != t:
                return [f"text differs: stored {s!r}, now {t!r}"]
        return [f"text differs: stored {len(stored_numbers)} numbers, now {len(test_numbers)}"]
    out = []
    for j, (s, t) in enumerate(zip(stored_numbers, test_numbers, strict=True)):
        if not tolerance.allows(s, t):
            context = stored_text[j][-40:].replace("\n", " | ")
            out.append(f"...{context}[{s}] is now {t} (allowed: one unit in the last digit"
                       + (f" + {tolerance.abs:g} + {tolerance.rel:g} x |stored|)" if tolerance != Tolerance() else ")"))
    return out


def spreads(stored: str, others: list[str]) -> list[tuple[str, str, float]] | None:
    """For every number of ``stored``: (the text before it, the number, the largest |other - stored|) over the
    other outputs of the same cell. None when the text differs in one of them (not a float-path effect)."""
    stored_text, stored_numbers = split_numbers(stored)
    spread = [0.0] * len(stored_numbers)
    for other in others:
        text, numbers = split_numbers(other)
        if text != stored_text:
            return None
        spread = [max(d, abs(float(b) - float(a))) for d, a, b in zip(spread, stored_numbers, numbers, strict=True)]
    return [(stored_text[j][-30:], n, d) for j, (n, d) in enumerate(zip(stored_numbers, spread, strict=True))]
