"""Core objects turned into the API's JSON models (:mod:`core.api.schemas`).

Kept apart from the endpoints so each answer's shape is decided in one place, and so that no
server path (thumbnail, dataset file, data root) slips into an answer by accident.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from core.api import schemas
from core.models import model_label
from core.services import inspection, similar
from core.services.comparison import finite_number
from core.settings import station

if TYPE_CHECKING:
    from core.history import InspectionRecord
    from core.inference.detector import Detector
    from core.registry import ModelMeta
    from core.services.inspection import Inspected
    from core.similarity.store import Hit

#: Opacity of the heatmap in the overlay PNG (the dashboard's default).
OVERLAY_OPACITY = 0.5


def similar_link(root_path: str, inspection_id: int | None, point_id: Any) -> str | None:
    """``{root}/v1/similar/{id}`` when the inspection has a point in the index, else None."""
    if inspection_id is None or point_id in (None, ""):
        return None
    return f"{root_path.rstrip('/')}/v1/similar/{inspection_id}"


#: Regions listed per image at most (highest first): a noisy map must not make the answer huge.
MAX_REGIONS = 50


def inspect_result(result: Inspected, detector: Detector, *, overlay: bool, root_path: str = "") -> schemas.InspectResult:
    """One judged image as the API answers it (the overlay PNG only when asked: it is large)."""
    judgement, amap = result.judgement, result.prediction.anomaly_map
    png = inspection.overlay_png(result.image, result.prediction, OVERLAY_OPACITY) if overlay else None
    return schemas.InspectResult(
        file_name=result.file_name,
        verdict=judgement.verdict,
        score=judgement.score,
        raw_score=judgement.raw_score,
        threshold=judgement.threshold,
        raw_threshold=judgement.raw_threshold,
        map=schemas.MapStats(
            max=float(amap.max()) if amap.size else 0.0,
            mean=float(amap.mean()) if amap.size else 0.0,
            defect_area=result.defect_area,
        ),
        regions=[
            schemas.RegionOut(x=r.x, y=r.y, width=r.width, height=r.height, peak=r.peak) for r in result.regions[:MAX_REGIONS]
        ],
        model=detector.meta.model,
        model_version=result.model_version,
        category=detector.meta.category,
        latency_ms=judgement.latency_ms,
        inspection_id=result.inspection_id,
        point_id=None if result.point_id is None else str(result.point_id),
        similar=similar_link(root_path, result.inspection_id, result.point_id),
        overlay_png_base64=base64.b64encode(png).decode("ascii") if png is not None else None,
        notes=list(result.notes),
        wrong_category=result.wrong_category,
        station=station(),
    )


def inspection_out(record: InspectionRecord, root_path: str = "") -> schemas.InspectionOut:
    """A history row without its thumbnail path (a file on the server)."""
    return schemas.InspectionOut(
        id=int(record.id or 0),
        created_at=record.created_at,
        file_name=record.file_name,
        sha256=record.sha256,
        category=record.category,
        model=record.model,
        verdict=record.verdict,
        score=record.score,
        threshold=record.threshold,
        raw_score=record.raw_score,
        feedback=record.feedback,
        comment=record.comment,
        defect_type=record.defect_type,
        point_id=None if record.point_id is None else str(record.point_id),
        similar=similar_link(root_path, record.id, record.point_id),
        wrong_category=bool(record.wrong_category),
        station=record.station,
    )


def _int_or_none(value: Any) -> int | None:
    number = finite_number(value)
    return int(number) if number is not None else None


def metrics_out(entry: dict[str, Any] | None) -> schemas.MetricsOut | None:
    """The test-set metrics of one results-file entry (None when the pair was not evaluated)."""
    if not entry:
        return None
    names = ("image_auroc", "pixel_auroc", "image_f1", "pixel_f1", "aupro", "false_alarm_rate", "latency_ms")
    return schemas.MetricsOut(**{n: finite_number(entry.get(n)) for n in names}, n_test=_int_or_none(entry.get("n_test")))


def model_out(meta: ModelMeta, version: str | None, entry: dict[str, Any] | None, loaded: bool) -> schemas.ModelOut:
    """A trained model with its calibration, its metrics and whether this process holds it."""
    cal = meta.calibration
    return schemas.ModelOut(
        model=meta.model,
        label=model_label(meta.model),
        category=meta.category,
        version=version,
        created_at=meta.created_at,
        device=meta.device,
        image_size=_int_or_none((meta.config or {}).get("image_size")),
        n_train_images=meta.n_train_images,
        train_time_s=meta.train_time_s,
        calibration=schemas.CalibrationOut(
            image_threshold=cal.image_threshold,
            pixel_threshold=cal.pixel_threshold,
            image_min=cal.image_min,
            image_max=cal.image_max,
            source=cal.source or "not recorded",
        ),
        metrics=metrics_out(entry),
        loaded=loaded,
    )


def similar_case(hit: Hit) -> schemas.SimilarCase:
    """A neighbour by id, similarity and labels; its source named, never its path."""
    payload = hit.payload
    return schemas.SimilarCase(
        point_id=str(hit.id),
        similarity=float(hit.score),
        label=str(payload.get("label") or ""),
        defect_type=similar.case_type(payload),
        source=similar.case_source(payload),
        score=finite_number(payload.get("score")),
        inspection_id=_int_or_none(payload.get("inspection_id")),
    )
