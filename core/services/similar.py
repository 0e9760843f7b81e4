"""Similar-case search: the gallery of past defects, the nearest cases to a query, the index's health
and how to show a case. The store behind it is whichever ``core.similarity.store`` opens; nothing
here asks which."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core.errors import InspectError
from core.services import inspection
from core.services.comparison import finite_number

if TYPE_CHECKING:
    from core.history import InspectionRecord
    from core.inference.detector import Detector
    from core.similarity.store import Hit

__all__ = [
    "INDEX_COMMAND",
    "SimilarQuery",
    "case_caption",
    "case_heatmap_png",
    "case_source",
    "case_thumbnail_png",
    "case_type",
    "find_session_inspection",
    "gallery",
    "hand_over_index",
    "index_command",
    "index_problem",
    "load_case_image",
    "outgrown",
    "query_pictures",
    "ranking_note",
    "similar_cases",
    "stored_case",
    "waiting_uploads",
]

# core.similarity.indexing imports torch, anomalib and qdrant: imported inside the functions below.

INDEX_COMMAND = "python -m core index"
#: How long the app leaves the embedded store to an index run it starts.
HAND_OVER_S = 60.0


def index_command(model: str, category: str) -> str:
    """The terminal command that builds the similar-defect index of (model, category)."""
    return f"{INDEX_COMMAND} --model {model} --category {category}"


def gallery(model: str, category: str, *, defect_type: str | None = None) -> list[dict[str, Any]]:
    """Past defects, inspected uploads first, then the test set's, each stored payload with its
    ``id``; ``defect_type``: only those. Raises InspectError when the store cannot be used."""
    from core.similarity import indexing
    from core.similarity.payload import INSPECTION_SPLIT

    with indexing.open_store() as store:
        cases = [(rec.id, rec.payload, rec.case) for rec in store.points(model, category, label="anomalous")]
    cases = [c for c in cases if c[2].is_anomalous and defect_type in (None, c[2].defect_type)]
    cases.sort(key=lambda c: (c[2].split != INSPECTION_SPLIT, c[2].defect_type, c[2].image_path))
    return [{"id": pid, **payload} for pid, payload, _ in cases]


def hand_over_index() -> None:
    """Before the app starts an index run: leave the embedded store to it for a minute (the run takes
    its collections at once; meanwhile this process queues uploads and says the index is busy)."""
    from core.similarity import store

    store.release(HAND_OVER_S)


def case_type(payload: dict[str, Any]) -> str:
    """A case's defect type, 'unknown' when it has none."""
    return str(payload.get("defect_type") or "unknown")


def case_caption(payload: dict[str, Any], similarity: float | None = None) -> str:
    """One line under a thumbnail: similarity, label, defect type, source."""
    parts = []
    if similarity is not None:
        parts.append(f"similarity {similarity:.3f}")
    label = payload.get("label")
    dtype = payload.get("defect_type")
    if label:
        parts.append(str(label))
    if dtype and dtype != label:
        parts.append(str(dtype))
    score = finite_number(payload.get("score"))
    if score is not None:
        parts.append(f"score {score:.2f}")
    return " · ".join(parts)


def ranking_note(model: str, category: str) -> str:
    """How the hits are ordered: by the metric learned from the gallery's labels, or plain cosine."""
    from core.similarity import indexing, label_metric

    try:
        with indexing.open_store() as store:
            learned = label_metric.ranks_with_labels(store, model, category, indexing.best_descriptor(model, category))
    except InspectError:  # the store's problems are shown with the search itself
        return ""
    if learned:
        return "Ranked by what the gallery's named defect types teach (a metric learned from them) and the descriptor's cosine."
    return "Ranked by the descriptor's cosine (the gallery has fewer than two named defect types to learn from)."


def case_source(payload: dict[str, Any]) -> str:
    """Where a case comes from: the test set file, or an inspected upload."""
    path = str(payload.get("image_path") or "")
    if payload.get("split") == "inspection" or payload.get("inspection_id"):
        iid = payload.get("inspection_id")
        return f"inspected upload #{iid}" if iid else "inspected upload"
    return "/".join(Path(path).parts[-3:]) if path else "unknown"


def load_case_image(payload: dict[str, Any]) -> np.ndarray | None:
    """The stored image of a case (None when its file is gone)."""
    from core.data.image_io import load_image
    from core.history import THUMBNAIL_REF, History

    path = payload.get("image_path")
    if not path:
        return None
    try:
        if str(path).startswith(THUMBNAIL_REF):  # a thumbnail row of the server history
            jpeg = History().thumbnail(str(path))
            return None if jpeg is None else load_image(jpeg, f"{path}.jpg")
        return load_image(Path(path))
    except InspectError:
        return None


def case_thumbnail_png(path: str) -> bytes | None:
    """A 192 px PNG thumbnail of the case image at ``path`` (None when the file is gone)."""
    image = load_case_image({"image_path": path})
    if image is None:
        return None
    from core.inference.overlay import thumbnail, to_png_bytes

    return to_png_bytes(thumbnail(image, 192))


def case_heatmap_png(path: str, get_detector: Callable[[], Detector]) -> tuple[bytes, float] | None:
    """The model's heatmap over the case image at ``path`` (256 px PNG) and its score; None when gone.

    ``get_detector()`` is only called once the image is there.
    """
    image = load_case_image({"image_path": path})
    if image is None:
        return None
    from core.inference.overlay import heatmap_overlay, thumbnail, to_png_bytes

    prediction = inspection.predict(get_detector(), image)
    small = inspection.display_copy(image, 256)
    return to_png_bytes(thumbnail(heatmap_overlay(small, prediction.anomaly_map, opacity=0.5), 256)), prediction.score


class SessionInspection(Protocol):
    """What a page keeps of one inspection it ran: the name it shows, the model and category
    chosen, and the service's result (None when the file could not be judged)."""

    name: str
    model: str
    category: str
    result: inspection.Inspected | None


def query_pictures(entry: SessionInspection) -> tuple[np.ndarray, np.ndarray]:
    """A session inspection's image (384 px display copy) and its heatmap overlay."""
    from core.inference.overlay import heatmap_overlay

    shown = inspection.display_copy(entry.result.image, 384)
    return shown, heatmap_overlay(shown, entry.result.prediction.anomaly_map, opacity=0.5)


def index_problem(model: str, category: str) -> str | None:
    """One line when the (model, category) index holds fewer points than its last index run wrote
    (emptied or damaged) or that run did not finish; None when healthy or unknown."""
    from core.similarity import indexing, manifest

    try:
        with indexing.open_store() as store:
            return manifest.check_index(store, model, category)
    except InspectError:
        return None  # the store cannot be opened: the page already shows that error


def outgrown(model: str, category: str) -> str | None:
    """One line when the (model, category) gallery has outgrown the embedded store: how to move it."""
    from core.similarity import indexing

    try:
        with indexing.open_store() as store:
            return store.outgrown(model, category)
    except InspectError:
        return None


def store_problem() -> str | None:
    """Why the similar-defect store cannot be opened now (one line), or None when it can."""
    from core.similarity import indexing

    try:
        with indexing.open_store():
            return None
    except InspectError as exc:
        return str(exc)


def waiting_uploads() -> int:
    """Uploads judged DEFECT waiting for the similar-defect index (the store could not take them yet)."""
    from core.similarity import pending

    return len(pending.pending_uploads())


def stored_case(model: str, category: str, point_id: str) -> dict[str, Any] | None:
    """The stored payload (with ``id``) of one indexed point, or None."""
    from core.similarity import indexing

    try:
        with indexing.open_store() as store:
            found = store.get(model, category, [point_id])
    except (InspectError, ValueError):
        return None
    return {"id": found[0].id, **found[0].payload} if found else None


@dataclass
class SimilarQuery:
    """A query on the Similar page and its hits. ``entry``: the in-session inspection, if any."""

    payload: dict[str, Any]
    hits: list[Hit]
    entry: SessionInspection | None = None


def _search(model: str, category: str, k: int, filters: dict[str, str], **query: Any) -> list[Hit]:
    """The ``k`` stored cases nearest the query (a stored ``point_id``, or a ``detector``'s ``image``
    with its ``sha256`` and ``prediction``), never the query itself, on the descriptor measured best
    and ranked as :mod:`core.similarity.label_metric` ranks them."""
    from core.similarity import indexing, label_metric

    using = indexing.best_descriptor(model, category)
    if query.get("point_id") is None:
        vectors, _ = indexing.describe(query["detector"], query["image"], query.get("prediction"))
        query = {"vector": vectors[using], "exclude_sha256": query.get("sha256")}
    with indexing.open_store() as store:
        return label_metric.similar(store, model, category, using=using, k=k, **query, **filters)


def _entry_query(
    model: str,
    category: str,
    entry: SessionInspection,
    get_detector: Callable[[], Detector] | None,
    k: int,
    filters: dict[str, str],
) -> SimilarQuery:
    """Search by an inspection of this session: by its point when it was indexed, else by its image."""
    result = entry.result
    if result.point_id:
        hits = _search(model, category, k, filters, point_id=result.point_id)
        stored = stored_case(model, category, result.point_id)
    else:
        query = {"image": result.image, "sha256": result.sha256, "prediction": result.prediction}
        hits, stored = _search(model, category, k, filters, detector=get_detector(), **query), None
    payload = stored or {
        "label": "inspected upload",
        "defect_type": "unknown",
        "score": result.prediction.score,
        "inspection_id": result.inspection_id,
    }
    return SimilarQuery(payload, hits, entry)


def _record_query(model: str, category: str, record: InspectionRecord, k: int, filters: dict[str, str]) -> SimilarQuery:
    """Search by a history record of another session (a shared link), by its indexed point."""
    from core.history import thumbnail_ref

    hits = _search(model, category, k, filters, point_id=str(record.point_id))
    payload = {
        "image_path": record.thumbnail_path or thumbnail_ref(record.sha256),
        "label": "inspected upload",
        "defect_type": record.defect_type or "unknown",
        "score": record.score,
        "inspection_id": record.id,
    }
    return SimilarQuery(payload, hits)


def similar_cases(
    model: str,
    category: str,
    *,
    point: dict[str, Any] | None = None,
    entry: SessionInspection | None = None,
    record: InspectionRecord | None = None,
    get_detector: Callable[[], Detector] | None = None,
    k: int = 5,
    only_defects: bool = False,
) -> SimilarQuery | None:
    """The ``k`` past cases most similar to one query, whichever form the query takes.

    * ``point``: a gallery item (a stored payload with its ``id``);
    * ``entry``: an inspection of this browser session (image and prediction in memory): searched
      by its point when it was indexed, else by its image (``get_detector()`` gives the model);
    * ``record``: a history record from another session (a shared link), searched by its point.

    None when no query is given. Raises :class:`InspectError` (store problems) or
    :class:`LookupError` (point gone).
    """
    filters = {"label": "anomalous"} if only_defects else {}
    if point is not None:
        return SimilarQuery(point, _search(model, category, k, filters, point_id=point["id"]))
    if entry is not None:
        return _entry_query(model, category, entry, get_detector, k, filters)
    if record is not None and record.point_id:
        return _record_query(model, category, record, k, filters)
    return None


def find_session_inspection(kept: dict[str, Any], sha256: str | None, model: str, category: str) -> SessionInspection | None:
    """The inspection of this session with that file hash, model and category, if kept (and judged)."""
    for entry in kept.values():
        result = getattr(entry, "result", None)
        if result is not None and (result.sha256, entry.model, entry.category) == (sha256, model, category):
            return entry
    return None
