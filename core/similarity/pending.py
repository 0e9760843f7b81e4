"""Uploads judged DEFECT that could not be added to the similar-defect index yet.

When the store cannot take an upload (held by another process, a server down, a collection the
manifest flags), it is kept here, ``get_settings().similarity_queue/insp-<inspection id>.*``, and
added at the next store use in the app or by ``python -m core index``:

* ``.png``: the decoded upload, lossless (the history keeps only a JPEG thumbnail, whose
  descriptors differ); an index run after a retrain recomputes the descriptors from it;
* ``.npz``: the descriptors computed at upload time, so the app adds the point without a model;
* ``.json``: model, category, hash, score, history; written last, so no half entry is listed.

Adding an entry twice writes the same point twice (its id derives from the hash), nothing more.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.errors import StoreError
from core.files import write_atomically
from core.settings import get_settings

_PREFIX = "insp-"


@dataclass(frozen=True)
class PendingUpload:
    """One queued upload; ``file_name`` is what the point's ``image_path`` will be (the thumbnail)."""

    inspection_id: int
    model: str
    category: str
    sha256: str
    file_name: str
    score: float | None
    history_db: str | None
    reason: str
    queued_at: str

    def path(self, suffix: str) -> Path:
        """The entry's ``.png``, ``.npz`` or ``.json`` file."""
        return get_settings().similarity_queue / f"{_PREFIX}{self.inspection_id}{suffix}"


def queue_upload(
    image_rgb: np.ndarray,
    vectors: Mapping[str, np.ndarray],
    *,
    model: str,
    category: str,
    sha256: str,
    inspection_id: int,
    file_name: str,
    score: float | None,
    history_db: str | None,
    reason: str,
) -> PendingUpload:
    """Keep an upload for later indexing; raises :class:`StoreError` when it cannot be written."""
    from PIL import Image

    score = None if score is None else float(score)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    item = PendingUpload(int(inspection_id), model, category, sha256.lower(), str(file_name), score, history_db, reason, now)
    pixels = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8))
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
    try:
        get_settings().similarity_queue.mkdir(parents=True, exist_ok=True)
        write_atomically(item.path(".png"), lambda h: Image.fromarray(pixels).save(h, format="PNG"), private=True)
        write_atomically(item.path(".npz"), lambda h: np.savez(h, **arrays), private=True)
        write_atomically(item.path(".json"), json.dumps(asdict(item)).encode(), private=True)
    except OSError as exc:
        raise StoreError(f"cannot keep the upload for later indexing in {get_settings().similarity_queue}: {exc}") from None
    return item


def pending_uploads(model: str | None = None, category: str | None = None) -> list[PendingUpload]:
    """Queued uploads, oldest inspection first; unreadable entries are skipped (and kept)."""
    items = []
    for path in get_settings().similarity_queue.glob(f"{_PREFIX}*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            items.append(PendingUpload(**json.loads(path.read_text(encoding="utf-8"))))
    return sorted(
        (i for i in items if model in (None, i.model) and category in (None, i.category)), key=lambda i: i.inspection_id
    )


def has_pending() -> bool:
    """Cheap (one directory listing): asked before every drain."""
    return any(get_settings().similarity_queue.glob(f"{_PREFIX}*.json"))


def load_vectors(item: PendingUpload) -> dict[str, np.ndarray] | None:
    try:
        with np.load(item.path(".npz")) as data:
            return {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError):
        return None


def load_pixels(item: PendingUpload) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(item.path(".png")) as img:
            return np.asarray(img.convert("RGB"))
    except OSError:
        return None


def remove(item: PendingUpload) -> None:
    """Forget an entry once its point is stored (the json first: no half entry is ever listed)."""
    for suffix in (".json", ".npz", ".png"):
        item.path(suffix).unlink(missing_ok=True)
