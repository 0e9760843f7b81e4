"""The similarity store's one front door, :class:`SimilarityStore`, whichever engine holds the points.

Each indexed image is one point with two named cosine vectors (``global``: the part; ``defect``: the
defect, see embeddings.py) and a :class:`~core.similarity.payload.CasePayload`. One collection per
(model, category): vector sizes differ per model, descriptors of two categories live in different
feature spaces (models are trained per category), and a retrained category is re-indexed by
dropping exactly its collection. Point ids are ``uuid5(model, category, sha256 of the image)``:
an image indexed twice is one point, and excluding a query's id excludes every copy of it.

The engine is picked once, from settings (:func:`open_backend`): Qdrant Edge in this process by
default, a Qdrant server when ``QDRANT_URL`` is set (:mod:`core.similarity.backends`). Callers never
ask which; :meth:`SimilarityStore.outgrown` says when to move to a server, :func:`copy_points` moves.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from core import settings
from core.data.layout import LABELS
from core.errors import StoreError
from core.settings import get_settings
from core.similarity import backends
from core.similarity.backends import Backend, Conditions, EdgeBackend, ServerBackend
from core.similarity.payload import CasePayload

#: Points in one collection up to which the embedded store's exact search answers the Similar
#: page's filtered top-5 within 20 ms at p95 on 2 CPU cores (AMD EPYC, AVX-512 with bf16), with a
#: margin: ``benchmarks/bench_qdrant.py`` measured 5.3 ms at 100,000 points, 16.0 at 200,000, 11.7 at
#: 250,000, 14.7 and 23.1 at 300,000 (two runs), 24.2 and 29.6 at 400,000 (two 152-d vectors, 20 %
#: of them defects). Past it, a Qdrant server's HNSW index is the tool: ``index --to-server``.
EMBEDDED_MAX_POINTS = 250_000
COLLECTION_PREFIX = "inspect"
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://inspect.invalid/similarity/point")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def collection_name(model: str, category: str, prefix: str = COLLECTION_PREFIX) -> str:
    """``<prefix>__<model>__<category>``; names with other characters get a hash suffix."""
    if not model or not category:
        raise ValueError("model and category must be non-empty")
    parts = (prefix, model, category)
    if all(_SAFE_NAME.match(p) and "__" not in p for p in parts):
        return "__".join(parts)
    digest = hashlib.sha256(f"{model}\x1f{category}".encode()).hexdigest()[:10]
    return "__".join(re.sub(r"[^A-Za-z0-9.-]+", "-", p).strip("-") or "x" for p in parts) + f"__{digest}"


def point_id(image_bytes_sha256: str, model: str, category: str) -> str:
    """Deterministic point id: the same image under the same model and category, the same id."""
    sha = image_bytes_sha256.strip().lower()
    if not _SHA256.match(sha):
        raise ValueError(f"expected a hex SHA-256 of the image bytes, got {image_bytes_sha256!r}")
    return str(uuid.uuid5(_ID_NAMESPACE, f"{model}\x1f{category}\x1f{sha}"))


_id_of_hash = point_id  # for SimilarityStore.similar, whose keyword argument is named point_id


@dataclass
class Record:
    """One image to index: its point id, named vectors and payload (the stored JSON object)."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def case(self) -> CasePayload:
        return CasePayload.from_dict(self.payload)


@dataclass(frozen=True)
class Hit:
    """A neighbour: point id, similarity to the query, and the stored payload."""

    id: str
    score: float
    payload: dict[str, Any]
    #: The stored query-side vector (``using``), only when asked for (``similar(with_vector=True)``).
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def case(self) -> CasePayload:
        return CasePayload.from_dict(self.payload)


def make_record(
    *,
    sha256: str,
    model: str,
    category: str,
    vectors: Mapping[str, np.ndarray],
    image_path: str,
    split: str,
    label: str,
    defect_type: str,
    score: float | None = None,
    inspection_id: str | None = None,
    time: str | None = None,
) -> Record:
    """A :class:`Record` with the id and payload fields the store expects."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    payload = CasePayload(
        image_path=str(image_path),
        category=category,
        split=split,
        label=label,
        defect_type=defect_type,
        score=None if score is None else float(score),
        model=model,
        time=time or datetime.now(UTC).isoformat(timespec="seconds"),
        inspection_id=inspection_id,
        sha256=sha256.strip().lower(),
    )
    return Record(id=point_id(sha256, model, category), vectors=dict(vectors), payload=payload.to_dict())


def _as_vector(value: Any, name: str, size: int) -> np.ndarray:
    vector = np.asarray(value, dtype=np.float32).reshape(-1) if value is not None else np.zeros(0, np.float32)
    if vector.size != size:
        raise ValueError(f"vector {name!r} has {vector.size} dims, the collection expects {size}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"vector {name!r} contains NaN or infinite values")
    if not np.any(vector):
        raise ValueError(f"vector {name!r} is all zeros (no direction for cosine similarity)")
    return vector


_BACKENDS: dict[str, Backend] = {}
_BACKENDS_LOCK = threading.Lock()


def open_backend(path: Path | None = None, *, embedded: bool = False) -> Backend:
    """This process's engine: the server of ``QDRANT_URL`` unless ``embedded``, else Qdrant Edge at
    ``path`` (default ``INSPECT_QDRANT_PATH``). Opened once per location, shared by every thread."""
    url = "" if embedded else settings.qdrant_url().rstrip("/")
    key = url or str(Path(path or get_settings().qdrant_path).expanduser().resolve())
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = (
                ServerBackend(backends.server_client(url, settings.qdrant_api_key()), url) if url else EdgeBackend(Path(key))
            )
        return _BACKENDS[key]


def release(hold_off_s: float = 0.0) -> None:
    """Close what this process holds; the next call opens it again. ``hold_off_s``: leave the
    embedded shards alone that long, so that an index run this process starts can take them."""
    with _BACKENDS_LOCK:
        for key, backend in list(_BACKENDS.items()):
            backend.close()
            if isinstance(backend, EdgeBackend):
                backend.held_off_until = time.monotonic() + hold_off_s
            else:
                del _BACKENDS[key]


class SimilarityStore:
    """Index and search per-image descriptors; one collection per (model, category).

    Checks every record and query before the engine sees it, so both engines get the same calls.
    Build one with :meth:`open` (the configured engine) or from a backend or a ``QdrantClient``.
    """

    def __init__(self, backend: Backend | QdrantClient, *, prefix: str = COLLECTION_PREFIX) -> None:
        self.backend: Backend = ServerBackend(backend) if isinstance(backend, QdrantClient) else backend
        self.prefix = prefix
        self._dims: dict[str, dict[str, int]] = {}

    @classmethod
    def open(cls, path: Path | None = None, *, embedded: bool = False) -> SimilarityStore:
        return cls(open_backend(path, embedded=embedded))

    @property
    def location(self) -> str:
        return self.backend.location

    def name(self, model: str, category: str) -> str:
        return collection_name(model, category, self.prefix)

    def dims(self, model: str, category: str) -> dict[str, int] | None:
        """Named vector sizes of the collection, or None when it does not exist."""
        name = self.name(model, category)
        if name not in self._dims:
            sizes = self.backend.vector_sizes(name)
            if sizes is None:
                return None
            self._dims[name] = sizes
        return self._dims[name]

    def ensure_collection(self, model: str, category: str, dims: Mapping[str, int]) -> bool:
        """Create the collection if missing (True). An existing one with other vectors or sizes (a
        model or backbone change) is a :class:`StoreError` that says to delete it and re-index."""
        wanted = {str(k): int(v) for k, v in dims.items()}
        if not wanted:
            raise ValueError("dims must name at least one vector")
        existing, name = self.dims(model, category), self.name(model, category)
        if existing is not None and existing != wanted:
            raise StoreError(
                f"collection {name} holds vectors {existing} but the model now produces {wanted}: "
                "delete the collection and re-run `python -m core index`"
            )
        if existing is None:
            self.backend.create(name, wanted)
            self._dims[name] = wanted
        return existing is None

    def delete_collection(self, model: str, category: str) -> bool:
        """Drop the (model, category) collection; True if it existed."""
        self._dims.pop(self.name(model, category), None)
        return self.backend.drop(self.name(model, category))

    def count(self, model: str, category: str, *, splits: Sequence[str] | None = None) -> int:
        """Points in the collection (0 when it does not exist); ``splits`` counts only those
        (``("train", "test")``: the dataset's points, which uploads never add to)."""
        if self.dims(model, category) is None:
            return 0
        cond = Conditions(any_of={"split": list(splits)}) if splits is not None else None
        return self.backend.count(self.name(model, category), cond)

    def outgrown(self, model: str, category: str) -> str | None:
        """How to move on, once an embedded collection holds more than :data:`EMBEDDED_MAX_POINTS`."""
        points = self.count(model, category) if self.backend.embedded else 0
        if points <= EMBEDDED_MAX_POINTS:
            return None
        return (
            f"the similar-defect gallery of {model}/{category} has outgrown the embedded store ({points:,} points; "
            f"its exact search stays fast up to {EMBEDDED_MAX_POINTS:,}): move it to a Qdrant server: "
            "set QDRANT_URL (and QDRANT_API_KEY) and run `python -m core index --to-server`"
        )

    def upsert(self, model: str, category: str, records: Sequence[Record], batch_size: int = 256) -> int:
        """Insert or overwrite records (same id, same point); returns how many were written.

        Creates the collection from the first record's vector sizes. Every record must carry the
        collection's named vectors, a payload ``sha256`` its id derives from (build it with
        :func:`make_record`) and a ``label``; ``model`` and ``category`` are filled in when missing.
        """
        if not records:
            return 0
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.dims(model, category) is None:
            self.ensure_collection(model, category, {k: np.asarray(v).size for k, v in records[0].vectors.items()})
        dims, name = self.dims(model, category) or {}, self.name(model, category)
        for start in range(0, len(records), batch_size):
            self.backend.upsert(name, [self._point(rec, model, category, dims) for rec in records[start : start + batch_size]])
        return len(records)

    def _point(self, rec: Record, model: str, category: str, dims: Mapping[str, int]) -> tuple[str, dict, dict]:
        if set(rec.vectors) != set(dims):
            raise ValueError(f"record {rec.id} has vectors {sorted(rec.vectors)}, expected {sorted(dims)}")
        payload = dict(rec.payload)
        for key, value in (("model", model), ("category", category)):
            if payload.setdefault(key, value) != value:
                raise ValueError(f"record {rec.id} has payload {key}={payload[key]!r}, not {value!r}")
        if payload.get("label") not in LABELS:
            raise ValueError(f"record {rec.id}: payload label must be one of {LABELS}")
        payload["sha256"] = str(payload.get("sha256") or "").strip().lower()
        if point_id(payload["sha256"], model, category) != rec.id:
            raise ValueError(f"record {rec.id} does not match point_id(sha256, model, category); build it with make_record")
        return rec.id, {k: _as_vector(v, k, dims[k]) for k, v in rec.vectors.items()}, payload

    def get(self, model: str, category: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Record]:
        """Stored records for ``ids`` in the given order (unknown ids skipped); vectors come back
        unit length (both engines normalise cosine vectors on insert)."""
        if not ids or self.dims(model, category) is None:
            return []
        found = {
            pid: (vec, payload)
            for pid, vec, payload in self.backend.retrieve(self.name(model, category), [str(i) for i in ids], True, with_vectors)
        }
        return [Record(str(i), *found[str(i)]) for i in ids if str(i) in found]

    def points(
        self, model: str, category: str, *, label: str | None = None, with_vectors: bool = False, batch: int = 512
    ) -> Iterator[Record]:
        """Every record of the collection in id order, page by page; ``label``: only those."""
        if self.dims(model, category) is None:
            return
        cond = Conditions(equals={"label": label}) if label is not None else None
        offset: str | None = None
        while True:
            page, offset = self.backend.scroll(self.name(model, category), offset, batch, with_vectors, cond)
            yield from (Record(pid, vectors, payload) for pid, vectors, payload in page)
            if offset is None:
                return

    def similar(
        self,
        model: str,
        category: str,
        *,
        vector: np.ndarray | None = None,
        point_id: str | None = None,
        using: str = "defect",
        k: int = 5,
        label: str | None = None,
        defect_type: str | None = None,
        exclude_ids: Sequence[str] = (),
        exclude_sha256: str | None = None,
        with_vector: bool = False,
        with_payload: bool = True,
    ) -> list[Hit]:
        """The ``k`` stored images most similar to a query, best first; [] when nothing is indexed.

        Query by ``vector`` (a fresh upload) or by ``point_id`` of a stored image. The query image
        is never returned: its id and its ``sha256`` (the stored one, or ``exclude_sha256``) are
        excluded, as are ``exclude_ids``. ``label`` and ``defect_type`` restrict the candidates.
        ``with_vector``: each hit's stored ``using`` vector too (a re-ranking needs it);
        ``with_payload=False``: empty payloads (a re-ranking reads those of the few it keeps).
        """
        if (vector is None) == (point_id is None):
            raise ValueError("give exactly one of vector= or point_id=")
        if k < 1:
            raise ValueError("k must be at least 1")
        if label is not None and label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        dims, name = self.dims(model, category), self.name(model, category)
        if dims is None:
            if point_id is not None:
                raise LookupError(f"point {point_id} is not in {name} (the collection does not exist)")
            return []
        if using not in dims:
            raise ValueError(f"unknown vector {using!r}; {name} has {sorted(dims)}")
        excluded = [str(i) for i in exclude_ids]
        hashes = {exclude_sha256.strip().lower()} if exclude_sha256 else set()
        if point_id is not None:
            found = self.backend.retrieve(name, [str(point_id)], ["sha256"], [using])
            if not found:
                raise LookupError(f"point {point_id} is not in {name}")
            query = found[0][1][using]
            excluded.append(str(point_id))
            hashes.add(str(found[0][2].get("sha256") or ""))
        else:
            query = _as_vector(vector, using, dims[using])
        # within (model, category) a hash has exactly one point id (upsert refuses any other)
        excluded += [_id_of_hash(sha, model, category) for sha in sorted(hashes) if _SHA256.match(sha)]
        equals = {key: value for key, value in (("label", label), ("defect_type", defect_type)) if value is not None}
        cond = Conditions(equals=equals, exclude_ids=tuple(excluded))
        found_hits = self.backend.query(name, query.tolist(), using, cond, k, with_vector, with_payload)
        return [
            Hit(pid, score, payload, vectors.get(using) if with_vector else None) for pid, score, payload, vectors in found_hits
        ]


def copy_points(source: SimilarityStore, target: SimilarityStore, batch: int = 256) -> dict[str, int]:
    """Copy every point of every collection of ``source`` into ``target`` (same ids, vectors and
    payloads), reading ``source`` only; returns the points per collection. Verified by counts: the
    ids read, the ids found in ``target`` afterwards and ``source``'s own count must agree."""
    copied = {}
    for name in source.backend.names():
        dims = source.backend.vector_sizes(name) or {}
        have = target.backend.vector_sizes(name)
        if have is None:
            target.backend.create(name, dims)
        elif have != dims:
            raise StoreError(
                f"{target.location} already has a collection {name} with vectors {have}, not {dims}; nothing was copied into it"
            )
        read = found = 0
        offset: str | None = None
        while True:
            page, offset = source.backend.scroll(name, offset, batch, True, None)
            if page:
                target.backend.upsert(name, page)
                read += len(page)
                found += len(target.backend.retrieve(name, [pid for pid, _, _ in page], False, False))
            if offset is None:
                break
        expected = source.backend.count(name)
        if not read == found == expected:
            raise StoreError(
                f"copying {name}: {found} of {expected} points arrived in {target.location}; the source is unchanged"
            )
        copied[name] = found
    return copied
