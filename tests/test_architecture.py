"""The picture in docs/architecture.md holds: no import runs to a higher floor, none goes round in a circle, and
every module has a floor."""

import ast
import re
from pathlib import Path

import tdakit

PACKAGE = Path(tdakit.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"
COMPAT = {"unroll", "unroll_stack", "whatif", "spectrum", "widgets.spectrum"}  # tdakit 0.2's paths: forwards only


def floors() -> dict[str, int]:
    """{part: floor} from the table in docs/architecture.md."""
    block = DOC.read_text().split("```", 2)[1]
    out = {}
    for line in block.strip().splitlines()[1:]:
        floor, names = line.split(maxsplit=1)
        for name in re.split(r",\s*", names.strip()):
            out[name] = int(floor)
    return out


def modules() -> dict[str, Path]:
    """{dotted name below tdakit ("" for the package itself): file}."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def part_of(module: str, table: dict[str, int]) -> str:
    """The part of the table a module belongs to: itself, or the package it sits in."""
    if module == "":
        return "tdakit"
    pieces = module.split(".")
    for n in range(len(pieces), 0, -1):
        if ".".join(pieces[:n]) in table:
            return ".".join(pieces[:n])
    raise AssertionError(f"tdakit.{module} has no floor in docs/architecture.md")


def imports(module: str, path: Path) -> set[str]:
    """The tdakit modules a file imports (anywhere in it), as dotted names below tdakit."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tdakit"):
            found.add(node.module.removeprefix("tdakit").lstrip("."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("tdakit").lstrip(".") for a in node.names if a.name.startswith("tdakit"))
    known = modules()
    # "from . import x" names a module when x is one, else an attribute of the package
    return {m if m in known else m.rpartition(".")[0] for m in found} - {module}


def test_no_import_runs_to_a_higher_floor():
    table = floors()
    wrong = []
    for module, path in modules().items():
        if module in COMPAT:
            continue
        own = table[part_of(module, table)]
        for target in imports(module, path):
            if target in COMPAT:  # only the package keeps them importable
                if module:
                    wrong.append(f"tdakit.{module} imports tdakit 0.2's path tdakit.{target}")
            elif table[part_of(target, table)] > own:
                wrong.append(f"tdakit.{module} (floor {own}) imports tdakit.{target} "
                             f"(floor {table[part_of(target, table)]})")
    assert not wrong, "\n".join(wrong)


def test_no_imports_go_round_in_a_circle():
    graph = {m: imports(m, p) for m, p in modules().items()}
    done, active, cycles = set(), [], []

    def visit(m):
        if m in active:
            cycles.append(active[active.index(m):] + [m])
            return
        if m in done:
            return
        active.append(m)
        for t in graph.get(m, ()):
            visit(t)
        active.pop()
        done.add(m)

    for m in graph:
        visit(m)
    assert not cycles, cycles


def test_every_part_in_the_table_exists():
    names = set(modules())
    for part in floors():
        assert part == "tdakit" or part in names, f"docs/architecture.md names {part}, which is not a module"
