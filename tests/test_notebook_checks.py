"""The notebook checks (tests/notebook_outputs.py, used by nbval through conftest.py): text exactly, numbers within
one unit of the last printed digit plus the cell's measured tolerance. They must pass on another float path and
fail on a wrong result: a SOURCE with its sign flipped, or with its segment walk skipped, fails notebook 01."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .notebook_outputs import Tolerance, differences, last_unit, split_numbers

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_numbers_are_split_from_the_text_around_them():
    text, numbers = split_numbers("LDS 0.26 [0.20, -0.30], R = 4, 1e-05, layer 3.block.0.0, L=3 C=6\n")
    assert numbers == ["0.26", "0.20", "-0.30", "4", "1e-05", "3", "3", "6"]  # dotted names: their head only
    assert text[0] == "LDS " and text[-1] == "\n"
    assert last_unit("0.26") == pytest.approx(0.01) and last_unit("560") == 1
    assert last_unit("3.1e-04") == pytest.approx(1e-5) and last_unit("-0.0449") == pytest.approx(1e-4)


def test_a_rounding_edge_passes_and_a_real_change_fails():
    assert differences("interval [0.07, 0.17]", "interval [0.08, 0.17]") == []  # one unit: a rounding edge
    assert differences("interval [0.07, 0.17]", "interval [0.09, 0.17]")  # two units
    assert differences("Spearman 0.18", "Spearman -0.18")  # a flipped sign
    assert differences("eps 1e-05: agrees", "eps 1e-05: does NOT agree")  # the words are compared exactly
    assert differences("3 numbers: 1 2 3", "3 numbers: 1 2")  # a number went missing
    assert differences("count 20", "count 21") == []  # one unit in the last digit of an integer too
    assert differences("count 20", "count 22")


def test_a_cell_tolerance_widens_the_check_by_what_it_states():
    tolerance = Tolerance.of_cell({"tdakit": {"tolerance": {"abs": 0.03}}})
    assert differences("LDS 0.49", "LDS 0.53", tolerance) == []  # 0.04 <= 0.01 + 0.03
    assert differences("LDS 0.49", "LDS 0.54", tolerance)
    relative = Tolerance.of_cell({"tdakit": {"tolerance": {"rel": 0.1}}})
    assert differences("error 3.60 MPa", "error 3.95 MPa", relative) == []
    assert differences("error 3.60 MPa", "error 4.00 MPa", relative)
    with pytest.raises(ValueError, match="'abs' and 'rel'"):
        Tolerance.of_cell({"tdakit": {"tolerance": {"absolute": 1}}})


# Notebook 01 up to SOURCE's first printed figure: data, the run, exact unrolling, influence, then SOURCE against
# exact unrolling (the cells that print what the mutations change; the slow checks in between are left out).
CELLS = [1, 3, 5, 13, 15]
SOURCE_CELL = 15
MUTATIONS = {
    "sign flipped": '''
import tdakit.attribution.source as _source
_step = _source.segment_step
def _flipped(H, eta, steps, v, form="exp", carry=True):  # what each segment learns, with the wrong sign
    learned, carried = _step(H, eta, steps, v, form, carry)
    return -learned, carried
_source.segment_step = _flipped
''',
    "segment walk skipped": '''
import tdakit.attribution.source as _source
_step = _source.segment_step
def _no_forgetting(H, eta, steps, v, form="exp", carry=True):  # later segments no longer forget (Sbar = I)
    return _step(H, eta, steps, v, form, carry=False)
_source.segment_step = _no_forgetting
''',
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_source_fails_the_notebook_checks(mutation, tmp_path, monkeypatch):
    monkeypatch.setenv("TDAKIT_CACHE", str(tmp_path / "cache"))
    stored = nbformat.read(NOTEBOOKS / "01_concrete_triangle.ipynb", as_version=4)
    run = nbformat.v4.new_notebook(metadata=stored.metadata)
    run.cells = [nbformat.v4.new_code_cell(MUTATIONS[mutation])] + [stored.cells[i].copy() for i in CELLS]
    NotebookClient(run, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    failing = []
    for index, cell in zip(CELLS, run.cells[1:], strict=True):
        tolerance = Tolerance.of_cell(stored.cells[index].metadata)
        for old, new in zip(_texts(stored.cells[index]), _texts(cell), strict=True):
            if found := differences(old, new, tolerance):
                failing.append(index)
                print(f"{mutation}: cell {index}: {found[:2]}")  # what BENCHMARKS.md quotes (pytest -s)
    assert SOURCE_CELL in failing, f"the notebook checks did not notice SOURCE with its {mutation}"
    assert set(failing) <= {SOURCE_CELL}, "cells without SOURCE changed too: the comparison is not what it seems"


def _texts(cell) -> list[str]:
    streams: dict[str, str] = {}
    for out in cell.outputs:
        if out.output_type == "stream":
            streams[out.name] = streams.get(out.name, "") + out.text
    return list(streams.values())
