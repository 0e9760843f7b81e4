"""Reliability of the similar-defect index.

* Two browser sessions (threads of one process) uploading while a third searches: every DEFECT
  upload ends up indexed; threads share the process's one handle on the store.
* The store held by another process: the upload is queued, then added at the next store use in
  the app, and ``index`` catches up on the queue and on DEFECT history rows without a point.
* An emptied store (a collection's folder, or the whole store, deleted) and a killed index run are
  reported, and uploads are queued instead of going into the emptied collection.
* A store written by an earlier version of Inspect: ``index`` rebuilds it, and every indexed upload
  is searchable again (from the history's thumbnails); the old files are left as they are.
* A gallery past the embedded store's size: the Similar page and ``index`` say how to move it.

Everything runs in a private workspace that reuses the session's tiny PatchCore and dataset, so
the session's shared index (used by the app tests) is never touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import APP_ENV_VARS, TINY_CATEGORY

MODEL = "patchcore"
PAIR = f"{MODEL}/{TINY_CATEGORY}"
REINDEX = "re-run `python -m core index`"


class Upload(NamedTuple):
    image: np.ndarray
    sha: str
    prediction: object


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_data_root: Path, tiny_patchcore) -> Iterator[Path]:
    """A private workspace with the tiny PatchCore's category indexed once (and a copy of it)."""
    from core.settings import get_settings

    models_dir = get_settings().models_dir  # where the session's tiny model was trained
    mp = pytest.MonkeyPatch()
    for name in APP_ENV_VARS:
        mp.delenv(name, raising=False)
    workspace = tmp_path_factory.mktemp("reliability")
    mp.setenv("INSPECT_HOME", str(workspace))
    mp.setenv("INSPECT_MODELS_DIR", str(models_dir))
    mp.setenv("INSPECT_DATA_ROOT", str(tiny_data_root))
    mp.delenv("QDRANT_URL", raising=False)
    try:
        from core.similarity.indexing import index_categories
        from core.similarity.store import release

        index_categories([MODEL], [TINY_CATEGORY], progress=False)
        release()  # a settled copy, and the fixtures below may replace the folder
        settings = get_settings()
        shutil.copytree(settings.qdrant_path, workspace / "qdrant.indexed")
        shutil.copy2(settings.similarity_manifest, workspace / "manifest.indexed")
        yield workspace
    finally:
        mp.undo()


@pytest.fixture
def fresh(home: Path) -> Path:
    """The freshly indexed store and manifest, an empty queue and an empty history."""
    from core.settings import get_settings
    from core.similarity.store import release

    settings = get_settings()
    release()  # this process's handles on the store it replaces
    shutil.rmtree(settings.qdrant_path, ignore_errors=True)
    shutil.copytree(home / "qdrant.indexed", settings.qdrant_path)
    shutil.copy2(home / "manifest.indexed", settings.similarity_manifest)
    shutil.rmtree(settings.similarity_queue, ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.history_db}{suffix}").unlink(missing_ok=True)
    return home


@pytest.fixture(scope="module")
def detector(home: Path):
    from core.inference.detector import load_detector

    return load_detector(MODEL, TINY_CATEGORY)


def make_uploads(detector, n: int, seed: int) -> list[Upload]:
    """``n`` distinct uploads: the category's defect images with a little noise (new bytes)."""
    from core.data.image_io import load_image
    from core.settings import get_settings

    test_dir = get_settings().data_root / TINY_CATEGORY / "test"
    bases = [load_image(p.read_bytes()) for p in sorted(test_dir.glob("*/*.png")) if p.parent.name != "good"]
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed * 1000 + i)
        noisy = bases[i % len(bases)].astype(np.int16) + rng.integers(-3, 4, bases[i % len(bases)].shape)
        image = np.clip(noisy, 0, 255).astype(np.uint8)
        out.append(Upload(image, hashlib.sha256(image.tobytes()).hexdigest(), detector.predict(image)))
    return out


def inspect_upload(history, detector, upload: Upload) -> tuple[int, str | None, str | None]:
    """What the Inspect page does for an upload judged DEFECT: history row, then the index.

    Threshold 0 makes every upload a DEFECT, whatever the tiny model scores it.
    """
    from core import services

    hid = services.inspection.record_inspection(
        history,
        file_name=f"upload-{upload.sha[:8]}.png",
        sha256=upload.sha,
        image_rgb=upload.image,
        model=MODEL,
        category=TINY_CATEGORY,
        prediction=upload.prediction,
        threshold=0.0,
    )
    point, note = services.inspection.index_inspection(
        detector, upload.image, upload.prediction, sha256=upload.sha, inspection_id=hid, history=history
    )
    return hid, point, note


HOLDER = (
    "import sys\n"
    "from core.similarity.store import SimilarityStore\n"
    "SimilarityStore.open(sys.argv[1]).count(sys.argv[2], sys.argv[3])\n"
    "print('holding', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def store_held_by_another_process(path: Path) -> Iterator[None]:
    """Another process (like a CLI index run) holds the collection until the block ends."""
    from core.similarity.store import release

    release()  # this process lets go first: Edge admits one process per collection
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), MODEL, TINY_CATEGORY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def run_index_command(capsys: pytest.CaptureFixture, *extra: str) -> str:
    """``python -m core index --model patchcore --category tile``, in this process; its stdout."""
    from core.cli import main

    capsys.readouterr()
    assert main(["index", "--model", MODEL, "--category", TINY_CATEGORY, *extra]) in (0, None)
    return capsys.readouterr().out


def collection_folder() -> Path:
    """The embedded store's folder of the tiny collection."""
    from core.settings import get_settings
    from core.similarity.store import collection_name

    path = get_settings().qdrant_path / "shards" / collection_name(MODEL, TINY_CATEGORY)
    assert path.is_dir()
    return path


def empty_the_store(damage: str) -> None:
    """Delete the collection's folder, or the whole store's, as a slip of an administrator would."""
    from core.settings import get_settings
    from core.similarity.store import release

    release()
    shutil.rmtree(collection_folder() if damage == "collection deleted" else get_settings().qdrant_path)


def expected_points() -> int:
    from core.similarity import manifest
    from core.similarity.store import SimilarityStore

    record = manifest.entry(SimilarityStore.open().location, MODEL, TINY_CATEGORY)
    assert record is not None and record["complete"] and record["points"] > 0
    return record["points"]


# --- Item 3: concurrent sessions and a store held by another process ---------------------------


def test_two_sessions_uploading_while_a_third_searches_leave_every_defect_indexed(fresh, detector) -> None:
    from core import services
    from core.history import History
    from core.services.similar import gallery
    from core.similarity.indexing import DATASET_SPLITS, open_store
    from core.similarity.pending import pending_uploads

    uploads = make_uploads(detector, 40, seed=1)
    history = History()
    query = gallery(MODEL, TINY_CATEGORY)[0]
    outcomes: list[tuple[int, str | None, str | None]] = []
    search_errors: list[BaseException] = []
    searches = 0
    start, stop = threading.Barrier(3), threading.Event()

    def session(mine: list[Upload]) -> None:
        start.wait()
        for upload in mine:
            outcomes.append(inspect_upload(history, detector, upload))

    def searcher() -> None:
        nonlocal searches
        start.wait()
        while not stop.is_set():
            try:
                assert len(services.similar.similar_cases(MODEL, TINY_CATEGORY, point=query, k=5).hits) == 5
                searches += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                search_errors.append(exc)

    sessions = [threading.Thread(target=session, args=(uploads[k::2],)) for k in range(2)]
    search = threading.Thread(target=searcher)
    for t in (*sessions, search):
        t.start()
    for t in sessions:
        t.join(timeout=600)
    stop.set()
    search.join(timeout=120)

    assert len(outcomes) == 40
    assert [note for _, _, note in outcomes if note] == []
    assert all(point for _, point, _ in outcomes)
    rows = history.list(verdict="DEFECT")
    assert len(rows) == 40 and all(r.point_id for r in rows) and history.list_unindexed_defects() == []
    with open_store() as store:
        stored = store.get(MODEL, TINY_CATEGORY, [str(r.point_id) for r in rows])
        uploads_in_store = store.count(MODEL, TINY_CATEGORY) - store.count(MODEL, TINY_CATEGORY, splits=DATASET_SPLITS)
    assert {s.payload["inspection_id"] for s in stored} == {str(r.id) for r in rows}
    assert uploads_in_store == 40
    assert searches > 0 and search_errors == []
    assert pending_uploads() == []


def test_upload_meeting_a_store_held_by_another_process_is_queued_then_indexed(fresh, detector, capsys) -> None:
    from core import services
    from core.data.image_io import load_image, sha256_of
    from core.errors import StoreError
    from core.history import History
    from core.services.similar import gallery
    from core.settings import get_settings
    from core.similarity.indexing import open_store
    from core.similarity.pending import pending_uploads
    from core.similarity.store import point_id

    first, second = make_uploads(detector, 2, seed=2)
    history = History()
    with store_held_by_another_process(get_settings().qdrant_path):
        hid, point, note = inspect_upload(history, detector, first)
        assert point is None
        assert "queued" in note and "indexed automatically" in note and "\n" not in note
        assert "close the app" not in note
        with pytest.raises(StoreError) as info:  # what the Similar page shows meanwhile
            gallery(MODEL, TINY_CATEGORY)
        assert "is open in another process" in str(info.value) and "close the app" not in str(info.value)
        queued = pending_uploads()
        assert [q.inspection_id for q in queued] == [hid] and queued[0].path(".png").is_file()
        assert history.get(hid).point_id is None

    # Released: the next store use in the app adds the queued upload and links its history row.
    assert services.similar.index_problem(MODEL, TINY_CATEGORY) is None
    assert history.get(hid).point_id == point_id(first.sha, MODEL, TINY_CATEGORY)
    with open_store() as store:
        stored = store.get(MODEL, TINY_CATEGORY, [point_id(first.sha, MODEL, TINY_CATEGORY)])
    assert stored[0].payload["inspection_id"] == str(hid) and stored[0].payload["split"] == "inspection"
    assert pending_uploads() == []

    # `index` catches up too: an upload queued while the store was held, and a DEFECT row that
    # never got its point (a dataset image inspected before; its point exists).
    with store_held_by_another_process(get_settings().qdrant_path):
        hid_queued, point, _ = inspect_upload(history, detector, second)
        assert point is None
    data = sorted((get_settings().data_root / TINY_CATEGORY / "test").glob("*/*.png"))[-1].read_bytes()
    image = load_image(data)
    hid_row = services.inspection.record_inspection(
        history,
        file_name="dataset.png",
        sha256=sha256_of(data),
        image_rgb=image,
        model=MODEL,
        category=TINY_CATEGORY,
        prediction=detector.predict(image),
        threshold=0.0,
    )
    out = run_index_command(capsys)
    assert "added 1 queued upload(s)" in out and "linked 1 DEFECT inspection(s)" in out
    assert history.get(hid_queued).point_id == point_id(second.sha, MODEL, TINY_CATEGORY)
    assert history.get(hid_row).point_id == point_id(sha256_of(data), MODEL, TINY_CATEGORY)
    assert history.list_unindexed_defects() == [] and pending_uploads() == []


# --- Item 8: an emptied store, a killed index run ------------------------------------------------


def test_healthy_index_passes_the_check(fresh) -> None:
    from core import services
    from core.similarity import manifest
    from core.similarity.indexing import DATASET_SPLITS, open_store
    from core.similarity.store import SimilarityStore

    assert services.similar.index_problem(MODEL, TINY_CATEGORY) is None
    record = manifest.entry(SimilarityStore.open().location, MODEL, TINY_CATEGORY)
    with open_store() as store:
        assert record["points"] == record["expected"] == store.count(MODEL, TINY_CATEGORY, splits=DATASET_SPLITS)
        assert manifest.check_index(store, MODEL, "never-indexed") is None  # nothing to compare with


@pytest.mark.parametrize("damage", ["collection deleted", "store deleted"])
def test_emptied_store_is_reported_and_uploads_are_queued_not_written_into_it(fresh, detector, damage) -> None:
    from core import services
    from core.history import History
    from core.similarity.indexing import open_store
    from core.similarity.pending import pending_uploads

    expected = expected_points()
    empty_the_store(damage)
    message = services.similar.index_problem(MODEL, TINY_CATEGORY)  # what the Similar page warns with
    assert message == (
        f"the similar-defect index for {PAIR} holds 0 of {expected} expected points: it was emptied or damaged; {REINDEX}"
    )

    hid, point, note = inspect_upload(History(), detector, make_uploads(detector, 1, seed=3)[0])
    assert point is None and message in note and "queued" in note
    with open_store() as store:
        assert store.count(MODEL, TINY_CATEGORY) == 0  # nothing went into the emptied collection
    assert [q.inspection_id for q in pending_uploads()] == [hid]


def test_index_reports_an_emptied_store_rebuilds_it_and_adds_the_queued_upload(fresh, detector, capsys) -> None:
    from core.history import History
    from core.services.similar import index_problem

    expected = expected_points()
    empty_the_store("collection deleted")
    history = History()
    hid, point, _ = inspect_upload(history, detector, make_uploads(detector, 1, seed=4)[0])
    assert point is None
    out = run_index_command(capsys)
    assert (
        f"found: the similar-defect index for {PAIR} holds 0 of {expected} expected points: it was emptied or "
        "damaged; re-indexing it now"
    ) in out
    assert "added 1 queued upload(s)" in out
    assert index_problem(MODEL, TINY_CATEGORY) is None and history.get(hid).point_id


def test_index_run_that_stopped_part_way_is_flagged(fresh, detector, monkeypatch) -> None:
    from core.data.layout import category_images
    from core.history import History
    from core.services.similar import index_problem as index_health
    from core.settings import get_settings
    from core.similarity import indexing
    from core.similarity.indexing import index_categories, open_store

    with open_store() as store:
        store.delete_collection(MODEL, TINY_CATEGORY)
    real_describe = indexing.describe
    calls = 0

    def dies_after_nine(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls > 9:
            raise KeyboardInterrupt  # Ctrl-C (or a crash) part-way through the category
        return real_describe(*args, **kwargs)

    monkeypatch.setattr(indexing, "UPSERT_BATCH", 4)
    monkeypatch.setattr(indexing, "describe", dies_after_nine)
    with pytest.raises(KeyboardInterrupt):
        index_categories([MODEL], [TINY_CATEGORY], progress=False)
    monkeypatch.setattr(indexing, "describe", real_describe)

    total = len(category_images(get_settings().data_root, TINY_CATEGORY))
    message = f"the last index run for {PAIR} did not finish (8 of {total} points): {REINDEX}"
    assert index_health(MODEL, TINY_CATEGORY) == message
    _, point, note = inspect_upload(History(), detector, make_uploads(detector, 1, seed=5)[0])
    assert point is None and message in note  # queued, not added to a half-built collection


def test_index_run_killed_outright_is_flagged_but_a_running_one_is_not(fresh) -> None:
    from core.services.similar import index_problem as index_health
    from core.similarity import manifest
    from core.similarity.store import SimilarityStore

    expected = expected_points()
    manifest.run_started(SimilarityStore.open().location, MODEL, TINY_CATEGORY, expected)  # this process: alive
    assert index_health(MODEL, TINY_CATEGORY) is None  # a run in progress is not a fault

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    path = manifest.manifest_path()
    data = json.loads(path.read_text())
    data["stores"][SimilarityStore.open().location][PAIR]["pid"] = int(gone.stdout)  # as if kill -9 had hit it
    path.write_text(json.dumps(data))
    assert index_health(MODEL, TINY_CATEGORY) == (
        f"the last index run for {PAIR} did not finish ({expected} of {expected} points): {REINDEX}"
    )


@pytest.mark.filterwarnings("ignore")
def test_similar_page_warns_about_an_emptied_index(fresh) -> None:
    from conftest import APP_SCRIPT
    from streamlit.testing.v1 import AppTest

    expected = expected_points()
    empty_the_store("collection deleted")
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=240)
    at.run()
    at.switch_page("pages/similar_defects.py").run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert any(f"holds 0 of {expected} expected points: it was emptied or damaged" in w for w in warnings), warnings


def test_threads_of_one_process_share_the_store_and_none_is_refused(tmp_path, monkeypatch) -> None:
    """Streamlit serves each browser session in a thread: all of them use the process's one handle."""
    import hashlib

    from core.similarity.indexing import open_store
    from core.similarity.store import make_record, release

    monkeypatch.setenv("INSPECT_HOME", str(tmp_path))
    monkeypatch.delenv("INSPECT_QDRANT_PATH", raising=False)
    monkeypatch.delenv("QDRANT_URL", raising=False)
    errors: list[BaseException] = []

    def session(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for i in range(20):
                sha = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
                vectors = {"global": rng.normal(size=8), "defect": rng.normal(size=8)}
                with open_store() as store:
                    store.upsert(
                        MODEL,
                        "threads",
                        [
                            make_record(
                                sha256=sha,
                                model=MODEL,
                                category="threads",
                                vectors=vectors,
                                image_path="x.png",
                                split="test",
                                label="anomalous",
                                defect_type="crack",
                            )
                        ],
                    )
                    store.similar(MODEL, "threads", vector=vectors["defect"], k=3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    with open_store() as store:
        assert errors == [] and store.count(MODEL, "threads") == 80
    release()


def test_the_dataset_count_is_recounted_only_when_the_collection_total_changes() -> None:
    """Counting by split scans every payload on Edge; the Similar page asks on every render."""
    from core.similarity import manifest

    class Store:
        location = "/tmp/fake-store-for-the-count-cache"

        def __init__(self) -> None:
            self.total, self.dataset, self.split_counts = 10, 8, 0

        def count(self, model: str, category: str, *, splits=None) -> int:
            if splits is None:
                return self.total
            self.split_counts += 1
            return self.dataset

    store = Store()
    assert manifest.dataset_points(store, MODEL, "cache-test") == 8
    assert manifest.dataset_points(store, MODEL, "cache-test") == 8
    assert store.split_counts == 1  # the total did not change: no second scan
    store.total, store.dataset = 3, 1  # emptied or damaged: the total moves, so it is counted again
    assert manifest.dataset_points(store, MODEL, "cache-test") == 1
    assert store.split_counts == 2


# --- A store written by an earlier version, and one that outgrew the embedded store ------------


def write_as_an_earlier_version(layout: str) -> None:
    """Turn the current store into what an earlier version of Inspect left: Qdrant Edge with HNSW
    generations (``edge/<collection>/CURRENT``, ``g000002/``) or qdrant-client's local mode
    (``meta.json``, ``collection/``). The current layout is gone afterwards, as after an upgrade."""
    from qdrant_client import QdrantClient

    from core.settings import get_settings
    from core.similarity.store import SimilarityStore, copy_points, release

    path = get_settings().qdrant_path
    if layout == "local mode":
        old = QdrantClient(path=str(path))
        copy_points(SimilarityStore.open(), SimilarityStore(old))
        old.close()
    release()
    for shard in sorted((path / "shards").iterdir()):
        if layout == "edge generations":
            (path / "edge" / shard.name).mkdir(parents=True)
            shard.rename(path / "edge" / shard.name / "g000002")
            (path / "edge" / shard.name / "CURRENT").write_text("g000002")
    shutil.rmtree(path / "shards")


@pytest.mark.parametrize("layout", ["edge generations", "local mode"])
def test_a_store_an_earlier_version_wrote_is_rebuilt_by_index_and_nothing_is_lost(fresh, detector, capsys, layout) -> None:
    from core import services
    from core.history import History
    from core.settings import get_settings
    from core.similarity.indexing import open_store

    history = History()
    uploads = [inspect_upload(history, detector, upload) for upload in make_uploads(detector, 5, seed=7)]
    indexed = {hid: point for hid, point, _ in uploads}
    assert all(indexed.values())
    write_as_an_earlier_version(layout)
    path = get_settings().qdrant_path
    old_files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    # Until the index run the app finds nothing to show and says how to build it; nothing is lost.
    assert services.similar.gallery(MODEL, TINY_CATEGORY) == []
    out = run_index_command(capsys)
    assert f"{PAIR}: added 5 DEFECT inspection(s) from the history's thumbnails" in out

    gallery = {case["id"] for case in services.similar.gallery(MODEL, TINY_CATEGORY)}
    for hid, point in indexed.items():
        row = history.get(hid)
        assert row.point_id == point and point in gallery
        hits = services.similar.similar_cases(MODEL, TINY_CATEGORY, record=row, k=5).hits  # searchable again
        assert len(hits) == 5 and point not in {h.id for h in hits}
    with open_store() as store:
        for hid, point in indexed.items():
            payload = store.get(MODEL, TINY_CATEGORY, [point])[0].payload
            assert payload["inspection_id"] == str(hid) and payload["split"] == "inspection"
            assert payload["image_path"] == history.get(hid).thumbnail_path
    assert services.similar.index_problem(MODEL, TINY_CATEGORY) is None
    assert {p: p.read_bytes() for p in path.rglob("*") if p in old_files} == old_files  # the old store is kept


@pytest.mark.filterwarnings("ignore")
def test_a_gallery_past_the_embedded_store_size_says_how_to_move_it(fresh, monkeypatch, capsys) -> None:
    from conftest import APP_SCRIPT
    from streamlit.testing.v1 import AppTest

    from core.similarity import store

    monkeypatch.setattr(store, "EMBEDDED_MAX_POINTS", 10)
    from core.cli import main

    capsys.readouterr()
    main(["index", "--model", MODEL, "--category", TINY_CATEGORY])
    said = capsys.readouterr().err
    assert f"has outgrown the embedded store ({expected_points():,} points" in said and "--to-server" in said
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=240)
    at.run()
    at.switch_page("pages/similar_defects.py").run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    moved = "has outgrown the embedded store"
    assert any(moved in w and "python -m core index --to-server" in w for w in warnings), warnings
