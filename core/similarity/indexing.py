"""Fill the similarity store from datasets and inspections, search it, and measure it.

This is the service layer the pages and the CLI call; :mod:`core.similarity.store` holds the
Qdrant details and :mod:`core.similarity.retrieval_eval` the precision@k arithmetic.

The embedded store admits one process at a time, so every function here opens the store for the
duration of one call and closes it again (``with open_store() as store``); the app never keeps
it locked between clicks, and an index job can run beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from core import registry
from core.data import check_layout, defect_type_of
from core.image_io import load_image, sha256_of
from core.inference import Detector, Prediction, load_detector
from core.results import entry_key, load_results, update_results
from core.similarity.embeddings import DESCRIPTORS, descriptors
from core.similarity.retrieval_eval import EvalItem, evaluate_retrieval, neighbours_from_store
from core.similarity.store import Hit, SimilarityStore, make_record

#: Used when no retrieval evaluation says otherwise (it won on real bottle, see embeddings.py).
DEFAULT_DESCRIPTOR = "defect"
UPSERT_BATCH = 64


@contextmanager
def open_store(path: Path | None = None) -> Iterator[SimilarityStore]:
    store = SimilarityStore.open(path)
    try:
        yield store
    finally:
        store.close()


def best_descriptor(model: str, category: str) -> str:
    """The descriptor with the higher measured precision@5 for this (model, category), if measured."""
    measured = load_results()["retrieval"].get(entry_key(model, category), {}).get("descriptors", {})
    scored = {
        name: (v.get("precision_anomalous") or 0) + (v.get("precision_same_defect") or 0)
        for name, v in measured.items()
        if name in DESCRIPTORS
    }
    return max(scored, key=scored.get) if scored else DEFAULT_DESCRIPTOR


def describe(
    detector: Detector, image_rgb: np.ndarray, prediction: Prediction | None = None
) -> tuple[dict[str, np.ndarray], Prediction]:
    """Both descriptors of one image, and its prediction (whose map weights the defect descriptor).

    A caller that already has the image's ``prediction`` passes it, so the model is not run twice.
    """
    if prediction is None:
        prediction = detector.predict(image_rgb)
    return descriptors(detector.patch_features(image_rgb), prediction.anomaly_map), prediction


def dataset_images(root: Path, category: str) -> list[tuple[Path, str]]:
    """(path, split) of every train and test image of a category."""
    cat = root / category
    train = [(p, "train") for p in sorted((cat / "train" / "good").glob("*.png"))]
    test = [(p, "test") for p in sorted((cat / "test").glob("*/*.png"))]
    return train + test


def index_category(store: SimilarityStore, detector: Detector, *, progress: bool = True) -> int:
    """Index the detector's category (train and test images); returns the points written."""
    from tqdm import tqdm

    meta = detector.meta
    root = Path(meta.data_root)
    check_layout(root, meta.category, verify_images=False)
    batch = []
    written = 0
    images = dataset_images(root, meta.category)
    for path, split in tqdm(images, desc=f"Indexing {meta.model}/{meta.category}", unit="img", disable=not progress):
        data = path.read_bytes()
        vectors, prediction = describe(detector, load_image(data, path.name))
        defect_type = defect_type_of(path)
        batch.append(
            make_record(
                sha256=sha256_of(data),
                model=meta.model,
                category=meta.category,
                vectors=vectors,
                image_path=str(path),
                split=split,
                label="good" if defect_type == "good" else "anomalous",
                defect_type=defect_type,
                score=prediction.score,
            )
        )
        if len(batch) >= UPSERT_BATCH:
            written += store.upsert(meta.model, meta.category, batch)
            batch = []
    written += store.upsert(meta.model, meta.category, batch)
    return written


def _selected(models: Sequence[str] | None, categories: Sequence[str] | None) -> list[registry.ModelMeta]:
    return [
        m
        for m in registry.list_trained()
        if (not models or m.model in models) and (not categories or m.category in categories)
    ]


def index_categories(models: Sequence[str] | None = None, categories: Sequence[str] | None = None, *, progress: bool = True) -> dict[str, int]:
    """Index every trained (model, category) that matches; returns point counts per collection."""
    counts = {}
    with open_store() as store:
        for meta in _selected(models, categories):
            detector = load_detector(meta.model, meta.category)
            index_category(store, detector, progress=progress)
            counts[entry_key(meta.model, meta.category)] = store.count(meta.model, meta.category)
    return counts


def add_inspection(
    detector: Detector,
    image_rgb: np.ndarray,
    *,
    sha256: str,
    file_name: str,
    inspection_id: int | str,
    prediction: Prediction,
    defect_type: str = "inspected",
) -> str:
    """Add an inspected upload judged DEFECT to the store; returns its point id."""
    vectors, _ = describe(detector, image_rgb, prediction)
    record = make_record(
        sha256=sha256,
        model=detector.meta.model,
        category=detector.meta.category,
        vectors=vectors,
        image_path=file_name,
        split="inspection",
        label="anomalous",
        defect_type=defect_type,
        score=prediction.score,
        inspection_id=str(inspection_id),
    )
    with open_store() as store:
        store.upsert(detector.meta.model, detector.meta.category, [record])
    return record.id


def similar_to_image(
    detector: Detector,
    image_rgb: np.ndarray,
    *,
    sha256: str | None = None,
    k: int = 5,
    using: str | None = None,
    prediction: Prediction | None = None,
    **filters: Any,
) -> list[Hit]:
    """The k most similar stored cases to an image (never the image itself).

    Pass the image's ``prediction`` when the caller already has it (the Inspect page does).
    """
    vectors, _ = describe(detector, image_rgb, prediction)
    using = using or best_descriptor(detector.meta.model, detector.meta.category)
    with open_store() as store:
        return store.similar(
            detector.meta.model, detector.meta.category, vector=vectors[using], using=using, k=k, exclude_sha256=sha256, **filters
        )


def similar_to_point(model: str, category: str, point_id: str, *, k: int = 5, using: str | None = None, **filters: Any) -> list[Hit]:
    """The k most similar stored cases to a stored point (never the point itself)."""
    using = using or best_descriptor(model, category)
    with open_store() as store:
        return store.similar(model, category, point_id=point_id, using=using, k=k, **filters)


def all_points(store: SimilarityStore, model: str, category: str) -> list[tuple[str, dict[str, Any]]]:
    """(id, payload) of every point in a collection, via Qdrant's scroll."""
    if store.dims(model, category) is None:
        return []
    points, offset = [], None
    while True:
        batch, offset = store.client.scroll(store.name(model, category), limit=512, offset=offset, with_payload=True, with_vectors=False)
        points += [(str(p.id), dict(p.payload or {})) for p in batch]
        if offset is None:
            return points


def gallery(model: str, category: str, *, defect_type: str | None = None) -> list[dict[str, Any]]:
    """Past defects (anomalous test images and inspected uploads), each payload with its ``id``."""
    with open_store() as store:
        points = all_points(store, model, category)
    items = [
        {"id": pid, **payload}
        for pid, payload in points
        if payload.get("label") == "anomalous" and (defect_type is None or payload.get("defect_type") == defect_type)
    ]
    return sorted(items, key=lambda p: (p.get("split") != "inspection", p.get("defect_type", ""), p.get("image_path", "")))


def eval_similar(models: Sequence[str] | None = None, categories: Sequence[str] | None = None, *, k: int = 5) -> dict[str, Any]:
    """precision@k per descriptor for each indexed (model, category); written to the results file.

    Leave-one-out over the dataset's images: each anomalous test image queries all other indexed
    images of its category. Inspected uploads are left out so the figure describes the dataset.
    """
    entries = {}
    with open_store() as store:
        for meta in _selected(models, categories):
            items = [
                EvalItem.from_payload(pid, payload)
                for pid, payload in all_points(store, meta.model, meta.category)
                if payload.get("split") in ("train", "test")
            ]
            if not items:
                continue
            neighbours = neighbours_from_store(store, meta.model)
            dataset_only = lambda item, d, n: [  # noqa: E731 - keep inspections out of the neighbours
                h for h in neighbours(item, d, n + 10) if h.payload.get("split") in ("train", "test")
            ][:n]
            entries[entry_key(meta.model, meta.category)] = evaluate_retrieval(items, dataset_only, k=k)
    if entries:
        update_results("retrieval", entries)
    return entries


def format_retrieval(entries: dict[str, Any]) -> str:
    header = f"{'model/category':<24}{'descriptor':<10}{'p@k anomalous':>15}{'p@k same type':>15}{'chance (anom/type)':>20}"
    rows = [header, "-" * len(header)]
    for key, e in sorted(entries.items()):
        chance = e["chance"]
        for name, d in e["descriptors"].items():
            pa, ps = d["precision_anomalous"], d["precision_same_defect"]
            rows.append(
                f"{key:<24}{name:<10}{pa if pa is None else f'{pa:.3f}':>15}{ps if ps is None else f'{ps:.3f}':>15}"
                f"{chance['precision_anomalous']:>12.3f} / {chance['precision_same_defect']:.3f}"
            )
    return "\n".join(rows)


def index_cli(args: argparse.Namespace) -> None:
    counts = index_categories(args.model, args.category)
    if not counts:
        from core.errors import InspectError

        raise InspectError("no trained model matches: train one first with `python -m core train ...`")
    for key, count in counts.items():
        print(f"{key}: {count} points")


def eval_similar_cli(args: argparse.Namespace) -> None:
    entries = eval_similar(args.model, args.category, k=args.k)
    if not entries:
        from core.errors import InspectError

        raise InspectError("nothing indexed yet: run `python -m core index` first")
    print(format_retrieval(entries))
