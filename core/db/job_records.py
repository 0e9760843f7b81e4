"""Background-job records as rows of a server database, so the dashboard sees every machine's jobs.

A job runs where it was started, supervised by core.jobs, whose record file on that machine stays
the working copy (the supervisor writes it without a database round trip). With a server
database each write is mirrored into the ``jobs`` table with the machine's host name; lists read
the table. A mirror that fails (the server is away) is logged and retried at the next write: a
job never fails because its record could not be shared.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from core.db import migrate
from core.db.schema import jobs
from core.errors import StoreError

log = logging.getLogger(__name__)


def save(engine: Engine, job_id: str, host: str, status: str, started: str, record: str) -> None:
    """Insert or replace one job's record; a failure is logged, never raised."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    row = {"id": job_id, "host": host, "status": status, "started": started, "record": record}
    statement = dialect.insert(jobs).values(**row)
    statement = statement.on_conflict_do_update(index_elements=["id"], set_={k: statement.excluded[k] for k in row if k != "id"})
    try:
        migrate.ensure(engine)
        with engine.begin() as con:
            con.execute(statement)
    except (DBAPIError, StoreError) as exc:
        log.warning("job %s: its record could not be shared through the database (%s)", job_id, exc)


def recent(engine: Engine, limit: int | None) -> list[tuple[str, str]]:
    """(host, record JSON) of the newest jobs of every machine; StoreError when unreadable."""
    query = select(jobs.c.host, jobs.c.record).order_by(jobs.c.started.desc(), jobs.c.id.desc())
    if limit:
        query = query.limit(limit)
    try:
        migrate.ensure(engine)
        with engine.connect() as con:
            return [(r.host, r.record) for r in con.execute(query)]
    except DBAPIError as exc:
        raise StoreError(f"the job records cannot be read: {exc.orig or exc}") from None
