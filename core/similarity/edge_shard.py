"""One open Qdrant Edge shard, in this process or in a process of its own, behind plain-data calls.

Why two kinds: loading a shard holds the GIL for its whole length (``scripts/bench_edge_load.py``:
~55 ms at 100k points, ~220 ms at 1M), and in the app's process every page waits that long. The
first load of a collection happens when a page first needs it, in this process
(:class:`LocalShard`). A new HNSW generation, though, arrives while inspectors work, and loading
it here would stall them once per rebuild, longer the larger the gallery. So it is opened by a
*shard host*, a small process of its own (:mod:`core.similarity.shard_host`), and the collection
is then served from there (:class:`RemoteShard`): the app's threads wait on a socket, which
releases the GIL, so a page waits for nothing but its own query. The next rebuild opens the next
generation in a fresh host and the old host closes its shard in its own process (closing a large
shard holds the GIL too).

Both kinds offer the same calls, with plain Python values in and out (ids as strings, named
vectors as NumPy arrays, payloads as dicts, :class:`~core.similarity.conditions.Conditions` for
filters), because Edge's request and result objects do not cross a process boundary.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from core.errors import StoreError
from core.similarity.conditions import Conditions

#: Seconds a host may take to start and load its shard before the swap gives up (and retries later).
HOST_START_S = 600.0

Points = list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]


def edge_filter(cond: Conditions | None) -> qe.Filter | None:
    """Edge's filter for :class:`Conditions` (None: no restriction)."""
    if cond is None or cond.empty:
        return None
    must: list[Any] = [qe.FieldCondition(key=k, match=qe.MatchValue(v)) for k, v in cond.equals.items()]
    must += [qe.FieldCondition(key=k, match=qe.MatchAny(list(v))) for k, v in cond.any_of.items()]
    must_not: list[Any] = [qe.HasIdCondition(set(cond.exclude_ids))] if cond.exclude_ids else []
    return qe.Filter(must=must or None, must_not=must_not or None)


def _vectors(value: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _as_list(vector: Any) -> Any:
    return vector.tolist() if isinstance(vector, np.ndarray) else vector


class LocalShard:
    """An Edge shard open in this process."""

    remote = False

    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard

    def count(self, cond: Conditions | None) -> int:
        return int(self.shard.count(qe.CountRequest(exact=True, filter=edge_filter(cond))))

    def upsert(self, points: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> None:
        self.shard.update(
            qe.UpdateOperation.upsert_points(
                [qe.Point(pid, {k: _as_list(v) for k, v in vec.items()}, dict(payload)) for pid, vec, payload in points]
            )
        )

    def delete(self, ids: Sequence[str]) -> None:
        self.shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def retrieve(self, ids: Sequence[str], with_payload: bool | list[str], with_vectors: bool | list[str]) -> Points:
        payload_arg: Any = qe.PayloadSelector.Include(with_payload) if isinstance(with_payload, list) else with_payload
        found = self.shard.retrieve(list(ids), with_payload=payload_arg, with_vector=with_vectors)
        return [(str(r.id), _vectors(r.vector), dict(r.payload or {})) for r in found]

    def query(
        self,
        vector: list[float],
        using: str,
        cond: Conditions | None,
        k: int,
        exact: bool,
        with_vector: bool,
        with_payload: bool,
    ) -> list[tuple[str, float, dict[str, Any], dict[str, np.ndarray]]]:
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(_as_list(vector), using=using),
            filter=edge_filter(cond),
            with_payload=with_payload,
            with_vector=[using] if with_vector else None,
            params=qe.SearchParams(exact=True) if exact else None,
        )
        return [
            (str(p.id), float(p.score), dict(p.payload or {}) if with_payload else {}, _vectors(p.vector) if with_vector else {})
            for p in self.shard.query(request)
        ]

    def query_packed(
        self,
        vector: list[float],
        using: str,
        cond: Conditions | None,
        k: int,
        exact: bool,
        with_vector: bool,
        with_payload: bool,
    ) -> tuple[list[str], list[float], list[dict[str, Any]], np.ndarray | None]:
        """:meth:`query`'s hits as columns, the vectors as one matrix: what a host sends back (one
        array pickles in a fraction of the time 500 small ones take)."""
        hits = self.query(vector, using, cond, k, exact, with_vector, with_payload)
        matrix = np.stack([h[3][using] for h in hits]) if with_vector and hits else None
        return [h[0] for h in hits], [h[1] for h in hits], [h[2] for h in hits], matrix

    def scroll(self, offset: str | None, limit: int, with_vectors: bool, cond: Conditions | None) -> tuple[Points, str | None]:
        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=edge_filter(cond), with_payload=True, with_vector=with_vectors
        )
        batch, next_offset = self.shard.scroll(request)
        points = [(str(r.id), _vectors(r.vector), dict(r.payload or {})) for r in batch]
        return points, None if next_offset is None else str(next_offset)

    def info(self) -> dict[str, int]:
        info = self.shard.info()
        return {"points": info.points_count, "indexed_vectors": info.indexed_vectors_count, "segments": info.segments_count}

    def flush(self) -> None:
        self.shard.flush()

    def close(self, wait: bool = True) -> None:  # noqa: ARG002 - same call as RemoteShard's
        self.shard.close()

    def exited(self) -> bool:
        return True


#: The calls a host answers (the names of LocalShard's methods; a query travels as ``query_packed``).
CALLS = ("count", "upsert", "delete", "retrieve", "query_packed", "scroll", "info", "flush")


class RemoteShard:
    """An Edge shard open in a shard host process; each call is one message each way."""

    remote = True

    def __init__(self, process: subprocess.Popen, conn: Connection, folder: Path) -> None:
        self.process, self.conn, self.folder = process, conn, folder
        self.lock = threading.Lock()
        self.dead = False

    @classmethod
    def open(cls, folder: Path, timeout_s: float = HOST_START_S) -> RemoteShard:
        """Start a host that loads the shard at ``folder``; returns once it has (the caller's thread
        waits on a socket, without the GIL). Raises :class:`StoreError` if it cannot."""
        ours, theirs = socket.socketpair()
        cwd = Path(__file__).resolve().parents[2]  # where `core` imports from
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.similarity.shard_host", str(theirs.fileno()), str(folder)],
                cwd=cwd,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise StoreError(f"cannot start a shard host for {folder} ({type(exc).__name__}: {exc})") from exc
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        shard = cls(process, conn, folder)
        try:
            if not conn.poll(timeout_s):
                raise StoreError(f"the shard host for {folder} did not load it within {timeout_s:.0f} s")
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            shard._kill()
            raise StoreError(f"the shard host for {folder} stopped while loading it ({type(exc).__name__})") from exc
        except StoreError:
            shard._kill()
            raise
        if status != "ok":
            shard._kill()
            raise StoreError(f"the Qdrant Edge shard {folder} cannot be loaded ({value})")
        return shard

    def _kill(self) -> None:
        self.dead = True
        self.conn.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def _call(self, name: str, *args: Any) -> Any:
        with self.lock:
            if self.dead:
                raise StoreError(f"the shard host for {self.folder} has stopped; the next call reopens the collection")
            try:
                self.conn.send((name, args))
                status, value = self.conn.recv()
            except (EOFError, OSError) as exc:
                self._kill()
                raise StoreError(
                    f"the shard host for {self.folder} stopped unexpectedly ({type(exc).__name__}); "
                    "nothing was deleted and the next call reopens the collection"
                ) from exc
        if status == "ok":
            return value
        raise StoreError(f"Qdrant Edge ({self.folder.name}): {value}")

    def count(self, cond: Conditions | None) -> int:
        return self._call("count", cond)

    def upsert(self, points: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> None:
        self._call("upsert", [(pid, dict(vec), dict(payload)) for pid, vec, payload in points])

    def delete(self, ids: Sequence[str]) -> None:
        self._call("delete", list(ids))

    def retrieve(self, ids: Sequence[str], with_payload: bool | list[str], with_vectors: bool | list[str]) -> Points:
        return self._call("retrieve", list(ids), with_payload, with_vectors)

    def query(
        self,
        vector: list[float],
        using: str,
        cond: Conditions | None,
        k: int,
        exact: bool,
        with_vector: bool,
        with_payload: bool,
    ) -> list[tuple[str, float, dict[str, Any], dict[str, np.ndarray]]]:
        query = np.asarray(vector, dtype=np.float32)  # one array, not 152 pickled scalars
        ids, scores, payloads, matrix = self._call("query_packed", query, using, cond, k, exact, with_vector, with_payload)
        vectors = [{using: row} for row in matrix] if matrix is not None else [{} for _ in ids]
        return list(zip(ids, scores, payloads, vectors, strict=True))

    def scroll(self, offset: str | None, limit: int, with_vectors: bool, cond: Conditions | None) -> tuple[Points, str | None]:
        return self._call("scroll", offset, limit, with_vectors, cond)

    def info(self) -> dict[str, int]:
        return self._call("info")

    def flush(self) -> None:
        self._call("flush")

    def close(self, wait: bool = True) -> None:
        """Ask the host to close the shard and exit. ``wait``: until it has (the folder is then free
        for another process, and may be deleted); else return at once and let :meth:`exited` tell."""
        with self.lock:
            if not self.dead:
                self.dead = True
                try:
                    self.conn.send(("close", ()))
                except (EOFError, OSError):
                    pass
            if wait:
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                self.conn.close()

    def exited(self) -> bool:
        """Whether the host process has ended (its shard is closed; its folder may be deleted)."""
        if self.process.poll() is None:
            return False
        self.conn.close()
        return True
