"""Inspection history in SQLite: every inspection, its verdict and the inspector's feedback.

One file (``get_settings().history_db``, env ``INSPECT_HISTORY_DB``) holds one table,
``inspections``. Thumbnails are small JPEG files named by the image's SHA-256 under
``<workspace>/thumbnails/`` (or, for a history at an explicit path, ``thumbnails/`` beside it).

Concurrency: Streamlit runs each session in its own thread, and two browser tabs (or a CLI run)
may write at the same time. So every method opens its own short-lived connection, the database is
in WAL mode (readers never block the writer) and each connection waits up to ``timeout`` seconds
for a lock instead of failing. Writes are single statements, so each is its own transaction.

Safety: a file at the path that is not an SQLite database (or is a damaged one) raises
:class:`StoreError` with a one-line explanation; it is never overwritten, repaired or deleted.
SQLite happily appends to a file whose middle pages are corrupt, so "damaged" is decided by
``PRAGMA quick_check`` when the file is opened (once per version of the file in a process, see
:func:`_damage`) and by any read that hits a corrupt page; from then on every write is refused.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.csv_safety import csv_text
from core.errors import StoreError
from core.files import write_atomically
from core.inference.verdict import VERDICTS
from core.settings import get_settings

#: Feedback an inspector can give; ``None`` means "not reviewed yet".
#: Feedback an inspector can give, with its label (in the order the buttons show); stored as the key.
FEEDBACK_LABELS: dict[str, str] = {"correct": "Correct", "false_alarm": "False alarm", "missed_defect": "Missed defect"}
FEEDBACK_VALUES: tuple[str, ...] = tuple(FEEDBACK_LABELS)
#: Pass as ``feedback=`` to :meth:`History.list` to get only inspections without feedback.
UNREVIEWED = "unreviewed"

SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"

# Column name -> SQL declaration, in table (and CSV) order. point_id has no declared type on
# purpose: Qdrant ids are unsigned integers or UUID strings and are stored exactly as given.
_COLUMNS: dict[str, str] = {
    "id": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "created_at": "TEXT NOT NULL",
    "file_name": "TEXT NOT NULL",
    "sha256": "TEXT NOT NULL",
    "category": "TEXT NOT NULL",
    "model": "TEXT NOT NULL",
    "score": "REAL NOT NULL",
    "threshold": "REAL NOT NULL",
    "verdict": "TEXT NOT NULL CHECK (verdict IN ('GOOD', 'DEFECT'))",
    "raw_score": "REAL",
    "thumbnail_path": "TEXT",
    "feedback": f"TEXT CHECK (feedback IS NULL OR feedback IN ({', '.join(repr(v) for v in FEEDBACK_VALUES)}))",
    "comment": "TEXT",
    "defect_type": "TEXT",
    "point_id": "",
    # The registry version ('v0003') of the model that judged it: feedback recalibrates and grows
    # models, and a score is only comparable with the calibration of the version that produced it.
    "model_version": "TEXT",
    # 1 when the model judged the image not to look like its category at all (the wrong-category
    # rule of core.learning.drift): kept in the history, kept out of the similar-defect gallery.
    "wrong_category": "INTEGER",
    # The line station that judged it (``core serve --station``, INSPECT_STATION); NULL on one PC.
    "station": "TEXT",
    # The client's Idempotency-Key (API): unique, so a retry after a timeout is not recorded twice.
    "request_key": "TEXT",
}
#: Columns of the CSV export: all but ``thumbnail_path``, an absolute path on the server, and the
#: clients' ``request_key`` (plumbing, not a fact about the part).
EXPORT_COLUMNS: tuple[str, ...] = tuple(c for c in _COLUMNS if c not in ("thumbnail_path", "request_key"))


class DuplicateRequestError(StoreError):
    """An inspection with this Idempotency-Key is already recorded (a client's retry): ``inspection_id``."""

    def __init__(self, inspection_id: int | None) -> None:
        super().__init__(f"already recorded as inspection {inspection_id} (same Idempotency-Key)")
        self.inspection_id = inspection_id


@dataclass
class InspectionRecord:
    """One inspection. ``id`` and ``created_at`` are filled in by :meth:`History.add`.

    ``score`` is the calibrated (normalised 0..1) image score, ``threshold`` the normalised
    threshold it was compared with (0.5 for calibrated models), ``raw_score`` the model's own score.
    """

    file_name: str
    sha256: str
    category: str
    model: str
    score: float
    threshold: float
    verdict: str
    raw_score: float | None = None
    thumbnail_path: str | None = None
    feedback: str | None = None
    comment: str | None = None
    defect_type: str | None = None
    point_id: int | str | None = None
    model_version: str | None = None
    wrong_category: bool | None = None
    station: str | None = None
    request_key: str | None = None
    id: int | None = None
    created_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain dict, keys in table order (for tables and JSON)."""
        data = asdict(self)
        return {name: data[name] for name in _COLUMNS}


def utc_now_iso() -> str:
    """Current time as ISO 8601 UTC with a ``+00:00`` offset, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class History:
    """The inspection history at ``path`` (default ``get_settings().history_db``)."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        thumbnails_dir: Path | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        settings = get_settings() if path is None or thumbnails_dir is None else None
        self.path = Path(path).expanduser() if path is not None else settings.history_db
        if thumbnails_dir is not None:
            self.thumbnails_dir = Path(thumbnails_dir).expanduser()
        elif path is None:
            self.thumbnails_dir = settings.workspace / "thumbnails"
        else:  # an explicit history keeps its thumbnails beside it
            self.thumbnails_dir = self.path.parent / "thumbnails"
        self.timeout = float(timeout)
        self._check_file()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the history database {self.path.parent}: {exc}") from None
        self._init_schema()

    # --- writing --------------------------------------------------------------------------

    def add(self, record: InspectionRecord) -> int:
        """Store ``record`` and return its new id (also set on ``record.id``)."""
        if record.verdict not in VERDICTS:
            msg = f"verdict must be one of {VERDICTS}, got {record.verdict!r}"
            raise ValueError(msg)
        _check_feedback(record.feedback)
        if record.created_at is None:
            record.created_at = utc_now_iso()
        values = record.to_dict()
        values.pop("id")
        for key in ("score", "threshold", "raw_score"):
            if values[key] is not None:
                values[key] = float(values[key])
        cols = ", ".join(values)
        marks = ", ".join(f":{c}" for c in values)
        self._refuse_if_damaged()
        with self._connect() as con:
            try:
                cur = con.execute(f"INSERT INTO inspections ({cols}) VALUES ({marks})", values)
            except sqlite3.IntegrityError:
                if record.request_key is None:
                    raise
                row = con.execute("SELECT id FROM inspections WHERE request_key = ?", (record.request_key,)).fetchone()
                raise DuplicateRequestError(int(row[0]) if row else None) from None
            record.id = int(cur.lastrowid)
        return record.id

    def set_feedback(self, inspection_id: int, feedback: str | None, comment: str | None = None) -> None:
        """Record the inspector's feedback (``None`` clears it) and comment on one inspection."""
        _check_feedback(feedback)
        self._refuse_if_damaged()
        with self._connect() as con:
            cur = con.execute(
                "UPDATE inspections SET feedback = ?, comment = ? WHERE id = ?",
                (feedback, comment, int(inspection_id)),
            )
            if cur.rowcount == 0:
                raise StoreError(f"there is no inspection with id {inspection_id} in {self.path}")

    def set_wrong_category(self, inspection_id: int, flagged: bool) -> None:
        """Clear (or set) the wrong-category mark: a person confirmed the image is of its category."""
        self._refuse_if_damaged()
        with self._connect() as con:
            cur = con.execute("UPDATE inspections SET wrong_category = ? WHERE id = ?", (int(flagged), int(inspection_id)))
            if cur.rowcount == 0:
                raise StoreError(f"there is no inspection with id {inspection_id} in {self.path}")

    def set_point_id(self, inspection_id: int, point_id: int | str | None) -> None:
        """Link an inspection to its point in the similarity store (set after the fact)."""
        self._refuse_if_damaged()
        with self._connect() as con:
            cur = con.execute("UPDATE inspections SET point_id = ? WHERE id = ?", (point_id, int(inspection_id)))
            if cur.rowcount == 0:
                raise StoreError(f"there is no inspection with id {inspection_id} in {self.path}")

    def save_thumbnail(self, image_rgb: Any, sha256: str, size: int = 256) -> Path:
        """Write a JPEG thumbnail named by ``sha256`` (idempotent) and return its path."""
        from core.inference.overlay import thumbnail  # light: no anomalib import on this path

        if not sha256 or not all(c in "0123456789abcdefABCDEF" for c in sha256):
            msg = f"sha256 must be a hex digest, got {sha256!r}"
            raise ValueError(msg)
        target = self.thumbnails_dir / f"{sha256.lower()}.jpg"
        if target.is_file():
            return target
        try:
            self.thumbnails_dir.mkdir(parents=True, exist_ok=True)
            src = image_rgb if hasattr(image_rgb, "mode") else np.asarray(image_rgb)
            thumb = thumbnail(src, size)
            # Written aside and renamed: two tabs saving the same image never leave a half-written
            # thumbnail behind.
            write_atomically(target, lambda fh: thumb.save(fh, format="JPEG", quality=90), private=True)
        except OSError as exc:
            raise StoreError(f"cannot write the thumbnail {target}: {exc}") from None
        return target

    # --- reading --------------------------------------------------------------------------

    def get(self, inspection_id: int) -> InspectionRecord | None:
        """One inspection by id, or ``None``."""
        with self._connect() as con:
            row = con.execute("SELECT * FROM inspections WHERE id = ?", (int(inspection_id),)).fetchone()
        return _record(row) if row is not None else None

    def list(
        self,
        category: str | None = None,
        model: str | None = None,
        verdict: str | None = None,
        feedback: str | None = None,
        limit: int | None = None,
        station: str | None = None,
    ) -> list[InspectionRecord]:
        """Inspections, newest first, filtered by any of the arguments (``None``: no filter).

        ``feedback`` is one of :data:`FEEDBACK_VALUES`, or :data:`UNREVIEWED` for inspections that
        have no feedback yet.
        """
        where, params = _where(category, model, verdict, feedback, station)
        sql = f"SELECT * FROM inspections{where} ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        return self._records(sql, params)

    def list_unindexed_defects(self, model: str | None = None, category: str | None = None) -> list[InspectionRecord]:
        """DEFECT inspections without a similarity-store point, oldest first, but those marked as
        not looking like their category (kept out of the gallery until a person lets them in).

        ``python -m core index`` catches up on these (uploads the store refused, rows whose link
        was never written); ``None`` means any model / category.
        """
        where, params = _where(category, model, "DEFECT", None)
        sql = f"SELECT * FROM inspections{where} AND point_id IS NULL AND COALESCE(wrong_category, 0) = 0 ORDER BY id"
        return self._records(sql, params)

    def _records(self, sql: str, params: list[Any]) -> list[InspectionRecord]:
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
        return [_record(r) for r in rows]

    def count(self, **filters: str | None) -> int:
        """Number of inspections matching the filters of :meth:`list` (all of them by default)."""
        where, params = _where(**filters)
        with self._connect() as con:
            row = con.execute(f"SELECT COUNT(*) FROM inspections{where}", params).fetchone()
        return int(row[0])

    def to_csv(self, path: Path | str | None = None, **filters: Any) -> str:
        """The history as CSV text (header + one row per inspection, newest first).

        ``filters`` are those of :meth:`list`. With ``path`` the CSV is also written there (UTF-8).

        The export is meant to be opened in a spreadsheet by someone else, so: text cells that a
        spreadsheet would run as a formula (a comment or file name starting with ``=``, ``+``,
        ``-``, ``@``...) are neutralised by :mod:`core.csv_safety`, numbers stay numbers, and the
        ``thumbnail_path`` column is left out, because it is an absolute path on the server (the
        thumbnail is named by ``sha256``, which the export keeps).
        """
        rows = (rec.to_dict() for rec in self.list(**filters))
        text = csv_text(EXPORT_COLUMNS, rows)
        if path is not None:
            try:
                Path(path).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise StoreError(f"cannot write the CSV file {path}: {exc}") from None
        return text

    # --- plumbing -------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Refuse, without touching it, anything at the path that is not an SQLite database."""
        p = self.path
        if p.is_dir():
            raise StoreError(f"the history database path {p} is a folder; set INSPECT_HISTORY_DB to a file path")
        if not p.exists():
            return
        try:
            with p.open("rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StoreError(f"cannot read the history database {p}: {exc}") from None
        if not head:
            return  # an empty file is an empty database: SQLite initialises it
        if head != _SQLITE_MAGIC:
            raise StoreError(
                f"{p} is not an SQLite database, so it cannot be the inspection history; it was "
                "left untouched: move it aside or set INSPECT_HISTORY_DB to another path"
            )
        # An SQLite header does not make a sound database: check it over a read-only connection
        # first, so a damaged file fails here before anything (even the schema set-up) writes.
        self._refuse_if_damaged()

    def _refuse_if_damaged(self) -> None:
        """Raise StoreError when the file is known (or now found) to be damaged."""
        damage = _damage(self.path, self.timeout)
        if damage is not None:
            raise StoreError(_damaged_message(self.path, damage))

    def _init_schema(self) -> None:
        cols = ",\n    ".join(f"{name} {decl}".rstrip() for name, decl in _COLUMNS.items())
        with self._connect(init=True) as con:
            existing = {row[1] for row in con.execute("PRAGMA table_info(inspections)")}
            if not existing:
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.execute(f"CREATE TABLE IF NOT EXISTS inspections (\n    {cols}\n)")
                    con.execute("CREATE INDEX IF NOT EXISTS ix_inspections_created ON inspections (created_at)")
                    con.execute("CREATE INDEX IF NOT EXISTS ix_inspections_cat_model ON inspections (category, model)")
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            else:
                # A history written by an older Inspect: add the columns it lacks (all nullable).
                for name in _COLUMNS:
                    if name not in existing:
                        decl = _COLUMNS[name].replace("NOT NULL", "")
                        sql = f"ALTER TABLE inspections ADD COLUMN {name} {decl}".rstrip()
                        with contextlib.suppress(sqlite3.OperationalError):  # another process won
                            con.execute(sql)
            con.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS ux_inspections_request_key ON inspections (request_key) "
                "WHERE request_key IS NOT NULL"
            )

    @contextlib.contextmanager
    def _connect(self, init: bool = False) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection, closed on exit; SQLite errors become StoreError."""
        con: sqlite3.Connection | None = None
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if init:
                # Persistent, and a no-op when already set. Where WAL is impossible (some network
                # file systems) SQLite keeps its rollback journal, which is slower but still safe.
                con.execute("PRAGMA journal_mode = WAL").fetchone()
            con.execute("PRAGMA synchronous = NORMAL")
            yield con
        except sqlite3.DatabaseError as exc:  # includes OperationalError ("locked", "malformed")
            text = str(exc)
            if _is_corruption(text):
                _remember_damage(self.path, text)  # a read found it: no write goes in after it
                raise StoreError(_damaged_message(self.path, text)) from None
            if "locked" in text or "busy" in text:
                raise StoreError(
                    f"the history database {self.path} stayed locked for {self.timeout:g} s by another process; try again"
                ) from None
            if _disk_full(text, self.path.parent):
                raise StoreError(f"the disk holding the history database {self.path} is full: nothing was recorded") from None
            raise StoreError(f"the history database {self.path} cannot be used: {text}") from None
        finally:
            if con is not None:
                con.close()


# --- helpers -----------------------------------------------------------------------------------


#: Below this much free space, SQLite's "disk I/O error" is a full disk (it says so only sometimes).
FULL_DISK_BYTES = 1 << 20


def _disk_full(text: str, folder: Path) -> bool:
    """Whether a SQLite error comes from a full disk: "database or disk is full", or an I/O error with no room left."""
    if "disk is full" in text:
        return True
    if "disk I/O error" not in text:
        return False
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def _is_corruption(text: str) -> bool:
    return any(word in text for word in ("not a database", "malformed", "corrupt"))


def _damaged_message(path: Path, detail: str) -> str:
    return (
        f"the history database {path} is damaged ({detail}); it was left untouched and nothing "
        "more is written to it: move it aside (or set INSPECT_HISTORY_DB to another path) to "
        "start a new history"
    )


# Verdicts of PRAGMA quick_check in this process, by version of the file: (path, inode, size,
# mtime_ns) -> None when sound, else what is wrong. quick_check reads the whole file, and the pages
# open the history on every rerun, so it runs once per version of the file, not once per rerun.
_HEALTH: dict[tuple[str, int, int, int], str | None] = {}
_HEALTH_LOCK = threading.Lock()
_HEALTH_MAX = 64  # a process opens one or two histories; the bound only stops unbounded growth


def _file_key(path: Path) -> tuple[str, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _remember(key: tuple[str, int, int, int], damage: str | None) -> None:
    with _HEALTH_LOCK:
        if len(_HEALTH) >= _HEALTH_MAX:
            _HEALTH.clear()
        _HEALTH[key] = damage


def _remember_damage(path: Path, detail: str) -> None:
    """Record that this version of the file is damaged (found by a read, not by quick_check)."""
    key = _file_key(path)
    if key is not None:
        _remember(key, detail)


def _damage(path: Path, timeout: float) -> str | None:
    """What is wrong with the SQLite file at ``path`` (None: sound, absent, empty or unknown)."""
    key = _file_key(path)
    if key is None or key[2] == 0:
        return None  # no file yet, or an empty one that SQLite will initialise
    with _HEALTH_LOCK:
        if key in _HEALTH:
            return _HEALTH[key]
    try:
        damage = _quick_check(path, timeout)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if not _is_corruption(text):
            return None  # e.g. locked or busy: not a verdict; the normal connection reports it
        damage = text
    _remember(key, damage)
    return damage


def _quick_check(path: Path, timeout: float) -> str | None:
    """Run ``PRAGMA quick_check`` over a read-only connection: None if sound, else its first line.

    quick_check visits every page of every table and index (it skips only the slower checks that
    index entries match their rows), which is what catches corrupt pages in the middle of a file
    that SQLite would otherwise keep appending to.
    """
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    try:
        con.execute("SELECT name, sql FROM sqlite_master").fetchall()
        rows = con.execute("PRAGMA quick_check").fetchall()
    finally:
        con.close()
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    if not problems:
        return None
    first = " ".join(problems[0].split())[:160]
    more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
    return f"integrity check: {first}{more}"


def _check_feedback(feedback: str | None) -> None:
    if feedback is not None and feedback not in FEEDBACK_VALUES:
        msg = f"feedback must be None or one of {FEEDBACK_VALUES}, got {feedback!r}"
        raise ValueError(msg)


def _where(
    category: str | None = None,
    model: str | None = None,
    verdict: str | None = None,
    feedback: str | None = None,
    station: str | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("category", category), ("model", model), ("verdict", verdict), ("station", station)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if feedback == UNREVIEWED:
        clauses.append("feedback IS NULL")
    elif feedback is not None:
        _check_feedback(feedback)
        clauses.append("feedback = ?")
        params.append(feedback)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


_FIELD_NAMES = {f.name for f in fields(InspectionRecord)}


def _record(row: sqlite3.Row) -> InspectionRecord:
    # sqlite3.Row iterates its values, not its keys: .keys() is needed here
    record = InspectionRecord(**{k: row[k] for k in row.keys() if k in _FIELD_NAMES})  # noqa: SIM118
    if record.wrong_category is not None:  # stored as 0/1
        record.wrong_category = bool(record.wrong_category)
    return record
