"""benchmarks/ holds every bench and diagnostic script, each on core's public names; scripts/ only what users run.

The scripts are read as syntax trees, never imported (importing one would load torch, anomalib and
the models). Access to private attributes (``obj._x``) is ruff's SLF001, which benchmarks/ is held to.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
USER_SCRIPTS = {"run.sh", "test.sh", "_venv.sh", "_postgres.sh"}  # _*: sourced by the other two


def _bench_python() -> list[Path]:
    files = sorted(BENCHMARKS.glob("*.py"))
    assert files, "benchmarks/ holds no script"
    return files


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_core(module: str) -> bool:
    return module == "core" or module.startswith("core.")


def _private_core_imports(tree: ast.Module) -> list[str]:
    """``from core... import _x``, ``import core._m`` and ``from core._m import x``, anywhere in the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_core(node.module):
            module_private = any(part.startswith("_") for part in node.module.split("."))
            found += [f"from {node.module} import {a.name}" for a in node.names if module_private or a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [
                f"import {a.name}" for a in node.names if _is_core(a.name) and any(p.startswith("_") for p in a.name.split("."))
            ]
    return found


def _sys_path_edits(tree: ast.Module) -> list[int]:
    """Lines that touch ``sys.path`` (or import ``path`` from sys, or call ``site.addsitedir``)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in {("sys", "path"), ("site", "addsitedir")}:
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "path" for a in node.names):
            lines.append(node.lineno)
    return lines


def test_benchmarks_import_only_public_core_names() -> None:
    bad = {p.name: names for p in _bench_python() if (names := _private_core_imports(_tree(p)))}
    assert bad == {}


def test_benchmarks_do_not_edit_sys_path() -> None:
    # The project is installed editable (scripts/_venv.sh): `core` imports without path tricks.
    bad = {p.name: lines for p in _bench_python() if (lines := _sys_path_edits(_tree(p)))}
    assert bad == {}


def test_every_benchmark_is_in_the_readme() -> None:
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    scripts = [p.name for p in sorted(BENCHMARKS.iterdir()) if p.suffix in {".py", ".sh"}]
    missing = [name for name in scripts if not re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", readme)]
    assert missing == []


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_readme_links_point_at_tables_of_the_benchmarks_page() -> None:
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    page = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    anchors = {_github_anchor(h) for h in re.findall(r"^#{1,6} +(.+?) *$", page, flags=re.MULTILINE)}
    linked = re.findall(r"\]\(\.\./docs/benchmarks\.md#([^)]+)\)", readme)
    assert linked
    assert sorted(a for a in set(linked) if a not in anchors) == []


def test_scripts_folder_holds_only_what_users_run() -> None:
    held = {p.name for p in (REPO / "scripts").iterdir() if p.name != "__pycache__"}
    assert held == USER_SCRIPTS
