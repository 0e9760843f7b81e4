"""Indexing a trained model's category, searching it, and measuring retrieval, end to end."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_CATEGORY

from core.similarity.embeddings import descriptors


def test_defect_descriptor_follows_the_hot_region() -> None:
    feats = torch.zeros(4, 8, 8)
    feats[0] = 1.0  # background texture
    feats[1, :2, :2] = 5.0  # a distinct feature only in the top-left corner
    amap = np.zeros((64, 64), np.float32)
    amap[:16, :16] = 1.0  # the map is hot exactly there
    d = descriptors(feats, amap)
    assert d["global"][0] == pytest.approx(1.0)
    assert int(np.argmax(np.abs(d["defect"]))) == 1  # the residual points at the corner's feature


def test_flat_map_falls_back_to_the_global_descriptor() -> None:
    feats = torch.rand(4, 8, 8)
    d = descriptors(feats, np.zeros((64, 64), np.float32))
    assert np.allclose(d["defect"], d["global"])


@pytest.fixture(scope="module")
def indexed(tiny_patchcore):
    from core.similarity.indexing import index_categories

    return index_categories(["patchcore"], [TINY_CATEGORY], progress=False)


def test_index_is_idempotent_and_reports_progress(indexed) -> None:
    from core.similarity.indexing import index_categories

    key = f"patchcore/{TINY_CATEGORY}"
    assert indexed.counts[key] > 0 and indexed.outgrown == []
    seen: list[tuple[str, int, int]] = []
    again = index_categories(["patchcore"], [TINY_CATEGORY], progress=lambda *a: seen.append(a))
    assert again.counts[key] == indexed.counts[key]
    what, done, total = seen[-1]  # the bar counts the dataset's images; the store may also hold uploads
    assert what == f"Indexing patchcore/{TINY_CATEGORY}" and done == total > 0 and total <= again.counts[key]


def test_similar_to_point_returns_five_others(indexed) -> None:
    from core.services import similar

    items = similar.gallery("patchcore", TINY_CATEGORY)
    assert items and all(i["label"] == "anomalous" for i in items)
    query = items[0]
    hits = similar.similar_cases("patchcore", TINY_CATEGORY, point=query, k=5).hits
    assert len(hits) == 5
    assert query["id"] not in {h.id for h in hits}
    assert all(-1.0 <= h.score <= 1.0001 for h in hits)
    crack_only = similar.gallery("patchcore", TINY_CATEGORY, defect_type="crack")
    assert crack_only and {i["defect_type"] for i in crack_only} == {"crack"}


def test_upload_is_added_and_found(indexed, tiny_data_root) -> None:
    from core.data.image_io import load_image, sha256_of
    from core.inference.detector import load_detector
    from core.services import similar
    from core.similarity.indexing import index_upload, open_store

    detector = load_detector("patchcore", TINY_CATEGORY)
    path = sorted((tiny_data_root / TINY_CATEGORY / "test" / "oil").glob("*.png"))[0]
    data = path.read_bytes()
    image = load_image(data)
    from core.services import inspection

    (result,) = inspection.inspect_images(detector, [(path.name, image, sha256_of(data))], record=False)
    entry = SimpleNamespace(name=path.name, model="patchcore", category=TINY_CATEGORY, result=result)  # as a page keeps it
    hits = similar.similar_cases("patchcore", TINY_CATEGORY, entry=entry, get_detector=lambda: detector, k=3).hits
    assert len(hits) == 3 and all(h.payload["sha256"] != result.sha256 for h in hits)  # never itself
    flipped = np.ascontiguousarray(image[:, ::-1])
    outcome = index_upload(
        detector,
        flipped,
        detector.predict(flipped, with_features=True),
        sha256="ab" * 32,
        inspection_id=7,
        file_name="upload.png",
    )
    assert outcome.point_id and outcome.note is None
    with open_store() as store:
        stored = store.get("patchcore", TINY_CATEGORY, [outcome.point_id])
    assert stored[0].payload["inspection_id"] == "7" and stored[0].payload["split"] == "inspection"


def test_eval_similar_writes_results(indexed) -> None:
    from core.evaluation.results import load_results
    from core.similarity.indexing import best_descriptor, eval_similar

    entries = eval_similar(["patchcore"], [TINY_CATEGORY]).entries
    entry = entries[f"patchcore/{TINY_CATEGORY}"]
    assert set(entry["descriptors"]) == {"global", "defect"}
    for d in entry["descriptors"].values():
        assert 0.0 <= d["precision_anomalous"] <= 1.0
    assert load_results()["retrieval"][f"patchcore/{TINY_CATEGORY}"]["k"] == 5
    assert best_descriptor("patchcore", TINY_CATEGORY) in {"global", "defect"}
