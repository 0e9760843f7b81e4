"""The similarity store's front door on both engines: ids, idempotent upserts, filters, exclusion, errors.

Every test runs on Qdrant Edge (the embedded default) and on the Qdrant server's API through
qdrant-client, whose local mode stands in for a server (a server cannot run here); the two are
compared result by result in test_similarity_edge_congruence.py.
"""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient

from core.errors import StoreError
from core.similarity import backends
from core.similarity.retrieval_eval import EvalItem, evaluate_retrieval, neighbours_from_store
from core.similarity.store import Record, SimilarityStore, collection_name, make_record, point_id, release

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")

MODEL, CATEGORY = "patchcore", "tile"
DIM = 8


def sha(i: int | str) -> str:
    return hashlib.sha256(f"image-{i}".encode()).hexdigest()


def record(i: int, label: str = "good", defect_type: str = "good", *, rng=None, vectors=None) -> Record:
    rng = rng or np.random.default_rng(i)
    vectors = vectors or {"global": rng.normal(size=DIM), "defect": rng.normal(size=DIM)}
    return make_record(
        sha256=sha(i),
        model=MODEL,
        category=CATEGORY,
        vectors=vectors,
        image_path=f"{CATEGORY}/test/{defect_type}/{i:03d}.png",
        split="test" if label == "anomalous" else "train",
        label=label,
        defect_type=defect_type,
        score=np.float32(0.1 * i),
    )


def mixed_records(n: int = 30) -> list[Record]:
    """good, crack, hole in turn."""
    kinds = [("good", "good"), ("anomalous", "crack"), ("anomalous", "hole")]
    return [record(i, *kinds[i % 3]) for i in range(n)]


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_API_KEY", raising=False)
    yield
    release()


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    if request.param == "edge":
        return SimilarityStore.open(tmp_path / "qdrant")
    return SimilarityStore(QdrantClient(location=":memory:"))


# -- ids and names ---------------------------------------------------------------------------


def test_point_id_is_deterministic_uuid():
    a = point_id(sha(1), MODEL, CATEGORY)
    assert a == point_id(sha(1), MODEL, CATEGORY)
    assert a == point_id(sha(1).upper(), MODEL, CATEGORY)
    assert uuid.UUID(a).version == 5
    assert a != point_id(sha(2), MODEL, CATEGORY)
    assert a != point_id(sha(1), "efficient_ad", CATEGORY)
    assert a != point_id(sha(1), MODEL, "grid")
    with pytest.raises(ValueError):
        point_id("not-a-hash", MODEL, CATEGORY)


def test_collection_names_are_safe_and_distinct():
    assert collection_name(MODEL, CATEGORY) == "inspect__patchcore__tile"
    odd = collection_name("patch/core", "metal nut")
    assert "/" not in odd and " " not in odd
    assert odd != collection_name("patch-core", "metal-nut")


def test_the_engine_is_picked_once_from_settings(tmp_path, monkeypatch):
    """Callers never choose: QDRANT_URL decides, and one engine per location serves the process."""
    a, b = SimilarityStore.open(tmp_path / "q"), SimilarityStore.open(tmp_path / "q")
    assert a.backend is b.backend and a.backend.embedded and a.location == str((tmp_path / "q" / "shards").resolve())
    server = QdrantClient(location=":memory:")
    monkeypatch.setattr(backends, "server_client", lambda url, key: server)
    monkeypatch.setenv("QDRANT_URL", "http://qdrant.example:6333/")
    s = SimilarityStore.open(tmp_path / "q")
    assert not s.backend.embedded and s.backend.client is server and s.location == "http://qdrant.example:6333"
    assert SimilarityStore.open(tmp_path / "q", embedded=True).backend is a.backend  # copy_to_server's source


# -- writing ---------------------------------------------------------------------------------


def test_reupserting_same_records_adds_nothing(store):
    records = mixed_records(12)
    assert store.upsert(MODEL, CATEGORY, records, batch_size=5) == 12
    assert store.count(MODEL, CATEGORY) == 12
    store.upsert(MODEL, CATEGORY, records)
    store.upsert(MODEL, CATEGORY, [record(i) for i in range(12)])  # same images, rebuilt records
    assert store.count(MODEL, CATEGORY) == 12


def test_upsert_rejects_inconsistent_records(store):
    store.upsert(MODEL, CATEGORY, [record(0)])
    bad_id = record(1)
    bad_id.id = point_id(sha(99), MODEL, CATEGORY)
    with pytest.raises(ValueError, match="point_id"):
        store.upsert(MODEL, CATEGORY, [bad_id])
    bad_dim = record(2, vectors={"global": np.ones(DIM + 1), "defect": np.ones(DIM)})
    with pytest.raises(ValueError, match="dims"):
        store.upsert(MODEL, CATEGORY, [bad_dim])
    with pytest.raises(ValueError, match="zeros"):
        store.upsert(MODEL, CATEGORY, [record(3, vectors={"global": np.zeros(DIM), "defect": np.ones(DIM)})])
    assert store.count(MODEL, CATEGORY) == 1


def test_ensure_collection_refuses_other_dims(store):
    assert store.ensure_collection(MODEL, CATEGORY, {"global": DIM, "defect": DIM}) is True
    assert store.ensure_collection(MODEL, CATEGORY, {"global": DIM, "defect": DIM}) is False
    with pytest.raises(StoreError, match="delete the collection"):
        store.ensure_collection(MODEL, CATEGORY, {"global": DIM, "defect": 2 * DIM})


def test_get_delete_and_missing_collection(store):
    records = mixed_records(6)
    store.upsert(MODEL, CATEGORY, records)
    got = store.get(MODEL, CATEGORY, [records[4].id, str(uuid.uuid4()), records[1].id], with_vectors=True)
    assert [r.id for r in got] == [records[4].id, records[1].id]
    assert got[0].payload["sha256"] == sha(4) and got[0].payload["label"] == "anomalous"
    assert set(got[0].vectors) == {"global", "defect"} and got[0].vectors["defect"].shape == (DIM,)
    assert store.count(MODEL, "grid") == 0
    assert store.similar(MODEL, "grid", vector=np.ones(DIM)) == []
    assert store.delete_collection(MODEL, CATEGORY) is True
    assert store.delete_collection(MODEL, CATEGORY) is False
    assert store.count(MODEL, CATEGORY) == 0


# -- searching -------------------------------------------------------------------------------


def test_filters_by_label_and_defect_type(store):
    records = mixed_records(30)
    store.upsert(MODEL, CATEGORY, records)
    query = records[1].id
    anomalous = store.similar(MODEL, CATEGORY, point_id=query, k=50, label="anomalous")
    assert len(anomalous) == 19 and all(h.payload["label"] == "anomalous" for h in anomalous)
    holes = store.similar(MODEL, CATEGORY, point_id=query, k=50, defect_type="hole")
    assert len(holes) == 10 and all(h.payload["defect_type"] == "hole" for h in holes)
    good = store.similar(MODEL, CATEGORY, point_id=query, k=50, label="good", using="global")
    assert len(good) == 10 and all(h.payload["label"] == "good" for h in good)
    assert store.similar(MODEL, CATEGORY, point_id=query, label="good", defect_type="hole") == []


def test_k_is_respected_and_scores_descend(store):
    store.upsert(MODEL, CATEGORY, mixed_records(30))
    hits = store.similar(MODEL, CATEGORY, vector=np.random.default_rng(7).normal(size=DIM), k=5)
    assert len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(-1.0 - 1e-6 <= h.score <= 1.0 + 1e-6 for h in hits)
    assert len(store.similar(MODEL, CATEGORY, point_id=point_id(sha(0), MODEL, CATEGORY), k=100)) == 29
    with pytest.raises(ValueError):
        store.similar(MODEL, CATEGORY, vector=np.ones(DIM), k=0)


def test_search_is_exact(store):
    """The embedded store has no HNSW: its top-k is the brute-force top-k, on every size."""
    records = mixed_records(60)
    store.upsert(MODEL, CATEGORY, records)
    unit = np.stack([r.vectors["defect"] / np.linalg.norm(r.vectors["defect"]) for r in records])
    for q in np.random.default_rng(3).normal(size=(10, DIM)):
        expected = [records[i].id for i in np.argsort(-(unit @ (q / np.linalg.norm(q))), kind="stable")[:7]]
        assert [h.id for h in store.similar(MODEL, CATEGORY, vector=q, k=7)] == expected


def test_query_never_returns_itself(store):
    records = mixed_records(20)
    store.upsert(MODEL, CATEGORY, records)
    for rec in records[:6]:
        by_id = store.similar(MODEL, CATEGORY, point_id=rec.id, k=19)
        assert len(by_id) == 19 and rec.id not in {h.id for h in by_id}
        vector = rec.vectors["defect"]
        # without the hash the stored copy of the image is the best match (similarity 1) ...
        assert store.similar(MODEL, CATEGORY, vector=vector, k=1)[0].id == rec.id
        # ... with it (an upload of an already indexed image) it is never returned
        by_vector = store.similar(MODEL, CATEGORY, vector=vector, k=19, exclude_sha256=rec.payload["sha256"])
        assert rec.id not in {h.id for h in by_vector}
        excluded = store.similar(MODEL, CATEGORY, vector=vector, k=19, exclude_ids=[rec.id, records[10].id])
        assert {rec.id, records[10].id}.isdisjoint(h.id for h in excluded) and len(excluded) == 18
    with pytest.raises(LookupError):
        store.similar(MODEL, CATEGORY, point_id=str(uuid.uuid4()))
    with pytest.raises(ValueError):
        store.similar(MODEL, CATEGORY, vector=np.ones(DIM), point_id=records[0].id)


def test_global_and_defect_vectors_rank_differently(store):
    e = np.eye(DIM)
    query = record(0, "anomalous", "crack", vectors={"global": e[0], "defect": e[1]})
    # A looks like the query part but has another defect; B is another part with the same defect
    a = record(1, "anomalous", "hole", vectors={"global": e[0] + 0.1 * e[2], "defect": e[3]})
    b = record(2, "anomalous", "crack", vectors={"global": e[4], "defect": e[1] + 0.1 * e[2]})
    c = record(3, "good", "good", vectors={"global": e[0] + 0.5 * e[4], "defect": e[1] + 0.5 * e[3]})
    store.upsert(MODEL, CATEGORY, [query, a, b, c])
    by_global = [h.id for h in store.similar(MODEL, CATEGORY, point_id=query.id, using="global", k=3)]
    by_defect = [h.id for h in store.similar(MODEL, CATEGORY, point_id=query.id, using="defect", k=3)]
    assert by_global == [a.id, c.id, b.id]
    assert by_defect == [b.id, c.id, a.id]
    with pytest.raises(ValueError, match="unknown vector"):
        store.similar(MODEL, CATEGORY, point_id=query.id, using="colour")


def test_leave_one_out_evaluation_through_the_store(store):
    records = mixed_records(30)
    store.upsert(MODEL, CATEGORY, records)
    items = [EvalItem.from_payload(r.id, r.payload) for r in records]
    result = evaluate_retrieval(items, neighbours_from_store(store.similar, MODEL), k=5)
    assert result["n_queries"] == 20
    for descriptor in ("global", "defect"):
        entry = result["descriptors"][descriptor]
        assert entry["n_queries"] == 20 and 0.0 <= entry["precision_anomalous"] <= 1.0


# -- a server that cannot be reached -----------------------------------------------------------


def test_unreachable_server_gives_store_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:1")
    with pytest.raises(StoreError, match="cannot reach the Qdrant server at http://127.0.0.1:1") as info:
        SimilarityStore.open(tmp_path / "unused")
    assert "\n" not in str(info.value) and "unset QDRANT_URL" in str(info.value)
    assert not (tmp_path / "unused").exists()
