"""The layers hold: core never imports the pages or Streamlit, only the front ends (services, API,
CLI) import the services, command-line printing lives in core/cli.py, and core's module-level
imports form no cycle. Read from the source with ``ast``, so nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "core"
#: What may import core.services: the services themselves and the front ends above them.
FRONT_ENDS = ("core.services", "core.api", "core.cli", "core.__main__")
#: Modules that may print: the command line, and the job supervisor's usage line.
MAY_PRINT = {"core.cli", "core.jobs"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in CORE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, module_level: bool) -> set[str]:
    """Modules imported by ``path``: ``from pkg import sub`` counts as ``pkg.sub`` when that is a module.

    ``module_level``: only the statements run at import (not those inside functions or under
    ``if TYPE_CHECKING``), the ones that can make a cycle.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES.keys()
            out |= subs or {node.module}
    return out


def test_core_never_imports_pages_or_streamlit() -> None:
    bad = {
        m: sorted(i for i in _imports(p, module_level=False) if i.split(".")[0] in {"pages", "streamlit"})
        for m, p in MODULES.items()
    }
    assert {m: i for m, i in bad.items() if i} == {}


def test_only_front_ends_import_the_services() -> None:
    upward = {
        m: sorted(i for i in _imports(p, module_level=False) if i.startswith(FRONT_ENDS))
        for m, p in MODULES.items()
        if not m.startswith(FRONT_ENDS)
    }
    assert {m: i for m, i in upward.items() if i} == {}


def test_no_import_cycle_in_core() -> None:
    graph = {m: {i for i in _imports(p, module_level=True) if i in MODULES and i != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_command_line_printing_is_in_the_cli_only() -> None:
    printing = {
        m: sorted({n.lineno for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))) if _is_print(n)})
        for m, p in MODULES.items()
        if m not in MAY_PRINT
    }
    assert {m: lines for m, lines in printing.items() if lines} == {}


def _is_print(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
