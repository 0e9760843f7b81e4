"""What each ``index`` run wrote, so that an emptied, damaged or half-built index is noticed.

An embedded Qdrant store whose ``storage.sqlite`` was truncated to 0 bytes or deleted opens
without a word as an empty collection, and a killed ``index`` run leaves a partial one. Neither can
be told from the store alone, so the index run records, *outside* the store folder, per store and
(model, category): how many dataset points it meant to write (``expected``), how many the
collection held when it finished (``points``) and whether it finished (``complete``).
:func:`check_index` compares a collection with that record.

The file (``get_settings().similarity_manifest``, JSON) is written atomically (temporary file +
rename) under an exclusive file lock, so two index runs never lose each other's entries and a
reader never sees half a file. Only dataset points (splits train/test) are compared: uploads are
added between runs and are not part of what a run promises.

Entries are keyed by the store's location (folder or server URL), so pointing the app at another
store does not report the new one as emptied; an entry with no record at all means "never indexed
here", and nothing is reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pair(model: str, category: str) -> str:
    return f"{model}/{category}"


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
    found = load_manifest(path)["stores"].get(location, {}).get(_pair(model, category))
    return found if isinstance(found, dict) else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the manifest for one read-modify-write (processes and threads)."""
    import portalocker  # a qdrant-client dependency, like the store's own lock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = portalocker.Lock(str(path) + ".lock", mode="a", timeout=30)  # polls a non-blocking lock
    try:
        lock.acquire()
    except portalocker.exceptions.BaseLockException:
        raise StoreError(f"the index manifest {path} stayed locked for 30 s by another index run; try again") from None
    try:
        yield
    finally:
        lock.release()


def _update(location: str, model: str, category: str, values: dict[str, Any]) -> None:
    path = manifest_path()
    try:
        with _locked(path):
            data = load_manifest(path)
            data["stores"].setdefault(location, {})[_pair(model, category)] = values
            write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), sync=True, private=True)
    except OSError as exc:
        raise StoreError(f"cannot write the index manifest {path}: {exc}") from None


def run_started(location: str, model: str, category: str, expected: int) -> None:
    """Mark (model, category) as being indexed: incomplete until :func:`run_finished`.

    The pid and host let a reader tell a run still going (not a problem) from one that was killed.
    """
    _update(
        location,
        model,
        category,
        {
            "expected": int(expected),
            "points": None,
            "complete": False,
            "started": _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
    )


def run_finished(location: str, model: str, category: str, expected: int, points: int) -> None:
    """Record a finished run: the collection held ``points`` dataset points at the end."""
    _update(
        location,
        model,
        category,
        {"expected": int(expected), "points": int(points), "complete": True, "finished": _now(), "pid": None, "host": None},
    )


def run_failed(location: str, model: str, category: str, expected: int) -> None:
    """A run that stopped on an error (or Ctrl-C): still incomplete, but no longer running."""
    _update(
        location,
        model,
        category,
        {"expected": int(expected), "points": None, "complete": False, "stopped": _now(), "pid": None, "host": None},
    )


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
    """A one-line problem when a collection holding ``have`` dataset points disagrees with ``record``.

    ``hint=False`` leaves out "re-run `python -m core index`" (for the index run itself).
    """
    if record is None:
        return None
    pair = _pair(model, category)
    rerun = f"re-run `{REINDEX_COMMAND}`"
    if not record.get("complete"):
        if _still_running(record):
            return None
        found = f"the last index run for {pair} did not finish ({have} of {record.get('expected', '?')} points)"
        return f"{found}: {rerun}" if hint else found
    expected = int(record.get("points") or 0)
    if have < expected:
        found = f"the similar-defect index for {pair} holds {have} of {expected} expected points: it was emptied or damaged"
        return f"{found}; {rerun}" if hint else found
    return None


#: (store, model, category) -> (all points, dataset points) at the last exact count, per process.
_DATASET_COUNTS: dict[tuple[str, str, str], tuple[int, int]] = {}


def dataset_points(store: Any, model: str, category: str) -> int:
    """The collection's dataset points (splits train/test), recounted only when its total changed.

    Why cached: counting by ``split`` scans every payload on Qdrant Edge (~0.2 s at 100,000 points,
    with or without an index on it; README), and the Similar page asks on every render, while the
    plain total is a few milliseconds. Points are added or dropped, never moved between splits, so
    an unchanged total means an unchanged dataset count.
    """
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
