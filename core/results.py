"""The one results file the dashboard reads (JSON).

Layout::

    {"version": 1,
     "models": {"patchcore/tile": {...metrics, training info...}, ...},
     "retrieval": {"patchcore/tile": {...precision@5 per descriptor...}, ...}}

Commands update their own entries and keep everyone else's; the file is replaced atomically so
the app never reads half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.settings import get_settings

VERSION = 1


def results_path(path: str | Path | None = None) -> Path:
    return Path(path) if path else get_settings().results_file


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The results, or an empty skeleton when nothing has been evaluated yet."""
    file = results_path(path)
    if not file.is_file():
        return {"version": VERSION, "models": {}, "retrieval": {}}
    data = json.loads(file.read_text())
    data.setdefault("models", {})
    data.setdefault("retrieval", {})
    return data


def update_results(section: str, entries: dict[str, Any], path: str | Path | None = None) -> Path:
    """Merge ``entries`` into ``section`` ('models' or 'retrieval') and write the file."""
    file = results_path(path)
    data = load_results(file)
    data.setdefault(section, {}).update(entries)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, file)
    return file


def entry_key(model: str, category: str) -> str:
    return f"{model}/{category}"
