"""Similar past cases: a Qdrant store of per-image descriptors, and nearest-neighbour search.

Each indexed image is one Qdrant point with two *named vectors* and a payload:

* ``global`` -- the model's patch features pooled over the whole image (what the part looks like);
* ``defect`` -- the same patch features pooled with anomaly-map weights (what the defect looks
  like). Searching ``defect`` answers "where have we seen a defect like this one?".

Both use cosine distance, so a hit's ``score`` is a cosine similarity (1 = same direction). A Qdrant
server normalises vectors of a cosine collection on insert (vectors read back are unit length);
embedded mode returns them as given.

Collection design: one collection per (model, category)
--------------------------------------------------------
The alternative is one collection for everything, with ``model`` and ``category`` as filtered
payload fields. We use one collection per (model, category), named ``inspect__<model>__<category>``,
because:

* **Dimensions differ per model and backbone.** A collection fixes the size of each named vector
  (PatchCore on wide_resnet50 layers 2+3 gives 1536 dims, EfficientAD another size), so a single
  collection cannot hold both models anyway; the split is at least per model.
* **Vectors of different categories are not comparable.** Models are trained per category
  (EfficientAD's student, PatchCore's memory bank and the anomaly maps that weight the ``defect``
  descriptor), so a "tile" descriptor and a "grid" descriptor do not live in one space, and a
  search never crosses categories. Every query restricts to one model+category; with a
  collection per pair that restriction costs nothing, while a shared collection must filter every
  query (fine on a server with a tenant index, but a Python scan over *all* points in embedded
  mode, where filters are evaluated point by point).
* **Rebuilds are per pair.** Retraining one category invalidates exactly its descriptors: drop and
  re-index that one collection, without deleting by filter from a shared one.
* **Many categories.** A factory with tens to a few hundred (model, category) pairs is well within
  what Qdrant handles as collections. Qdrant recommends payload partitioning (one collection,
  ``is_tenant`` keyword index) for *thousands* of tenants with small, same-sized vectors; if a
  deployment ever gets there, only :func:`collection_name` and the filters here change.

Within a collection, queries filter by ``label`` and ``defect_type`` and exclude the query image
by id (an image's id follows from its ``sha256``, so excluding the id excludes the hash); those
fields get keyword payload indexes (not in qdrant-client's local mode, which scans).

Point ids are ``uuid5(model, category, sha256 of the image bytes)``: indexing the same image twice
overwrites one point instead of adding a second, and the query image can be excluded by id.

Embedded store or Qdrant server
-------------------------------
By default the store is embedded with Qdrant Edge on ``get_settings().qdrant_path``
(:mod:`core.similarity.edge_store`: the server's engine in-process, HNSW past 20,000 points, payload
indexes, one handle per process shared by its threads); ``INSPECT_QDRANT_BACKEND=local`` selects
qdrant-client's local mode instead (exact brute force in Python, the whole store loaded at open,
one client per folder), the engine before Edge, kept for the congruence tests and comparison. A
local-mode store is copied into Edge once, verified, and kept (:mod:`core.similarity.migration`).
Both are reached through the same small engine interface (:class:`ClientBackend`,
:class:`~core.similarity.edge_store.EdgeBackend`), so this class does not change with the engine.
``scripts/bench_qdrant.py`` measures both.

Run a Qdrant server when several processes must use the store at once (app + indexer, several
app replicas), when a category holds tens of thousands of images or more (HNSW index instead of
brute force, payload indexes, nothing loaded at start-up), or when the store should live on
another machine. Point the app at it with environment variables; the rest of the code path is
unchanged::

    docker run -p 6333:6333 -v "$PWD/var/qdrant_server:/qdrant/storage" qdrant/qdrant
    export QDRANT_URL=http://localhost:6333      # or https://<cluster>.cloud.qdrant.io:6333
    export QDRANT_API_KEY=...                    # only if the server requires one

An embedded store is not read by a server: re-run the index command after switching.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core import settings
from core.data.layout import LABELS
from core.errors import StoreError
from core.settings import get_settings
from core.similarity.conditions import Conditions, search_conditions
from core.similarity.payload import CasePayload

#: Payload fields that queries filter on; keyword-indexed on a server and in Edge. Not ``sha256``
#: (the query image is excluded by its point id, which the hash decides: :func:`point_id`) and not
#: ``category`` (a collection holds one): each index made loading an Edge shard slower (README).
INDEXED_FIELDS: tuple[str, ...] = ("label", "defect_type", "split")
#: What the messages tell the user to run to rebuild the store.
REINDEX_HINT = "re-run `python -m core index`"

COLLECTION_PREFIX = "inspect"
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://inspect.invalid/similarity/point")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------
# Opening a client
# --------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def open_client(path: Path | None = None, *, timeout: int = 10) -> QdrantClient:
    """A client for the server named by ``QDRANT_URL``, else for the embedded store at ``path``.

    ``path`` defaults to ``get_settings().qdrant_path``. Raises :class:`StoreError` with a one-line
    message when the embedded folder is locked by another process, cannot be read (corrupt; nothing
    is deleted), or when the server cannot be reached or refuses the API key.
    """
    url = settings.qdrant_url()
    if url:
        return _open_remote(url, settings.qdrant_api_key(), timeout)
    return _open_embedded(Path(path) if path is not None else get_settings().qdrant_path)


def _open_remote(url: str, api_key: str | None, timeout: int) -> QdrantClient:
    try:
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False)
        client.get_collections()  # the constructor does not connect; this does
    except UnexpectedResponse as exc:
        if exc.status_code in (401, 403):
            raise StoreError(
                f"the Qdrant server at {url} refused the request (HTTP {exc.status_code}): set QDRANT_API_KEY to a valid key"
            ) from exc
        raise StoreError(f"the Qdrant server at {url} answered HTTP {exc.status_code}: {_one_line(exc)}") from exc
    except Exception as exc:  # connection refused, DNS, timeout, malformed URL
        raise StoreError(
            f"cannot reach the Qdrant server at {url} ({_one_line(exc)}): start it or fix "
            "QDRANT_URL, or unset QDRANT_URL to use the embedded store"
        ) from exc
    return client


class StoreLockedError(StoreError):
    """The embedded store is held by another process (e.g. a running ``python -m core index``).

    A separate class because it is transient: callers that can wait (an upload to index) queue
    their work instead of giving up, see :mod:`core.similarity.pending`.
    """


def _locked_message(path: Path) -> str:
    # Never "close the app": the app opens the store per call and never holds it between clicks,
    # so the holder is another process such as an index run, which ends by itself.
    return (
        f"the Qdrant store {path} is in use by another process, e.g. a running `python -m core "
        "index` (embedded Qdrant admits one process at a time): it frees up when that finishes; "
        "to share the store between processes run a Qdrant server and set QDRANT_URL"
    )


def _corrupt_message(path: Path, reason: str) -> str:
    return (
        f"the Qdrant store {path} cannot be read ({reason}); nothing was deleted: move the folder "
        f"aside (e.g. mv {path} {path}.broken) and {REINDEX_HINT}"
    )


def _is_locked(path: Path) -> bool:
    """Whether another client holds the folder's lock (the same check ``QdrantLocal`` makes).

    Checked before opening so that a locked store is reported as such without first loading it
    all into memory. The lock is taken and released at once; the file is never created here.
    """
    lock_path = path / ".lock"
    if not lock_path.is_file():
        return False
    import portalocker  # a qdrant-client dependency; imported late as qdrant-client does

    with open(lock_path, "r+") as handle:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            return True
        portalocker.unlock(handle)
    return False


def _open_embedded(path: Path) -> QdrantClient:
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise StoreError(f"the Qdrant store {path} is a file, not a folder: set INSPECT_QDRANT_PATH to a folder")
    if path.is_dir() and (path / "collection").is_dir() and not (path / "meta.json").is_file():
        # Qdrant would start an empty store over the old data without a word
        raise StoreError(_corrupt_message(path, "meta.json is missing"))
    try:
        if _is_locked(path):
            raise StoreLockedError(_locked_message(path))
        return QdrantClient(path=str(path))
    except StoreError:
        raise
    except RuntimeError as exc:
        if "already accessed by another instance" in str(exc):  # lost a race with another opener
            raise StoreLockedError(_locked_message(path)) from exc
        raise StoreError(_corrupt_message(path, _one_line(exc))) from exc
    except PermissionError as exc:
        raise StoreError(f"no permission to use the Qdrant store {path}: {_one_line(exc)}") from exc
    except Exception as exc:  # bad JSON, not a database, truncated pickles, wrong config...
        raise StoreError(_corrupt_message(path, f"{type(exc).__name__}: {_one_line(exc)}")) from exc


def is_embedded(client: QdrantClient) -> bool:
    """Whether ``client`` is an embedded (local mode) client rather than a server connection."""
    options = client.init_options
    return options.get("path") is not None or options.get("location") == ":memory:"


def store_location(path: Path | None = None) -> str:
    """Which store :func:`open_client` would open: the server URL, else the embedded folder.

    Used as a key, by the in-process lock (one per folder) and by the index manifest (what was
    indexed *into which store*: switching to a server must not look like an emptied store).
    """
    url = settings.qdrant_url()
    if url:
        return url.rstrip("/")
    return str(Path(path if path is not None else get_settings().qdrant_path).expanduser().resolve())


def client_location(client: QdrantClient) -> str:
    """:func:`store_location` of an open client."""
    options = client.init_options
    if options.get("path") is not None:
        return str(Path(options["path"]).expanduser().resolve())
    return str(options.get("url") or options.get("location") or ":memory:").rstrip("/")


# --------------------------------------------------------------------------------------------
# Names, ids and records
# --------------------------------------------------------------------------------------------


def collection_name(model: str, category: str, prefix: str = COLLECTION_PREFIX) -> str:
    """``<prefix>__<model>__<category>``; names with other characters get a hash suffix."""
    if not model or not category:
        raise ValueError("model and category must be non-empty")
    parts = (prefix, model, category)
    if all(_SAFE_NAME.match(p) and "__" not in p for p in parts):
        return "__".join(parts)
    digest = hashlib.sha256(f"{model}\x1f{category}".encode()).hexdigest()[:10]
    cleaned = [re.sub(r"[^A-Za-z0-9.-]+", "-", p).strip("-") or "x" for p in parts]
    return "__".join(cleaned) + f"__{digest}"


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
        """The payload, typed."""
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
    """Build a :class:`Record` with the id and payload fields the store expects."""
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


@dataclass(frozen=True)
class Hit:
    """A neighbour: point id, cosine similarity to the query, and the stored payload."""

    id: str
    score: float
    payload: dict[str, Any]
    #: The stored query-side vector (``using``), only when asked for (``similar(with_vector=True)``).
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def case(self) -> CasePayload:
        """The payload, typed."""
        return CasePayload.from_dict(self.payload)


def _jsonable(value: Any) -> Any:
    """Payload values as plain JSON types (numpy scalars, paths, tuples)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _as_vector(value: Any, name: str, size: int | None) -> np.ndarray:
    vector = np.asarray(value, dtype=np.float32).reshape(-1) if value is not None else None
    if vector is None or vector.size == 0:
        raise ValueError(f"vector {name!r} is empty")
    if size is not None and vector.size != size:
        raise ValueError(f"vector {name!r} has {vector.size} dims, the collection expects {size}")
    if not np.all(np.isfinite(vector)):
        raise ValueError(f"vector {name!r} contains NaN or infinite values")
    if not np.any(vector):
        raise ValueError(f"vector {name!r} is all zeros (no direction for cosine similarity)")
    return vector


# --------------------------------------------------------------------------------------------
# Engines: qdrant-client (server or local mode) and Qdrant Edge, behind one small interface
# --------------------------------------------------------------------------------------------


def _client_filter(cond: Conditions | None) -> models.Filter | None:
    """:class:`Conditions` as a qdrant-client filter."""
    if cond is None or cond.empty:
        return None
    must: list[models.Condition] = [_field_is(k, v) for k, v in cond.equals.items()]
    must += [models.FieldCondition(key=k, match=models.MatchAny(any=list(v))) for k, v in cond.any_of.items()]
    must_not: list[models.Condition] = [models.HasIdCondition(has_id=list(cond.exclude_ids))] if cond.exclude_ids else []
    return models.Filter(must=must or None, must_not=must_not or None)


class ClientBackend:
    """The engine interface over a :class:`QdrantClient`: a server, or local mode (``path=``)."""

    kind = "client"

    def __init__(self, client: QdrantClient) -> None:
        self.client = client
        self.location = client_location(client)

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Server connection problems in the middle of a session, as :class:`StoreError`."""
        try:
            yield
        except ResponseHandlingException as exc:
            url = self.client.init_options.get("url")
            raise StoreError(f"lost the connection to the Qdrant server at {url}: {_one_line(exc)}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code in (401, 403):
                raise StoreError(f"the Qdrant server refused the request (HTTP {exc.status_code}): check QDRANT_API_KEY") from exc
            raise

    def collection_names(self) -> list[str]:
        with self._errors():
            return sorted(c.name for c in self.client.get_collections().collections)

    def vector_sizes(self, name: str) -> dict[str, int] | None:
        with self._errors():
            if not self.client.collection_exists(name):
                return None
            vectors = self.client.get_collection(name).config.params.vectors
        if not isinstance(vectors, Mapping):
            raise StoreError(f"collection {name} has no named vectors; delete it and {REINDEX_HINT}")
        return {key: int(params.size) for key, params in vectors.items()}

    def create_collection(self, name: str, dims: Mapping[str, int]) -> None:
        with self._errors():
            self.client.create_collection(
                name,
                vectors_config={
                    key: models.VectorParams(size=size, distance=models.Distance.COSINE) for key, size in dims.items()
                },
            )
            if not is_embedded(self.client):  # local mode has no payload indexes (it warns)
                for field_name in INDEXED_FIELDS:
                    self.client.create_payload_index(name, field_name, field_schema=models.PayloadSchemaType.KEYWORD)

    def delete_collection(self, name: str) -> bool:
        with self._errors():
            if not self.client.collection_exists(name):
                return False
            self.client.delete_collection(name)
        return True

    def count(self, name: str, cond: Conditions | None) -> int:
        with self._errors():
            return int(self.client.count(name, count_filter=_client_filter(cond), exact=True).count)

    def upsert(self, name: str, points: Sequence[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None:
        structs = [models.PointStruct(id=pid, vector=vec, payload=payload) for pid, vec, payload in points]
        with self._errors():
            self.client.upsert(name, points=structs, wait=True)

    def retrieve(
        self, name: str, ids: Sequence[str], with_payload: bool | list[str], with_vectors: bool | list[str]
    ) -> list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
        with self._errors():
            found = self.client.retrieve(name, ids=list(ids), with_payload=with_payload, with_vectors=with_vectors)
        return [(str(p.id), _np_vectors(p.vector), dict(p.payload or {})) for p in found]

    def query(
        self,
        name: str,
        vector: list[float],
        using: str,
        cond: Conditions | None,
        k: int,
        *,
        exact: bool = False,
        with_vector: bool = False,
        with_payload: bool = True,
    ) -> list[tuple[str, float, dict[str, Any], dict[str, np.ndarray]]]:
        with self._errors():
            response = self.client.query_points(
                name,
                query=vector,
                using=using,
                query_filter=_client_filter(cond),
                limit=k,
                with_payload=with_payload,
                with_vectors=[using] if with_vector else False,
                search_params=models.SearchParams(exact=True) if exact else None,
            )
        return [
            (str(p.id), float(p.score), dict(p.payload or {}), _np_vectors(p.vector) if with_vector else {})
            for p in response.points
        ]

    def scroll(
        self, name: str, offset: str | None, limit: int, with_vectors: bool = False, cond: Conditions | None = None
    ) -> tuple[list[tuple[str, dict[str, np.ndarray], dict[str, Any]]], str | None]:
        with self._errors():
            batch, next_offset = self.client.scroll(
                name, scroll_filter=_client_filter(cond), limit=limit, offset=offset, with_payload=True, with_vectors=with_vectors
            )
        points = [(str(p.id), _np_vectors(p.vector), dict(p.payload or {})) for p in batch]
        return points, None if next_offset is None else str(next_offset)


def _np_vectors(value: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in value.items()} if isinstance(value, Mapping) else {}


def open_backend(path: Path | None = None, *, lock_wait_s: float = 0.0) -> Any:
    """The configured engine: a server (``QDRANT_URL``), else the embedded folder at ``path``.

    The embedded engine is Qdrant Edge unless ``INSPECT_QDRANT_BACKEND=local``. A local-mode store
    left by an earlier version is copied into Edge once, verified, and kept (see
    :mod:`core.similarity.migration`).
    """
    if settings.qdrant_url() or settings.qdrant_embedded_engine() == "local":
        return ClientBackend(open_client(path))
    from core.similarity.edge_store import EdgeBackend
    from core.similarity.migration import migrate_if_needed

    folder = Path(path if path is not None else get_settings().qdrant_path).expanduser()
    migrate_if_needed(folder)
    return EdgeBackend(folder, lock_wait_s=lock_wait_s)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class SimilarityStore:
    """Index and search per-image descriptors; one collection per (model, category).

    Wraps an engine (:class:`ClientBackend` for a server or local mode,
    :class:`~core.similarity.edge_store.EdgeBackend` for the embedded default). Use :meth:`open`
    for the configured store, or pass a client or an engine. Closing the store closes a client; an
    Edge engine stays open for the process (:mod:`core.similarity.edge_store`).
    """

    def __init__(self, client: QdrantClient | Any, *, prefix: str = COLLECTION_PREFIX) -> None:
        self.backend = ClientBackend(client) if isinstance(client, QdrantClient) else client
        #: The qdrant-client client (server or local mode), None on Qdrant Edge.
        self.client: QdrantClient | None = getattr(self.backend, "client", None)
        self.prefix = prefix
        self._dims: dict[str, dict[str, int]] = {}

    @classmethod
    def open(cls, path: Path | None = None, *, lock_wait_s: float = 0.0, **kwargs: Any) -> SimilarityStore:
        """The configured store; ``lock_wait_s``: how long to wait for another process's Edge handle."""
        return cls(open_backend(path, lock_wait_s=lock_wait_s), **kwargs)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> SimilarityStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> str:
        """ "edge" (embedded Qdrant Edge) or "client" (a server or local mode, via qdrant-client)."""
        return str(self.backend.kind)

    # -- collections -----------------------------------------------------------------------

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
        """Create the collection if missing; True when created.

        An existing collection must have the same named vectors and sizes (a model or backbone
        change alters them): otherwise :class:`StoreError` says to delete it and re-index.
        """
        if not dims:
            raise ValueError("dims must name at least one vector")
        wanted = {str(k): int(v) for k, v in dims.items()}
        existing = self.dims(model, category)
        name = self.name(model, category)
        if existing is not None:
            if existing != wanted:
                raise StoreError(
                    f"collection {name} holds vectors {existing} but the model now produces {wanted}: "
                    f"delete the collection and {REINDEX_HINT}"
                )
            return False
        self.backend.create_collection(name, wanted)
        self._dims[name] = wanted
        return True

    def delete_collection(self, model: str, category: str) -> bool:
        """Drop the (model, category) collection; True if it existed."""
        name = self.name(model, category)
        self._dims.pop(name, None)
        return bool(self.backend.delete_collection(name))

    @property
    def location(self) -> str:
        """The server URL or the embedded folder (see :func:`store_location`)."""
        return str(self.backend.location)

    def count(self, model: str, category: str, *, splits: Sequence[str] | None = None) -> int:
        """Points in the collection (0 when it does not exist); ``splits`` counts only those.

        ``splits=("train", "test")`` counts the dataset's points, which an index run writes and
        uploads never add to: what the index manifest compares with.
        """
        if self.dims(model, category) is None:
            return 0
        cond = Conditions(any_of={"split": list(splits)}) if splits is not None else None
        return int(self.backend.count(self.name(model, category), cond))

    # -- writing ---------------------------------------------------------------------------

    def upsert(self, model: str, category: str, records: Sequence[Record], batch_size: int = 256) -> int:
        """Insert or overwrite records (same id = same point); returns how many were written.

        Creates the collection from the first record's vector sizes when it does not exist.
        Every record must carry the collection's named vectors, a payload ``sha256`` from which
        its id derives, and a ``label`` of "good" or "anomalous"; ``model`` and ``category`` are
        filled in when missing.
        """
        if not records:
            return 0
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        dims = self.dims(model, category)
        if dims is None:
            first = records[0].vectors
            self.ensure_collection(model, category, {k: int(np.asarray(v).size) for k, v in first.items()})
            dims = self.dims(model, category)
            assert dims is not None
        name = self.name(model, category)
        written = 0
        for start in range(0, len(records), batch_size):
            points = [self._point(rec, model, category, dims) for rec in records[start : start + batch_size]]
            self.backend.upsert(name, points)
            written += len(points)
        return written

    def _point(
        self, rec: Record, model: str, category: str, dims: Mapping[str, int]
    ) -> tuple[str, dict[str, list[float]], dict[str, Any]]:
        if set(rec.vectors) != set(dims):
            raise ValueError(f"record {rec.id} has vectors {sorted(rec.vectors)}, expected {sorted(dims)}")
        payload = _jsonable(dict(rec.payload))
        for key, value in (("model", model), ("category", category)):
            if payload.setdefault(key, value) != value:
                raise ValueError(f"record {rec.id} has payload {key}={payload[key]!r}, not {value!r}")
        if payload.get("label") not in LABELS:
            raise ValueError(f"record {rec.id}: payload label must be one of {LABELS}")
        sha = str(payload.get("sha256") or "").strip().lower()
        if point_id(sha, model, category) != rec.id:
            raise ValueError(f"record {rec.id} does not match point_id(sha256, model, category); build it with make_record")
        payload["sha256"] = sha
        vectors = {key: _as_vector(value, key, dims[key]).tolist() for key, value in rec.vectors.items()}
        return rec.id, vectors, payload

    # -- reading ---------------------------------------------------------------------------

    def get(self, model: str, category: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[Record]:
        """Stored records for ``ids`` in the given order; unknown ids are skipped.

        Vectors (when asked for) come back unit-normalised from a server and from Qdrant Edge
        (both normalise cosine vectors on insert) and as given from local mode.
        """
        if not ids or self.dims(model, category) is None:
            return []
        found = self.backend.retrieve(self.name(model, category), [str(i) for i in ids], True, with_vectors)
        by_id = {pid: (vectors, payload) for pid, vectors, payload in found}
        return [Record(id=str(pid), vectors=by_id[str(pid)][0], payload=by_id[str(pid)][1]) for pid in ids if str(pid) in by_id]

    def points(
        self, model: str, category: str, *, label: str | None = None, with_vectors: bool = False, batch: int = 512
    ) -> Iterator[Record]:
        """Every stored record of the collection (in id order), page by page; ``label`` keeps only
        those (the gallery lists past defects: a payload index answers it without a scan)."""
        if self.dims(model, category) is None:
            return
        cond = Conditions(equals={"label": label}) if label is not None else None
        offset: str | None = None
        while True:
            page, offset = self.backend.scroll(self.name(model, category), offset, batch, with_vectors, cond)
            for pid, vectors, payload in page:
                yield Record(id=pid, vectors=vectors, payload=payload)
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
        exact: bool = False,
        with_vector: bool = False,
        with_payload: bool = True,
    ) -> list[Hit]:
        """The ``k`` stored images most similar to a query, best first.

        Query by ``vector`` (e.g. a fresh upload) or by ``point_id`` of a stored image, whose
        ``using`` vector is fetched first. The query image is never returned: its id and its
        ``sha256`` (the stored one for a point id query, ``exclude_sha256`` for a vector query) are
        excluded, as are ``exclude_ids``. ``label`` and ``defect_type`` restrict the candidates.
        ``exact`` bypasses HNSW (brute force; what HNSW results are checked against);
        ``with_vector`` returns each hit's stored ``using`` vector too (a re-ranking needs it);
        ``with_payload=False`` leaves payloads out (empty dicts): a re-ranking of hundreds of
        candidates reads the payloads of the few it keeps.
        Returns an empty list when nothing is indexed for (model, category).
        """
        _check_query(vector, point_id, k, label)
        dims = self.dims(model, category)
        name = self.name(model, category)
        if dims is None:
            if point_id is not None:
                raise LookupError(f"point {point_id} is not in {name} (the collection does not exist)")
            return []
        if using not in dims:
            raise ValueError(f"unknown vector {using!r}; {name} has {sorted(dims)}")
        excluded_ids = [str(i) for i in exclude_ids]
        excluded_sha = {exclude_sha256.strip().lower()} if exclude_sha256 else set()
        if point_id is not None:
            query, stored_sha = self._stored_vector(name, point_id, using)
            excluded_ids.append(str(point_id))
            excluded_sha.update([stored_sha] if stored_sha else [])
        else:
            query = _as_vector(vector, using, dims[using])
        # within (model, category) a hash has exactly one point id (upsert refuses any other), so
        # excluding that id excludes every point of the hash, without a payload index on it
        excluded_ids += [_id_of_hash(sha, model, category) for sha in sorted(excluded_sha) if _SHA256.match(sha)]
        cond = search_conditions(label, defect_type, excluded_ids)
        found = self.backend.query(
            name, query.tolist(), using, cond, k, exact=exact, with_vector=with_vector, with_payload=with_payload
        )
        return [
            Hit(id=pid, score=score, payload=payload, vector=vectors.get(using) if with_vector else None)
            for pid, score, payload, vectors in found
        ]

    def _stored_vector(self, name: str, point_id: str, using: str) -> tuple[np.ndarray, str | None]:
        """The ``using`` vector of a stored point and its payload ``sha256``; LookupError if absent."""
        found = self.backend.retrieve(name, [str(point_id)], ["sha256"], [using])
        if not found:
            raise LookupError(f"point {point_id} is not in {name}")
        _, vectors, payload = found[0]
        sha = payload.get("sha256")
        return np.asarray(vectors[using], dtype=np.float32), (str(sha) if sha else None)


def _check_query(vector: np.ndarray | None, point_id: str | None, k: int, label: str | None) -> None:
    """The argument errors of :meth:`SimilarityStore.similar`, before the store is asked anything."""
    if (vector is None) == (point_id is None):
        raise ValueError("give exactly one of vector= or point_id=")
    if k < 1:
        raise ValueError("k must be at least 1")
    if label is not None and label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")


def _field_is(key: str, value: str) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))
