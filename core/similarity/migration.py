"""Move a store written by qdrant-client's local mode into Qdrant Edge, once, losing nothing.

Earlier versions kept the embedded store in local mode (``P/meta.json``, ``P/collection/...``).
The first time the Edge engine opens ``P`` it copies every local-mode collection into ``P/edge``:
points with their named vectors and payloads, and verifies the copy (same point count, and a
sample of points whose vectors point the same way and whose payloads are equal) before making it
live. The local-mode files are never deleted or changed; ``P/edge/migrated.json`` records what was
copied, and the message says they can be removed by hand. A copy that does not verify is dropped
(only the copy) and reported as a :class:`StoreError`; the next open tries again.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.errors import StoreError

log = logging.getLogger(__name__)

MARKER = "migrated.json"
#: Points per collection whose vectors and payload are compared after the copy.
SAMPLE = 64
_STAGING = ".migrating"


def needs_migration(path: Path) -> bool:
    """Whether ``path`` holds a local-mode store not yet copied into Edge."""
    from core.similarity.edge_store import edge_root

    return (path / "meta.json").is_file() and (path / "collection").is_dir() and not (edge_root(path) / MARKER).is_file()


def migrate_if_needed(path: Path, *, announce: bool = True) -> dict[str, int] | None:
    """Copy the local-mode store at ``path`` into Edge if not done yet; points per collection."""
    path = Path(path).expanduser()
    if not needs_migration(path):
        return None
    return migrate(path, announce=announce)


def _say(message: str, announce: bool) -> None:
    log.info(message)
    if announce:
        print(f"Inspect: {message}", file=sys.stderr)


def migrate(path: Path, *, announce: bool = True) -> dict[str, int]:
    """Copy every collection of the local-mode store at ``path`` into Edge and verify it."""
    from core.similarity.edge_store import EdgeBackend, discard_engine, edge_root
    from core.similarity.store import ClientBackend, _open_embedded

    root = edge_root(path)
    _say(f"moving the similar-defect store {path} from local mode to Qdrant Edge (once; nothing is deleted)", announce)
    source = ClientBackend(_open_embedded(path))  # locked or corrupt: its StoreError, nothing touched
    copied: dict[str, int] = {}
    try:
        names = source.collection_names()
        staging = root / _STAGING
        shutil.rmtree(staging, ignore_errors=True)  # a copy of ours left by an interrupted run
        staging.mkdir(parents=True)
        target = EdgeBackend(staging)
        try:
            for name in names:
                if (root / name).exists():
                    _say(f"collection {name} is already in Qdrant Edge; its local-mode copy is left as it is", announce)
                    continue
                copied[name] = _copy_collection(source, target, name)
        finally:
            target.close()
            discard_engine(staging)
    finally:
        source.close()
    for name in copied:  # verified: make the copies live
        (staging / "edge" / name).rename(root / name)
    shutil.rmtree(staging, ignore_errors=True)
    discard_engine(path)  # forget any state loaded before the copies existed
    record = {"from": str(path), "time": datetime.now(UTC).isoformat(timespec="seconds"), "points": copied}
    (root / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    total = sum(copied.values())
    _say(
        f"copied {total} point(s) in {len(copied)} collection(s) into {root} and verified them; the "
        f"local-mode files ({path / 'meta.json'}, {path / 'collection'}) were kept and can be removed by hand",
        announce,
    )
    return copied


def same_payload(a: object, b: object) -> bool:
    """Payloads equal up to the last bit of a float (Edge may round-trip 0.1166...67 as ...68)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_payload(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _copy_collection(source, target, name: str) -> int:
    """Copy one collection page by page, then verify count and a sample; returns its points."""
    dims = source.vector_sizes(name)
    if dims is None:
        return 0
    target.create_collection(name, dims)
    offset = None
    sample: list[tuple[str, dict[str, np.ndarray], dict]] = []
    while True:
        page, offset = source.scroll(name, offset, 256, with_vectors=True)
        if page:
            target.upsert(name, [(pid, {k: v.tolist() for k, v in vec.items()}, payload) for pid, vec, payload in page])
            step = max(1, len(page) // 8)
            sample += page[::step]
        if offset is None:
            break
    expected, got = source.count(name, None), target.count(name, None)
    if expected != got:
        raise StoreError(f"migrating {name} to Qdrant Edge copied {got} of {expected} points; nothing was deleted")
    rng = np.random.default_rng(0)
    chosen = [sample[i] for i in rng.choice(len(sample), size=min(SAMPLE, len(sample)), replace=False)] if sample else []
    stored = {pid: (vec, payload) for pid, vec, payload in target.retrieve(name, [p[0] for p in chosen], True, True)}
    for pid, vectors, payload in chosen:
        if pid not in stored or not same_payload(stored[pid][1], payload):
            raise StoreError(f"migrating {name} to Qdrant Edge: point {pid} differs after the copy; nothing was deleted")
        for key, vector in vectors.items():
            copy = stored[pid][0].get(key)
            cosine = float(np.dot(vector, copy) / (np.linalg.norm(vector) * np.linalg.norm(copy))) if copy is not None else 0.0
            if cosine < 1 - 1e-5:
                raise StoreError(
                    f"migrating {name} to Qdrant Edge: vector {key} of {pid} differs after the copy; nothing was deleted"
                )
    return got
