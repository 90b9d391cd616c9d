"""How far the notebooks' printed figures move between float paths, and whether their checks still hold.

    python benchmarks/notebook_spread.py run --path compatible [--notebooks 01 05] [--out DIR]
    python benchmarks/notebook_spread.py report DIR [DIR ...]

``run`` executes notebooks top to bottom under one float path, with an empty cache (nothing computed under
another path is reused), and writes the executed copies to DIR/<path>/ (atomically). The paths:

    default     this machine as it is
    compatible  MKL_CBWR=COMPATIBLE: the math library's most portable kernels
    avx2        MKL_CBWR=AVX2: the math library's AVX2 kernels (what a CPU without AVX-512 gets)
    avx2-all    AVX2 everywhere: MKL, PyTorch's own vector kernels (ATEN_CPU_CAPABILITY) and oneDNN
    one-thread  one thread instead of the machine's cores (sums split differently)

``report`` compares every executed copy with the outputs stored in notebooks/: per cell, the largest absolute
and relative move of any printed number, whether the text around the numbers changed, and whether the cell
passes the notebook check (tests/notebook_outputs.py) with the tolerance in its metadata.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tdakit.store import write_atomic  # noqa: E402
from tests.notebook_outputs import Tolerance, differences, spreads  # noqa: E402

PATHS = {
    "default": {},
    "compatible": {"MKL_CBWR": "COMPATIBLE"},
    "avx2": {"MKL_CBWR": "AVX2"},
    "avx2-all": {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "one-thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
}


def notebooks(chosen: list[str] | None) -> list[Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not chosen or any(p.name.startswith(c) for c in chosen)]


def cell_outputs(cell) -> list[str]:
    """The texts nbval compares for a code cell: each stream (coalesced by name) and each text/plain."""
    streams: dict[str, str] = {}
    plain = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            streams[out["name"]] = streams.get(out["name"], "") + out["text"]
        elif "text/plain" in out.get("data", {}) and "application/vnd.jupyter.widget-view+json" not in out["data"]:
            plain.append(out["data"]["text/plain"])
    return [*streams.values(), *plain]


def checked(cell) -> bool:
    return cell.cell_type == "code" and "NBVAL_IGNORE_OUTPUT" not in cell.source and "NBVAL_SKIP" not in cell.source


def run(path: str, chosen: list[str] | None, out: Path) -> None:
    os.environ.update(PATHS[path])
    os.environ["TDAKIT_CACHE"] = tempfile.mkdtemp(prefix=f"tdakit-cache-{path}-")
    for notebook in notebooks(chosen):
        nb = nbformat.read(notebook, as_version=4)
        NotebookClient(nb, timeout=3600, kernel_name="python3",
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
        target = out / path / notebook.name
        write_atomic(target, lambda f, nb=nb: f.write(nbformat.writes(nb).encode()))
        print(f"{path}: {notebook.name} done", flush=True)


def report(folders: list[Path], markdown: bool = False) -> None:
    """Per cell: how many printed numbers moved on any path, the largest move on each path, and whether the cell
    passes its check (its metadata tolerance) everywhere. markdown: as the rows of BENCHMARKS.md's table."""
    names = [f.name for f in folders]
    if markdown:
        print("| notebook | cell | numbers moved | largest move: " + " / ".join(names) + " | tolerance | check |")
        print("|---|---|---|---|---|---|")
    for notebook in notebooks(None):
        stored = nbformat.read(notebook, as_version=4)
        runs = {f.name: nbformat.read(f / notebook.name, as_version=4) for f in folders
                if (f / notebook.name).exists()}
        if not runs:
            continue
        if not markdown:
            print(f"\n## {notebook.name} ({', '.join(runs)})")
        for index, cell in enumerate(stored.cells):
            if checked(cell):
                _report_cell(notebook.name[:2], index, cell, runs, markdown)


def _report_cell(label: str, index: int, cell, runs: dict, markdown: bool) -> None:
    tolerance = Tolerance.of_cell(cell.metadata)
    for k, text in enumerate(cell_outputs(cell)):
        others = {name: cell_outputs(nb.cells[index]) for name, nb in runs.items()}
        others = {name: outs[k] if k < len(outs) else "" for name, outs in others.items()}
        failing = {name: lines for name, other in others.items()
                   if (lines := differences(text, other, tolerance))}
        moved_by = {name: spreads(text, [other]) for name, other in others.items()}
        if any(m is None for m in moved_by.values()):
            print(f"cell {index}: TEXT DIFFERS in {sorted(n for n, m in moved_by.items() if m is None)}")
            continue
        largest = {name: max((d for _, _, d in m), default=0.0) for name, m in moved_by.items()}
        moved = {j for m in moved_by.values() for j, (_, _, d) in enumerate(m) if d > 0}
        if not moved and not failing:
            continue
        total = len(next(iter(moved_by.values())))
        status = f"FAILS in {', '.join(sorted(failing))}" if failing else "passes"
        allowed = " + ".join(["one unit", *([f"{tolerance.abs:g}"] if tolerance.abs else []),
                              *([f"{tolerance.rel:g} x |stored|"] if tolerance.rel else [])])
        if markdown:
            moves = " / ".join(f"{largest[n]:.3g}" for n in runs)
            print(f"| {label} | {index} | {len(moved)} of {total} | {moves} | {allowed} | {status} |")
        else:
            print(f"cell {index}: {len(moved)}/{total} numbers moved; largest per path "
                  f"{ {n: round(v, 6) for n, v in largest.items()} }; check {status}")
            for name, lines in failing.items():
                for line in lines[:4]:
                    print(f"    {name}: {line}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--path", choices=sorted(PATHS), required=True)
    r.add_argument("--notebooks", nargs="*", help="name prefixes, e.g. 01 05 (default: all)")
    r.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "notebook-spread")
    p = sub.add_parser("report")
    p.add_argument("folders", type=Path, nargs="+")
    p.add_argument("--markdown", action="store_true", help="rows of the table in BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.path, args.notebooks, args.out)
    else:
        report(args.folders, args.markdown)


if __name__ == "__main__":
    main()
