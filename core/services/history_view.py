"""What the History page shows: the history itself, its table rows, thumbnails and counts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from core.errors import InspectError
from core.history import FEEDBACK_LABELS, FEEDBACK_VALUES, THUMBNAIL_REF, UNREVIEWED, History, InspectionRecord, thumbnail_ref
from core.models import model_label

__all__ = [
    "FEEDBACK_LABELS",
    "FEEDBACK_VALUES",
    "UNREVIEWED",
    "Counts",
    "History",
    "counts",
    "file_mtime",
    "history_rows",
    "open_history",
    "thumbnail_data_uri",
]


def open_history() -> tuple[History | None, str | None]:
    """``(history, None)``, or ``(None, why)`` when it cannot be opened (damaged, locked...)."""
    try:
        return History(), None
    except InspectError as exc:
        return None, str(exc)


@dataclass(frozen=True)
class Counts:
    """The numbers above the history table."""

    inspections: int
    defects: int  # judged DEFECT
    reviewed: int  # with feedback
    false_alarms: int


def counts(records: list[InspectionRecord]) -> Counts:
    """How many inspections, DEFECT verdicts, reviewed ones and false alarms ``records`` hold."""
    return Counts(
        inspections=len(records),
        defects=sum(r.verdict == "DEFECT" for r in records),
        reviewed=sum(r.feedback is not None for r in records),
        false_alarms=sum(r.feedback == "false_alarm" for r in records),
    )


def history_rows(records: list[InspectionRecord]) -> list[dict[str, Any]]:
    """Table rows for the history page (newest first, as given)."""
    rows = []
    for rec in records:
        rows.append(
            {
                "id": rec.id,
                "time (UTC)": (rec.created_at or "")[:19].replace("T", " "),
                "file": rec.file_name,
                "category": rec.category,
                "model": model_label(rec.model),
                "verdict": rec.verdict,
                "score": rec.score,
                "threshold": rec.threshold,
                "raw score": rec.raw_score,
                "feedback": FEEDBACK_LABELS.get(rec.feedback or "", "—"),
                "comment": rec.comment or "",
                "station": rec.station or "",
                "thumbnail_path": rec.thumbnail_path or thumbnail_ref(rec.sha256),
            }
        )
    return rows


@dataclass(frozen=True)
class StationModel:
    """What one line station last judged with: per (model, category), the version and when."""

    station: str
    model: str
    category: str
    version: str | None
    last_inspection: str | None
    inspections: int


def stations(records: list[InspectionRecord]) -> list[StationModel]:
    """Per station and (model, category): the model version of its newest inspection, from the
    history every station writes (a station reloads a new version when it restarts or reloads)."""
    newest: dict[tuple[str, str, str], InspectionRecord] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for rec in records:
        if not rec.station:
            continue
        key = (rec.station, rec.model, rec.category)
        seen[key] = seen.get(key, 0) + 1
        if key not in newest or (rec.created_at or "", rec.id or 0) > (newest[key].created_at or "", newest[key].id or 0):
            newest[key] = rec
    return [StationModel(s, m, c, r.model_version, r.created_at, seen[(s, m, c)]) for (s, m, c), r in sorted(newest.items())]


@dataclass(frozen=True)
class StationLoaded:
    """A station's heartbeat as the dashboard shows it: alive or silent, and what it has loaded."""

    station: str
    host: str
    loaded: list[str]  # model/category@version
    last_seen: str
    silent_s: float
    alive: bool


def heartbeats() -> tuple[list[StationLoaded], str | None]:
    """Every station's last heartbeat, and why they cannot be read (None: they can)."""
    from core.stations import list_stations

    try:
        statuses = list_stations()
    except InspectError as exc:
        return [], str(exc)
    return [StationLoaded(s.name, s.host, s.loaded, s.last_seen, s.silent_for_s(), s.alive) for s in statuses], None


def file_mtime(path: str | None) -> float:
    """A file's modification time, 0.0 when there is no such file (part of a thumbnail's cache key)."""
    return os.path.getmtime(path) if path and os.path.isfile(path) else 0.0


def thumbnail_data_uri(path: str | None, size: int = 96) -> str | None:
    """A small JPEG data URI of a thumbnail file or row (for a table's image column), or None."""
    import base64
    import io

    from PIL import Image

    if path and path.startswith(THUMBNAIL_REF):  # a row of the server history
        try:
            jpeg = History().thumbnail(path)
        except InspectError:
            jpeg = None
        source: Any = io.BytesIO(jpeg) if jpeg else None
    else:
        source = path if path and os.path.isfile(path) else None
    if source is None:
        return None
    try:
        with Image.open(source) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
