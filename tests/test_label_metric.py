"""The metric learned from the gallery's labels (core/similarity/label_metric.py).

Synthetic gallery: each defect type differs from the others in two small directions, while a large
nuisance (lighting, position: anything the descriptor carries that is not the defect's kind) fills
six others. Plain cosine then ranks by nuisance and mixes the types; the learned directions
separate them. The same store calls run as in the app, on both engines.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from core.similarity import label_metric
from core.similarity.retrieval_eval import EvalItem, evaluate_retrieval, neighbours_from_store
from core.similarity.store import SimilarityStore, make_record

MODEL, CATEGORY = "patchcore", "tile"
DIM = 8
TYPE_MEANS = {"good": [0, 0], "crack": [3, 0], "hole": [0, 3], "stain": [-3, -3]}


@pytest.fixture(params=["server", "edge"])
def store(request, tmp_path, monkeypatch):
    """The same store calls on a Qdrant server's API (qdrant-client's local mode standing in) and on Qdrant Edge."""
    from qdrant_client import QdrantClient

    from core.similarity.store import release

    monkeypatch.delenv("QDRANT_URL", raising=False)
    label_metric.forget()
    if request.param == "server":
        yield SimilarityStore(QdrantClient(location=":memory:"))
    else:
        yield SimilarityStore.open(tmp_path / "qdrant")
    release()
    label_metric.forget()


def vector(kind: str, rng: np.random.Generator) -> np.ndarray:
    v = np.zeros(DIM)
    v[:2] = np.asarray(TYPE_MEANS[kind], dtype=float) + rng.normal(scale=0.3, size=2)
    v[2:] = 10.0 + rng.normal(scale=4.0, size=DIM - 2)  # the nuisance: large, shared by every kind
    return v


def records(kinds: list[str], seed: int = 0, start: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i, kind in enumerate(kinds, start=start):
        v = vector(kind, rng)
        out.append(
            make_record(
                sha256=hashlib.sha256(f"img-{i}".encode()).hexdigest(),
                model=MODEL,
                category=CATEGORY,
                vectors={"global": v, "defect": v},
                image_path=f"{CATEGORY}/{kind}/{i:03d}.png",
                split="train" if kind == "good" else "test",
                label="good" if kind == "good" else "anomalous",
                defect_type=kind,
                score=0.5,
            )
        )
    return out


GALLERY = ["good"] * 30 + ["crack"] * 8 + ["hole"] * 8 + ["stain"] * 8


def p_at_5_same_type(store: SimilarityStore, search) -> float:
    items = [EvalItem.from_payload(r.id, r.payload) for r in store.points(MODEL, CATEGORY)]
    result = evaluate_retrieval(items, neighbours_from_store(search, MODEL), k=5, descriptors=("defect",))
    return result["descriptors"]["defect"]["precision_same_defect"]


def test_case_classes_come_from_labels_and_named_types_only():
    assert label_metric.case_class({"label": "good", "defect_type": "good"}) == "good"
    assert label_metric.case_class({"label": "anomalous", "defect_type": "crack"}) == "crack"
    assert label_metric.case_class({"label": "anomalous", "defect_type": "inspected"}) is None  # an unnamed upload
    assert label_metric.case_class({"label": "anomalous", "defect_type": ""}) is None


def test_the_learned_metric_finds_the_same_defect_type_where_plain_cosine_mixes_them(store):
    store.upsert(MODEL, CATEGORY, records(GALLERY))
    plain = p_at_5_same_type(store, store.similar)
    learned = p_at_5_same_type(store, lambda *a, **kw: label_metric.similar(store, *a, leave_one_out=True, **kw))
    assert plain < 0.6, plain  # the nuisance decides the plain order
    assert learned > 0.9, learned
    assert label_metric.ranks_with_labels(store, MODEL, CATEGORY)


def test_hits_respect_k_filters_and_never_return_the_query(store):
    recs = records(GALLERY)
    store.upsert(MODEL, CATEGORY, recs)
    query = recs[35]  # a crack
    hits = label_metric.similar(store, MODEL, CATEGORY, point_id=query.id, k=5, label="anomalous")
    assert len(hits) == 5
    assert query.id not in {h.id for h in hits}
    assert all(h.payload["label"] == "anomalous" for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    # the hits' vectors came with the search (no second read) and are the stored ones
    returned = store.similar(MODEL, CATEGORY, point_id=query.id, k=3, with_vector=True)
    stored = {r.id: r.vectors["defect"] for r in store.get(MODEL, CATEGORY, [h.id for h in returned], with_vectors=True)}
    for hit in returned:
        assert np.allclose(hit.vector / np.linalg.norm(hit.vector), stored[hit.id] / np.linalg.norm(stored[hit.id]), atol=1e-6)
    by_vector = label_metric.similar(
        store, MODEL, CATEGORY, vector=query.vectors["defect"], k=5, exclude_sha256=query.payload["sha256"]
    )
    assert query.id not in {h.id for h in by_vector}


def test_leave_one_out_ranks_a_fitted_query_by_a_fit_without_it(store, monkeypatch):
    recs = records(GALLERY)
    store.upsert(MODEL, CATEGORY, recs)
    label_metric.similar(store, MODEL, CATEGORY, point_id=recs[0].id, k=5)  # warm the cached fit
    seen: list[str | None] = []
    real_fit = label_metric.fit
    monkeypatch.setattr(
        label_metric, "fit", lambda labelled, exclude_id=None: seen.append(exclude_id) or real_fit(labelled, exclude_id)
    )
    label_metric.similar(store, MODEL, CATEGORY, point_id=recs[39].id, k=5)  # the app: the cached fit
    assert seen == []
    label_metric.similar(store, MODEL, CATEGORY, point_id=recs[40].id, k=5, leave_one_out=True)
    label_metric.similar(
        store,
        MODEL,
        CATEGORY,
        vector=recs[41].vectors["defect"],
        exclude_sha256=recs[41].payload["sha256"],
        k=5,
        leave_one_out=True,
    )
    assert seen == [recs[40].id, recs[41].id]
    # a type with only the minimum of cases cannot be learned once its query is left out
    labelled = label_metric.Labelled(
        ids=tuple(f"p{i}" for i in range(17)),
        vectors=np.random.default_rng(3).normal(size=(17, DIM)),
        classes=("good",) * 10 + ("crack",) * 2 + ("hole",) * 5,
    )
    assert real_fit(labelled) is not None
    assert real_fit(labelled, exclude_id="p10") is None


def test_a_gallery_without_named_types_keeps_the_plain_cosine_order(store):
    recs = records(["good"] * 20 + ["crack"] * 6)
    for r in recs[20:]:
        r.payload["defect_type"] = "inspected"  # uploads nobody has named
    store.upsert(MODEL, CATEGORY, recs)
    query = recs[22]
    plain = store.similar(MODEL, CATEGORY, point_id=query.id, k=5)
    learned = label_metric.similar(store, MODEL, CATEGORY, point_id=query.id, k=5)
    assert [h.id for h in learned] == [h.id for h in plain]
    assert [h.score for h in learned] == [h.score for h in plain]
    assert not label_metric.ranks_with_labels(store, MODEL, CATEGORY)


def test_the_fit_is_refreshed_once_the_collection_has_grown(store, monkeypatch):
    monkeypatch.setattr(label_metric, "CHECK_EVERY_S", 0.0)  # count at every call
    store.upsert(MODEL, CATEGORY, records(["good"] * 20 + ["crack"] * 6, seed=1))
    assert not label_metric.ranks_with_labels(store, MODEL, CATEGORY)  # one named type: nothing to learn
    store.upsert(MODEL, CATEGORY, records(["hole"] * 6, seed=2, start=100))
    assert label_metric.ranks_with_labels(store, MODEL, CATEGORY)


def test_a_collection_re_indexed_with_new_vectors_is_refitted(store, monkeypatch):
    """A retrained model re-indexed elsewhere: same ids, same count, other vectors."""
    monkeypatch.setattr(label_metric, "CHECK_EVERY_S", 0.0)
    store.upsert(MODEL, CATEGORY, records(GALLERY, seed=1))
    before = label_metric._fitted(store, MODEL, CATEGORY, "defect")  # noqa: SLF001
    assert label_metric._fitted(store, MODEL, CATEGORY, "defect") is before  # noqa: SLF001 - unchanged: cached
    store.delete_collection(MODEL, CATEGORY)
    store.upsert(MODEL, CATEGORY, records(GALLERY, seed=2))  # same images (ids), new features
    after = label_metric._fitted(store, MODEL, CATEGORY, "defect")  # noqa: SLF001
    assert after is not before
    assert after.labelled.ids == before.labelled.ids
    assert not np.allclose(after.labelled.vectors, before.labelled.vectors)
