"""How the relational store is reached: one SQLAlchemy engine per URL and process.

SQLite opens a fresh connection per use (``NullPool``), as the history always did: a file that is
moved aside or replaced is seen at the next call, and no connection outlives a thread. PostgreSQL
keeps a small pool with a liveness ping before each use, so a server that restarts is reconnected
to without restarting the station. Errors become one-line :class:`StoreError` messages that name
the database (its password hidden).
"""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from core.errors import ConfigError, StoreError

#: How long a station waits for a PostgreSQL server to answer a new connection.
CONNECT_TIMEOUT_S = 5

_ENGINES: dict[tuple[str, float], Engine] = {}
_LOCK = threading.Lock()


def sqlite_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).expanduser()}"


def parse(url: str) -> URL:
    """The URL, checked: SQLite or PostgreSQL (psycopg 3 as the driver); else a one-line ConfigError."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"the database URL {url.split('@')[-1]!r} cannot be read: use postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            "(or leave INSPECT_DATABASE_URL unset for the history file in the workspace)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
            return parsed.set(drivername="postgresql+psycopg")
        raise ConfigError(f"the database URL {shown(parsed)} names driver {parsed.drivername!r}: use postgresql://...")
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError("an SQLite database URL must name a file: sqlite:////path/to/history.sqlite")
        return parsed
    raise ConfigError(f"the database URL {shown(parsed)} is not supported: use postgresql://... or sqlite:///PATH")


def shown(url: URL | str) -> str:
    """The database as it may be printed: an SQLite file's path, a server's URL without password."""
    parsed = url if isinstance(url, URL) else make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return str(parsed.database)
    return parsed.render_as_string(hide_password=True).replace("+psycopg", "")


def is_server(url: URL | str) -> bool:
    """Whether ``url`` is a database server (shared by stations) rather than a local SQLite file."""
    parsed = url if isinstance(url, URL) else make_url(url)
    return parsed.get_backend_name() != "sqlite"


def configured_server() -> Engine | None:
    """The engine of the server database the settings name (INSPECT_DATABASE_URL), or None on one PC."""
    from core.settings import get_settings

    url = get_settings().database_url
    return engine_for(url) if is_server(url) else None


def engine_for(url: URL | str, timeout: float = 30.0) -> Engine:
    """The process's engine for ``url`` (made once); ``timeout``: SQLite's wait for a lock."""
    parsed = url if isinstance(url, URL) else parse(url)
    key = (parsed.render_as_string(hide_password=False), float(timeout))
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = _create(parsed, float(timeout))
    return engine


def _create(url: URL, timeout: float) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_con, _record) -> None:  # noqa: ANN001 - DB-API connection
            cur = dbapi_con.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

        return engine
    try:
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=timeout,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "inspect"},
        )
    except NoSuchModuleError:
        raise ConfigError("PostgreSQL needs the psycopg package: pip install -r requirements.txt") from None


def reason(exc: BaseException) -> str:
    """The driver's own first line for a database error (what a person can act on)."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(orig).__name__


def check(url: URL | str) -> None:
    """Connect once and run ``SELECT 1``; a one-line StoreError when the database cannot be reached."""
    parsed = url if isinstance(url, URL) else parse(url)
    try:
        with engine_for(parsed).connect() as con:
            con.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise StoreError(f"cannot reach the database {shown(parsed)}: {reason(exc)}") from None


def dispose_all() -> None:
    """Close every pooled connection (a forked worker or a test that drops its database)."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()
