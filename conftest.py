"""pytest set-up shared by the notebook tests (nbval) and the unit tests.

nbval compares a re-run notebook cell's output with the stored one character for character. A different CPU, math
library path or thread count changes the last bits of sums, and long training runs carry that into printed
digits, so here the comparison is the one in tests/notebook_outputs.py instead: the text exactly, every number
within one unit of its last printed digit plus the tolerance the cell's metadata states (measured:
benchmarks/notebook_spread.py, BENCHMARKS.md "Notebooks across float paths"). docs/notebooks.md says more.
"""

from __future__ import annotations

from tests.notebook_outputs import Tolerance, differences


def _by_key(outputs: list, skip: tuple, sanitize) -> dict[str, list]:
    """nbval's arrangement of a cell's outputs: {stream name or MIME type: [values in order]}."""
    arranged: dict[str, list] = {}
    for output in outputs:
        for key, value in output.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        arranged.setdefault(mime, []).append(sanitize(data))
            else:
                arranged.setdefault(key, []).append(sanitize(value))
    return arranged


def _compare_outputs(self, test, ref, skip_compare=None) -> bool:
    """nbval's IPyNbCell.compare_outputs with numbers compared within the cell's tolerance."""
    from nbval.plugin import transform_streams_for_comparison

    skip = skip_compare or self.parent.skip_compare
    tolerance = Tolerance.of_cell(self.cell.metadata)
    now = _by_key(transform_streams_for_comparison(test), skip, self.sanitize)
    stored = _by_key(transform_streams_for_comparison(ref), skip, self.sanitize)
    self.comparison_traceback = []
    if set(now) != set(stored):
        self.comparison_traceback.append(f"output kinds differ: stored {sorted(stored)}, now {sorted(now)}")
        return False
    for key, values in stored.items():
        if len(now[key]) != len(values):
            self.comparison_traceback.append(f"{len(values)} outputs of kind {key!r} stored, {len(now[key])} now")
            return False
        for old, new in zip(values, now[key], strict=True):
            problems = differences(old, new, tolerance) if isinstance(old, str) and isinstance(new, str) else (
                [] if old == new else [f"{key} differs"])
            if problems:
                self.comparison_traceback += [f"mismatch in {key!r}:", *("  " + p for p in problems),
                                              "stored:", old if isinstance(old, str) else repr(old),
                                              "now:", new if isinstance(new, str) else repr(new)]
                return False
    return True


def pytest_configure(config) -> None:
    if getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False):
        from nbval.plugin import IPyNbCell

        IPyNbCell.compare_outputs = _compare_outputs
