"""Congruence: the same writes and searches on Qdrant Edge (the embedded default) and on a Qdrant
server's API, through the front door's two engines.

qdrant-client's local mode stands in for the server (the same client calls go to a server), as
qdrant-client itself checks local mode against a server. Every search is compared result by
result: the same ids in the same order, the same scores, the same payloads.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from qdrant_client import QdrantClient

from core.similarity.store import SimilarityStore, make_record, release

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")

MODEL, CATEGORY = "patchcore", "tile"
DIM = 16
KINDS = [("good", "good", "train"), ("anomalous", "crack", "test"), ("anomalous", "hole", "test"), ("good", "good", "test")]


def records(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label, dtype, split = KINDS[i % len(KINDS)]
        out.append(
            make_record(
                sha256=hashlib.sha256(f"c-{seed}-{i}".encode()).hexdigest(),
                model=MODEL,
                category=CATEGORY,
                vectors={"global": rng.normal(size=DIM), "defect": rng.normal(size=DIM)},
                image_path=f"{CATEGORY}/{split}/{dtype}/{i:03d}.png",
                split=split,
                label=label,
                defect_type=dtype,
                score=float(i) / n,
                time="2025-01-01T00:00:00+00:00",
            )
        )
    return out


def same_payload(a: object, b: object) -> bool:
    """Payloads equal up to the last bit of a float (Edge may round-trip 0.1166...67 as ...68)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_payload(a[k], b[k]) for k in a)
    return a == b


@pytest.fixture
def pair(tmp_path, monkeypatch):
    """(edge store, server store) filled with the same records, updated the same way."""
    monkeypatch.delenv("QDRANT_URL", raising=False)
    client = SimilarityStore(QdrantClient(path=str(tmp_path / "server")))
    edge = SimilarityStore.open(tmp_path / "edge")
    assert edge.backend.embedded and not client.backend.embedded
    data = records(60)
    for store in (edge, client):
        store.upsert(MODEL, CATEGORY, data, batch_size=16)
        store.upsert(MODEL, CATEGORY, records(10, seed=1))  # more points, in a second write
        store.upsert(MODEL, CATEGORY, [*records(5, seed=1)[:3]])  # overwrites: same ids, same points
    yield edge, client, data
    client.backend.close()
    release()


def same_hits(a, b) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    assert all(same_payload(x.payload, y.payload) for x, y in zip(a, b, strict=True))


def test_counts_and_reads_agree(pair):
    edge, client, data = pair
    for splits in (None, ("train", "test"), ("test",), ("inspection",)):
        assert edge.count(MODEL, CATEGORY, splits=splits) == client.count(MODEL, CATEGORY, splits=splits)
    assert edge.count(MODEL, CATEGORY) == 70
    ids = [r.id for r in data[::7]] + ["00000000-0000-0000-0000-000000000000"]
    a, b = edge.get(MODEL, CATEGORY, ids, with_vectors=True), client.get(MODEL, CATEGORY, ids, with_vectors=True)
    assert [r.id for r in a] == [r.id for r in b]
    assert all(same_payload(x.payload, y.payload) for x, y in zip(a, b, strict=True))
    for ra, rb in zip(a, b, strict=True):
        for key in ("global", "defect"):  # Edge normalises cosine vectors on insert, like a server
            unit = rb.vectors[key] / np.linalg.norm(rb.vectors[key])
            assert np.allclose(ra.vectors[key], unit, atol=1e-6)
    assert sorted(r.id for r in edge.points(MODEL, CATEGORY)) == sorted(r.id for r in client.points(MODEL, CATEGORY))


@pytest.mark.parametrize("k", [1, 5, 12])
@pytest.mark.parametrize("using", ["defect", "global"])
@pytest.mark.parametrize(
    "filters",
    [{}, {"label": "anomalous"}, {"label": "good"}, {"defect_type": "crack"}, {"label": "anomalous", "defect_type": "hole"}],
)
def test_point_queries_agree(pair, k, using, filters):
    edge, client, data = pair
    for query in data[:12]:
        a = edge.similar(MODEL, CATEGORY, point_id=query.id, using=using, k=k, **filters)
        b = client.similar(MODEL, CATEGORY, point_id=query.id, using=using, k=k, **filters)
        same_hits(a, b)
        assert query.id not in [h.id for h in a]  # self-exclusion
        for key, value in filters.items():
            assert all(h.payload[key] == value for h in a)


@pytest.mark.parametrize("k", [3, 5])
def test_vector_queries_with_exclusions_agree(pair, k):
    edge, client, data = pair
    rng = np.random.default_rng(7)
    for i in range(10):
        vector = rng.normal(size=DIM)
        excluded = [data[i].id, data[i + 1].id]
        sha = data[i + 2].payload["sha256"]
        kwargs = {"vector": vector, "k": k, "exclude_ids": excluded, "exclude_sha256": sha}
        a, b = edge.similar(MODEL, CATEGORY, **kwargs), client.similar(MODEL, CATEGORY, **kwargs)
        same_hits(a, b)
        assert not {h.id for h in a} & {data[i].id, data[i + 1].id, data[i + 2].id}
        # a stored point's own vector finds it first unless excluded, on both
        own = data[i + 3].vectors["defect"]
        same_hits(edge.similar(MODEL, CATEGORY, vector=own, k=k), client.similar(MODEL, CATEGORY, vector=own, k=k))
        assert edge.similar(MODEL, CATEGORY, vector=own, k=1)[0].id == data[i + 3].id


def test_errors_agree(pair):
    edge, client, _ = pair
    for store in (edge, client):
        with pytest.raises(LookupError):
            store.similar(MODEL, CATEGORY, point_id="00000000-0000-0000-0000-000000000000")
        with pytest.raises(ValueError, match="unknown vector"):
            store.similar(MODEL, CATEGORY, vector=np.ones(DIM), using="colour")
        with pytest.raises(ValueError, match="dims"):
            store.similar(MODEL, CATEGORY, vector=np.ones(DIM + 1))
        assert store.similar(MODEL, "other", vector=np.ones(DIM)) == []
        assert store.count(MODEL, "other") == 0 and store.dims(MODEL, "other") is None


def test_delete_collection_agrees(pair):
    edge, client, _ = pair
    for store in (edge, client):
        assert store.delete_collection(MODEL, CATEGORY) is True
        assert store.count(MODEL, CATEGORY) == 0 and store.delete_collection(MODEL, CATEGORY) is False
