"""Inspecting one image: run the model, judge it at any threshold, record it, index a DEFECT upload."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.data.image_io import SUPPORTED_EXTENSIONS, load_image, sha256_of
from core.errors import InspectError
from core.history import DuplicateRequestError, History, InspectionRecord, thumbnail_ref
from core.inference.overlay import Region, defect_regions
from core.inference.verdict import CALIBRATED_THRESHOLD
from core.learning.drift import ood_note
from core.settings import station

if TYPE_CHECKING:
    from core.inference.detector import Detector, Prediction, TileProgress

__all__ = [
    "CALIBRATED",
    "IMAGE_TYPES",
    "Inspected",
    "add_to_gallery",
    "defect_area",
    "defect_boxes",
    "inspect_bytes",
    "inspect_images",
    "Judgement",
    "Pictures",
    "display_copy",
    "file_stem",
    "index_inspection",
    "inspection_key",
    "judge",
    "load_detector",
    "load_image",
    "overlay_png",
    "pictures",
    "predict",
    "record_inspection",
    "record_results",
    "sha256_of",
    "warm_up",
]

#: The calibrated threshold on the normalised scale (0.5: see core.inference.verdict).
CALIBRATED = CALIBRATED_THRESHOLD
#: File types the upload widget offers: exactly those the loader reads.
IMAGE_TYPES: tuple[str, ...] = tuple(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS)


def load_detector(model: str, category: str, runtime: str | None = None) -> Detector:
    """The trained ``model`` for ``category`` on this process's device (imports torch and anomalib).

    ``runtime`` None runs the newest version on its own chosen runtime (``python -m core export
    --use`` chooses OpenVINO; torch otherwise); "torch" or "openvino" force one.
    """
    from core.inference import detector

    return detector.load_detector(model, category, runtime=runtime)


def predict(detector: Detector, image_rgb: np.ndarray) -> Prediction:
    """Run ``detector`` on one image, patch features included (one forward pass serves both the
    verdict and, for a DEFECT, the similarity descriptors)."""
    return detector.predict(image_rgb, with_features=True)


def warm_up(detector: Detector) -> None:
    """Run the model once on a blank image: first calls pay one-off set-up costs."""
    size = int((detector.meta.config or {}).get("image_size") or 256)
    detector.predict(np.zeros((size, size, 3), dtype=np.uint8))


def inspection_key(sha256: str, model: str, category: str, mtime: float) -> str:
    """Identity of one inspection result: same file, same model version → same key."""
    return f"{model}/{category}/{mtime:.0f}/{sha256}"


@dataclass(frozen=True)
class Judgement:
    """The verdict at one threshold, and the numbers the inspector is shown next to it."""

    verdict: str
    score: float  # normalised, 0.5 = calibrated threshold
    raw_score: float
    threshold: float  # normalised (the slider)
    raw_threshold: float  # the same threshold on the model's raw score scale
    calibrated_raw_threshold: float
    latency_ms: float
    calibration_source: str


def judge(prediction: Prediction, detector: Detector, threshold: float = CALIBRATED) -> Judgement:
    """Re-judge a stored prediction at ``threshold`` (normalised) without running the model."""
    cal = detector.meta.calibration
    return Judgement(
        verdict=prediction.verdict(threshold),
        score=float(prediction.score),
        raw_score=float(prediction.raw_score),
        threshold=float(threshold),
        raw_threshold=float(detector.normalised_to_raw(threshold)),
        calibrated_raw_threshold=float(cal.image_threshold),
        latency_ms=float(prediction.latency_ms),
        calibration_source=cal.source or "not recorded",
    )


def display_copy(image_rgb: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """A copy no larger than ``max_side`` on its long side, for drawing overlays quickly."""
    h, w = image_rgb.shape[:2]
    if max(h, w) <= max_side:
        return image_rgb
    import cv2

    k = max_side / max(h, w)
    return cv2.resize(image_rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


#: Side of the zoom on the highest region, in image pixels (larger when the region is).
ZOOM_SIDE = 384


@dataclass(frozen=True)
class Zoom:
    """The highest defect region of a large image at the camera's own pixels."""

    heatmap: np.ndarray  # the crop with the heatmap overlay
    region: np.ndarray  # the crop with the defect region's outline
    box: Region  # the crop, in image pixels
    top: Region  # the highest region itself, in image pixels


@dataclass(frozen=True)
class Pictures:
    """What the Inspect page shows of one result: the image, its heatmap, the defect region."""

    shown: np.ndarray  # the display copy of the image
    heatmap: np.ndarray
    region: np.ndarray
    #: for an image larger than its display copy: the highest region at full resolution (a 10 px
    #: scratch on a 5 MP frame is a few display pixels)
    zoom: Zoom | None = None


def pictures(image_rgb: np.ndarray, prediction: Prediction, opacity: float) -> Pictures:
    """The display copy, its heatmap overlay at ``opacity``, the calibrated defect region, and the
    zoom on the highest region when the display copy is smaller than the image."""
    from core.inference.overlay import defect_contours, heatmap_overlay

    shown = display_copy(image_rgb)
    overlay = heatmap_overlay(shown, prediction.anomaly_map, opacity=opacity)
    region = defect_contours(shown, prediction.anomaly_map, threshold=CALIBRATED)
    zoom = zoom_on_top_region(image_rgb, prediction, opacity) if shown.shape != image_rgb.shape else None
    return Pictures(shown, overlay, region, zoom)


def zoom_on_top_region(
    image_rgb: np.ndarray, prediction: Prediction, opacity: float, threshold: float = CALIBRATED
) -> Zoom | None:
    """A crop of ``ZOOM_SIDE`` px (or the region's size) around the highest region, with its heatmap
    and outline drawn at the image's own pixels; None when no region reaches ``threshold``."""
    import cv2

    from core.inference.overlay import defect_contours, heatmap_overlay

    regions = defect_boxes(image_rgb, prediction, threshold)
    if not regions:
        return None
    top = regions[0]
    height, width = image_rgb.shape[:2]
    side_w = min(width, max(ZOOM_SIDE, top.width + 32))
    side_h = min(height, max(ZOOM_SIDE, top.height + 32))
    x0 = min(max(0, top.x + top.width // 2 - side_w // 2), width - side_w)
    y0 = min(max(0, top.y + top.height // 2 - side_h // 2), height - side_h)
    amap = np.asarray(prediction.anomaly_map, dtype=np.float32)
    if amap.shape != (height, width):  # an untiled model's map: to the image's pixels first
        amap = cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)
    crop, crop_map = image_rgb[y0 : y0 + side_h, x0 : x0 + side_w], amap[y0 : y0 + side_h, x0 : x0 + side_w]
    return Zoom(
        heatmap=np.asarray(heatmap_overlay(crop, crop_map, opacity=opacity)),
        region=np.asarray(defect_contours(crop, crop_map, threshold=threshold, thickness=1)),
        box=Region(x0, y0, side_w, side_h, top.peak),
        top=top,
    )


def overlay_png(image_rgb: np.ndarray, prediction: Prediction, opacity: float) -> bytes:
    """The heatmap overlay at full resolution, as PNG bytes (the download)."""
    from core.inference.overlay import heatmap_overlay, to_png_bytes

    return to_png_bytes(heatmap_overlay(image_rgb, prediction.anomaly_map, opacity=opacity))


def record_inspection(
    history: History,
    *,
    file_name: str,
    sha256: str,
    image_rgb: np.ndarray,
    model: str,
    category: str,
    prediction: Prediction,
    threshold: float = CALIBRATED,
    defect_type: str | None = None,
    model_version: str | None = None,
    wrong_category: bool = False,
    request_key: str | None = None,
) -> int:
    """Store one inspection (and its thumbnail) in the history; returns its id.

    ``model_version`` is the registry version that judged it (``Detector.version``);
    ``wrong_category`` marks an image that does not look like the category (kept out of the gallery).
    The station this process inspects for (INSPECT_STATION) is recorded with it.
    """
    thumb = history.save_thumbnail(image_rgb, sha256)
    record = InspectionRecord(
        file_name=file_name,
        sha256=sha256,
        category=category,
        model=model,
        score=float(prediction.score),
        threshold=float(threshold),
        verdict=prediction.verdict(threshold),
        raw_score=float(prediction.raw_score),
        thumbnail_path=str(thumb) if thumb else None,
        defect_type=defect_type,
        model_version=model_version or None,
        wrong_category=wrong_category,
        station=station(),
        request_key=request_key,
    )
    return history.add(record)


def index_inspection(
    detector: Detector,
    image_rgb: np.ndarray,
    prediction: Prediction,
    *,
    sha256: str,
    inspection_id: int | None,
    history: History | None = None,
) -> tuple[str | None, str | None]:
    """Add an upload judged DEFECT to the similar-defect index; returns (point id, note).

    The stored picture is the history's thumbnail of the upload (the original bytes are not kept),
    so the gallery can show it later. An upload that is byte-identical to an image already indexed
    from the dataset keeps that point (its label and defect type are ground truth). When the store
    cannot take it now (another process holds it, it was emptied...) the upload is queued and
    indexed automatically later; the note says so. Inspection goes on either way.
    """
    if history is None or not inspection_id:
        return None, None
    from core.similarity import indexing

    try:
        thumb = history.save_thumbnail(image_rgb, sha256)
        outcome = indexing.index_upload(
            detector,
            image_rgb,
            prediction,
            sha256=sha256,
            inspection_id=inspection_id,
            file_name=str(thumb) if thumb else thumbnail_ref(sha256),
            history_db=str(history.path) if history.path else None,
        )
        if outcome.point_id is not None:
            history.set_point_id(inspection_id, outcome.point_id)
    except InspectError as exc:
        return None, f"Not added to the similar-defect index: {exc}"
    return outcome.point_id, outcome.note


def add_to_gallery(history: History, inspection_id: int, detector: Detector | None = None) -> tuple[str | None, str | None]:
    """Put an inspection kept out of the gallery as "wrong category" into it, once a person confirmed
    it is a part of its category; returns (point id, note) as :func:`index_inspection` does.

    Its descriptors come from its history thumbnail (the upload itself is not kept), judged by the
    newest version of its model (``detector``: the caller's loaded one, else it is loaded); the
    wrong-category mark is cleared.
    """
    from core.errors import ConfigError, StoreError

    record = history.get(inspection_id)
    if record is None:
        raise StoreError(f"there is no inspection {inspection_id}")
    if record.verdict != "DEFECT":
        raise ConfigError(f"inspection {inspection_id} was judged {record.verdict}: only DEFECT verdicts join the gallery")
    if record.point_id:
        return str(record.point_id), None
    jpeg = history.thumbnail(record)
    if jpeg is None:
        raise StoreError(f"inspection {inspection_id}'s thumbnail is gone: it cannot be added to the gallery")
    detector = detector or load_detector(record.model, record.category)
    image = load_image(jpeg, f"{record.sha256}.jpg")
    history.set_wrong_category(inspection_id, False)
    return index_inspection(
        detector, image, predict(detector, image), sha256=record.sha256, inspection_id=inspection_id, history=history
    )


def file_stem(name: str) -> str:
    """A file-system-safe stem of ``name`` (for download file names)."""
    stem = Path(name).stem or "image"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]


# --------------------------------------------------------------------------------------------
# The whole path for one or many images: what the page, the folder command and the API call
# --------------------------------------------------------------------------------------------


@dataclass
class Inspected:
    """One image through the whole path: decoded, judged, recorded, indexed (or why not)."""

    file_name: str
    sha256: str
    image: np.ndarray
    prediction: Prediction
    judgement: Judgement
    model_version: str
    defect_area: float  # share of the map at or above the threshold
    #: the map's regions at or above the threshold, boxed in the image's pixels (highest first)
    regions: list[Region] = field(default_factory=list)
    inspection_id: int | None = None
    point_id: str | None = None
    notes: list[str] = field(default_factory=list)  # why something was not recorded / indexed
    #: "This does not look like a <category> image ... Wrong category?" (core.learning.drift), or None
    wrong_category_note: str | None = None
    #: The client's Idempotency-Key (API): a retry with the same key is answered, not recorded again
    request_key: str | None = None

    @property
    def wrong_category(self) -> bool:
        """Judged not to look like the category at all: recorded and marked, never put in the gallery."""
        return self.wrong_category_note is not None


def defect_boxes(image_rgb: np.ndarray, prediction: Prediction, threshold: float = CALIBRATED) -> list[Region]:
    """The defect regions at ``threshold``, as boxes in the image's own pixels, highest first.

    A tiled model's map is already at the image's resolution (the camera's pixels); an untiled
    model's 256 px map is resized to the image first.
    """
    return defect_regions(prediction.anomaly_map, (image_rgb.shape[1], image_rgb.shape[0]), threshold)


def defect_area(prediction: Prediction, threshold: float = CALIBRATED) -> float:
    """Share of the (calibrated) anomaly map at or above ``threshold``: how much of the part is flagged."""
    return prediction.defect_area(threshold)


def inspect_images(
    detector: Detector,
    images: list[tuple[str, np.ndarray, str]],
    *,
    threshold: float = CALIBRATED,
    history: History | None = None,
    record: bool = True,
    defect_type: str | None = None,
    progress: TileProgress | None = None,
) -> list[Inspected]:
    """Judge ``(file name, decoded RGB image, sha256)`` items in ONE batch; record and index them.

    The model runs once for all of them (``predict_batch`` with patch features); each result is
    judged at ``threshold``, written to ``history`` when ``record`` (a damaged or missing history
    is a note, never a lost verdict), and a DEFECT is added to the similar-defect index from the
    same forward pass's features (queued when the store cannot take it now). ``progress(image
    index, tiles done, tiles)`` follows a tiled model through its tiles (the page's progress bar).
    """
    predictions = detector.predict_batch([image for _, image, _ in images], with_features=True, progress=progress)
    results = []
    meta = detector.meta
    for (name, image, sha), prediction in zip(images, predictions, strict=True):
        note = ood_note(prediction.raw_score, prediction.defect_area(), meta.calibration, meta.category)
        result = Inspected(
            file_name=name,
            sha256=sha,
            image=image,
            prediction=prediction,
            judgement=judge(prediction, detector, threshold),
            model_version=detector.version,
            defect_area=defect_area(prediction, threshold),
            regions=defect_boxes(image, prediction, threshold),
            wrong_category_note=note,
        )
        if record:
            _record_and_index(result, detector, history, threshold, defect_type)
        results.append(result)
    return results


def _record_and_index(
    result: Inspected, detector: Detector, history: History | None, threshold: float, defect_type: str | None
) -> None:
    if history is None:
        result.notes.append("not recorded: the inspection history is unavailable")
        return
    try:
        result.inspection_id = record_inspection(
            history,
            file_name=result.file_name,
            sha256=result.sha256,
            image_rgb=result.image,
            model=detector.meta.model,
            category=detector.meta.category,
            prediction=result.prediction,
            threshold=threshold,
            defect_type=defect_type,
            model_version=detector.version,
            wrong_category=result.wrong_category,
            request_key=result.request_key,
        )
    except DuplicateRequestError as exc:  # a client's retry: the key is unique in the history
        _answered_before(result, history.get(exc.inspection_id) if exc.inspection_id else None)
        return
    except InspectError as exc:
        result.notes.append(f"not recorded: {exc}")
        return
    if result.judgement.verdict == "DEFECT" and result.wrong_category:
        result.notes.append(
            f"Not added to the similar-defect gallery: it does not look like a {detector.meta.category} image. "
            "It is kept in the history; add it to the gallery from the History page if it is one."
        )
    elif result.judgement.verdict == "DEFECT":
        result.point_id, note = index_inspection(
            detector, result.image, result.prediction, sha256=result.sha256, inspection_id=result.inspection_id, history=history
        )
        if note:
            result.notes.append(note)


def _answered_before(result: Inspected, earlier: InspectionRecord | None) -> None:
    """Point ``result`` at the inspection already recorded for its Idempotency-Key."""
    if earlier is None:  # removed since: nothing to point at, and still not recorded twice
        result.notes.append("not recorded: an inspection with the same Idempotency-Key was recorded and is gone")
        return
    result.inspection_id, result.point_id = earlier.id, earlier.point_id
    result.notes.append(f"already recorded as inspection {earlier.id} (same Idempotency-Key): not recorded again")


def inspect_bytes(
    detector: Detector,
    data: bytes,
    file_name: str,
    *,
    threshold: float = CALIBRATED,
    history: History | None = None,
    record: bool = True,
) -> Inspected:
    """Decode ``data`` with the one loader and inspect it (:class:`~core.errors.ImageError` if unreadable)."""
    image = load_image(data, file_name)
    return inspect_images(detector, [(file_name, image, sha256_of(data))], threshold=threshold, history=history, record=record)[0]


def record_results(
    results: list[Inspected], detector: Detector, *, history: History | None, threshold: float = CALIBRATED
) -> None:
    """Record and index results of ``inspect_images(..., record=False)``.

    For a caller that runs the model under its own lock (the REST API runs one call per model at a
    time) and writes the history and the index after releasing it, so the next request's model
    call does not wait for SQLite or Qdrant.
    """
    for result in results:
        _record_and_index(result, detector, history, threshold, None)
