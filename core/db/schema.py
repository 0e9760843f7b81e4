"""The tables, once, for both engines (SQLAlchemy Core; Alembic's migrations create them).

Types are chosen to read back the same on SQLite and PostgreSQL: times are ISO 8601 text (the
history's CSV and sort order depend on that exact form), booleans are 0/1 integers as the first
SQLite histories stored them, and a similar-store point id is text that reads back as an integer
when it is one (Qdrant ids are unsigned integers or UUID strings).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

#: Feedback an inspector can give, as stored (labels live in core.history).
FEEDBACK_VALUES: tuple[str, ...] = ("correct", "false_alarm", "missed_defect")
VERDICT_VALUES: tuple[str, ...] = ("GOOD", "DEFECT")


class PointId(TypeDecorator):
    """A Qdrant point id: an unsigned integer or a UUID string, stored as given and read back so."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Any) -> int | str | None:
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return value


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


metadata = MetaData()

# SQLite's INTEGER PRIMARY KEY AUTOINCREMENT never reuses an id; BIGINT identity on PostgreSQL.
_ID = BigInteger().with_variant(Integer, "sqlite")

inspections = Table(
    "inspections",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("created_at", Text, nullable=False),
    Column("file_name", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("verdict", Text, CheckConstraint(f"verdict IN ({_quoted(VERDICT_VALUES)})"), nullable=False),
    Column("raw_score", Float),
    Column("thumbnail_path", Text),
    Column("feedback", Text, CheckConstraint(f"feedback IS NULL OR feedback IN ({_quoted(FEEDBACK_VALUES)})")),
    Column("comment", Text),
    Column("defect_type", Text),
    Column("point_id", PointId),
    # The registry version ('v0003') that judged it: a score compares only with its own calibration.
    Column("model_version", Text),
    # 1 when the model judged the image not to look like its category (core.learning.drift).
    Column("wrong_category", Integer),
    # The line station that judged it (``core serve --station``); NULL on one PC.
    Column("station", Text),
    # The client's Idempotency-Key: unique, so a retry after a timeout is not recorded twice.
    Column("request_key", Text),
    sqlite_autoincrement=True,
)
Index("ix_inspections_created", inspections.c.created_at)
Index("ix_inspections_cat_model", inspections.c.category, inspections.c.model)
Index(
    "ux_inspections_request_key",
    inspections.c.request_key,
    unique=True,
    sqlite_where=inspections.c.request_key.isnot(None),
    postgresql_where=inspections.c.request_key.isnot(None),
)

#: JPEG thumbnails by the image's SHA-256, for a server database: a line PC needs no shared disk.
thumbnails = Table(
    "thumbnails",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("jpeg", LargeBinary, nullable=False),
    Column("created_at", Text, nullable=False),
)

#: Login users (core.auth): the scrypt hash and its parameters, never the password.
users = Table(
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("salt", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Column("n", Integer, nullable=False),
    Column("r", Integer, nullable=False),
    Column("p", Integer, nullable=False),
)

#: API keys (core.auth): only the key's SHA-256 is stored.
api_keys = Table(
    "api_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", Text, nullable=False),
    Column("created", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
)

#: Background job records (core.jobs): the record as JSON, and the host whose process runs it.
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("started", Text, nullable=False),
    Column("record", Text, nullable=False),
)
Index("ix_jobs_started", jobs.c.started)

#: Line stations' heartbeats (core.stations): when each was last seen and what it has loaded.
stations = Table(
    "stations",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("host", Text, nullable=False),
    Column("started_at", Text, nullable=False),
    Column("last_seen", Text, nullable=False),
    Column("loaded", Text, nullable=False),  # JSON list of "model/category@version"
)
