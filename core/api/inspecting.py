"""Uploads through the inspection service the API's way: checked, decoded, judged in one batch, recorded.

The work itself is :mod:`core.services.inspection` (the same path as the dashboard and the folder
command); this module adds what a server needs around it: the request's values checked with a
message per problem, uploads read with a size limit, the model run (the detector serialises its
own calls) before the history and the index are written, and
a history that cannot be opened turned into a note beside the verdict instead of an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, BinaryIO

from core.api.detectors import DetectorCache
from core.api.errors import BadValueError, NotFoundError, TooLargeError, too_large_message
from core.data.layout import validate_category_name
from core.errors import ModelNotTrainedError, ModelUnreadableError
from core.models import MODEL_NAMES
from core.services import catalog, history_view, inspection
from core.settings import max_upload_bytes

if TYPE_CHECKING:
    import numpy as np

    from core.inference.detector import Detector
    from core.services.inspection import Inspected

DEFAULT_NAME = "upload"


@dataclass(frozen=True)
class Upload:
    """One uploaded file: a safe display name and its bytes."""

    name: str
    data: bytes


def check_threshold(value: float | None) -> float:
    """The normalised threshold to judge at: the calibrated 0.5 when none is given."""
    if value is None:
        return inspection.CALIBRATED
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadValueError(f"threshold must be between 0 and 1 (normalised; 0.5 = calibrated), not {value:g}")
    return float(value)


def file_name(name: str | None) -> str:
    """The base name a client sent (no folders, at most 200 characters), or 'upload'."""
    base = PurePath((name or "").replace("\\", "/")).name.strip()
    return base[:200] or DEFAULT_NAME


def read_upload(name: str | None, stream: BinaryIO) -> Upload:
    """Read at most the upload limit (one byte more tells that the file is larger)."""
    limit = max_upload_bytes()
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"{file_name(name)}: {too_large_message()}")
    return Upload(file_name(name), data)


def _check_model(model: str, category: str) -> None:
    if model not in MODEL_NAMES:
        raise NotFoundError(f"unknown model {model!r}: use {' or '.join(MODEL_NAMES)}")
    validate_category_name(category)


def detector_for(cache: DetectorCache, model: str, category: str) -> Detector:
    """The loaded model of (model, category); an unknown pair is a :class:`NotFoundError` saying which part."""
    _check_model(model, category)
    try:
        return cache.get(model, category)
    except ModelUnreadableError:
        raise
    except ModelNotTrainedError:
        if category not in catalog.available_categories():  # scanned only on this failure path
            raise NotFoundError(
                f"unknown category {category!r}: known are {', '.join(catalog.available_categories()) or 'none yet'}"
            ) from None
        raise


def decode(upload: Upload) -> tuple[str, np.ndarray, str]:
    """(name, RGB image, sha256) by the one loader: ImageError / BusyError name the problem."""
    image = inspection.load_image(upload.data, upload.name)
    return upload.name, image, inspection.sha256_of(upload.data)


def inspect_decoded(
    detector: Detector,
    images: list[tuple[str, np.ndarray, str]],
    *,
    threshold: float,
    record: bool = True,
    request_keys: list[str | None] | None = None,
) -> list[Inspected]:
    """One forward pass for all ``images``, then the history and index writes.

    ``request_keys``: per image, the client's Idempotency-Key; an image already recorded under its
    key is answered with that inspection and not recorded again (a retry after a timeout).
    """
    results = inspection.inspect_images(detector, images, threshold=threshold, record=False)
    for result, key in zip(results, request_keys or [], strict=False):
        result.request_key = key
    if not record:
        return results
    history, why = history_view.open_history()
    if history is None:
        for result in results:
            result.notes.append(f"not recorded: the inspection history cannot be opened: {why}")
        return results
    inspection.record_results(results, detector, history=history, threshold=threshold)
    return results
