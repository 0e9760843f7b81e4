"""Qdrant Edge, the embedded default: persistence across restarts, HNSW switch-over, migration from
local mode, a held or corrupt folder (one clear message, nothing deleted)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import StoreError
from core.similarity import edge_store, migration
from core.similarity.store import SimilarityStore, StoreLockedError, collection_name, make_record

MODEL, CATEGORY = "patchcore", "tile"
DIM = 16
ROOT = Path(__file__).resolve().parents[1]


def records(n: int, seed: int = 0, dim: int = DIM, model: str = MODEL, category: str = CATEGORY):
    rng = np.random.default_rng(seed)
    kinds = [("good", "good", "train"), ("anomalous", "crack", "test"), ("anomalous", "hole", "test")]
    return [
        make_record(
            sha256=hashlib.sha256(f"e-{seed}-{i}".encode()).hexdigest(),
            model=model,
            category=category,
            vectors={"global": rng.normal(size=dim), "defect": rng.normal(size=dim)},
            image_path=f"{i}.png",
            split=kinds[i % 3][2],
            label=kinds[i % 3][0],
            defect_type=kinds[i % 3][1],
            score=0.5,
        )
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def edge(monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("INSPECT_QDRANT_BACKEND", "edge")
    yield
    edge_store.release_all()


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    env_code = "import os; os.environ['INSPECT_QDRANT_BACKEND']='edge'; os.environ.pop('QDRANT_URL', None)\n" + code
    return subprocess.run([sys.executable, "-c", env_code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


# -- persistence and one handle per process ----------------------------------------------------


def test_persists_across_process_restarts(tmp_path):
    path = tmp_path / "qdrant"
    data = records(30)
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, data)
        before = [h.id for h in store.similar(MODEL, CATEGORY, point_id=data[1].id, k=5, label="anomalous")]
    edge_store.release_all()  # this process lets go, as it does when it exits
    code = (
        "import sys; from core.similarity.store import SimilarityStore\n"
        "s = SimilarityStore.open(sys.argv[1])\n"
        f"print(s.count({MODEL!r}, {CATEGORY!r}), ','.join(h.id for h in s.similar({MODEL!r}, {CATEGORY!r}, "
        f"point_id={data[1].id!r}, k=5, label='anomalous')))\n"
    )
    done = run(code, str(path))
    assert done.returncode == 0, done.stderr
    count, ids = done.stdout.split()
    assert int(count) == 30 and ids.split(",") == before


def test_stores_of_one_process_share_one_handle(tmp_path):
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as a, SimilarityStore.open(path) as b:  # two threads/pages
        a.upsert(MODEL, CATEGORY, records(6))
        assert b.count(MODEL, CATEGORY) == 6
        assert a.backend.engine is b.backend.engine


def test_collection_held_by_another_process_is_reported_as_locked(tmp_path):
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, records(6))
        code = (
            "import sys; from core.similarity.store import SimilarityStore, StoreLockedError\n"
            "s = SimilarityStore.open(sys.argv[1])\n"
            "try:\n    s.count('patchcore', 'tile'); print('opened')\n"
            "except StoreLockedError as e:\n    print('LOCKED', e)\n"
        )
        done = run(code, str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("LOCKED") and "in use by another process" in done.stdout
    assert "\n" not in done.stdout.strip()
    edge_store.release_all()
    assert run(code, str(path)).stdout.startswith("opened")  # free once this process lets go


def test_an_idle_holder_lets_go_when_another_process_asks(tmp_path):
    """The app keeps shards open (loading one stalls its pages); a job that needs one asks for it."""
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, records(6))
        name = store.name(MODEL, CATEGORY)
    engine = edge_store.engine_for(path)
    assert engine.collection(name).shard is not None  # still held, idle
    assert edge_store.IDLE_CLOSE_S >= 300  # so only the request can free it within the wait below
    code = (
        "import sys, time; from core.similarity.store import SimilarityStore\n"
        "t = time.monotonic(); s = SimilarityStore.open(sys.argv[1], lock_wait_s=120)\n"
        "print(s.count('patchcore', 'tile'), round(time.monotonic() - t, 1))\n"
    )
    done = run(code, str(path))
    assert done.returncode == 0, done.stderr
    count, waited = done.stdout.split()
    assert int(count) == 6 and float(waited) < 60
    assert engine.collection(name).shard is None
    assert not list((edge_store.edge_root(path) / name).glob("want.*"))  # the request is withdrawn


def test_a_shard_with_the_old_indexes_loses_them_and_still_excludes_the_query_by_hash(tmp_path, monkeypatch):
    """Shards made by earlier versions carry keyword indexes on sha256, category, defect_type and
    split (they made loading up to 7x slower); loading drops them, and a vector query still never
    returns its own image."""
    import qdrant_edge as qe

    path = tmp_path / "qdrant"
    old_layout = ("category", "label", "defect_type", "split", "sha256")
    monkeypatch.setattr(edge_store, "INDEXED_FIELDS", old_layout)
    data = records(12)
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, data)
    edge_store.release_all()
    folder = edge_store.edge_root(path) / collection_name(MODEL, CATEGORY)
    shard_dir = folder / (folder / "CURRENT").read_text().strip()
    shard = qe.EdgeShard.load(str(shard_dir))
    assert set(old_layout) == set(shard.info().payload_schema)
    shard.close()
    monkeypatch.undo()
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("INSPECT_QDRANT_BACKEND", "edge")

    query = data[1]
    with SimilarityStore.open(path) as store:
        hits = store.similar(MODEL, CATEGORY, vector=query.vectors["defect"], k=11, exclude_sha256=query.payload["sha256"])
        assert len(hits) == 11 and query.id not in {h.id for h in hits}
        unexcluded = store.similar(MODEL, CATEGORY, vector=query.vectors["defect"], k=1)
        assert unexcluded[0].id == query.id  # the exclusion, not the vector, kept it out
    edge_store.release_all()
    shard = qe.EdgeShard.load(str(shard_dir))
    assert set(shard.info().payload_schema) == set(edge_store.INDEXED_FIELDS) == {"label"}
    shard.close()


# -- HNSW switch-over ---------------------------------------------------------------------------


def test_hnsw_switch_over_keeps_the_exact_top5(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 400)
    path = tmp_path / "qdrant"
    data = records(900, dim=32)
    queries = np.random.default_rng(99).normal(size=(25, 32))
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, data[:300])
        assert store.backend.info(store.name(MODEL, CATEGORY))["indexed_vectors"] == 0  # exact below the size
        store.upsert(MODEL, CATEGORY, data[300:800])  # passes the size: a build starts in a child process
        name = store.name(MODEL, CATEGORY)
        store.upsert(MODEL, CATEGORY, data[800:])  # written while it builds: journaled, replayed
        assert store.backend.wait_for_build(name, timeout_s=240)
        info = store.backend.info(name)
        assert info["points"] == 900 and info["indexed_vectors"] > 0
        assert store.count(MODEL, CATEGORY) == 900
        assert len(store.get(MODEL, CATEGORY, [r.id for r in data[800:]])) == 100
        found = total = 0
        for q in queries:
            for filters in ({}, {"label": "anomalous"}):
                hnsw = [h.id for h in store.similar(MODEL, CATEGORY, vector=q, k=5, **filters)]
                exact = [h.id for h in store.similar(MODEL, CATEGORY, vector=q, k=5, exact=True, **filters)]
                found += len(set(hnsw) & set(exact))
                total += len(exact)
    recall = found / total
    print(f"HNSW recall@5 against exact search: {recall:.3f} over {total // 5} queries")
    assert recall >= 0.95
    edge_store.release_all()
    with SimilarityStore.open(path) as store:  # the HNSW generation is what reopens
        assert store.backend.info(store.name(MODEL, CATEGORY))["indexed_vectors"] > 0
        assert store.count(MODEL, CATEGORY) == 900


def test_updates_and_deletes_of_old_points_hold_after_the_hnsw_switch_over(tmp_path, monkeypatch):
    """Edge skips an operation older than a point's version: a new generation that lost the
    write-ahead log would number its operations from scratch and silently drop these."""
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    path = tmp_path / "qdrant"
    data = records(240, dim=32)
    with SimilarityStore.open(path) as store:
        for rec in data:  # one operation each, as uploads come: versions up to ~240
            store.upsert(MODEL, CATEGORY, [rec])
        name = store.name(MODEL, CATEGORY)
        assert store.backend.wait_for_build(name, timeout_s=240)
        assert store.backend.info(name)["indexed_vectors"] > 0
        backend = store.backend
        for rec in (data[0], data[120], data[-1]):
            _pid, vectors, payload = backend.retrieve(name, [rec.id], True, True)[0]
            backend.upsert(name, [(rec.id, {k: v.tolist() for k, v in vectors.items()}, dict(payload, label="relabelled"))])
        gone = [data[1].id, data[-2].id]
        with backend.engine.lock:
            backend.engine.shard(name).delete(gone)
        got = {pid: payload["label"] for pid, _v, payload in backend.retrieve(name, [r.id for r in data], True, False)}
    assert [got[r.id] for r in (data[0], data[120], data[-1])] == ["relabelled"] * 3
    assert not set(gone) & set(got) and len(got) == 238


def _wait(predicate, timeout_s: float = 240.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_finished_generation_is_swapped_in_while_idle_not_by_a_page_call(tmp_path, monkeypatch):
    """Loading a generation holds the GIL, so a page's store call must not be the one that does it
    (the in-process swap, used where no shard host is, ``SWAP_IN_HOST = False``)."""
    monkeypatch.setattr(edge_store, "SWAP_IN_HOST", False)
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    monkeypatch.setattr(edge_store, "SWAP_DEADLINE_S", 3600.0)
    monkeypatch.setattr(edge_store, "SWAP_IDLE_S", 3600.0)  # idle thread: not yet
    path = tmp_path / "qdrant"
    data = records(300, dim=32)
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        store.upsert(MODEL, CATEGORY, data)  # passes the size: a build starts
        engine = store.backend.engine
        coll = engine.collection(name)
        first = coll.generation
        with engine.lock:
            target = json.loads((coll.folder / "build.json").read_text())["generation"]
        assert _wait(lambda: (coll.folder / f"{target}.done").is_file())
        for _ in range(5):  # page calls after the build finished: served by the old generation
            store.similar(MODEL, CATEGORY, point_id=data[1].id, k=5, label="anomalous")
            assert coll.generation == first and engine.build_pending(name)
        monkeypatch.setattr(edge_store, "SWAP_IDLE_S", 0.2)  # now the idle thread may
        assert _wait(lambda: coll.generation == target, timeout_s=30)
        assert not engine.build_pending(name)
        assert store.backend.info(name)["indexed_vectors"] > 0 and store.count(MODEL, CATEGORY) == 300


def test_a_process_that_is_never_idle_gets_its_hnsw_generation_loaded_off_the_page_calls(tmp_path, monkeypatch):
    """Page calls without a pause: the idle-close thread still loads the finished generation once it
    is overdue, outside the engine's lock, so no page call is the one that loads it (in-process swap)."""
    import threading
    import types

    import qdrant_edge as qe

    loads: list[tuple[str, str]] = []

    class Shards:
        def __getattr__(self, attr: str):
            return getattr(qe.EdgeShard, attr)

        def load(self, path: str, *args):
            loads.append((Path(path).name, threading.current_thread().name))
            return qe.EdgeShard.load(path, *args)

    proxy = types.SimpleNamespace(**{k: getattr(qe, k) for k in dir(qe) if not k.startswith("_")})
    proxy.EdgeShard = Shards()
    monkeypatch.setattr(edge_store, "qe", proxy)
    monkeypatch.setattr(edge_store, "SWAP_IN_HOST", False)
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    monkeypatch.setattr(edge_store, "SWAP_IDLE_S", 3600.0)
    monkeypatch.setattr(edge_store, "SWAP_DEADLINE_S", 0.0)  # overdue as soon as it is done
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        store.upsert(MODEL, CATEGORY, records(300, dim=32))
        coll = store.backend.engine.collection(name)
        first = coll.generation
        target = json.loads((coll.folder / "build.json").read_text())["generation"]
        deadline = time.monotonic() + 60
        while coll.generation == first and time.monotonic() < deadline:  # a page that never pauses
            assert store.count(MODEL, CATEGORY) == 300
        assert coll.generation == target
        assert [thread for gen, thread in loads if gen == target] == ["edge-idle-close"]
        assert store.backend.info(name)["indexed_vectors"] > 0


def test_a_swap_that_meets_the_idle_thread_loading_the_same_generation_leaves_it_to_that_thread(tmp_path, monkeypatch):
    """Edge admits one handle per shard folder. While the idle-close thread loads a finished
    generation outside the lock, a store call that swaps under the lock (wait_for_build, a late
    fallback) must not fail on the folder's lock: it leaves the swap to that thread (in-process
    swap; a shard host meets the same lock and is left the same way)."""
    import qdrant_edge as qe

    from core.similarity.edge_shard import LocalShard

    monkeypatch.setattr(edge_store, "SWAP_IN_HOST", False)
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    monkeypatch.setattr(edge_store, "SWAP_IDLE_S", 3600.0)  # the real idle thread stays out of it
    monkeypatch.setattr(edge_store, "SWAP_DEADLINE_S", 3600.0)
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        store.upsert(MODEL, CATEGORY, records(300, dim=32))
        engine = store.backend.engine
        coll = engine.collection(name)
        target = json.loads((coll.folder / "build.json").read_text())["generation"]
        deadline = time.monotonic() + 120
        while not (coll.folder / (target + ".done")).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        held = qe.EdgeShard.load(str(coll.folder / target))  # what the idle thread holds mid-load
        with engine.lock:
            engine.finish_ready_builds()  # used to raise "Can't init WAL: WouldBlock"
            assert coll.generation != target and engine.build_pending(name)
            assert engine.swap_in(name, target, LocalShard(held))  # the idle thread's half of the swap
        assert coll.generation == target
        assert store.count(MODEL, CATEGORY) == 300
        assert store.backend.info(name)["indexed_vectors"] > 0


def _build_and_wait_for_host(store, name: str, data: list, timeout_s: float = 120) -> None:
    engine = store.backend.engine
    coll = engine.collection(name)
    first = coll.generation
    store.upsert(MODEL, CATEGORY, data)  # passes the size: a build starts, then a host opens it
    assert _wait(lambda: coll.generation != first and not engine.build_pending(name), timeout_s=timeout_s)


def test_a_finished_generation_is_opened_in_a_shard_host_not_in_this_process(tmp_path, monkeypatch):
    """The load of a new HNSW generation holds the GIL of the process that loads it, longer the
    larger the gallery: it happens in a shard host, and the collection is then served from there
    with the same answers."""
    import os
    import threading
    import types

    import qdrant_edge as qe

    loads: list[str] = []

    class Shards:
        def __getattr__(self, attr: str):
            return getattr(qe.EdgeShard, attr)

        def load(self, path: str, *args):
            loads.append(Path(path).name)
            return qe.EdgeShard.load(path, *args)

    proxy = types.SimpleNamespace(**{k: getattr(qe, k) for k in dir(qe) if not k.startswith("_")})
    proxy.EdgeShard = Shards()
    monkeypatch.setattr(edge_store, "qe", proxy)
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    data = records(300, dim=32)
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        store.upsert(MODEL, CATEGORY, data[:10])  # exact search, in this process
        engine = store.backend.engine
        coll = engine.collection(name)
        first = coll.generation
        stop, counts = threading.Event(), []

        def page() -> None:  # a page that never pauses while the build finishes and is swapped in
            while not stop.is_set():
                counts.append(store.count(MODEL, CATEGORY))

        pager = threading.Thread(target=page)
        pager.start()
        try:
            _build_and_wait_for_host(store, name, data[10:])
        finally:
            stop.set()
            pager.join()
        assert coll.generation != first and coll.shard.remote
        assert coll.shard.process.pid != os.getpid() and coll.shard.process.poll() is None
        assert coll.generation not in loads  # never loaded by this process
        assert counts and counts == sorted(counts) and counts[-1] == 300  # never a point lost mid-swap
        assert store.backend.info(name)["indexed_vectors"] > 0 and store.count(MODEL, CATEGORY) == 300
        after = store.similar(MODEL, CATEGORY, point_id=data[1].id, k=5, label="anomalous")
        ids = {r.id for r in data}
        assert len(after) == 5 and {h.id for h in after} <= ids - {data[1].id}
        assert [h.score for h in after] == sorted((h.score for h in after), reverse=True)
        # writes, reads and deletes go through the host
        store.upsert(MODEL, CATEGORY, records(3, seed=9, dim=32))
        assert store.count(MODEL, CATEGORY) == 303
        store.backend.engine.shard(name).delete([data[0].id])
        assert store.count(MODEL, CATEGORY) == 302


def test_the_next_rebuild_opens_a_fresh_host_and_the_old_one_exits_with_its_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    monkeypatch.setattr(edge_store, "SWAP_IDLE_S", 0.2)  # the old generation goes at the first idle moment
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        _build_and_wait_for_host(store, name, records(300, dim=32))
        coll = store.backend.engine.collection(name)
        old_host, old_generation = coll.shard, coll.generation
        _build_and_wait_for_host(store, name, records(300, seed=5, dim=32))
        assert coll.shard is not old_host and coll.shard.remote and coll.generation != old_generation
        assert _wait(lambda: old_host.process.poll() is not None, timeout_s=30)
        assert _wait(lambda: not (coll.folder / old_generation).exists(), timeout_s=30)
        assert store.count(MODEL, CATEGORY) == 600


def test_a_shard_host_that_dies_gives_one_clear_message_then_the_collection_reopens(tmp_path, monkeypatch):
    from core.errors import StoreError

    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    path = tmp_path / "qdrant"
    data = records(300, dim=32)
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        _build_and_wait_for_host(store, name, data)
        coll = store.backend.engine.collection(name)
        dead = coll.shard.process
        dead.kill()
        dead.wait()
        with pytest.raises(StoreError, match="stopped unexpectedly.*nothing was deleted"):
            store.count(MODEL, CATEGORY)
        assert store.count(MODEL, CATEGORY) == 300  # the live generation, opened again (by a new host)
        assert coll.shard.remote and coll.shard.process.pid != dead.pid
        assert store.backend.info(name)["indexed_vectors"] > 0


def test_a_restarted_process_opens_a_built_generation_in_a_host_and_a_small_one_here(tmp_path, monkeypatch):
    monkeypatch.setattr(edge_store, "HNSW_THRESHOLD", 200)
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        name = store.name(MODEL, CATEGORY)
        _build_and_wait_for_host(store, name, records(300, dim=32))
        store.upsert(MODEL, "grid", records(5, seed=2, dim=32, category="grid"))  # stays in its first generation
        small = store.name(MODEL, "grid")
    edge_store.release_all()  # as a restart: every handle closed, every host gone
    with SimilarityStore.open(path) as store:
        assert store.count(MODEL, CATEGORY) == 300 and store.count(MODEL, "grid") == 5
        engine = store.backend.engine
        assert engine.collection(name).shard.remote and not engine.collection(small).shard.remote


# -- migration from local mode --------------------------------------------------------------------


def make_local_store(path: Path, monkeypatch, n: int = 40) -> list:
    """A store written by qdrant-client's local mode, the embedded engine before Edge."""
    monkeypatch.setenv("INSPECT_QDRANT_BACKEND", "local")
    data = records(n)
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, data)
        store.upsert(MODEL, "grid", [])
        store.upsert("efficientad", CATEGORY, records(5, seed=3, model="efficientad"))
    monkeypatch.setenv("INSPECT_QDRANT_BACKEND", "edge")
    return data


def test_migration_from_local_mode_keeps_every_point_and_every_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "qdrant"
    data = make_local_store(path, monkeypatch)
    before = files(path)
    with SimilarityStore.open(path) as store:
        assert store.engine == "edge"
        assert store.count(MODEL, CATEGORY) == 40 and store.count("efficientad", CATEGORY) == 5
        got = {r.id: r for r in store.get(MODEL, CATEGORY, [r.id for r in data], with_vectors=True)}
        assert set(got) == {r.id for r in data}
        for rec in data:
            assert migration.same_payload(got[rec.id].payload, rec.payload | {"sha256": rec.payload["sha256"]})
            for key, vector in rec.vectors.items():
                unit = np.asarray(vector) / np.linalg.norm(vector)
                assert np.allclose(got[rec.id].vectors[key], unit, atol=1e-6)
    err = capsys.readouterr().err
    assert "moving the similar-defect store" in err and "copied 45 point(s) in 2 collection(s)" in err
    after = files(path)
    assert {p: b for p, b in after.items() if p in before} == before  # local-mode files untouched
    assert (path / "edge" / migration.MARKER).is_file()
    edge_store.release_all()
    with SimilarityStore.open(path) as store:  # once only
        assert store.count(MODEL, CATEGORY) == 40
    assert "moving" not in capsys.readouterr().err


def test_migration_that_does_not_verify_deletes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "qdrant"
    make_local_store(path, monkeypatch)
    before = files(path)
    real = edge_store.EdgeBackend.count

    def short_count(self, name, cond):  # a copy that lost a point
        return real(self, name, cond) - 1

    monkeypatch.setattr(edge_store.EdgeBackend, "count", short_count)
    with pytest.raises(StoreError, match="nothing was deleted"):
        SimilarityStore.open(path)
    assert all(p.read_bytes() == b for p, b in before.items())
    assert not (path / "edge" / migration.MARKER).exists()
    monkeypatch.setattr(edge_store.EdgeBackend, "count", real)
    with SimilarityStore.open(path) as store:  # the next open tries again, and succeeds
        assert store.count(MODEL, CATEGORY) == 40


# -- a corrupt Edge folder ------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["config", "segments", "current"])
def test_corrupt_edge_folder_gives_one_clear_message_and_deletes_nothing(tmp_path, damage):
    path = tmp_path / "qdrant"
    with SimilarityStore.open(path) as store:
        store.upsert(MODEL, CATEGORY, records(10))
    edge_store.release_all()
    folder = path / "edge" / collection_name(MODEL, CATEGORY)
    generation = folder / (folder / "CURRENT").read_text().strip()
    if damage == "config":
        (generation / "edge_config.json").write_text("{not json")
    elif damage == "segments":
        for f in (generation / "segments").rglob("*"):
            if f.is_file():
                f.write_bytes(b"\x00garbage\xff" * 16)
    else:
        (folder / "CURRENT").write_text("g999999")
    before = files(path)
    with SimilarityStore.open(path) as store, pytest.raises(StoreError) as info:
        store.similar(MODEL, CATEGORY, vector=np.ones(DIM), k=5)
        store.count(MODEL, CATEGORY)
    message = str(info.value)
    assert not isinstance(info.value, StoreLockedError)
    assert "cannot be read" in message and "nothing was deleted" in message and "\n" not in message
    assert str(folder) in message
    assert files(path) == before
