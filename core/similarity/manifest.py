"""What each ``index`` run wrote, so that an emptied, damaged or half-built index is noticed.

A deleted collection reads as missing and a killed run leaves a partial one: neither shows in the
store itself. So each run records outside it, per store location (folder or server URL) and
(model, category), the dataset points it meant to write, those the collection held when it
finished, and whether it finished; :func:`check_index` compares a collection with that. Uploads
are added between runs, so only dataset points (splits train/test) count. The file is replaced
atomically under a file lock; a pair without a record means "never indexed here".
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.data.layout import DATASET_SPLITS
from core.errors import StoreError
from core.files import write_atomically
from core.settings import get_settings

#: The command every message points to.
REINDEX_COMMAND = "python -m core index"


def manifest_path() -> Path:
    return get_settings().similarity_manifest


def load_manifest(path: Path | None = None) -> dict[str, Any]:
    """The manifest as a dict (``{"stores": {location: {"model/category": entry}}}``)."""
    path = path or manifest_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"stores": {}}
    except (OSError, ValueError) as exc:
        # Written atomically, so this is outside damage; say so rather than check against nothing.
        raise StoreError(f"the index manifest {path} cannot be read ({exc}): delete it and re-run `{REINDEX_COMMAND}`") from None
    if not isinstance(data, dict) or not isinstance(data.get("stores"), dict):
        raise StoreError(f"the index manifest {path} is not an Inspect manifest: delete it and re-run `{REINDEX_COMMAND}`")
    return data


def entry(location: str, model: str, category: str, path: Path | None = None) -> dict[str, Any] | None:
    """The last run's record for (model, category) in the store at ``location``, if any."""
    found = load_manifest(path)["stores"].get(location, {}).get(f"{model}/{category}")
    return found if isinstance(found, dict) else None


def _update(location: str, model: str, category: str, values: dict[str, Any]) -> None:
    """Replace one record, under an exclusive lock beside the file (index runs in other processes)."""
    import portalocker  # a qdrant-client dependency

    path = manifest_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with portalocker.Lock(str(path) + ".lock", mode="a", timeout=30):  # polls a non-blocking lock
            data = load_manifest(path)
            data["stores"].setdefault(location, {})[f"{model}/{category}"] = values
            write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), sync=True, private=True)
    except portalocker.exceptions.BaseLockException:
        raise StoreError(f"the index manifest {path} stayed locked for 30 s by another index run; try again") from None
    except OSError as exc:
        raise StoreError(f"cannot write the index manifest {path}: {exc}") from None


def _run(location: str, model: str, category: str, expected: int, points: int | None, state: str) -> None:
    # a pid and host only while running: a reader tells a run still going from one that was killed
    running = {"pid": os.getpid(), "host": socket.gethostname()} if state == "started" else {"pid": None, "host": None}
    record = {"expected": int(expected), "points": points, "complete": state == "finished"}
    _update(location, model, category, record | running | {state: datetime.now(UTC).isoformat(timespec="seconds")})


def run_started(location: str, model: str, category: str, expected: int) -> None:
    """Mark (model, category) as being indexed: incomplete until :func:`run_finished`."""
    _run(location, model, category, expected, None, "started")


def run_finished(location: str, model: str, category: str, expected: int, points: int) -> None:
    """A finished run: the collection held ``points`` dataset points at the end."""
    _run(location, model, category, expected, int(points), "finished")


def run_failed(location: str, model: str, category: str, expected: int) -> None:
    """A run that stopped on an error (or Ctrl-C): incomplete, but no longer running."""
    _run(location, model, category, expected, None, "stopped")


def copy_records(source: str, target: str) -> None:
    """Give the store at ``target`` the records of the store at ``source`` (its points were copied)."""
    for pair, record in load_manifest()["stores"].get(source, {}).items():
        _update(target, *pair.split("/", 1), record)


def _still_running(record: dict[str, Any]) -> bool:
    """Whether the run that wrote an incomplete record is alive (a killed run's pid is gone)."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return False  # another machine's run cannot be checked; a stale record is the worse miss
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def problem(record: dict[str, Any] | None, have: int, model: str, category: str, *, hint: bool = True) -> str | None:
    """One line when a collection holding ``have`` dataset points disagrees with ``record``;
    ``hint=False`` leaves out "re-run `python -m core index`" (for the index run itself)."""
    if record is None or record.get("complete") and have >= int(record.get("points") or 0) or _still_running(record):
        return None
    if record.get("complete"):
        found, glue = (
            f"the similar-defect index for {model}/{category} holds {have} of {record['points']} expected points: it was emptied or damaged",
            "; ",
        )
    else:
        found, glue = (
            f"the last index run for {model}/{category} did not finish ({have} of {record.get('expected', '?')} points)",
            ": ",
        )
    return f"{found}{glue}re-run `{REINDEX_COMMAND}`" if hint else found


#: (store, model, category) -> (all points, dataset points) at the last exact count, per process.
_DATASET_COUNTS: dict[tuple[str, str, str], tuple[int, int]] = {}


def dataset_points(store: Any, model: str, category: str) -> int:
    """The collection's dataset points (splits train/test), recounted only when its total changed:
    the Similar page asks on every render, and the total costs less than half the count by split.
    Points are added or dropped, never moved between splits."""
    total = store.count(model, category)
    key = (str(store.location), model, category)
    cached = _DATASET_COUNTS.get(key)
    if cached is not None and cached[0] == total:
        return cached[1]
    have = store.count(model, category, splits=DATASET_SPLITS)
    _DATASET_COUNTS[key] = (total, have)
    return have


def check_index(store: Any, model: str, category: str, *, hint: bool = True) -> str | None:
    """Compare ``store``'s (model, category) collection with the last index run; a line or None."""
    record = entry(store.location, model, category)
    if record is None:
        return None
    return problem(record, dataset_points(store, model, category), model, category, hint=hint)
