"""Uploads judged DEFECT that could not be added to the similar-defect index yet.

When the store is unavailable (an embedded store held by another process such as an index run, a
server that is down, a store flagged as emptied by the manifest), the upload is kept here and
added later: at the next successful store use in the app, and by ``python -m core index``.

What is kept, per inspection id (``get_settings().similarity_queue/insp-<id>.*``):

* ``.png``: the decoded upload, lossless. The history keeps only a 256 px JPEG thumbnail, whose
  descriptors differ from the original's; an index run after a retrain recomputes from this.
* ``.npz``: the descriptors computed at upload time with the model that judged it, so the app can
  add the point later without running a model (same vectors as an immediate add).
* ``.json``: model, category, sha256, score, the history it belongs to; written last and
  atomically, so a half-written entry is never picked up.

Entries are idempotent (the point id derives from the sha256): a drain that runs twice, or in two
processes against a server, writes the same point twice and nothing more.
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

    @property
    def stem(self) -> Path:
        return queue_dir() / f"{_PREFIX}{self.inspection_id}"

    @property
    def png(self) -> Path:
        return self.stem.with_suffix(".png")

    @property
    def npz(self) -> Path:
        return self.stem.with_suffix(".npz")

    @property
    def json(self) -> Path:
        return self.stem.with_suffix(".json")


def queue_dir() -> Path:
    return get_settings().similarity_queue


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

    item = PendingUpload(
        inspection_id=int(inspection_id),
        model=model,
        category=category,
        sha256=sha256.lower(),
        file_name=str(file_name),
        score=None if score is None else float(score),
        history_db=history_db,
        reason=reason,
        queued_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    try:
        item.stem.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.ascontiguousarray(np.asarray(image_rgb, dtype=np.uint8))
        write_atomically(item.png, lambda h: Image.fromarray(pixels).save(h, format="PNG"), private=True)
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
        write_atomically(item.npz, lambda h: np.savez(h, **arrays), private=True)
        write_atomically(item.json, json.dumps(asdict(item)).encode(), private=True)
    except OSError as exc:
        raise StoreError(f"cannot keep the upload for later indexing in {queue_dir()}: {exc}") from None
    return item


def pending_uploads(model: str | None = None, category: str | None = None) -> list[PendingUpload]:
    """Queued uploads, oldest inspection first; unreadable entries are skipped (and kept)."""
    folder = queue_dir()
    if not folder.is_dir():
        return []
    items = []
    for path in folder.glob(f"{_PREFIX}*.json"):
        try:
            item = PendingUpload(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if (model is None or item.model == model) and (category is None or item.category == category):
            items.append(item)
    return sorted(items, key=lambda i: i.inspection_id)


def has_pending() -> bool:
    """Cheap test (one directory listing) used before every drain."""
    folder = queue_dir()
    return folder.is_dir() and any(folder.glob(f"{_PREFIX}*.json"))


def load_vectors(item: PendingUpload) -> dict[str, np.ndarray] | None:
    try:
        with np.load(item.npz) as data:
            return {k: np.asarray(data[k], dtype=np.float32) for k in data.files}
    except (OSError, ValueError):
        return None


def load_pixels(item: PendingUpload) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(item.png) as img:
            return np.asarray(img.convert("RGB"))
    except OSError:
        return None


def remove(item: PendingUpload) -> None:
    """Forget an entry once its point is stored (the json first: no half entry is ever listed)."""
    for path in (item.json, item.npz, item.png):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
