"""The two engines behind :class:`~core.similarity.store.SimilarityStore`, and their protocol.

* :class:`EdgeBackend` (the default): Qdrant Edge in this process, one shard per collection under
  ``<INSPECT_QDRANT_PATH>/shards/``, every search exact (a plain index: nothing to build, fast up to
  :data:`~core.similarity.store.EMBEDDED_MAX_POINTS`). Shards load on first use and stay open for
  the process (a load costs 0.1-0.2 s); Edge admits one process per shard, so another process gets
  :class:`~core.errors.StoreLockedError` until this one lets go (:func:`~core.similarity.store.release`).
* :class:`ServerBackend`: a Qdrant server through a ``QdrantClient`` (``QDRANT_URL``); the tests hand
  it qdrant-client's local mode, standing in for a server.

Both speak plain values (string ids, NumPy vectors, dict payloads, :class:`Conditions`), so one call
means the same on each: the congruence tests compare them. ``qdrant-edge-py`` is pinned and used
only here (its API changed between minor versions).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core.errors import StoreError, StoreLockedError

#: Payload fields with a keyword index, on both engines: the Similar page filters on ``label`` and
#: ``defect_type``, the index check counts by ``split``. Not ``sha256`` (the query image is excluded
#: by its point id, which the hash decides) nor ``category`` (a collection holds one).
INDEXED_FIELDS: tuple[str, ...] = ("label", "defect_type", "split")
#: The embedded shards' folder in ``INSPECT_QDRANT_PATH``; earlier versions' layouts there (``edge/``,
#: ``meta.json`` with ``collection/``) are never read nor deleted: an index run rebuilds what they held.
SHARDS = "shards"

Point = tuple[str, dict[str, np.ndarray], dict[str, Any]]
Scored = tuple[str, float, dict[str, Any], dict[str, np.ndarray]]
Fields = bool | list[str]  # all, none, or the named payload fields / vectors


@dataclass(frozen=True)
class Conditions:
    """Points whose payload has ``key == value`` for each ``equals`` item and ``key`` in
    ``any_of[key]``, and whose id is not in ``exclude_ids``."""

    equals: Mapping[str, str] = field(default_factory=dict)
    any_of: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude_ids: Sequence[str] = ()


Cond = Conditions | None


class Backend(Protocol):
    """What the store asks of an engine; ``name`` is a collection's name."""

    location: str  # the folder or server URL: a key for caches and the index manifest
    embedded: bool

    def names(self) -> list[str]: ...
    def vector_sizes(self, name: str) -> dict[str, int] | None: ...
    def create(self, name: str, dims: Mapping[str, int]) -> None: ...
    def drop(self, name: str) -> bool: ...
    def count(self, name: str, cond: Cond = None) -> int: ...
    def upsert(self, name: str, points: Sequence[Point]) -> None: ...
    def retrieve(self, name: str, ids: Sequence[str], payload: Fields, vectors: Fields) -> list[Point]: ...
    def query(
        self, name: str, vector: list[float], using: str, cond: Cond, k: int, vectors: bool, payload: bool
    ) -> list[Scored]: ...
    def scroll(self, name: str, offset: str | None, limit: int, vectors: bool, cond: Cond) -> tuple[list[Point], str | None]: ...
    def close(self) -> None: ...


def one_line(exc: BaseException) -> str:
    """An exception as one short line, for messages that end up on a page or in a terminal."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _arrays(value: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _lists(vectors: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in vectors.items()}


def _points(found: Any) -> list[Point]:
    return [(str(p.id), _arrays(p.vector), dict(p.payload or {})) for p in found]


def _edge_filter(cond: Cond) -> qe.Filter | None:
    if cond is None:
        return None
    must: list[Any] = [qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in cond.equals.items()]
    must += [qe.FieldCondition(key=k, match=qe.MatchAny(list(v))) for k, v in cond.any_of.items()]
    must_not = [qe.HasIdCondition(set(cond.exclude_ids))] if cond.exclude_ids else None
    return qe.Filter(must=must or None, must_not=must_not) if must or must_not else None


class EdgeBackend:
    """The embedded store in the folder ``path``: one Edge shard per collection, held by this process."""

    embedded = True

    def __init__(self, path: Path) -> None:
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise StoreError(f"the Qdrant store {path} is a file, not a folder: set INSPECT_QDRANT_PATH to a folder")
        self.root = path / SHARDS
        self.location = str(self.root.resolve())
        self.lock = threading.RLock()  # one call at a time per process: Edge's handles are not shared
        self.shards: dict[str, qe.EdgeShard] = {}
        self.held_off_until = 0.0  # time.monotonic() until which shards are left to another process

    def _shard(self, name: str) -> qe.EdgeShard:
        if name in self.shards:
            return self.shards[name]
        folder = self.root / name
        locked = (
            f"the similar-defect collection {folder} is open in another process (an index run, or the app while "
            "you index from a terminal): it is free once that process ends; for a store that several processes "
            "use at once, move it to a Qdrant server (`python -m core index --to-server`)"
        )
        if time.monotonic() < self.held_off_until:
            raise StoreLockedError(locked)
        try:
            self.shards[name] = qe.EdgeShard.load(str(folder))
        except Exception as exc:  # Edge raises plain exceptions: a lock, missing or damaged files
            if "WouldBlock" in str(exc) or "temporarily unavailable" in str(exc):
                raise StoreLockedError(locked) from exc
            raise StoreError(
                f"the Qdrant store {folder} cannot be read ({one_line(exc)}); nothing was deleted: move the folder "
                f"aside (e.g. mv {folder} {folder}.broken) and re-run `python -m core index`"
            ) from exc
        return self.shards[name]

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/edge_config.json"))

    def vector_sizes(self, name: str) -> dict[str, int] | None:
        config = self.root / name / "edge_config.json"
        if not config.is_file():
            return None
        with self.lock:
            self._shard(name)  # a held or damaged shard is reported now, not half-way through a call
        try:
            return {str(k): int(v["size"]) for k, v in json.loads(config.read_text())["vectors"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"the Qdrant store {config} cannot be read ({one_line(exc)}); nothing was deleted") from exc

    def create(self, name: str, dims: Mapping[str, int]) -> None:
        config = qe.EdgeConfig(
            vectors={key: qe.EdgeVectorParams(size=int(size), distance=qe.Distance.Cosine) for key, size in dims.items()},
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=0),  # 0: never HNSW, every search exact
        )
        with self.lock:
            if (self.root / name / "edge_config.json").is_file():  # another thread was first
                return
            shard = qe.EdgeShard.create(str(self.root / name), config)
            for key in INDEXED_FIELDS:
                shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
            shard.flush()
            self.shards[name] = shard

    def drop(self, name: str) -> bool:
        with self.lock:
            if not (self.root / name).is_dir():
                return False
            self._shard(name).close()  # not while another process has it
            del self.shards[name]
            shutil.rmtree(self.root / name)
            return True

    def count(self, name: str, cond: Cond = None) -> int:
        with self.lock:
            return int(self._shard(name).count(qe.CountRequest(exact=True, filter=_edge_filter(cond))))

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        ops = qe.UpdateOperation.upsert_points([qe.Point(pid, _lists(vec), dict(payload)) for pid, vec, payload in points])
        with self.lock:
            self._shard(name).update(ops)  # durable through Edge's write-ahead log

    def retrieve(self, name: str, ids: Sequence[str], payload: Fields, vectors: Fields) -> list[Point]:
        selector = qe.PayloadSelector.Include(payload) if isinstance(payload, list) else payload
        with self.lock:
            return _points(self._shard(name).retrieve(list(ids), with_payload=selector, with_vector=vectors))

    def query(self, name: str, vector: list[float], using: str, cond: Cond, k: int, vectors: bool, payload: bool) -> list[Scored]:
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vector, using=using),
            filter=_edge_filter(cond),
            with_payload=payload,
            with_vector=[using] if vectors else None,
            params=qe.SearchParams(exact=True),
        )
        with self.lock:
            found = self._shard(name).query(request)
        return [(str(p.id), float(p.score), dict(p.payload or {}), _arrays(p.vector)) for p in found]

    def scroll(self, name: str, offset: str | None, limit: int, vectors: bool, cond: Cond) -> tuple[list[Point], str | None]:
        request = qe.ScrollRequest(offset=offset, limit=limit, filter=_edge_filter(cond), with_payload=True, with_vector=vectors)
        with self.lock:
            batch, next_offset = self._shard(name).scroll(request)
        return _points(batch), None if next_offset is None else str(next_offset)

    def close(self) -> None:
        """Close every shard this process holds (another process may then open them); reloaded on use."""
        with self.lock:
            for shard in self.shards.values():
                shard.close()
            self.shards.clear()


def server_client(url: str, api_key: str | None) -> QdrantClient:
    """A client of the Qdrant server at ``url``, checked to answer (the tests put a stand-in here)."""
    try:
        client = QdrantClient(url=url, api_key=api_key, timeout=10, check_compatibility=False)
        client.get_collections()  # the constructor does not connect; this does
    except UnexpectedResponse as exc:
        if exc.status_code in (401, 403):
            raise StoreError(
                f"the Qdrant server at {url} refused the request (HTTP {exc.status_code}): set QDRANT_API_KEY to a valid key"
            ) from exc
        raise StoreError(f"the Qdrant server at {url} answered HTTP {exc.status_code}: {one_line(exc)}") from exc
    except Exception as exc:  # connection refused, DNS, timeout, malformed URL
        raise StoreError(
            f"cannot reach the Qdrant server at {url} ({one_line(exc)}): start it or fix QDRANT_URL, or unset QDRANT_URL to use the embedded store"
        ) from exc
    return client


def _client_filter(cond: Cond) -> models.Filter | None:
    if cond is None:
        return None
    must: list[Any] = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in cond.equals.items()]
    must += [models.FieldCondition(key=k, match=models.MatchAny(any=list(v))) for k, v in cond.any_of.items()]
    must_not: list[Any] = [models.HasIdCondition(has_id=list(cond.exclude_ids))] if cond.exclude_ids else []
    return models.Filter(must=must or None, must_not=must_not or None) if must or must_not else None


class ServerBackend:
    """A Qdrant server (or, in the tests, qdrant-client's local mode standing in for one)."""

    embedded = False

    def __init__(self, client: QdrantClient, location: str | None = None) -> None:
        self.client = client
        options = client.init_options
        self.location = location or str(options.get("url") or options.get("path") or options.get("location") or ":memory:")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A server lost or refusing in the middle of a call, as :class:`StoreError`."""
        try:
            yield
        except ResponseHandlingException as exc:
            raise StoreError(f"lost the connection to the Qdrant server at {self.location}: {one_line(exc)}") from exc
        except UnexpectedResponse as exc:
            raise StoreError(f"the Qdrant server at {self.location} answered HTTP {exc.status_code}: {one_line(exc)}") from exc

    def names(self) -> list[str]:
        with self._errors():
            return sorted(c.name for c in self.client.get_collections().collections)

    def vector_sizes(self, name: str) -> dict[str, int] | None:
        with self._errors():
            found = self.client.collection_exists(name) and self.client.get_collection(name).config.params.vectors
        if found is False:
            return None
        if not isinstance(found, Mapping):
            raise StoreError(f"collection {name} has no named vectors; delete it and re-run `python -m core index`")
        return {key: int(params.size) for key, params in found.items()}

    def create(self, name: str, dims: Mapping[str, int]) -> None:
        config = {key: models.VectorParams(size=int(size), distance=models.Distance.COSINE) for key, size in dims.items()}
        with self._errors():
            if self.client.collection_exists(name):  # another thread or process was first
                return
            self.client.create_collection(name, vectors_config=config)
            for key in INDEXED_FIELDS:
                self.client.create_payload_index(name, key, field_schema=models.PayloadSchemaType.KEYWORD)

    def drop(self, name: str) -> bool:
        with self._errors():
            return bool(self.client.collection_exists(name) and self.client.delete_collection(name))

    def count(self, name: str, cond: Cond = None) -> int:
        with self._errors():
            return int(self.client.count(name, count_filter=_client_filter(cond), exact=True).count)

    def upsert(self, name: str, points: Sequence[Point]) -> None:
        structs = [models.PointStruct(id=pid, vector=_lists(vec), payload=dict(payload)) for pid, vec, payload in points]
        with self._errors():
            self.client.upsert(name, points=structs, wait=True)

    def retrieve(self, name: str, ids: Sequence[str], payload: Fields, vectors: Fields) -> list[Point]:
        with self._errors():
            return _points(self.client.retrieve(name, ids=list(ids), with_payload=payload, with_vectors=vectors))

    def query(self, name: str, vector: list[float], using: str, cond: Cond, k: int, vectors: bool, payload: bool) -> list[Scored]:
        with self._errors():
            found = self.client.query_points(
                name,
                query=vector,
                using=using,
                query_filter=_client_filter(cond),
                limit=k,
                with_payload=payload,
                with_vectors=[using] if vectors else False,
            ).points
        return [(str(p.id), float(p.score), dict(p.payload or {}), _arrays(p.vector)) for p in found]

    def scroll(self, name: str, offset: str | None, limit: int, vectors: bool, cond: Cond) -> tuple[list[Point], str | None]:
        with self._errors():
            batch, next_offset = self.client.scroll(
                name, scroll_filter=_client_filter(cond), limit=limit, offset=offset, with_payload=True, with_vectors=vectors
            )
        return _points(batch), None if next_offset is None else str(next_offset)

    def close(self) -> None:
        self.client.close()
