"""Line stations' heartbeats: which station is up, and which model versions it has loaded now.

A station (``core serve --station NAME``) reports itself to the history's database when it starts,
whenever it loads a model, and every :data:`HEARTBEAT_S` seconds; the dashboard lists the reports.
The history already says which version judged each inspection; this says what a station will
judge with next, even before its first inspection after a new version was published, and whether
it is still alive. A report that cannot be written (the database is away) is logged and tried
again at the next beat: a heartbeat never stops a station.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from core.db import engine as db
from core.db import migrate
from core.db.schema import stations
from core.errors import StoreError
from core.settings import get_settings

log = logging.getLogger(__name__)

#: Seconds between two reports of a running station.
HEARTBEAT_S = 30.0
#: A station not heard from for this long is shown as silent.
SILENT_AFTER_S = 3 * HEARTBEAT_S


@dataclass(frozen=True)
class StationStatus:
    """A station's last report."""

    name: str
    host: str
    started_at: str
    last_seen: str
    loaded: list[str]  # "model/category@version"

    def silent_for_s(self, now: datetime | None = None) -> float:
        """Seconds since the last report."""
        seen = datetime.fromisoformat(self.last_seen)
        return max(0.0, ((now or datetime.now(UTC)) - seen).total_seconds())

    @property
    def alive(self) -> bool:
        return self.silent_for_s() < SILENT_AFTER_S


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def report(name: str, loaded: list[str], started_at: str, url: str | None = None) -> bool:
    """Write station ``name``'s report; False (logged) when the database cannot take it now."""
    engine = db.engine_for(url or get_settings().database_url)
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    row = {
        "name": name,
        "host": socket.gethostname(),
        "started_at": started_at,
        "last_seen": _now(),
        "loaded": json.dumps(sorted(loaded)),
    }
    statement = dialect.insert(stations).values(**row)
    statement = statement.on_conflict_do_update(
        index_elements=["name"], set_={k: statement.excluded[k] for k in row if k != "name"}
    )
    try:
        migrate.ensure(engine)
        with engine.begin() as con:
            con.execute(statement)
    except (DBAPIError, StoreError) as exc:
        log.warning("station %s: heartbeat not written (%s)", name, db.reason(exc))
        return False
    return True


def list_stations(url: str | None = None) -> list[StationStatus]:
    """Every station that ever reported, by name; StoreError when the database cannot be read."""
    engine = db.engine_for(url or get_settings().database_url)
    try:
        migrate.ensure(engine)
        with engine.connect() as con:
            rows = con.execute(select(stations).order_by(stations.c.name)).all()
    except DBAPIError as exc:
        raise StoreError(f"the stations cannot be read from {db.shown(engine.url)}: {db.reason(exc)}") from None
    return [StationStatus(r.name, r.host, r.started_at, r.last_seen, json.loads(r.loaded)) for r in rows]


class Heartbeat:
    """A daemon thread reporting ``name`` with ``loaded()`` every HEARTBEAT_S s, or at once on :meth:`poke`."""

    def __init__(self, name: str, loaded: Callable[[], list[str]], interval_s: float = HEARTBEAT_S) -> None:
        self.name, self.loaded, self.interval_s = name, loaded, interval_s
        self.started_at = _now()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def poke(self) -> None:
        """Report now (a model was just loaded)."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            report(self.name, self.loaded(), self.started_at)
            self._wake.wait(self.interval_s)
            self._wake.clear()
