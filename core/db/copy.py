"""Move a workspace's history and users into another database (``python -m core db copy --to URL``).

The way a one-PC installation joins a plant: its SQLite history (rows and thumbnail files) and its
users file are copied into the plant's PostgreSQL. The source is opened read-only and never
changed, so the copy can be repeated after a failure, or abandoned, with nothing lost. The target
must hold no inspections yet: ids are kept (similar-defect points and shared links name them), and
two histories' ids would collide. The copy is verified by counting every table on both sides and
comparing a sample of rows field by field.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError, NoSuchTableError
from sqlalchemy.pool import NullPool

from core.db import engine as db
from core.db import migrate
from core.db.schema import PointId, api_keys, inspections, thumbnails, users
from core.errors import ConfigError, StoreError

#: Rows written per statement.
BATCH = 500
#: Rows compared field by field after the copy (besides the first and the last).
SAMPLE = 25


@dataclass(frozen=True)
class CopyReport:
    """What was copied, counted again on the target afterwards."""

    target: str
    inspections: int
    thumbnails: int
    thumbnails_missing: int  # rows whose thumbnail file was gone in the source
    users: int
    api_keys: int
    sampled: int  # rows compared field by field


def copy_workspace(source_url: str, users_file: Path, target_url: str) -> CopyReport:
    """Copy the history at ``source_url`` and the users in ``users_file`` into ``target_url``."""
    target = db.parse(target_url)
    source = db.parse(source_url)
    if source.render_as_string(hide_password=False) == target.render_as_string(hide_password=False):
        raise ConfigError("the target is the database in use: name another one with --to")
    src = _read_only(source)
    dst = db.engine_for(target)
    where = db.shown(target)
    migrate.upgrade(dst)
    try:
        with dst.connect() as con:
            held = con.execute(select(func.count()).select_from(inspections)).scalar_one()
        if held:
            raise StoreError(f"{where} already holds {held} inspection(s): copy into an empty database (ids are kept)")
        rows = _source_rows(src)
        accounts = _users(users_file)
        with dst.begin() as con:
            n_thumbs, missing = _copy_thumbnails(con, rows)
            for chunk in _chunks([_target_row(r) for r in rows]):
                con.execute(insert(inspections), chunk)
            if rows and con.dialect.name == "postgresql":  # the ids were given: move the sequence past them
                con.execute(text("SELECT setval(pg_get_serial_sequence('inspections', 'id'), (SELECT MAX(id) FROM inspections))"))
            _copy_users(con, accounts, where)
            sampled = _verify(con, rows, accounts, n_thumbs, where)  # a difference rolls all of it back
    except DBAPIError as exc:
        raise StoreError(f"copying into {where} failed, nothing of it was kept: {db.reason(exc)}") from None
    finally:
        src.dispose()
    return CopyReport(where, len(rows), n_thumbs, missing, len(accounts["users"]), len(accounts["api_keys"]), sampled)


def _read_only(url: Any) -> Engine:
    """The source, opened so that nothing (not even a schema upgrade) can write to it."""
    if url.get_backend_name() != "sqlite":
        return db.engine_for(url)  # a server source: only SELECTs are sent to it
    path = Path(url.database)
    if not path.is_file():
        raise StoreError(f"there is no history at {path} to copy")
    return create_engine(f"sqlite:///{path.resolve().as_uri()}?mode=ro&uri=true", poolclass=NullPool)


def _source_rows(src: Engine) -> list[dict[str, Any]]:
    try:
        table = Table("inspections", MetaData(), autoload_with=src)
    except NoSuchTableError:
        return []
    with src.connect() as con:
        return [dict(r._mapping) for r in con.execute(select(table).order_by(table.c.id))]  # noqa: SLF001


def _target_row(row: dict[str, Any]) -> dict[str, Any]:
    """A source row in the target's columns (an older history lacks some: they stay empty)."""
    out = {c.name: row.get(c.name) for c in inspections.columns}
    out["thumbnail_path"] = None  # the picture travels as a row; a path on the old PC means nothing there
    out["point_id"] = PointId().process_result_value(out["point_id"], None)  # as the target reads it back
    return out


def _copy_thumbnails(con: Any, rows: list[dict[str, Any]]) -> tuple[int, int]:
    have = set(con.execute(select(thumbnails.c.sha256)).scalars())
    written, missing = 0, 0
    for row in rows:
        sha = str(row["sha256"]).lower()
        if sha in have:
            continue
        try:
            jpeg = Path(row.get("thumbnail_path") or "").read_bytes()
        except OSError:
            missing += 1
            continue
        con.execute(insert(thumbnails).values(sha256=sha, jpeg=jpeg, created_at=row["created_at"]))
        have.add(sha)
        written += 1
    return written, missing


def _users(users_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(users_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"users": {}, "api_keys": {}}
    except (OSError, ValueError) as exc:
        raise StoreError(f"the users file {users_file} cannot be read: {exc}") from None
    return {"users": dict(data.get("users") or {}), "api_keys": dict(data.get("api_keys") or {})}


def _copy_users(con: Any, accounts: dict[str, Any], where: str) -> None:
    for section, table in (("users", users), ("api_keys", api_keys)):
        held = set(con.execute(select(table.c.name)).scalars())
        clash = sorted(held & set(accounts[section]))
        if clash:
            raise StoreError(f"{where} already has {section.replace('_', ' ')} named {', '.join(clash)}: nothing was copied")
        fields = [c.name for c in table.columns if c.name != "name"]
        rows = [{"name": n, **{f: e[f] for f in fields}} for n, e in sorted(accounts[section].items())]
        if rows:
            con.execute(insert(table), rows)


def _verify(con: Any, rows: list[dict[str, Any]], accounts: dict[str, Any], n_thumbs: int, where: str) -> int:
    """Count every table on the target and compare a sample of rows; StoreError on any difference."""
    counts = {t.name: con.execute(select(func.count()).select_from(t)).scalar_one() for t in (inspections, users, api_keys)}
    thumbs = con.execute(select(func.count()).select_from(thumbnails)).scalar_one()
    expected = {"inspections": len(rows), "users": len(accounts["users"]), "api_keys": len(accounts["api_keys"])}
    if counts != expected or thumbs < n_thumbs:
        raise StoreError(f"the copy in {where} does not match its source: {counts} against {expected}")
    picks = _sample(rows)
    by_id = {r["id"]: r for r in rows}
    for got in con.execute(select(inspections).where(inspections.c.id.in_(picks))):
        want, have = _target_row(by_id[got.id]), dict(got._mapping)  # noqa: SLF001
        differ = sorted(k for k in want if want[k] != have[k])
        if differ:
            raise StoreError(
                f"inspection {got.id} differs between the source and {where} ({', '.join(differ)}): nothing was copied"
            )
    return len(picks)


def _sample(rows: list[dict[str, Any]]) -> list[int]:
    ids = [r["id"] for r in rows]
    if len(ids) <= SAMPLE + 2:
        return ids
    return sorted({ids[0], ids[-1], *random.sample(ids, SAMPLE)})


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), BATCH):
        yield rows[start : start + BATCH]
