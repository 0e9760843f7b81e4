"""Filling the similarity store from the datasets, the uploads and the history; measuring it.

Prints nothing: runs return typed reports (``core/cli.py`` prints them) and report progress through
a callback. Each ``index`` run records what it wrote outside the store (:mod:`.manifest`), so that
an emptied store or a killed run is reported and uploads are queued (:mod:`.pending`) instead of
written into it. A run then catches up on everything that belongs in the store: queued uploads,
then every DEFECT inspection of the history without its point (never indexed, or in a store that
was lost or that an earlier version of Inspect wrote, left as it is), from the history's thumbnail.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from core import registry, settings
from core.data.image_io import load_image, sha256_of
from core.data.layout import ANOMALOUS, DATASET_SPLITS, category_images, check_layout
from core.errors import ConfigError, StoreError, StoreLockedError
from core.evaluation.results import entry_key, load_results_checked, update_results
from core.inference.detector import Detector, Prediction, load_detector
from core.similarity import label_metric, manifest, pending
from core.similarity.embeddings import descriptors
from core.similarity.payload import DESCRIPTORS, INSPECTED, INSPECTION_SPLIT
from core.similarity.retrieval_eval import EvalItem, evaluate_retrieval, neighbours_from_store
from core.similarity.store import Hit, Record, SimilarityStore, copy_points, make_record, point_id

#: Used when no retrieval evaluation says otherwise (it won on real bottle, see embeddings.py).
DEFAULT_DESCRIPTOR = "defect"
UPSERT_BATCH = 64
#: How long an index run waits for another process (another run, the app) to let go of a collection.
INDEX_LOCK_WAIT_S = 90.0
#: ``progress(what, done, total)``: how far an index run is (the CLI draws a bar from it).
Progress = Callable[[str, int, int], None]


@contextmanager
def open_store(path: Path | None = None, *, drain: bool = True) -> Iterator[SimilarityStore]:
    """The configured store for one call, shared by the threads of this process. ``drain``: first
    add the uploads queued while it was unavailable (an index run catches up with its own models)."""
    store = SimilarityStore.open(path)
    if drain and pending.has_pending():
        with contextlib.suppress(StoreError, OSError, ValueError):  # left queued: the next call retries
            drain_pending(store)
    yield store


def best_descriptor(model: str, category: str) -> str:
    """The descriptor with the higher measured precision@5 for (model, category), else the default;
    an unusable results file means "not measured" (the Compare page shows its problem)."""
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
    detector: Detector, image: np.ndarray, prediction: Prediction | None = None
) -> tuple[dict[str, np.ndarray], Prediction]:
    """Both descriptors of an image, from its prediction's forward pass (whose map weights ``defect``):
    one made ``with_features=True`` is used as it is, so the model does not run again."""
    if prediction is None or prediction.patch_features is None:
        prediction = detector.predict(image, with_features=True)
    return descriptors(prediction.patch_features, prediction.feature_map()), prediction


def _upload_record(model: str, category: str, vectors: Mapping[str, np.ndarray], **payload: Any) -> Record:
    """The record of an upload judged DEFECT: ``sha256``, ``image_path``, ``inspection_id``, ``score``
    and ``time`` given; split "inspection", label "anomalous", type "inspected"."""
    payload["inspection_id"] = str(payload["inspection_id"])
    return make_record(
        model=model, category=category, vectors=vectors, split=INSPECTION_SPLIT, label=ANOMALOUS, defect_type=INSPECTED, **payload
    )


def index_category(store: SimilarityStore, detector: Detector, *, progress: Progress | None = None) -> int:
    """Index the detector's category (train and test images); returns the points written."""
    model, category, root = detector.meta.model, detector.meta.category, Path(detector.meta.data_root)
    check_layout(root, category, verify_images=False)
    images = category_images(root, category)
    batch: list[Record] = []
    for done, image in enumerate(images, 1):
        data = image.path.read_bytes()
        vectors, prediction = describe(detector, load_image(data, image.path.name))
        about = {"image_path": str(image.path), "split": image.split, "label": image.label, "defect_type": image.defect_type}
        batch.append(
            make_record(sha256=sha256_of(data), model=model, category=category, vectors=vectors, score=prediction.score, **about)
        )
        if len(batch) >= UPSERT_BATCH or done == len(images):
            store.upsert(model, category, batch)
            batch = []
        if progress:
            progress(f"Indexing {model}/{category}", done, len(images))
    return len(images)


@dataclass
class IndexReport:
    """What an index run did: points per "model/category", a line per thing found or done, and the
    collections that have outgrown the embedded store (each line says how to move it)."""

    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outgrown: list[str] = field(default_factory=list)


def _selected(models: Sequence[str] | None, categories: Sequence[str] | None, notes: list[str]) -> list[registry.ModelMeta]:
    """The trained models matching the filters; each unreadable one is noted, not hidden."""

    def wanted(model: str, category: str) -> bool:
        return (not models or model in models) and (not categories or category in categories)

    metas, problems = registry.list_trained_with_problems()
    notes += [f"skipped: {message}" for (model, category), message in sorted(problems.items()) if wanted(model, category)]
    return [m for m in metas if wanted(m.model, m.category)]


def _when_free(call: Callable[[], Any]) -> Any:
    """``call()``, retried while another process holds the collection, for INDEX_LOCK_WAIT_S."""
    deadline = time.monotonic() + INDEX_LOCK_WAIT_S
    while True:
        try:
            return call()
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def index_categories(
    models: Sequence[str] | None = None, categories: Sequence[str] | None = None, *, progress: Progress | bool | None = None
) -> IndexReport:
    """Index every trained (model, category) that matches, then catch up (module docstring)."""
    report = IndexReport()
    metas = _selected(models, categories, report.notes)
    detectors: dict[tuple[str, str], Detector] = {}
    with open_store(drain=False) as store:
        for meta in metas:  # take the collections at once, not after the models have loaded
            _when_free(partial(store.dims, meta.model, meta.category))
        for meta in metas:
            detector = detectors[(meta.model, meta.category)] = load_detector(meta.model, meta.category)
            _index_recorded(store, detector, progress if callable(progress) else None, report.notes)
        catch_up(store, detectors, report.notes)
        for model, category in detectors:
            report.counts[entry_key(model, category)] = store.count(model, category)
            report.outgrown += [line for line in [store.outgrown(model, category)] if line]
    return report


def _index_recorded(store: SimilarityStore, detector: Detector, progress: Progress | None, notes: list[str]) -> None:
    """:func:`index_category` between a manifest 'started' and 'finished' record."""
    model, category, root = detector.meta.model, detector.meta.category, Path(detector.meta.data_root)
    check_layout(root, category, verify_images=False)  # before recording: a bad root is no run
    if problem := manifest.check_index(store, model, category, hint=False):
        notes.append(f"found: {problem}; re-indexing it now")
    expected = len(category_images(root, category))
    manifest.run_started(store.location, model, category, expected)
    try:
        index_category(store, detector, progress=progress)
    except BaseException:
        manifest.run_failed(store.location, model, category, expected)
        raise
    manifest.run_finished(store.location, model, category, expected, store.count(model, category, splits=DATASET_SPLITS))


@dataclass(frozen=True)
class UploadOutcome:
    """What became of an upload judged DEFECT: its point id, or a one-line note (and queued?)."""

    point_id: str | None
    note: str | None = None
    queued: bool = False


def _add_or_link(store: SimilarityStore, model: str, category: str, record: Record) -> str | None:
    """Store ``record`` unless its image is a dataset point (whose labels are ground truth); the
    point id, or None when no collection was ever built for the pair."""
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
    """Add an upload judged DEFECT to the index, or queue it when the store cannot take it now
    (held by another process, unreachable, or flagged by the manifest); not queued when no index was
    ever built for the pair or the descriptors are unusable. ``history_db``: where a drain links it."""
    model, category = detector.meta.model, detector.meta.category
    vectors, _ = describe(detector, image_rgb, prediction)  # before taking the store
    about = {"sha256": sha256, "inspection_id": inspection_id, "score": prediction.score}
    try:
        record = _upload_record(model, category, vectors, image_path=file_name, **about)
        with open_store() as store:
            if (problem := manifest.check_index(store, model, category)) is None:
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
            image_rgb, vectors, model=model, category=category, history_db=history_db, reason=note, file_name=file_name, **about
        )
    except StoreError as exc:
        return UploadOutcome(None, f"Not added to the similar-defect index, nor queued: {exc}")
    return UploadOutcome(None, note, queued=True)


def drain_pending(store: SimilarityStore, detectors: Mapping[tuple[str, str], Detector] | None = None) -> tuple[int, int]:
    """Add queued uploads to ``store``; returns (added, still waiting). An index run's ``detectors``
    recompute descriptors from the kept image (a retrain may have changed them); otherwise those
    saved at upload time are used. Uploads whose collection is missing or flagged stay queued."""
    from core.history import History

    added, blocked = 0, {}
    items = pending.pending_uploads()
    for item in items:
        pair = (item.model, item.category)
        if pair not in blocked:
            try:
                blocked[pair] = store.dims(*pair) is None or manifest.check_index(store, *pair) is not None
            except StoreError:  # held by another process, or unreachable: it stays queued
                blocked[pair] = True
        detector = (detectors or {}).get(pair)
        pixels = pending.load_pixels(item) if detector is not None and not blocked[pair] else None
        vectors = describe(detector, pixels)[0] if pixels is not None else None
        if blocked[pair] or (vectors := vectors or pending.load_vectors(item)) is None:
            continue
        about = {"sha256": item.sha256, "image_path": item.file_name, "inspection_id": item.inspection_id, "time": item.queued_at}
        try:
            pid = _add_or_link(store, *pair, _upload_record(*pair, vectors, score=item.score, **about))
        except ValueError:  # saved vectors of another model version: an index run recomputes them
            continue
        # history_db: the SQLite file it was recorded in; None: the settings' server database
        if item.history_db is None or Path(item.history_db).is_file():
            with contextlib.suppress(StoreError):  # the row was deleted meanwhile; the point stays
                History(item.history_db).set_point_id(item.inspection_id, pid)
        pending.remove(item)
        added += 1
    return added, len(items) - added


def _catch_up_history(store: SimilarityStore, detector: Detector, notes: list[str]) -> None:
    """Give every DEFECT inspection of the history its point: linked when it exists (an upload that
    is a dataset image, a link lost before it was written), else added from the history's 256 px
    thumbnail (the upload itself is not kept): a store that was lost, rebuilt or never built comes
    back whole. Queued uploads and those judged not to be of the category are left alone."""
    from core.history import History, thumbnail_ref

    current = settings.get_settings()
    if current.database_url.startswith("sqlite") and not current.history_db.is_file():
        return
    history, model, category = History(), detector.meta.model, detector.meta.category
    queued = {item.inspection_id for item in pending.pending_uploads(model, category)}
    rows = [
        r
        for r in history.list(category=category, model=model, verdict="DEFECT")
        if r.id not in queued and not getattr(r, "wrong_category", None)
    ]
    present = {rec.id for rec in store.get(model, category, [point_id(row.sha256, model, category) for row in rows])}
    linked = added = gone = 0
    for row in rows:
        pid = point_id(row.sha256, model, category)
        if pid in present:
            if str(row.point_id) == pid:
                continue
            linked += 1
        elif (jpeg := history.thumbnail(row)) is not None:
            vectors, _ = describe(detector, load_image(jpeg, f"{row.sha256}.jpg"))
            image_path = row.thumbnail_path or thumbnail_ref(row.sha256)
            about = {"sha256": row.sha256, "image_path": image_path, "inspection_id": row.id, "time": row.created_at}
            store.upsert(model, category, [_upload_record(model, category, vectors, score=row.score, **about)])
            present.add(pid)
            added += 1
        else:
            gone += 1
            continue
        history.set_point_id(int(row.id), pid)
    pair = f"{model}/{category}"
    notes += [f"{pair}: linked {linked} DEFECT inspection(s) to their points"] if linked else []
    notes += [f"{pair}: added {added} DEFECT inspection(s) from the history's thumbnails"] if added else []
    notes += [f"{pair}: {gone} DEFECT inspection(s) have no point and no thumbnail left, so they stay out"] if gone else []


def catch_up(store: SimilarityStore, detectors: Mapping[tuple[str, str], Detector], notes: list[str]) -> None:
    """After an index run: add queued uploads, bring the history's uploads back, note what is left out."""
    added, waiting = drain_pending(store, detectors)
    notes += [f"added {added} queued upload(s) to the index"] if added else []
    notes += [f"{waiting} queued upload(s) wait for their model's index: run `python -m core index` for it"] if waiting else []
    for detector in detectors.values():
        try:
            _catch_up_history(store, detector, notes)
        except StoreError as exc:  # the index itself is fine: say why the history was not caught up
            notes.append(f"{detector.meta.model}/{detector.meta.category}: history rows not checked: {exc}")


@dataclass
class EvalReport:
    """precision@k entries per "model/category" (see :func:`.retrieval_eval.evaluate_retrieval`), and
    the models that could not be read."""

    entries: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def eval_similar(
    models: Sequence[str] | None = None, categories: Sequence[str] | None = None, *, k: int = 5, plain: bool = False
) -> EvalReport:
    """precision@k per descriptor of each indexed (model, category), written to the results file:
    leave-one-out, each anomalous dataset image querying the other dataset images of its category
    (uploads left out), ranked as the app ranks (:mod:`.label_metric`, fitted without the query);
    ``plain``: the descriptors' cosine order alone (not written)."""
    report = EvalReport()
    with open_store() as store:
        for meta in _selected(models, categories, report.skipped):
            items = [EvalItem.from_payload(r.id, r.case) for r in store.points(meta.model, meta.category) if r.case.is_dataset]
            search = store.similar if plain else partial(label_metric.similar, store, leave_one_out=True)
            neighbours = neighbours_from_store(search, meta.model)

            def dataset_only(item: EvalItem, descriptor: str, n: int, neighbours=neighbours) -> list[Hit]:
                return [h for h in neighbours(item, descriptor, n + 10) if h.case.is_dataset][:n]

            if items:
                report.entries[entry_key(meta.model, meta.category)] = evaluate_retrieval(items, dataset_only, k=k)
    if report.entries and not plain:
        update_results("retrieval", report.entries)
    return report


def copy_to_server() -> dict[str, int]:
    """Copy every point of the embedded store to the Qdrant server of ``QDRANT_URL`` (verified by
    counts; the embedded store is only read), with its index records, so the server's collections
    are checked as the embedded ones were; returns the points per collection."""
    if not settings.qdrant_url():
        raise ConfigError("set QDRANT_URL (and QDRANT_API_KEY) to the Qdrant server to copy the embedded store to")
    source, target = SimilarityStore.open(embedded=True), SimilarityStore.open()
    copied = copy_points(source, target)
    manifest.copy_records(source.location, target.location)
    return copied
