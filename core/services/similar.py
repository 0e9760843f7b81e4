"""Similar-case search: the gallery of past defects, the nearest cases to a query, and how to show a case."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    "index_command",
    "index_problem",
    "load_case_image",
    "query_pictures",
    "ranking_note",
    "similar_cases",
    "stored_case",
]

# core.similarity.indexing imports torch, anomalib and qdrant: imported inside the functions below.

INDEX_COMMAND = "python -m core index"


def index_command(model: str, category: str) -> str:
    """The terminal command that builds the similar-defect index of (model, category)."""
    return f"{INDEX_COMMAND} --model {model} --category {category}"


def gallery(model: str, category: str) -> list[dict[str, Any]]:
    """Past defects of (model, category), each stored payload with its ``id``; raises InspectError."""
    from core.similarity import indexing

    return indexing.gallery(model, category)


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
    from core.errors import ImageError

    path = payload.get("image_path")
    if not path:
        return None
    try:
        return load_image(Path(path))
    except ImageError:
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


def query_pictures(entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """A session inspection's image (384 px display copy) and its heatmap overlay."""
    from core.inference.overlay import heatmap_overlay

    shown = inspection.display_copy(entry["image"], 384)
    return shown, heatmap_overlay(shown, entry["prediction"].anomaly_map, opacity=0.5)


def index_problem(model: str, category: str) -> str | None:
    """One line when the (model, category) index holds fewer points than its last index run wrote
    (emptied or damaged store) or that run did not finish; None when healthy or unknown."""
    from core.similarity import indexing

    try:
        return indexing.index_health(model, category)
    except InspectError:
        return None  # the store cannot be opened: the page already shows that error


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
    entry: dict[str, Any] | None = None


def _entry_query(
    model: str,
    category: str,
    entry: dict[str, Any],
    get_detector: Callable[[], Detector] | None,
    k: int,
    filters: dict[str, str],
) -> SimilarQuery:
    """Search by an inspection of this session: by its point when it was indexed, else by its image."""
    from core.similarity import indexing

    if entry.get("point_id"):
        hits = indexing.similar_to_point(model, category, entry["point_id"], k=k, **filters)
        stored = stored_case(model, category, entry["point_id"])
    else:
        hits = indexing.similar_to_image(
            get_detector(), entry["image"], k=k, sha256=entry["sha"], prediction=entry["prediction"], **filters
        )
        stored = None
    payload = stored or {
        "label": "inspected upload",
        "defect_type": entry.get("defect_type") or "unknown",
        "score": entry["prediction"].score,
        "inspection_id": entry.get("history_id"),
    }
    return SimilarQuery(payload, hits, entry)


def _record_query(model: str, category: str, record: InspectionRecord, k: int, filters: dict[str, str]) -> SimilarQuery:
    """Search by a history record of another session (a shared link), by its indexed point."""
    from core.similarity import indexing

    hits = indexing.similar_to_point(model, category, str(record.point_id), k=k, **filters)
    payload = {
        "image_path": record.thumbnail_path,
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
    entry: dict[str, Any] | None = None,
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
        from core.similarity import indexing

        return SimilarQuery(point, indexing.similar_to_point(model, category, point["id"], k=k, **filters))
    if entry is not None:
        return _entry_query(model, category, entry, get_detector, k, filters)
    if record is not None and record.point_id:
        return _record_query(model, category, record, k, filters)
    return None


def find_session_inspection(kept: dict[str, Any], sha256: str | None, model: str, category: str) -> dict[str, Any] | None:
    """The inspection of this session with that file hash, model and category, if kept."""
    for entry in kept.values():
        if (
            isinstance(entry, dict)
            and entry.get("sha") == sha256
            and entry.get("model") == model
            and entry.get("category") == category
        ):
            return entry
    return None
