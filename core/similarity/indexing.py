"""Fill the similarity store from datasets and inspections, search it, and measure it.

This is the service layer the pages and the CLI call; :mod:`core.similarity.store` holds the
Qdrant details and :mod:`core.similarity.retrieval_eval` the precision@k arithmetic.

Sharing the store
-----------------
The embedded store admits one *client* at a time: a second ``QdrantClient(path=...)`` on the same
folder, even in the same process, is refused. Streamlit runs each browser session in its own
thread, so two tabs used to refuse each other. Two choices were possible:

* one handle per process, kept open: the app would then hold the folder for its whole life and a
  ``python -m core index`` run (a background job is another process) could never open it;
* **open per call, serialised per process (chosen)**: :func:`open_store` takes a process-wide lock
  for the store's folder, opens the store, and closes it and releases the lock when the call ends.
  Threads wait their turn (calls are short: descriptors are computed *before* taking the store)
  instead of being refused, and between calls the folder is free for another process.

Across processes nothing can wait that long (an index run holds the store for minutes), so an
upload judged DEFECT that meets a locked store is queued (:mod:`core.similarity.pending`) and added
at the next store use in the app, or by the next ``index`` run. A Qdrant server (``QDRANT_URL``)
serves every client at once; no lock is taken for it.

Checking the store
------------------
Each ``index`` run records per (model, category) how many dataset points it wrote, outside the
store (:mod:`core.similarity.manifest`). The Similar page, the upload path and ``index`` itself
compare the collection with that record, so an emptied store (a 0-byte or deleted
``storage.sqlite`` opens as an empty collection) or a killed run is reported, and uploads are
queued rather than written into an emptied collection.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core import registry
from core.data.image_io import load_image, sha256_of
from core.data.layout import ANOMALOUS, DATASET_SPLITS, CategoryImage, category_images, check_layout
from core.errors import StoreError
from core.evaluation.results import entry_key, load_results_checked, update_results
from core.inference.detector import Detector, Prediction, load_detector
from core.similarity import label_metric, manifest, pending
from core.similarity.embeddings import descriptors
from core.similarity.payload import DESCRIPTORS, INSPECTED, INSPECTION_SPLIT, CasePayload
from core.similarity.retrieval_eval import EvalItem, evaluate_retrieval, neighbours_from_store
from core.similarity.store import (
    Hit,
    Record,
    SimilarityStore,
    StoreLockedError,
    make_record,
    point_id,
    store_location,
)

#: Used when no retrieval evaluation says otherwise (it won on real bottle, see embeddings.py).
DEFAULT_DESCRIPTOR = "defect"
UPSERT_BATCH = 64
#: How long a thread waits for another thread of this process to finish with the store. Calls
#: hold it for milliseconds to a second; only an in-process index run holds it longer.
STORE_WAIT_S = 120.0
#: How long an index run waits for another process (the app) to release an Edge collection: the
#: app lets go at its next idle moment once asked (``edge_store``: ``want.<pid>``).
INDEX_LOCK_WAIT_S = 90.0


# --------------------------------------------------------------------------------------------
# Opening the store: one client per folder per process at a time
# --------------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """The process-wide state of one embedded folder: its lock and, while in use, its store.

    The lock is re-entrant and the store shared within one thread, so a function that holds the
    store can call another that opens it (a second client would be refused by Qdrant).
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    store: SimilarityStore | None = None
    depth: int = 0


_SLOTS: dict[str, _Slot] = {}
_SLOTS_LOCK = threading.Lock()


def _slot(location: str) -> _Slot:
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(location, _Slot())


@contextmanager
def open_store(path: Path | None = None, *, drain: bool = True, lock_wait_s: float = 0.0) -> Iterator[SimilarityStore]:
    """The store for one call: waits for other threads of this process, closes it at the end.

    ``drain``: add queued uploads when this call opens the store (the app's catch-up); the index
    run passes False and catches up itself, with the models it loads. ``lock_wait_s``: how long to
    wait for another process to release an Edge collection (the index run waits for the app's
    idle handles to close; the app does not wait, it queues).

    On Qdrant Edge "closing" the store releases it to this process's open shards, which stay
    loaded (opening a shard costs a few hundred milliseconds) until idle, see
    :mod:`core.similarity.edge_store`.
    """
    location = store_location(path)
    if location.startswith(("http://", "https://")):  # a server serves every client at once
        with SimilarityStore.open(path, lock_wait_s=lock_wait_s) as store:
            if drain:
                _drain_quietly(store)
            yield store
        return
    slot = _slot(location)
    if not slot.lock.acquire(timeout=STORE_WAIT_S):
        raise StoreError(f"the Qdrant store {location} stayed busy in this app for {STORE_WAIT_S:g} s; try again")
    try:
        if slot.store is None:
            slot.store = SimilarityStore.open(path, lock_wait_s=lock_wait_s)
            if drain:
                _drain_quietly(slot.store)
        slot.depth += 1
        try:
            yield slot.store
        finally:
            slot.depth -= 1
            if slot.depth == 0:
                store, slot.store = slot.store, None
                store.close()
    finally:
        slot.lock.release()


def release_store() -> None:
    """Close the Edge shards this process holds, e.g. before starting an ``index`` job that needs
    them (a page's ``before=`` hook); the next store call opens them again."""
    from core.similarity import edge_store

    edge_store.release_all()


def best_descriptor(model: str, category: str) -> str:
    """The descriptor with the higher measured precision@5 for this (model, category), if measured.

    An unusable results file, or an entry of the wrong shape, means "not measured" (the default),
    never a failed search: the Compare page is where the file's problem is shown.
    """
    measured = load_results_checked().data["retrieval"].get(entry_key(model, category), {}).get("descriptors")

    def number(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    scored = {
        name: number(v.get("precision_anomalous")) + number(v.get("precision_same_defect"))
        for name, v in (measured.items() if isinstance(measured, dict) else ())
        if name in DESCRIPTORS and isinstance(v, dict)
    }
    return max(scored, key=scored.get) if scored else DEFAULT_DESCRIPTOR


def describe(
    detector: Detector, image_rgb: np.ndarray, prediction: Prediction | None = None
) -> tuple[dict[str, np.ndarray], Prediction]:
    """Both descriptors of one image, and its prediction (whose map weights the defect descriptor).

    The descriptors come from the prediction's own forward pass (``predict(..., with_features=True)``):
    a caller that already has such a prediction passes it, and the model does not run again.
    """
    if prediction is None or prediction.patch_features is None:
        prediction = detector.predict(image_rgb, with_features=True)
    return descriptors(prediction.patch_features, prediction.anomaly_map), prediction


def index_category(store: SimilarityStore, detector: Detector, *, progress: bool = True) -> int:
    """Index the detector's category (train and test images); returns the points written."""
    from tqdm import tqdm

    meta = detector.meta
    root = Path(meta.data_root)
    check_layout(root, meta.category, verify_images=False)
    batch = []
    written = 0
    images = category_images(root, meta.category)
    for image in tqdm(images, desc=f"Indexing {meta.model}/{meta.category}", unit="img", disable=not progress):
        batch.append(_dataset_record(detector, image))
        if len(batch) >= UPSERT_BATCH:
            written += store.upsert(meta.model, meta.category, batch)
            batch = []
    written += store.upsert(meta.model, meta.category, batch)
    return written


def _dataset_record(detector: Detector, image: CategoryImage) -> Record:
    """The record of one dataset image: its descriptors and its ground-truth label and type."""
    data = image.path.read_bytes()
    vectors, prediction = describe(detector, load_image(data, image.path.name))
    return make_record(
        sha256=sha256_of(data),
        model=detector.meta.model,
        category=detector.meta.category,
        vectors=vectors,
        image_path=str(image.path),
        split=image.split,
        label=image.label,
        defect_type=image.defect_type,
        score=prediction.score,
    )


def _upload_record(
    model: str,
    category: str,
    vectors: Mapping[str, np.ndarray],
    *,
    sha256: str,
    file_name: str,
    inspection_id: int | str,
    score: float | None,
    defect_type: str = INSPECTED,
    time: str | None = None,
) -> Record:
    """The record of an upload judged DEFECT (split "inspection", label "anomalous")."""
    return make_record(
        sha256=sha256,
        model=model,
        category=category,
        vectors=vectors,
        image_path=file_name,
        split=INSPECTION_SPLIT,
        label=ANOMALOUS,
        defect_type=defect_type,
        score=score,
        inspection_id=str(inspection_id),
        time=time,
    )


Report = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


def _selected(
    models: Sequence[str] | None, categories: Sequence[str] | None, report: Report = _quiet
) -> list[registry.ModelMeta]:
    """The trained models matching the filters; each unreadable one is reported, not hidden."""

    def wanted(model: str, category: str) -> bool:
        return (not models or model in models) and (not categories or category in categories)

    metas, problems = registry.list_trained_with_problems()
    for (model, category), message in sorted(problems.items()):
        if wanted(model, category):
            report(f"skipped: {message}")
    return [m for m in metas if wanted(m.model, m.category)]


def index_categories(
    models: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    *,
    progress: bool = True,
    report: Report = _quiet,
) -> dict[str, int]:
    """Index every trained (model, category) that matches; returns point counts per collection.

    Each pair's run is recorded in the index manifest (incomplete until it finishes), a problem
    found before re-indexing (emptied store, killed run) is reported, and afterwards queued uploads
    and DEFECT history rows without a point are caught up on (see :func:`catch_up`).
    """
    counts = {}
    detectors: dict[tuple[str, str], Detector] = {}
    # drained below, with the models loaded here; waits for an app's idle Edge handles to close
    with open_store(drain=False, lock_wait_s=INDEX_LOCK_WAIT_S) as store:
        for meta in _selected(models, categories, report):
            detector = load_detector(meta.model, meta.category)
            _index_recorded(store, detector, progress=progress, report=report)
            detectors[(meta.model, meta.category)] = detector
        catch_up(store, detectors, report=report)
        for model, category in detectors:
            counts[entry_key(model, category)] = store.count(model, category)
    return counts


def _index_recorded(store: SimilarityStore, detector: Detector, *, progress: bool, report: Report) -> None:
    """:func:`index_category` between a manifest 'started' and 'finished' record."""
    meta = detector.meta
    root = Path(meta.data_root)
    check_layout(root, meta.category, verify_images=False)  # before recording: a bad root is no run
    problem = manifest.check_index(store, meta.model, meta.category, hint=False)
    if problem:
        report(f"found: {problem}; re-indexing it now")
    expected = len(category_images(root, meta.category))
    manifest.run_started(store.location, meta.model, meta.category, expected)
    try:
        index_category(store, detector, progress=progress)
    except BaseException:
        manifest.run_failed(store.location, meta.model, meta.category, expected)
        raise
    points = store.count(meta.model, meta.category, splits=DATASET_SPLITS)
    manifest.run_finished(store.location, meta.model, meta.category, expected, points)


def index_health(model: str, category: str) -> str | None:
    """A one-line problem when the (model, category) collection disagrees with its last index run."""
    with open_store() as store:
        return manifest.check_index(store, model, category)


# --------------------------------------------------------------------------------------------
# Uploads: added now, or queued and added later
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadOutcome:
    """What became of an upload judged DEFECT: its point id, or a one-line note (and queued?)."""

    point_id: str | None
    note: str | None = None
    queued: bool = False


def _add_or_link(store: SimilarityStore, model: str, category: str, record: Record) -> str | None:
    """Store ``record`` unless its image is already a dataset point (whose labels are ground
    truth); returns the point id, or None when no collection was ever built for the pair."""
    if store.dims(model, category) is None:
        return None
    existing = store.get(model, category, [record.id])
    if not (existing and existing[0].case.is_dataset):
        store.upsert(model, category, [record])
    return record.id


def index_upload(
    detector: Detector,
    image_rgb: np.ndarray,
    prediction: Prediction,
    *,
    sha256: str,
    inspection_id: int,
    file_name: str,
    history_db: str | None = None,
) -> UploadOutcome:
    """Add an upload judged DEFECT to the index, or queue it when the store cannot take it now.

    Queued (with a note saying so): the store is locked by another process, unreachable or
    unreadable, or the manifest says the collection was emptied or half built (nothing is written
    into it then). Not queued: no index was ever built for the pair (``index`` builds it from the
    dataset), or the descriptors are unusable. ``history_db`` lets a later drain link the point.
    """
    model, category = detector.meta.model, detector.meta.category
    vectors, _ = describe(detector, image_rgb, prediction)  # before taking the store: hold it briefly
    try:
        record = _upload_record(
            model, category, vectors, sha256=sha256, file_name=file_name, inspection_id=inspection_id, score=prediction.score
        )
        with open_store() as store:
            problem = manifest.check_index(store, model, category)
            if problem is None:
                return UploadOutcome(_add_or_link(store, model, category, record))
        note = f"Not added to the similar-defect index yet: {problem}; this upload is queued and will be indexed automatically after that"
    except StoreLockedError:
        note = "The similar-defect index is in use by another process (e.g. an index run): this upload is queued and will be indexed automatically"
    except StoreError as exc:
        note = f"Not added to the similar-defect index yet ({exc}); this upload is queued and will be indexed automatically once the store can be used"
    except ValueError as exc:  # e.g. an all-zero descriptor: no retry would change it
        return UploadOutcome(None, f"Not added to the similar-defect index: {exc}")
    try:
        pending.queue_upload(
            image_rgb,
            vectors,
            model=model,
            category=category,
            sha256=sha256,
            inspection_id=inspection_id,
            file_name=file_name,
            score=prediction.score,
            history_db=history_db,
            reason=note,
        )
    except StoreError as exc:
        return UploadOutcome(None, f"Not added to the similar-defect index, nor queued: {exc}")
    return UploadOutcome(None, note, queued=True)


@dataclass
class DrainResult:
    added: int = 0
    waiting: int = 0


def _link_history(history_db: str | None, inspection_id: int, pid: str) -> None:
    """Write the point id into the inspection's history row, if both still exist."""
    if not history_db or not Path(history_db).is_file():
        return
    from core.history import History

    with contextlib.suppress(StoreError):  # the row was deleted meanwhile; the point stays indexed
        History(history_db).set_point_id(inspection_id, pid)


def _pending_record(item: pending.PendingUpload, detector: Detector | None) -> Record | None:
    """The record of a queued upload: descriptors recomputed by ``detector`` (an index run, which
    may follow a retrain), else those saved at upload time; None when neither is available."""
    vectors, score = None, item.score
    if detector is not None:
        pixels = pending.load_pixels(item)
        if pixels is not None:
            vectors, prediction = describe(detector, pixels)
            score = prediction.score
    if vectors is None:
        vectors = pending.load_vectors(item)
    if vectors is None:
        return None
    return _upload_record(
        item.model,
        item.category,
        vectors,
        sha256=item.sha256,
        file_name=item.file_name,
        inspection_id=item.inspection_id,
        score=score,
        time=item.queued_at,
    )


def drain_pending(store: SimilarityStore, detectors: Mapping[tuple[str, str], Detector] | None = None) -> DrainResult:
    """Add queued uploads to ``store``; those whose collection is missing or flagged stay queued."""
    result = DrainResult()
    blocked: dict[tuple[str, str], bool] = {}
    for item in pending.pending_uploads():
        pair = (item.model, item.category)
        if pair not in blocked:
            blocked[pair] = store.dims(*pair) is None or manifest.check_index(store, *pair) is not None
        record = None if blocked[pair] else _pending_record(item, (detectors or {}).get(pair))
        pid = None
        if record is not None:
            try:
                pid = _add_or_link(store, item.model, item.category, record)
            except ValueError:  # saved vectors of another model version: an index run recomputes
                pid = None
        if pid is None:
            result.waiting += 1
            continue
        _link_history(item.history_db, item.inspection_id, pid)
        pending.remove(item)
        result.added += 1
    return result


def _drain_quietly(store: SimilarityStore) -> None:
    """The app's catch-up on every fresh open: never lets a queue problem fail the caller's call."""
    if not pending.has_pending():
        return
    with contextlib.suppress(StoreError, OSError, ValueError):  # left queued: the next open retries
        drain_pending(store)


def _link_unindexed_rows(store: SimilarityStore, model: str, category: str) -> tuple[int, int]:
    """Link DEFECT history rows without a point to their point when it exists (an upload that is
    a dataset image, a link lost before it was written); returns (linked, still without point)."""
    from core.history import History
    from core.settings import get_settings

    path = get_settings().history_db
    if not path.is_file():
        return 0, 0
    history = History(path)
    queued = {item.inspection_id for item in pending.pending_uploads(model, category)}
    rows = [r for r in history.list_unindexed_defects(model, category) if r.id not in queued]
    if not rows or store.dims(model, category) is None:
        return 0, len(rows)
    linked = 0
    for row in rows:
        pid = point_id(row.sha256, model, category)
        if store.get(model, category, [pid]):
            history.set_point_id(int(row.id), pid)
            linked += 1
    return linked, len(rows) - linked


def catch_up(store: SimilarityStore, detectors: Mapping[tuple[str, str], Detector], *, report: Report = _quiet) -> DrainResult:
    """After an index run: add queued uploads, link history rows, and say what is left out."""
    result = drain_pending(store, detectors)
    if result.added:
        report(f"added {result.added} queued upload(s) to the index")
    if result.waiting:
        report(f"{result.waiting} queued upload(s) wait for their model's index: run `python -m core index` for it")
    for model, category in detectors:
        try:
            linked, left = _link_unindexed_rows(store, model, category)
        except StoreError as exc:  # the index itself is fine: say why the history was not caught up
            report(f"{model}/{category}: history rows not checked: {exc}")
            continue
        if linked:
            report(f"{model}/{category}: linked {linked} DEFECT inspection(s) to their points")
        if left:
            report(
                f"{model}/{category}: {left} DEFECT inspection(s) have no point and no kept image "
                "(made before the index existed), so they stay out of the index"
            )
    return result


def add_inspection(
    detector: Detector,
    image_rgb: np.ndarray,
    *,
    sha256: str,
    file_name: str,
    inspection_id: int | str,
    prediction: Prediction,
    defect_type: str = INSPECTED,
) -> str:
    """Add an inspected upload judged DEFECT to the store; returns its point id."""
    vectors, _ = describe(detector, image_rgb, prediction)
    record = _upload_record(
        detector.meta.model,
        detector.meta.category,
        vectors,
        sha256=sha256,
        file_name=file_name,
        inspection_id=inspection_id,
        score=prediction.score,
        defect_type=defect_type,
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
        return label_metric.similar(
            store,
            detector.meta.model,
            detector.meta.category,
            vector=vectors[using],
            using=using,
            k=k,
            exclude_sha256=sha256,
            **filters,
        )


def similar_to_point(
    model: str, category: str, point_id: str, *, k: int = 5, using: str | None = None, **filters: Any
) -> list[Hit]:
    """The k most similar stored cases to a stored point (never the point itself)."""
    using = using or best_descriptor(model, category)
    with open_store() as store:
        return label_metric.similar(store, model, category, point_id=point_id, using=using, k=k, **filters)


def all_points(
    store: SimilarityStore, model: str, category: str, *, label: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(id, payload) of every point in a collection (``label``: only those), page by page."""
    return [(rec.id, rec.payload) for rec in store.points(model, category, label=label)]


def gallery(model: str, category: str, *, defect_type: str | None = None) -> list[dict[str, Any]]:
    """Past defects (anomalous test images and inspected uploads), each payload with its ``id``."""
    with open_store() as store:
        points = all_points(store, model, category, label=ANOMALOUS)
    cases = [(pid, payload, CasePayload.from_dict(payload)) for pid, payload in points]
    defects = [c for c in cases if c[2].is_anomalous and (defect_type is None or c[2].defect_type == defect_type)]
    defects.sort(key=lambda c: (c[2].split != INSPECTION_SPLIT, c[2].defect_type, c[2].image_path))
    return [{"id": pid, **payload} for pid, payload, _ in defects]


def eval_similar(
    models: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    *,
    k: int = 5,
    plain: bool = False,
    report: Report = _quiet,
) -> dict[str, Any]:
    """precision@k per descriptor for each indexed (model, category); written to the results file.

    Leave-one-out over the dataset's images: each anomalous test image queries all other indexed
    images of its category. Inspected uploads are left out so the figure describes the dataset.
    The ranking is the app's (:mod:`core.similarity.label_metric`, fitted without the query);
    ``plain`` measures the descriptors' cosine order alone instead (printed, not written).
    """
    entries = {}
    with open_store() as store:
        for meta in _selected(models, categories, report):
            cases = [(pid, CasePayload.from_dict(payload)) for pid, payload in all_points(store, meta.model, meta.category)]
            items = [EvalItem.from_payload(pid, case) for pid, case in cases if case.is_dataset]
            if not items:
                continue
            search = store.similar if plain else partial(label_metric.similar, store, leave_one_out=True)
            entries[entry_key(meta.model, meta.category)] = evaluate_retrieval(
                items, _dataset_neighbours(neighbours_from_store(search, meta.model)), k=k
            )
    if entries and not plain:
        update_results("retrieval", entries)
    return entries


def _dataset_neighbours(neighbours: Callable[..., list[Hit]]) -> Callable[..., list[Hit]]:
    """``neighbours`` without inspected uploads: the figure describes the dataset."""

    def dataset_only(item: EvalItem, descriptor: str, n: int) -> list[Hit]:
        hits = neighbours(item, descriptor, n + 10)
        return [h for h in hits if h.case.is_dataset][:n]

    return dataset_only


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
    counts = index_categories(args.model, args.category, report=print)
    if not counts:
        from core.errors import InspectError

        raise InspectError("no trained model matches: train one first with `python -m core train ...`")
    for key, count in counts.items():
        print(f"{key}: {count} points")


def eval_similar_cli(args: argparse.Namespace) -> None:
    entries = eval_similar(
        args.model, args.category, k=args.k, plain=args.plain, report=lambda line: print(f"warning: {line}", file=sys.stderr)
    )
    if not entries:
        from core.errors import InspectError

        raise InspectError("nothing indexed yet: run `python -m core index` first")
    print(format_retrieval(entries))
