"""Inspection history: every inspection, its verdict and the inspector's feedback.

One table, ``inspections`` (:mod:`core.db.schema`), in the database that
``get_settings().database_url`` names: the SQLite file ``history.sqlite`` in the workspace on one
PC (``INSPECT_HISTORY_DB`` moves it), or a PostgreSQL server shared by a plant's line stations and
dashboard (``INSPECT_DATABASE_URL``). One data layer (SQLAlchemy Core) serves both; the schema is
brought to this Inspect's version when the history is opened (:mod:`core.db.migrate`).

Thumbnails: beside an SQLite history they are small JPEG files named by the image's SHA-256 under
``<workspace>/thumbnails/`` (or ``thumbnails/`` beside a history at an explicit path); with a
server they are rows of the ``thumbnails`` table, so a line PC needs no shared disk.
:meth:`History.thumbnail` reads either.

Concurrency: Streamlit runs each session in its own thread, and two browser tabs, a CLI run or
several stations may write at the same time. Writes are single statements, each its own
transaction. SQLite is in WAL mode (readers never block the writer) and a connection waits up to
``timeout`` seconds for a lock; PostgreSQL needs neither.

Safety (SQLite): a file at the path that is not an SQLite database (or is a damaged one) raises
:class:`StoreError` with a one-line explanation; it is never overwritten, repaired or deleted.
SQLite happily appends to a file whose middle pages are corrupt, so "damaged" is decided by
``PRAGMA quick_check`` when the file is opened (once per version of the file in a process, see
:func:`_damage`) and by any read that hits a corrupt page; from then on every write is refused.
A server that cannot be reached is a StoreError too: the inspection goes on and says it was not
recorded.
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
from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError

from core.csv_safety import csv_text
from core.db import engine as db
from core.db import migrate
from core.db.schema import FEEDBACK_VALUES, inspections, thumbnails
from core.errors import StoreError
from core.files import write_atomically
from core.inference.verdict import VERDICTS
from core.settings import get_settings

#: Feedback an inspector can give, with its label (in the order the buttons show); stored as the key.
FEEDBACK_LABELS: dict[str, str] = dict(zip(FEEDBACK_VALUES, ("Correct", "False alarm", "Missed defect"), strict=True))
#: The ``image_path`` of a similar-defect case whose picture is a thumbnail row of a server
#: history (no file on any disk): this prefix and the image's SHA-256.
THUMBNAIL_REF = "history-thumbnail:"
#: Pass as ``feedback=`` to :meth:`History.list` to get only inspections without feedback.
UNREVIEWED = "unreviewed"

_SQLITE_MAGIC = b"SQLite format 3\x00"

#: The table's columns, in table (and CSV) order.
_COLUMNS: tuple[str, ...] = tuple(c.name for c in inspections.columns)
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


def thumbnail_ref(sha256: str) -> str:
    """The ``image_path`` that names a history thumbnail row (see :meth:`History.thumbnail`)."""
    return THUMBNAIL_REF + sha256.lower()


def utc_now_iso() -> str:
    """Current time as ISO 8601 UTC with a ``+00:00`` offset, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class History:
    """The inspection history: the SQLite file at ``path`` (or the database whose URL it is), the
    database at ``url``, or (neither given) the one the settings name."""

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        url: str | None = None,
        thumbnails_dir: Path | str | None = None,
        timeout: float = 30.0,
    ) -> None:
        settings = get_settings()
        if isinstance(path, str) and "://" in path:
            path, url = None, path
        if path is not None:
            url = db.sqlite_url(path)
        self.url: URL = db.parse(url if url is not None else settings.database_url)
        self.server = db.is_server(self.url)
        self.timeout = float(timeout)
        #: The SQLite file (None for a server).
        self.path: Path | None = None if self.server else Path(self.url.database).expanduser()
        if thumbnails_dir is not None:
            self.thumbnails_dir = Path(thumbnails_dir).expanduser()
        elif path is None and url is None:
            self.thumbnails_dir = settings.workspace / "thumbnails"
        else:  # an explicit history keeps its thumbnails beside it
            self.thumbnails_dir = (self.path.parent if self.path else settings.workspace) / "thumbnails"
        self.engine = db.engine_for(self.url, self.timeout)
        if self.path is not None:
            self._check_file()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the folder for the history database {self.path.parent}: {exc}") from None
        self._init_schema()

    def problem(self) -> str | None:
        """Why the history cannot be used right now (one round trip to its database), or None."""
        try:
            with self._db() as con:
                con.execute(select(1))
        except StoreError as exc:
            return str(exc)
        return None

    @property
    def where(self) -> str:
        """The history as a person may be told it: the file, or the server URL without password."""
        return str(self.path) if self.path is not None else db.shown(self.url)

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
        if values["wrong_category"] is not None:
            values["wrong_category"] = int(bool(values["wrong_category"]))
        self._refuse_if_damaged()
        try:
            with self._db(write=True) as con:
                new_id = con.execute(inspections.insert().values(**values).returning(inspections.c.id)).scalar_one()
        except _Duplicate:
            if record.request_key is None:
                raise StoreError(f"the history database {self.where} refused the inspection (a constraint)") from None
            with self._db() as con:
                found = con.execute(select(inspections.c.id).where(inspections.c.request_key == record.request_key)).scalar()
            raise DuplicateRequestError(int(found) if found is not None else None) from None
        record.id = int(new_id)
        return record.id

    def set_feedback(self, inspection_id: int, feedback: str | None, comment: str | None = None) -> None:
        """Record the inspector's feedback (``None`` clears it) and comment on one inspection."""
        _check_feedback(feedback)
        self._update(inspection_id, feedback=feedback, comment=comment)

    def set_wrong_category(self, inspection_id: int, flagged: bool) -> None:
        """Clear (or set) the wrong-category mark: a person confirmed the image is of its category."""
        self._update(inspection_id, wrong_category=int(flagged))

    def set_point_id(self, inspection_id: int, point_id: int | str | None) -> None:
        """Link an inspection to its point in the similarity store (set after the fact)."""
        self._update(inspection_id, point_id=point_id)

    def _update(self, inspection_id: int, **values: Any) -> None:
        self._refuse_if_damaged()
        with self._db(write=True) as con:
            done = con.execute(update(inspections).where(inspections.c.id == int(inspection_id)).values(**values))
            if done.rowcount == 0:
                raise StoreError(f"there is no inspection with id {inspection_id} in {self.where}")

    def save_thumbnail(self, image_rgb: Any, sha256: str, size: int = 256) -> Path | None:
        """Keep a JPEG thumbnail named by ``sha256`` (idempotent): a file beside an SQLite history,
        whose path is returned, or a row of a server database (None: it has no path)."""
        from core.inference.overlay import thumbnail  # light: no anomalib import on this path

        if not sha256 or not all(c in "0123456789abcdefABCDEF" for c in sha256):
            msg = f"sha256 must be a hex digest, got {sha256!r}"
            raise ValueError(msg)
        sha256 = sha256.lower()
        src = image_rgb if hasattr(image_rgb, "mode") else np.asarray(image_rgb)
        if self.server:
            with self._db() as con:
                if con.execute(select(thumbnails.c.sha256).where(thumbnails.c.sha256 == sha256)).first():
                    return None
            jpeg = _jpeg(thumbnail(src, size))
            with self._db(write=True) as con:  # two stations saving the same image: the first wins
                con.execute(
                    postgresql.insert(thumbnails)
                    .values(sha256=sha256, jpeg=jpeg, created_at=utc_now_iso())
                    .on_conflict_do_nothing(index_elements=["sha256"])
                )
            return None
        target = self.thumbnails_dir / f"{sha256}.jpg"
        if target.is_file():
            return target
        try:
            self.thumbnails_dir.mkdir(parents=True, exist_ok=True)
            thumb = thumbnail(src, size)
            # Written aside and renamed: two tabs saving the same image never leave a half-written
            # thumbnail behind.
            write_atomically(target, lambda fh: thumb.save(fh, format="JPEG", quality=90), private=True)
        except OSError as exc:
            raise StoreError(f"cannot write the thumbnail {target}: {exc}") from None
        return target

    # --- reading --------------------------------------------------------------------------

    def thumbnail(self, record: InspectionRecord | str) -> bytes | None:
        """The JPEG thumbnail of an inspection (or of a SHA-256), from its file or its row; None if gone."""
        path = record.thumbnail_path if isinstance(record, InspectionRecord) else None
        if isinstance(record, str) and record.startswith(THUMBNAIL_REF):
            record = record[len(THUMBNAIL_REF) :]
        if path:
            with contextlib.suppress(OSError):
                return Path(path).read_bytes()
        sha256 = (record.sha256 if isinstance(record, InspectionRecord) else record or "").lower()
        with self._db() as con:
            return con.execute(select(thumbnails.c.jpeg).where(thumbnails.c.sha256 == sha256)).scalar()

    def with_thumbnail(self, records: list[InspectionRecord]) -> set[int]:
        """Ids of ``records`` whose thumbnail is still there: a file check each, one query for the rows."""
        found = {r.id for r in records if r.thumbnail_path and Path(r.thumbnail_path).is_file()}
        wanted = {r.sha256.lower() for r in records if r.id not in found}
        if wanted:
            with self._db() as con:
                rows = set(con.execute(select(thumbnails.c.sha256).where(thumbnails.c.sha256.in_(wanted))).scalars())
            found |= {r.id for r in records if r.sha256.lower() in rows}
        return found

    def get(self, inspection_id: int) -> InspectionRecord | None:
        """One inspection by id, or ``None``."""
        with self._db() as con:
            row = con.execute(select(inspections).where(inspections.c.id == int(inspection_id))).first()
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
        query = select(inspections).where(*_where(category, model, verdict, feedback, station))
        query = query.order_by(inspections.c.created_at.desc(), inspections.c.id.desc())
        if limit is not None:
            query = query.limit(max(0, int(limit)))
        return self._records(query)

    def list_unindexed_defects(self, model: str | None = None, category: str | None = None) -> list[InspectionRecord]:
        """DEFECT inspections without a similarity-store point, oldest first, but those marked as
        not looking like their category (kept out of the gallery until a person lets them in).

        ``python -m core index`` catches up on these (uploads the store refused, rows whose link
        was never written); ``None`` means any model / category.
        """
        c = inspections.c
        query = select(inspections).where(
            *_where(category, model, "DEFECT"), c.point_id.is_(None), func.coalesce(c.wrong_category, 0) == 0
        )
        return self._records(query.order_by(c.id))

    def _records(self, query: Any) -> list[InspectionRecord]:
        with self._db() as con:
            rows = con.execute(query).all()
        return [_record(r) for r in rows]

    def count(self, **filters: str | None) -> int:
        """Number of inspections matching the filters of :meth:`list` (all of them by default)."""
        with self._db() as con:
            return int(con.execute(select(func.count()).select_from(inspections).where(*_where(**filters))).scalar_one())

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
        """Raise StoreError when the SQLite file is known (or now found) to be damaged."""
        if self.path is None:
            return
        damage = _damage(self.path, self.timeout)
        if damage is not None:
            raise StoreError(_damaged_message(self.path, damage))

    def _init_schema(self) -> None:
        if self.path is not None:
            # Persistent, and a no-op when already set. Where WAL is impossible (some network file
            # systems) SQLite keeps its rollback journal, which is slower but still safe.
            with self._db() as con:
                con.exec_driver_sql("PRAGMA journal_mode = WAL").fetchone()
        try:
            migrate.ensure(self.engine)
        except StoreError as exc:
            raise StoreError(str(exc).replace("the database", "the history database", 1)) from None

    @contextlib.contextmanager
    def _db(self, write: bool = False) -> Iterator[Connection]:
        """A connection (in a transaction committed on exit when ``write``); errors become StoreError."""
        try:
            with self.engine.begin() if write else self.engine.connect() as con:
                yield con
        except IntegrityError as exc:
            raise _Duplicate(db.reason(exc)) from None
        except DBAPIError as exc:
            raise StoreError(self._explain(exc)) from None

    def _explain(self, exc: DBAPIError) -> str:
        text = db.reason(exc)
        if self.path is None:
            if exc.connection_invalidated or isinstance(exc.orig, OSError) or "connect" in text or "closed" in text:
                return f"the history database {self.where} cannot be reached: {text}"
            return f"the history database {self.where} cannot be used: {text}"
        if _is_corruption(text):
            _remember_damage(self.path, text)  # a read found it: no write goes in after it
            return _damaged_message(self.path, text)
        if "locked" in text or "busy" in text:
            return f"the history database {self.path} stayed locked for {self.timeout:g} s by another process; try again"
        if _disk_full(text, self.path.parent):
            return f"the disk holding the history database {self.path} is full: nothing was recorded"
        return f"the history database {self.path} cannot be used: {text}"


class _Duplicate(StoreError):
    """A write broke a constraint (the unique request key): :meth:`History.add` says which row."""


def _jpeg(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


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
) -> list[Any]:
    c = inspections.c
    clauses: list[Any] = [
        column == value
        for column, value in ((c.category, category), (c.model, model), (c.verdict, verdict), (c.station, station))
        if value is not None
    ]
    if feedback == UNREVIEWED:
        clauses.append(c.feedback.is_(None))
    elif feedback is not None:
        _check_feedback(feedback)
        clauses.append(c.feedback == feedback)
    return clauses


_FIELD_NAMES = {f.name for f in fields(InspectionRecord)}


def _record(row: Any) -> InspectionRecord:
    record = InspectionRecord(**{k: v for k, v in row._mapping.items() if k in _FIELD_NAMES})  # noqa: SLF001 - public in SQLAlchemy
    if record.wrong_category is not None:  # stored as 0/1
        record.wrong_category = bool(record.wrong_category)
    return record
