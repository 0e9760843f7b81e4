"""Schema versions (Alembic), applied when a store is opened and by ``python -m core db upgrade``.

Opening a store brings its schema to this Inspect's head, so a one-PC user never runs a command
and an existing history is upgraded in place (columns added, nothing rewritten). Several stations
starting at once against one PostgreSQL take an advisory lock, so one of them migrates and the
others find the work done; SQLite stations on one machine take a file lock beside the database.
A database at a revision this Inspect does not know (written by a newer one) is refused, never
downgraded.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from core.db.engine import reason, shown
from core.errors import StoreError

#: The newest schema revision this Inspect writes (the last file in migrations/versions).
HEAD = "0003"
_KNOWN = ("0001", "0002", "0003")
_SCRIPTS = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number: the advisory lock that serialises migrations on one PostgreSQL.
_PG_LOCK = 0x1A5EC7

_DONE: set[str] = set()  # engines (by URL) found at HEAD in this process: no further look-ups
_DONE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did: the revision found (None: no schema yet, or one older than versions)."""

    database: str
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def current(con: Connection) -> str | None:
    """The schema revision of the database behind ``con`` (None when it has none)."""
    if "alembic_version" not in inspect(con).get_table_names():
        return None
    row = con.execute(text("SELECT version_num FROM alembic_version")).first()
    return row[0] if row else None


def ensure(engine: Engine) -> Upgrade | None:
    """Bring ``engine``'s schema to HEAD; None when it was there already.

    A server is looked at once per process. An SQLite file is looked at on every open (one cheap
    read), because a history moved aside is replaced by a new, empty file at the same path.
    """
    key = engine.url.render_as_string(hide_password=False)
    server = engine.dialect.name != "sqlite"
    with _DONE_LOCK:
        if server and key in _DONE:
            return None
    _make_folder(engine)
    try:
        with engine.connect() as con:
            found = current(con)
    except DBAPIError as exc:
        raise StoreError(f"cannot open the database {shown(engine.url)}: {reason(exc)}") from None
    done = None if found == HEAD else upgrade(engine)
    if server:
        with _DONE_LOCK:
            _DONE.add(key)
    return done


def upgrade(engine: Engine) -> Upgrade:
    """Apply every migration ``engine``'s database lacks, under a lock; StoreError on failure."""
    where = shown(engine.url)
    _make_folder(engine)
    try:
        with _serialised(engine), engine.begin() as con:
            if con.dialect.name == "postgresql":
                con.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            before = current(con)
            if before is not None and before not in _KNOWN:
                raise StoreError(
                    f"the database {where} has schema revision {before}, newer than this Inspect knows "
                    f"({HEAD}): upgrade Inspect on this machine"
                )
            if before != HEAD:
                _alembic_upgrade(con)
    except DBAPIError as exc:
        raise StoreError(f"cannot prepare the database {where}: {reason(exc)}") from None
    return Upgrade(where, before, HEAD)


def _make_folder(engine: Engine) -> None:
    """An SQLite database's folder, made when missing (SQLite makes the file, not its folder)."""
    if engine.dialect.name == "sqlite":
        try:
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the database {shown(engine.url)}: {exc}") from None


def _alembic_upgrade(con: Connection) -> None:
    from alembic import command  # imported only when there is something to do (it takes ~0.2 s)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = con
    command.upgrade(cfg, "head")


@contextlib.contextmanager
def _serialised(engine: Engine) -> Iterator[None]:
    """An exclusive file lock beside an SQLite database (PostgreSQL locks inside the transaction)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: one process per history there
        yield
        return
    lock = Path(database).with_name(Path(database).name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # a read-only folder: nothing can be migrated there anyway; let SQLite say why
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
