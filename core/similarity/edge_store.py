"""The embedded engine: Qdrant Edge (the server's Rust engine in-process), one shard per collection.

Why Edge and not qdrant-client's local mode: local mode scans every point in Python, checks
payload filters point by point and loads the whole store at start; Edge has payload indexes and
HNSW, keeps segments on disk (mmap) and answers a filtered top-5 over 100k points in
milliseconds (README, "Similar defects at scale"). Its Python API changed between minor versions,
so ``qdrant-edge-py`` is pinned in requirements.txt and used only in this module,
:mod:`core.similarity.edge_shard`, :mod:`core.similarity.shard_host` and
:mod:`core.similarity.hnsw_build`.

Layout under the embedded folder ``P`` (``INSPECT_QDRANT_PATH``)::

    P/edge/<collection>/CURRENT        name of the live generation, e.g. "g000001"
    P/edge/<collection>/g000001/       an Edge shard (edge_config.json, segments/, wal/)
    P/edge/<collection>/build.json     an HNSW build in progress (see below)
    P/edge/<collection>/journal.jsonl  ids written while that build runs

**One handle per process.** Edge admits one handle per shard folder (the WAL is locked), and
opening or closing a shard holds the GIL for a few hundred milliseconds at 20k points. So each
process keeps its shards open in :data:`_ENGINES` and every :class:`EdgeBackend` of that process
shares them (the app and the API run in one process, ``server.py``). Loading a shard holds the
GIL (hundreds of milliseconds at 100k points), so the app keeps them open. A process that finds a
shard held (an ``index`` job) leaves a ``want.<pid>`` file in the collection's folder while it
waits up to its ``lock_wait_s``; the holder closes its shards at its next idle moment
(:data:`SWAP_IDLE_S`). A waiter still refused at its deadline raises :class:`StoreLockedError`.
Shards unused for :data:`IDLE_CLOSE_S` are closed anyway. A shard served by a shard host (below)
is this process's handle all the same: the host is its child, and closes when it does.

**HNSW in the background.** Below :data:`HNSW_THRESHOLD` points a collection is searched exactly
(plain index). Building HNSW holds the GIL for the whole build (tens of seconds at 100k points),
which would freeze every page of the app, so it never runs in the app's process: the live shard
is flushed and copied to the next generation, a child process (``python -m
core.similarity.hnsw_build``) builds HNSW there, and meanwhile writes go to the live shard and
their ids to the journal. When the child is done, the new generation is loaded, the journal
replayed into it, ``CURRENT`` pointed at it and the old one dropped. Searches stay exact until
then; a crashed build is noticed and started again.

**Where the new generation is opened.** Loading a shard holds the GIL for its whole length
(measured with ``scripts/bench_edge_load.py``: ~55 ms at 100k points with the one keyword index
kept, 220-270 ms at 1M; see :data:`INDEXED_FIELDS`), so a page served by a process that loads waits
that long. A finished generation is therefore opened by a *shard host*, a process of its own
(:class:`~core.similarity.edge_shard.RemoteShard`, :data:`SWAP_IN_HOST`), started by the idle-close
thread as soon as the build is done; that thread waits on a socket, without the GIL. It then takes
the engine's lock only for the short part (replaying the journal into the host, pointing
``CURRENT`` at it), and the collection is served from the host from then on: a page waits for
nothing but its own call (one message each way). The next rebuild opens its generation in a fresh
host, and the old one closes its shard in its own process. A collection whose live generation
came from an HNSW build is opened by a host on its first use as well (after a restart, or after
letting another process have it); one still in its first generation (it never passed
:data:`HNSW_THRESHOLD` points: a short load) is loaded in this process
(:class:`~core.similarity.edge_shard.LocalShard`). If a host dies, the call that finds it says so
and the next one opens the live generation again.

Without a host (``SWAP_IN_HOST = False``), the idle-close thread loads the finished generation in
this process, outside the engine's lock, once the process has made no store call for
:data:`SWAP_IDLE_S` or once the generation has waited :data:`SWAP_DEADLINE_S` for such a moment (a
process that never pauses), so a page waits at most the load's GIL time. Either way a store call
swaps itself only when it loads the shard anyway, or if the thread has not managed it
:data:`SWAP_FALLBACK_S` after the build finished.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from core.errors import StoreError
from core.similarity.conditions import Conditions
from core.similarity.edge_shard import LocalShard, RemoteShard

#: Points from which a collection gets an HNSW index (below: exact search, fast enough).
HNSW_THRESHOLD = 20_000
#: HNSW graph parameters (Qdrant's defaults).
HNSW_M, HNSW_EF_CONSTRUCT = 16, 100
#: Payload fields with a keyword index. Each index lengthens a shard's load, all of it with the GIL
#: held (``scripts/bench_edge_load.py``, 100k points: 366 ms median with ``sha256``, ``category``,
#: ``label``, ``defect_type`` and ``split`` indexed; 106 ms with the last three; 56 ms with
#: ``label`` alone; 53 ms with none). ``label`` stays: the Similar page's query and the gallery
#: filter on it. The others are filtered on only beside ``label`` (a defect type, which Edge then
#: checks on the label index's candidates) or in counts and scrolls that tolerate a scan, the
#: query image is excluded by its point id, and a collection holds one category. A Qdrant
#: server keeps its indexes on all of them (``store.INDEXED_FIELDS``): it has no such stall.
#: Shards made with more lose them when loaded (:func:`drop_unused_indexes`).
INDEXED_FIELDS: tuple[str, ...] = ("label",)
#: Seconds a process keeps an unused shard open before closing it (frees it for other processes).
IDLE_CLOSE_S = 900.0
EDGE_DIR = "edge"
#: A collection's first generation; every later one was made by an HNSW build.
FIRST_GENERATION = "g000001"
_CURRENT = "CURRENT"
_BUILD = "build.json"
_JOURNAL = "journal.jsonl"
_DONE = ".done"
_COPIED = ".copied"
_WANT = "want."
#: Longest a write waits for an HNSW build to finish copying the live shard.
COPY_WAIT_S = 300.0
#: Where a shard keeps vectors, HNSW graphs, payload indexes and ids: None (Edge's default, read
#: into RAM when the shard is loaded) or a ``qe.Memory`` name ("Cached": memory-mapped, paged in
#: on use). Loading holds the GIL, so what loading reads decides how long the app's pages stall
#: when a new HNSW generation is swapped in (README, "Similar defects at scale").
SHARD_MEMORY: str | None = None
#: Keep payloads on disk (Edge's ``on_disk_payload``) instead of reading them into RAM at load.
ON_DISK_PAYLOAD: bool | None = None
#: A finished HNSW generation is swapped in by the idle-close thread after this long without a store call.
SWAP_IDLE_S = 1.0
#: ... or by the idle-close thread anyway once it has waited this long (a process that is never idle).
SWAP_DEADLINE_S = 30.0
#: ... or by a store call, if the thread has not managed it this long after the build finished.
SWAP_FALLBACK_S = 120.0
#: How often the idle-close thread looks at the engines.
REAP_TICK_S = 0.5
#: Open a finished HNSW generation in a shard host process (:mod:`core.similarity.edge_shard`) and
#: serve the collection from there, so that its load stalls no page of this process, whatever its
#: size. False: load it here, at an idle moment (the behaviour before; kept for the tests of it).
SWAP_IN_HOST = True
#: After a host failed to open a generation, wait this long before the idle-close thread tries again.
HOST_RETRY_S = 30.0

Shard = LocalShard | RemoteShard


def edge_root(path: Path) -> Path:
    """Where the Edge shards of the embedded store at ``path`` live."""
    return Path(path).expanduser() / EDGE_DIR


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _is_lock_error(exc: BaseException) -> bool:
    return "WouldBlock" in str(exc) or "Resource temporarily unavailable" in str(exc)


def _memory() -> dict[str, Any]:
    """Memory placement of vectors and HNSW graphs (see :data:`SHARD_MEMORY`)."""
    return {} if SHARD_MEMORY is None else {"memory": getattr(qe.Memory, SHARD_MEMORY)}


def _config(dims: Mapping[str, int]) -> qe.EdgeConfig:
    """A shard config: cosine named vectors, HNSW only for segments past the threshold."""
    threshold_kb = max(1, HNSW_THRESHOLD * max(dims.values()) * 4 // 1024)
    memory = _memory()
    placement = {} if SHARD_MEMORY is None else {"payload_memory": memory["memory"], "id_tracker_memory": memory["memory"]}
    return qe.EdgeConfig(
        vectors={name: qe.EdgeVectorParams(size=int(size), distance=qe.Distance.Cosine, **memory) for name, size in dims.items()},
        hnsw_config=qe.HnswIndexConfig(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=10_000, **memory),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb, default_segment_number=1),
        on_disk_payload=ON_DISK_PAYLOAD,
        **placement,
    )


def drop_unused_indexes(shard: qe.EdgeShard) -> bool:
    """Remove payload indexes not in :data:`INDEXED_FIELDS` (shards made by earlier versions have
    them on ``sha256``, ``category``, ``defect_type`` and ``split``); True if one was removed. The
    next load of the shard is then the faster one."""
    unused = [name for name in shard.info().payload_schema if name not in INDEXED_FIELDS]
    for name in unused:
        shard.update(qe.UpdateOperation.delete_field_index(name))
    if unused:
        shard.flush()
    return bool(unused)


class _Collection:
    """One collection: its folder, live shard (loaded lazily) and HNSW build state."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shard: Shard | None = None
        self.generation: str | None = None
        self.dims: dict[str, int] | None = None
        self.child: subprocess.Popen | None = None
        #: A finished generation loaded by the idle-close thread, waiting for the swap: (generation, shard).
        self.preloaded: tuple[str, Shard] | None = None

    def current(self) -> str | None:
        pointer = self.folder / _CURRENT
        return pointer.read_text().strip() if pointer.is_file() else None


class EdgeEngine:
    """The Edge shards of one embedded folder, shared by every store of this process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        self.root = edge_root(self.path)
        self.lock = threading.RLock()
        self.collections: dict[str, _Collection] = {}
        self.users = 0
        self.last_used = time.monotonic()
        #: Generations replaced by an HNSW build: closed and deleted when the process is idle
        #: (one in a shard host closes in its own process; its folder goes once the host has exited).
        self.retired: list[tuple[Shard, Path]] = []
        #: (collection, generation) -> when a shard host last failed to open it.
        self.host_failures: dict[tuple[str, str], float] = {}

    def drop_retired(self) -> None:
        kept = []
        for shard, folder in self.retired:
            shard.close(wait=False)
            if shard.exited():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                kept.append((shard, folder))
        self.retired = kept

    # -- shards ----------------------------------------------------------------------------

    def _corrupt(self, where: Path, reason: str) -> StoreError:
        return StoreError(
            f"the Qdrant Edge store {where} cannot be read ({reason}); nothing was deleted: move the "
            f"folder aside (e.g. mv {where} {where}.broken) and re-run `python -m core index`"
        )

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / _CURRENT).is_file())

    def collection(self, name: str) -> _Collection:
        coll = self.collections.get(name)
        if coll is None:
            coll = self.collections[name] = _Collection(self.root / name)
        return coll

    def read_dims(self, name: str) -> dict[str, int] | None:
        """Named vector sizes from the shard's config file (no need to load the shard)."""
        coll = self.collection(name)
        if coll.dims is not None and coll.shard is not None:
            return coll.dims
        generation = coll.current()
        if generation is None:
            return None
        config_file = coll.folder / generation / "edge_config.json"
        try:
            vectors = json.loads(config_file.read_text())["vectors"]
            coll.dims = {str(k): int(v["size"]) for k, v in vectors.items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._corrupt(coll.folder, f"{config_file.name}: {type(exc).__name__}: {_one_line(exc)}") from exc
        if not coll.dims:
            raise self._corrupt(coll.folder, "the collection has no named vectors")
        return coll.dims

    def shard(self, name: str, lock_wait_s: float = 0.0) -> Shard:
        """The live shard of ``name``, loaded on first use (waiting up to ``lock_wait_s`` for another
        process to release it); finishes a completed HNSW build first."""
        coll = self.collection(name)
        self.last_used = time.monotonic()
        if isinstance(coll.shard, RemoteShard) and coll.shard.dead:
            coll.shard = None  # its host stopped: load the live generation again
        loading = coll.shard is None
        if loading:
            generation = coll.current()
            if generation is None:
                raise LookupError(name)
            self.read_dims(name)
            folder = coll.folder / generation
            if not folder.is_dir():
                raise self._corrupt(coll.folder, f"{_CURRENT} names {generation}, which is missing")
            # a generation made by an HNSW build (the collection passed HNSW_THRESHOLD points) is
            # opened by a shard host, as a swap would open it: its load would stall every page here
            in_host = SWAP_IN_HOST and generation != FIRST_GENERATION
            deadline = time.monotonic() + lock_wait_s
            want = coll.folder / f"{_WANT}{os.getpid()}"
            try:
                while True:
                    try:
                        opened = RemoteShard.open(folder) if in_host else LocalShard(qe.EdgeShard.load(str(folder)))
                        break
                    except Exception as exc:
                        if not _is_lock_error(exc):
                            raise self._corrupt(folder, _one_line(exc)) from exc
                        if time.monotonic() >= deadline:
                            from core.similarity.store import StoreLockedError, _locked_message

                            raise StoreLockedError(_locked_message(self.path)) from exc
                        want.touch()  # asks the holder to let go at its next idle moment
                        time.sleep(0.5)
            finally:
                want.unlink(missing_ok=True)
            coll.generation = generation
            if isinstance(opened, LocalShard):
                drop_unused_indexes(opened.shard)  # a host drops them itself
            coll.shard = opened
        if loading or self._build_needs_attention(coll):
            self._finish_build(name, coll)
        return coll.shard

    def finish_ready_builds(self) -> None:
        """Swap in every finished HNSW generation of a loaded shard (the idle-close thread, when idle)."""
        for name, coll in list(self.collections.items()):
            if coll.shard is not None:
                self._finish_build(name, coll)

    def create(self, name: str, dims: Mapping[str, int]) -> None:
        coll = self.collection(name)
        generation = FIRST_GENERATION
        folder = coll.folder / generation
        if folder.exists():  # a half-made collection (killed before CURRENT was written): ours
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(folder), _config(dims))
        for field_name in INDEXED_FIELDS:
            shard.update(qe.UpdateOperation.create_field_index(field_name, qe.PayloadSchemaType.Keyword))
        shard.flush()
        _write_atomic(coll.folder / _CURRENT, generation)
        coll.shard, coll.generation, coll.dims = LocalShard(shard), generation, {str(k): int(v) for k, v in dims.items()}

    def delete(self, name: str) -> bool:
        coll = self.collections.pop(name, None) or _Collection(self.root / name)
        if coll.child is not None and coll.child.poll() is None:
            coll.child.kill()
            coll.child.wait()
        if coll.preloaded is not None:
            coll.preloaded[1].close()
        if coll.shard is not None:
            coll.shard.close()
        if not coll.folder.is_dir():
            return False
        shutil.rmtree(coll.folder)
        return True

    def close(self) -> None:
        for shard, folder in self.retired:  # wait for retired hosts: their folders go now, not never
            shard.close(wait=True)
            shutil.rmtree(folder, ignore_errors=True)
        self.retired = []
        for coll in self.collections.values():
            if coll.preloaded is not None:
                coll.preloaded[1].close()
                coll.preloaded = None
            if coll.shard is not None:
                coll.shard.close()
                coll.shard = None
        self.collections.clear()

    # -- HNSW in a child process -----------------------------------------------------------

    def journal(self, name: str, ids: Sequence[str]) -> None:
        """Remember ids written while an HNSW build copies from an older state."""
        coll = self.collection(name)
        if (coll.folder / _BUILD).is_file():
            with open(coll.folder / _JOURNAL, "a") as handle:
                handle.writelines(json.dumps(str(i)) + "\n" for i in ids)

    def maybe_build(self, name: str) -> bool:
        """Start an HNSW build when enough points are not yet in an HNSW graph; True if started."""
        coll = self.collection(name)
        shard = self.shard(name)
        if (coll.folder / _BUILD).is_file():
            if self._build_alive(coll):
                return False
            self._abandon_build(coll)  # the child died: start again below
        info = shard.info()
        n_vectors = len(coll.dims or {}) or 1
        if info["points"] * n_vectors - info["indexed_vectors"] < HNSW_THRESHOLD * n_vectors:
            return False
        self.start_build(name)
        return True

    def start_build(self, name: str, *, wait: bool = False) -> None:
        """Copy the live shard to the next generation and build HNSW there in a child process."""
        coll = self.collection(name)
        shard = self.shard(name)
        assert coll.generation is not None
        target = f"g{int(coll.generation[1:]) + 1:06d}"
        for stale in coll.folder.glob("g*"):
            if stale.name not in (coll.generation, target) and stale.is_dir():
                shutil.rmtree(stale)  # a generation no CURRENT points at: a finished or broken build of ours
        shard.flush()
        shutil.rmtree(coll.folder / target, ignore_errors=True)
        for marker in (_DONE, _COPIED):
            (coll.folder / (target + marker)).unlink(missing_ok=True)
        (coll.folder / _JOURNAL).unlink(missing_ok=True)
        # the child copies the flushed segments (sparse, without the GIL of this process) and
        # builds; writes wait for the copy (milliseconds to seconds), reads never wait
        command = [
            sys.executable,
            "-m",
            "core.similarity.hnsw_build",
            str(coll.folder / coll.generation),
            str(coll.folder / target),
        ]
        cwd = Path(__file__).resolve().parents[2]  # where `core` imports from
        coll.child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _write_atomic(coll.folder / _BUILD, json.dumps({"generation": target, "pid": coll.child.pid}))
        if wait:
            coll.child.wait()
            self._finish_build(name, coll)

    def wait_for_copy(self, name: str) -> None:
        """Block a write until a starting HNSW build has copied the live shard (reads go on)."""
        coll = self.collection(name)
        deadline = time.monotonic() + COPY_WAIT_S
        while (coll.folder / _BUILD).is_file() and time.monotonic() < deadline:
            try:
                target = str(json.loads((coll.folder / _BUILD).read_text())["generation"])
            except (OSError, ValueError, KeyError):
                return
            if (coll.folder / (target + _COPIED)).is_file() or not self._build_alive(coll):
                return
            time.sleep(0.01)

    def _build_alive(self, coll: _Collection) -> bool:
        if coll.child is not None:
            return coll.child.poll() is None
        try:
            pid = int(json.loads((coll.folder / _BUILD).read_text())["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError):
            return False
        return True

    def _abandon_build(self, coll: _Collection) -> None:
        (coll.folder / _BUILD).unlink(missing_ok=True)
        (coll.folder / _JOURNAL).unlink(missing_ok=True)
        coll.child = None

    def _build_needs_attention(self, coll: _Collection) -> bool:
        """Whether a store call must deal with the build now: a finished generation that has waited
        SWAP_FALLBACK_S without the idle-close thread swapping it, or a build whose process died."""
        build_file = coll.folder / _BUILD
        if not build_file.is_file():
            return False
        try:
            target = str(json.loads(build_file.read_text())["generation"])
            done_at = (coll.folder / (target + _DONE)).stat().st_mtime
        except (OSError, ValueError, KeyError):
            return not self._build_alive(coll)  # not finished: only a dead build needs us
        return time.time() - done_at >= SWAP_FALLBACK_S

    def _finish_build(self, name: str, coll: _Collection) -> None:
        """Swap in a finished HNSW generation: load it, replay the journal, point CURRENT at it."""
        build_file = coll.folder / _BUILD
        if coll.shard is None or not build_file.is_file():
            return
        try:
            target = str(json.loads(build_file.read_text())["generation"])
        except (OSError, ValueError, KeyError):
            self._abandon_build(coll)
            return
        if not (coll.folder / (target + _DONE)).is_file():
            if not self._build_alive(coll):
                self._abandon_build(coll)
            return
        if coll.child is not None:
            coll.child.wait()
        preloaded, coll.preloaded = coll.preloaded, None
        if preloaded is not None and preloaded[0] == target:
            new = preloaded[1]
        else:
            if preloaded is not None:
                preloaded[1].close()
            try:
                new = open_generation(coll.folder / target)
            except Exception as exc:
                if _is_lock_error(exc):  # the idle-close thread is loading it outside the lock: it swaps it in
                    return
                raise
        journal = coll.folder / _JOURNAL
        ids = list(dict.fromkeys(json.loads(line) for line in journal.read_text().splitlines())) if journal.is_file() else []
        if ids:
            live = {pid: (vectors, payload) for pid, vectors, payload in coll.shard.retrieve(ids, True, True)}
            points = [(i, *live[i]) for i in ids if i in live]
            gone = [i for i in ids if i not in live]
            if points:
                new.upsert(points)
            if gone:
                new.delete(gone)
        # no flush here (it would lengthen the swap that page calls wait for): the replayed writes
        # are in the new generation's write-ahead log, and the next build flushes before copying
        old, old_generation = coll.shard, coll.generation
        _write_atomic(coll.folder / _CURRENT, target)
        coll.shard, coll.generation, coll.child = new, target, None
        self._abandon_build(coll)
        for marker in (_DONE, _COPIED):
            (coll.folder / (target + marker)).unlink(missing_ok=True)
        # closing a shard here holds the GIL (~0.1 s): the reaper closes and deletes it once the
        # process is idle; one in a shard host closes now, in its own process (its folder goes
        # once the host has exited and the process is idle)
        if isinstance(old, RemoteShard):
            old.close(wait=False)
        self.retired.append((old, coll.folder / str(old_generation)))
        self.host_failures.pop((name, target), None)

    def swaps_due(self, idle: bool) -> list[tuple[str, str]]:
        """(collection, generation) of finished builds the idle-close thread should load now: all of
        them while the process is idle, else those that waited SWAP_DEADLINE_S. Reads without the
        lock: :meth:`swap_in` checks again under it."""
        due = []
        for name, coll in list(self.collections.items()):
            build_file = coll.folder / _BUILD
            if coll.shard is None or coll.preloaded is not None or not build_file.is_file():
                continue
            try:
                target = str(json.loads(build_file.read_text())["generation"])
                done_at = (coll.folder / (target + _DONE)).stat().st_mtime
            except (OSError, ValueError, KeyError):
                continue
            failed_at = self.host_failures.get((name, target))
            if failed_at is not None and time.monotonic() - failed_at < HOST_RETRY_S:
                continue
            if SWAP_IN_HOST or idle or time.time() - done_at >= SWAP_DEADLINE_S:
                due.append((name, target))
        return due

    def swap_in(self, name: str, target: str, shard: Shard) -> bool:
        """Swap in a generation the idle-close thread loaded outside the lock, if it is still the one
        waiting (else close it). Call under the lock; True if swapped."""
        coll = self.collections.get(name)
        build_file = coll.folder / _BUILD if coll is not None else None
        try:
            current = str(json.loads(build_file.read_text())["generation"]) if build_file is not None else None
        except (OSError, ValueError, KeyError):
            current = None
        if coll is None or coll.shard is None or coll.preloaded is not None or current != target:
            shard.close()
            return False
        coll.preloaded = (target, shard)
        self._finish_build(name, coll)
        return coll.generation == target

    def wanted(self) -> bool:
        """Whether another live process waits for one of this engine's loaded shards."""
        for coll in self.collections.values():
            if coll.shard is None:
                continue
            for marker in coll.folder.glob(_WANT + "*"):
                try:
                    pid = int(marker.name[len(_WANT) :])
                    if pid != os.getpid():
                        os.kill(pid, 0)
                        return True
                except (ValueError, ProcessLookupError):
                    marker.unlink(missing_ok=True)  # left by a process that is gone
                except OSError:
                    return True  # alive, owned by another user
        return False

    def build_pending(self, name: str) -> bool:
        """Whether an HNSW build of ``name`` is running or waits to be swapped in."""
        return (self.collection(name).folder / _BUILD).is_file()


def open_generation(folder: Path) -> Shard:
    """Open a finished HNSW generation: in a shard host (:data:`SWAP_IN_HOST`), else here."""
    if SWAP_IN_HOST:
        return RemoteShard.open(folder)
    return LocalShard(qe.EdgeShard.load(str(folder)))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# One engine per folder per process
# --------------------------------------------------------------------------------------------

_ENGINES: dict[str, EdgeEngine] = {}
_ENGINES_LOCK = threading.Lock()
_REAPER: threading.Thread | None = None


def _reap() -> None:
    """Swap in finished HNSW generations and drop retired ones while the process is idle; close
    engines another process asks for (``want.<pid>``) or nobody has used for IDLE_CLOSE_S."""
    while True:
        time.sleep(REAP_TICK_S)
        with _ENGINES_LOCK:
            engines = list(_ENGINES.items())
        for _key, engine in engines:
            _swap_due_generations(engine)
        with _ENGINES_LOCK:
            for key, engine in list(_ENGINES.items()):
                if not engine.lock.acquire(blocking=False):
                    continue
                try:
                    if time.monotonic() - engine.last_used > SWAP_IDLE_S:
                        engine.drop_retired()
                    idle_s = time.monotonic() - engine.last_used
                    building = any(engine.build_pending(n) for n in list(engine.collections))
                    wanted = idle_s > SWAP_IDLE_S and engine.wanted()
                    if engine.users == 0 and (idle_s > IDLE_CLOSE_S or wanted) and not building:
                        engine.close()
                        del _ENGINES[key]
                finally:
                    engine.lock.release()


def _swap_due_generations(engine: EdgeEngine) -> None:
    """Load finished generations outside the engine's lock (pages go on meanwhile, slowed only by
    the GIL the load holds), then swap each in under the lock (a journal replay: milliseconds)."""
    # read without the lock (a busy process may hold it almost always); swap_in checks again under it
    due = engine.swaps_due(idle=time.monotonic() - engine.last_used > SWAP_IDLE_S)
    for name, target in due:
        try:
            shard = open_generation(engine.root / name / target)
        except Exception:  # noqa: BLE001 - left to the store call's own load, which reports it
            engine.host_failures[(name, target)] = time.monotonic()
            continue
        with engine.lock:
            engine.swap_in(name, target, shard)


def engine_for(path: Path) -> EdgeEngine:
    """This process's engine for the embedded folder ``path``."""
    global _REAPER
    key = str(Path(path).expanduser().resolve())
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = EdgeEngine(Path(key))
        if _REAPER is None:
            _REAPER = threading.Thread(target=_reap, name="edge-idle-close", daemon=True)
            _REAPER.start()
        return engine


def discard_engine(path: Path) -> None:
    """Close and forget this process's engine for ``path`` (a migration's staging copy)."""
    key = str(Path(path).expanduser().resolve())
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(key, None)
    if engine is not None:
        with engine.lock:
            engine.close()


def release_all() -> None:
    """Close every shard this process holds (before another process needs the folder, and tests)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            with engine.lock:
                engine.close()
        _ENGINES.clear()


class EdgeBackend:
    """The store's engine interface over this process's :class:`EdgeEngine` for one folder."""

    kind = "edge"

    def __init__(self, path: Path, *, lock_wait_s: float = 0.0) -> None:
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise StoreError(f"the Qdrant store {path} is a file, not a folder: set INSPECT_QDRANT_PATH to a folder")
        root = edge_root(path)
        if root.exists() and not root.is_dir():
            raise StoreError(f"the Qdrant Edge store {root} is a file, not a folder; nothing was deleted: move it aside")
        self.engine = engine_for(path)
        self.lock_wait_s = lock_wait_s
        self.location = str(self.engine.path)
        with self.engine.lock:
            self.engine.users += 1
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with self.engine.lock:
                self.engine.users -= 1
                self.engine.last_used = time.monotonic()

    def _shard(self, name: str) -> Shard:
        return self.engine.shard(name, self.lock_wait_s)

    def collection_names(self) -> list[str]:
        return self.engine.names()

    def vector_sizes(self, name: str) -> dict[str, int] | None:
        with self.engine.lock:
            dims = self.engine.read_dims(name)
            if dims is not None:
                self._shard(name)  # a held or unreadable shard is reported now, not mid-way
            return dims

    def create_collection(self, name: str, dims: Mapping[str, int]) -> None:
        with self.engine.lock:
            self.engine.create(name, dims)

    def delete_collection(self, name: str) -> bool:
        with self.engine.lock:
            return self.engine.delete(name)

    def count(self, name: str, cond: Conditions | None) -> int:
        with self.engine.lock:
            return self._shard(name).count(cond)

    def upsert(self, name: str, points: Sequence[tuple[str, dict[str, list[float]], dict[str, Any]]]) -> None:
        self.engine.wait_for_copy(name)
        with self.engine.lock:
            # durable through Edge's write-ahead log; a flush per upload would cost an fsync
            self._shard(name).upsert(points)
            self.engine.journal(name, [pid for pid, _, _ in points])
            self.engine.maybe_build(name)

    def retrieve(
        self, name: str, ids: Sequence[str], with_payload: bool | list[str], with_vectors: bool | list[str]
    ) -> list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
        with self.engine.lock:
            return self._shard(name).retrieve(ids, with_payload, with_vectors)

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
        with self.engine.lock:
            return self._shard(name).query(vector, using, cond, k, exact, with_vector, with_payload)

    def scroll(
        self, name: str, offset: str | None, limit: int, with_vectors: bool = False, cond: Conditions | None = None
    ) -> tuple[list[tuple[str, dict[str, np.ndarray], dict[str, Any]]], str | None]:
        with self.engine.lock:
            return self._shard(name).scroll(offset, limit, with_vectors, cond)

    # -- Edge only -------------------------------------------------------------------------

    def info(self, name: str) -> dict[str, int]:
        """Points, indexed (HNSW) vectors and segments of a collection."""
        with self.engine.lock:
            return self._shard(name).info()

    def build_hnsw(self, name: str) -> None:
        """Build HNSW now (in a child process) and swap it in; for the benchmark and the tests."""
        with self.engine.lock:
            self.engine.start_build(name, wait=True)
        self.wait_for_build(name)  # the idle-close thread may have been the one to load it

    def wait_for_build(self, name: str, timeout_s: float = 600.0) -> bool:
        """Wait for a background HNSW build to be swapped in; True when none is left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.engine.lock:
                self._shard(name)
                self.engine.finish_ready_builds()  # now, not at the next idle moment
                if not self.engine.build_pending(name):
                    return True
            time.sleep(0.2)
        return False
