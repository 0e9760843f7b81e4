"""The code-layout table of docs/architecture.md matches the tree: every path it names exists, every module is named."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _layout_section() -> str:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index("## Code layout")
    end = text.index("\n### Adding a model", start)  # the table, not the PaDiM walk-through after it
    return text[start:end]


def _named_paths() -> set[str]:
    return {m for m in re.findall(r"`([A-Za-z0-9_./]+\.py)`", _layout_section())}


def test_every_path_in_the_layout_table_exists() -> None:
    named = _named_paths()
    assert len(named) > 30
    assert sorted(p for p in named if not (REPO / p).is_file()) == []


def test_every_module_is_in_the_layout_table() -> None:
    named = _named_paths()
    modules = [
        p.relative_to(REPO).as_posix()
        for folder in ("core", "pages")
        for p in (REPO / folder).rglob("*.py")
        if p.name != "__init__.py" or p.parent.name == "models" and p.parent.parent.name == "core"
    ]
    assert sorted(m for m in modules if m not in named) == []


def test_architecture_page_names_real_modules() -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:core|pages)/[A-Za-z0-9_./<>]+\.py)`", text))
    assert len(paths) > 20
    assert sorted(p for p in paths if "<" not in p and not (REPO / p).is_file()) == []
