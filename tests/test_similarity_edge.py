"""Qdrant Edge, the embedded default: in this process only, persistent, one process per collection
(with one clear message), a damaged folder reported with nothing deleted, outgrowing it, and
moving it to a server (qdrant-client's local mode standing in for one)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from core.errors import ConfigError, StoreError, StoreLockedError
from core.similarity import backends, indexing, manifest
from core.similarity import store as store_module
from core.similarity.store import SimilarityStore, collection_name, copy_points, make_record, release

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")

MODEL, CATEGORY = "patchcore", "tile"
DIM = 16
ROOT = Path(__file__).resolve().parents[1]


def records(n: int, seed: int = 0, model: str = MODEL, category: str = CATEGORY):
    rng = np.random.default_rng(seed)
    kinds = [("good", "good", "train"), ("anomalous", "crack", "test"), ("anomalous", "hole", "test")]
    return [
        make_record(
            sha256=hashlib.sha256(f"e-{seed}-{i}".encode()).hexdigest(),
            model=model,
            category=category,
            vectors={"global": rng.normal(size=DIM), "defect": rng.normal(size=DIM)},
            image_path=f"{i}.png",
            split=kinds[i % 3][2],
            label=kinds[i % 3][0],
            defect_type=kinds[i % 3][1],
            score=0.5,
        )
        for i in range(n)
    ]


@pytest.fixture(autouse=True)
def embedded(monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    yield
    release()


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    code = "import os; os.environ.pop('QDRANT_URL', None)\n" + code
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


COUNT_IN_ANOTHER_PROCESS = (
    "import sys; from core.errors import StoreLockedError; from core.similarity.store import SimilarityStore\n"
    "try:\n    print(SimilarityStore.open(sys.argv[1]).count('patchcore', 'tile'))\n"
    "except StoreLockedError as e:\n    print('LOCKED', e)\n"
)


def test_persists_across_process_restarts(tmp_path):
    path = tmp_path / "qdrant"
    data = records(30)
    store = SimilarityStore.open(path)
    store.upsert(MODEL, CATEGORY, data)
    before = [h.id for h in store.similar(MODEL, CATEGORY, point_id=data[1].id, k=5, label="anomalous")]
    release()  # this process lets go, as it does when it exits
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


def test_store_calls_start_no_process_and_no_thread(tmp_path):
    """Searches run in the calling thread: nothing is built, swapped or closed in the background."""

    def children() -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                    found.add(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    threads, kids = threading.active_count(), children()
    store = SimilarityStore.open(tmp_path / "qdrant")
    for start in range(0, 600, 200):  # many writes, as an index run makes
        store.upsert(MODEL, CATEGORY, records(200, seed=start))
    for q in np.random.default_rng(1).normal(size=(20, DIM)):
        assert len(store.similar(MODEL, CATEGORY, vector=q, k=5, label="anomalous")) == 5
    assert store.count(MODEL, CATEGORY, splits=("train", "test")) == 600
    time.sleep(0.5)
    assert threading.active_count() == threads and children() == kids


def test_a_collection_open_here_is_locked_for_another_process_until_released(tmp_path):
    path = tmp_path / "qdrant"
    store = SimilarityStore.open(path)
    store.upsert(MODEL, CATEGORY, records(6))
    done = run(COUNT_IN_ANOTHER_PROCESS, str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("LOCKED") and "is open in another process" in done.stdout
    assert "\n" not in done.stdout.strip() and "--to-server" in done.stdout
    release()
    assert run(COUNT_IN_ANOTHER_PROCESS, str(path)).stdout.strip() == "6"  # free once this process lets go
    assert store.count(MODEL, CATEGORY) == 6  # and here again, reopened on use


def test_an_index_run_started_by_the_app_gets_the_store(tmp_path, monkeypatch):
    """The app lets go before it starts the run (another process) and stays off long enough for the
    run to take the collections; meanwhile its calls say the index is busy, and uploads queue."""
    path = tmp_path / "qdrant"
    store = SimilarityStore.open(path)
    store.upsert(MODEL, CATEGORY, records(6))
    release(hold_off_s=60)
    with pytest.raises(StoreLockedError):
        store.count(MODEL, CATEGORY)
    assert run(COUNT_IN_ANOTHER_PROCESS, str(path)).stdout.strip() == "6"
    store.backend.held_off_until = 0.0  # the minute is over
    assert store.count(MODEL, CATEGORY) == 6


def test_an_index_run_waits_for_a_collection_held_elsewhere(tmp_path, monkeypatch):
    calls = []

    def held_twice(*_args):
        calls.append(1)
        if len(calls) <= 2:
            raise StoreLockedError("held")
        return "free"

    monkeypatch.setattr(indexing.time, "sleep", lambda _s: None)
    assert indexing._when_free(held_twice) == "free" and len(calls) == 3
    monkeypatch.setattr(indexing, "INDEX_LOCK_WAIT_S", 0.0)
    calls.clear()
    with pytest.raises(StoreLockedError):  # still held at the deadline: the run says so
        indexing._when_free(held_twice)


@pytest.mark.parametrize("damage", ["config", "segments"])
def test_damaged_folder_gives_one_clear_message_and_deletes_nothing(tmp_path, damage):
    path = tmp_path / "qdrant"
    SimilarityStore.open(path).upsert(MODEL, CATEGORY, records(10))
    release()
    folder = path / "shards" / collection_name(MODEL, CATEGORY)
    if damage == "config":
        (folder / "edge_config.json").write_text("{not json")
    else:
        for f in (folder / "segments").rglob("*"):
            if f.is_file():
                f.write_bytes(b"\x00garbage\xff" * 16)
    before = files(path)
    store = SimilarityStore.open(path)
    with pytest.raises(StoreError) as info:
        store.similar(MODEL, CATEGORY, vector=np.ones(DIM), k=5)
    message = str(info.value)
    assert not isinstance(info.value, StoreLockedError)
    assert "cannot be read" in message and "nothing was deleted" in message and "\n" not in message
    assert str(folder) in message
    assert files(path) == before


def test_a_file_in_place_of_the_folder_is_one_clear_message(tmp_path):
    (tmp_path / "qdrant").write_text("not a folder")
    with pytest.raises(StoreError, match="is a file, not a folder: set INSPECT_QDRANT_PATH"):
        SimilarityStore.open(tmp_path / "qdrant")


def test_stores_an_earlier_version_wrote_are_left_as_they_are(tmp_path):
    """Qdrant Edge with HNSW generations (edge/) and qdrant-client's local mode (meta.json,
    collection/) are never read nor changed: the new store lives beside them, and an index run
    rebuilds what they held (tests/test_similarity_reliability.py: nothing is lost)."""
    path = tmp_path / "qdrant"
    name = collection_name(MODEL, CATEGORY)
    old = QdrantClient(path=str(path))  # local mode, as the oldest versions wrote it
    SimilarityStore(old).upsert(MODEL, CATEGORY, records(12))
    old.close()
    generation = path / "edge" / name / "g000002"
    generation.mkdir(parents=True)
    (generation.parent / "CURRENT").write_text("g000002")
    (generation / "edge_config.json").write_text("{}")
    before = files(path)
    store = SimilarityStore.open(path)
    assert store.count(MODEL, CATEGORY) == 0 and store.dims(MODEL, CATEGORY) is None
    store.upsert(MODEL, CATEGORY, records(3, seed=5))
    assert store.count(MODEL, CATEGORY) == 3
    assert {p: b for p, b in files(path).items() if p in before} == before


def test_outgrowing_the_embedded_store_says_how_to_move(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "EMBEDDED_MAX_POINTS", 5)
    store = SimilarityStore.open(tmp_path / "qdrant")
    store.upsert(MODEL, CATEGORY, records(5))
    assert store.outgrown(MODEL, CATEGORY) is None
    store.upsert(MODEL, CATEGORY, records(1, seed=9))
    line = store.outgrown(MODEL, CATEGORY)
    assert "outgrown the embedded store (6 points" in line and "python -m core index --to-server" in line
    server = SimilarityStore(QdrantClient(location=":memory:"))
    server.upsert(MODEL, CATEGORY, records(6))
    assert server.outgrown(MODEL, CATEGORY) is None  # a server is where it goes


def test_copy_to_server_moves_every_point_verified_and_leaves_the_source(tmp_path, monkeypatch):
    path = tmp_path / "qdrant"
    monkeypatch.setenv("INSPECT_HOME", str(tmp_path))
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(path))
    source = SimilarityStore.open(path)
    source.upsert(MODEL, CATEGORY, records(700))  # several pages
    source.upsert(MODEL, "grid", records(7, category="grid"))
    manifest.run_finished(source.location, MODEL, CATEGORY, 700, 700)

    def snapshot() -> dict:
        store = SimilarityStore.open(path, embedded=True)
        return {
            (c, r.id): (r.payload, r.vectors["defect"].tolist())
            for c in (CATEGORY, "grid")
            for r in store.points(MODEL, c, with_vectors=True)
        }

    before = snapshot()
    with pytest.raises(ConfigError, match="set QDRANT_URL"):
        indexing.copy_to_server()

    server = QdrantClient(location=":memory:")
    monkeypatch.setattr(backends, "server_client", lambda url, key: server)
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.example:6333")
    assert indexing.copy_to_server() == {collection_name(MODEL, CATEGORY): 700, collection_name(MODEL, "grid"): 7}
    target = SimilarityStore.open()
    embedded = SimilarityStore.open(embedded=True)
    for category, n in ((CATEGORY, 700), ("grid", 7)):
        assert target.count(MODEL, category) == embedded.count(MODEL, category) == n
        ours = {r.id: r for r in embedded.points(MODEL, category, with_vectors=True)}
        theirs = {r.id: r for r in target.points(MODEL, category, with_vectors=True)}
        assert ours.keys() == theirs.keys()
        for pid, rec in ours.items():
            assert theirs[pid].payload == rec.payload
            assert np.allclose(theirs[pid].vectors["defect"], rec.vectors["defect"], atol=1e-6)
    q = records(1, seed=42)[0].vectors["defect"]
    same = [h.id for h in target.similar(MODEL, CATEGORY, vector=q, k=5, label="anomalous")]
    assert same == [h.id for h in embedded.similar(MODEL, CATEGORY, vector=q, k=5, label="anomalous")]
    # the index records came along: the server's collection is checked as the embedded one was
    assert manifest.entry(target.location, MODEL, CATEGORY)["points"] == 700
    release()
    assert snapshot() == before  # the embedded store was only read (Edge tidies its own files on load)


def test_a_copy_that_does_not_count_up_is_an_error(tmp_path, monkeypatch):
    source = SimilarityStore.open(tmp_path / "qdrant")
    source.upsert(MODEL, CATEGORY, records(20))
    target = SimilarityStore(QdrantClient(location=":memory:"))
    real = target.backend.retrieve
    monkeypatch.setattr(target.backend, "retrieve", lambda name, ids, *a: real(name, ids[1:], *a))  # one point lost
    with pytest.raises(StoreError, match="19 of 20 points arrived"):
        copy_points(source, target)
    assert source.count(MODEL, CATEGORY) == 20


def test_the_index_command_moves_the_store_to_a_server(tmp_path, monkeypatch, capsys):
    from core.cli import main

    monkeypatch.setenv("INSPECT_HOME", str(tmp_path))
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(tmp_path / "qdrant"))
    SimilarityStore.open().upsert(MODEL, CATEGORY, records(30))
    assert main(["index", "--to-server"]) == 2  # no server named: one error line
    assert "set QDRANT_URL" in capsys.readouterr().err
    server = QdrantClient(location=":memory:")
    monkeypatch.setattr(backends, "server_client", lambda url, key: server)
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.example:6333")
    assert main(["index", "--to-server"]) in (0, None)
    out = capsys.readouterr().out
    assert f"{collection_name(MODEL, CATEGORY)}: 30 points copied and counted on the server" in out
    assert "copied 30 point(s) in 1 collection(s) to http://qdrant.example:6333; the embedded store is unchanged" in out
    assert server.count(collection_name(MODEL, CATEGORY)).count == 30
