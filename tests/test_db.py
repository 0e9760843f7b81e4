"""core.db: the schema on both engines, an old history upgraded in place, `db upgrade`, `db copy`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.cli import main
from core.db import engine as db
from core.db import migrate
from core.errors import ConfigError, StoreError
from core.history import History, InspectionRecord

# The history as the first releases wrote it (before model versions, stations and request keys).
OLD_SCHEMA = """
CREATE TABLE inspections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL, category TEXT NOT NULL, model TEXT NOT NULL, score REAL NOT NULL,
    threshold REAL NOT NULL, verdict TEXT NOT NULL CHECK (verdict IN ('GOOD', 'DEFECT')),
    raw_score REAL, thumbnail_path TEXT, feedback TEXT, comment TEXT, defect_type TEXT, point_id
);
CREATE INDEX ix_inspections_created ON inspections (created_at);
PRAGMA user_version = 1;
"""


def _rec(i: int, **kw) -> InspectionRecord:
    base = dict(
        file_name=f"p{i}.png", sha256=f"{i:064x}", category="tile", model="patchcore", score=0.2, threshold=0.5, verdict="GOOD"
    )
    return InspectionRecord(**{**base, **kw})


def _old_history(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as con:
        con.executescript(OLD_SCHEMA)
        for i in range(3):
            con.execute(
                "INSERT INTO inspections (created_at, file_name, sha256, category, model, score, threshold, verdict, feedback, point_id)"
                " VALUES (?, ?, ?, 'tile', 'patchcore', 0.7, 0.5, 'DEFECT', 'correct', ?)",
                (f"2026-01-0{i + 1}T00:00:00.000+00:00", f"old{i}.png", f"{i:064x}", 40 + i),
            )
    con.close()


def test_an_old_history_is_upgraded_in_place_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    _old_history(path)
    h = History(path)
    old = h.list()
    assert [r.file_name for r in old] == ["old2.png", "old1.png", "old0.png"]
    assert [r.point_id for r in old] == [42, 41, 40] and all(r.feedback == "correct" for r in old)
    assert all(r.station is None and r.request_key is None for r in old)
    new_id = h.add(_rec(9, station="line-1", request_key="k-1"))
    assert new_id == 4 and h.get(new_id).station == "line-1"
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == migrate.HEAD
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"inspections", "thumbnails", "users", "api_keys", "jobs"} <= tables


def test_the_schema_is_the_same_on_both_engines(database_url: str) -> None:
    """Every column reads back as written: point ids (integer and UUID), booleans, floats, text."""
    h = History(database_url)
    uuid = "6f1c2a4e-0000-4000-8000-000000000000"
    a = h.add(_rec(1, point_id=2**40, wrong_category=True, raw_score=1.0 / 3, comment="ü ✓"))
    b = h.add(_rec(2, point_id=uuid, verdict="DEFECT"))
    got_a, got_b = h.get(a), h.get(b)
    assert got_a.point_id == 2**40 and got_a.wrong_category is True and got_a.raw_score == 1.0 / 3 and got_a.comment == "ü ✓"
    assert got_b.point_id == uuid and [r.id for r in h.list_unindexed_defects()] == []
    h.set_point_id(b, None)
    assert [r.id for r in h.list_unindexed_defects()] == [b]
    with db.engine_for(database_url).connect() as con:
        assert migrate.current(con) == migrate.HEAD


def test_thumbnails_are_files_beside_sqlite_and_rows_on_a_server(database_url: str, tmp_path: Path) -> None:
    h = History(database_url)
    image = np.full((64, 80, 3), 200, np.uint8)
    sha = "cd" * 32
    path = h.save_thumbnail(image, sha)
    rid = h.add(_rec(1, sha256=sha, thumbnail_path=str(path) if path else None))
    jpeg = h.thumbnail(h.get(rid))
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8"  # a JPEG
    assert (path is None) == h.server and h.thumbnail("ef" * 32) is None
    gone = h.add(_rec(2, sha256="ef" * 32))
    assert h.with_thumbnail([h.get(rid), h.get(gone)]) == {rid}
    assert h.save_thumbnail(image, sha) == path  # idempotent


def test_db_upgrade_command_on_both_engines(database_url: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("INSPECT_DATABASE_URL", database_url)
    assert main(["db", "upgrade"]) == 0
    assert f"schema none -> {migrate.HEAD}" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert "already the newest" in capsys.readouterr().out


def test_a_newer_schema_is_refused_never_downgraded(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    History(path)
    with sqlite3.connect(path) as con:
        con.execute("UPDATE alembic_version SET version_num = '0099'")
    con.close()
    with pytest.raises(StoreError, match="schema revision 0099, newer than this Inspect knows"):
        History(path)


@pytest.mark.parametrize(
    "url,message",
    [
        ("postgres ql:/nothing", "cannot be read"),
        ("mysql://a@b/c", "is not supported"),
        ("sqlite://", "must name a file"),
    ],
)
def test_a_wrong_database_url_is_one_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        db.parse(url)


def test_an_unreachable_server_is_one_line_at_start(monkeypatch, capsys) -> None:
    monkeypatch.setenv("INSPECT_DATABASE_URL", "postgresql://inspect:secret@127.0.0.1:1/inspect")
    assert main(["serve", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot reach the database postgresql://inspect:***@127.0.0.1:1/inspect")
    assert "\n" not in err and "secret" not in err


def test_db_copy_moves_a_workspace_to_the_server_and_leaves_it_untouched(
    tmp_path: Path, postgres_url: str, monkeypatch, capsys
) -> None:
    from core import auth

    monkeypatch.setenv("INSPECT_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("INSPECT_HISTORY_DB", raising=False)
    h = History()
    for i in range(40):
        sha = f"{i:064x}"
        path = h.save_thumbnail(np.full((32, 32, 3), i * 5, np.uint8), sha)
        h.add(_rec(i, sha256=sha, thumbnail_path=str(path), verdict="DEFECT" if i % 3 else "GOOD", point_id=i if i % 2 else None))
    h.set_feedback(5, "false_alarm", "dust")
    auth.add_user("alice", "correct horse", auth.ENGINEER)
    key = auth.add_api_key("line-1", auth.INSPECTOR)
    source = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (h.path, tmp_path / "ws" / "users.json")}

    assert main(["db", "copy", "--to", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "40 inspection(s), 40 thumbnail(s), 1 user(s), 1 API key(s)" in out and "verified" in out
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in source} == source  # untouched

    monkeypatch.setenv("INSPECT_DATABASE_URL", postgres_url)
    server = History()
    assert server.count() == 40 and server.get(5).feedback == "false_alarm" and server.get(5).comment == "dust"
    assert server.get(4).point_id == 3 and server.get(4).thumbnail_path is None  # id 4 is the 4th row, i = 3
    assert server.thumbnail(server.get(4)) == (tmp_path / "ws" / "thumbnails" / f"{3:064x}.jpg").read_bytes()
    assert server.add(_rec(99)) == 41  # new ids continue after the copied ones
    assert auth.verify_password("alice", "correct horse") == auth.ENGINEER and auth.role_for_api_key(key) == auth.INSPECTOR
    # a second copy would collide with the first: refused, nothing written
    monkeypatch.delenv("INSPECT_DATABASE_URL")
    assert main(["db", "copy", "--to", postgres_url]) == 2
    assert "already holds 41 inspection(s)" in capsys.readouterr().err
    assert History(url=postgres_url).count() == 41
    assert json.loads((tmp_path / "ws" / "users.json").read_text())["users"]["alice"]["role"] == "engineer"


def test_station_heartbeats_on_both_engines(database_url: str) -> None:
    from core.stations import list_stations, report

    assert report("line-1", ["patchcore/tile@v0003"], "2026-12-06T08:00:00+00:00", url=database_url)
    assert report("line-1", ["patchcore/tile@v0004", "efficient_ad/grid@v0001"], "2026-12-06T09:00:00+00:00", url=database_url)
    (only,) = list_stations(database_url)
    assert (only.name, only.started_at, only.loaded) == (
        "line-1",
        "2026-12-06T09:00:00+00:00",
        ["efficient_ad/grid@v0001", "patchcore/tile@v0004"],
    )
    assert only.alive and only.silent_for_s() < 60


def test_a_station_reports_what_it_loads(tmp_path: Path, monkeypatch) -> None:
    """The heartbeat thread reports at start and again as soon as a model is loaded."""
    import time

    from core.stations import Heartbeat, list_stations

    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    loaded: list[str] = []
    beat = Heartbeat("line-9", lambda: list(loaded), interval_s=3600).start()
    deadline = time.monotonic() + 20
    while not list_stations() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list_stations()[0].loaded == []
    loaded.append("patchcore/tile@v0001")
    beat.poke()
    while list_stations()[0].loaded == [] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list_stations()[0].loaded == ["patchcore/tile@v0001"]
