"""core.history: records survive restarts and concurrent writers; damaged files are left alone."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import StoreError
from core.history import UNREVIEWED, History, InspectionRecord

UUID = "6f1c2a4e-0000-4000-8000-000000000000"


def _rec(i: int = 0, **kw) -> InspectionRecord:
    base = dict(
        file_name=f"part_{i:03d}.png",
        sha256=f"{i:064x}",
        category="tile",
        model="patchcore",
        score=0.3,
        threshold=0.5,
        verdict="GOOD",
        raw_score=1.25,
    )
    base.update(kw)
    return InspectionRecord(**base)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "history.sqlite"


def test_creates_folder_schema_and_wal(db: Path) -> None:
    History(db)
    assert db.is_file()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in con.execute("PRAGMA table_info(inspections)")]
    assert cols == [
        "id",
        "created_at",
        "file_name",
        "sha256",
        "category",
        "model",
        "score",
        "threshold",
        "verdict",
        "raw_score",
        "thumbnail_path",
        "feedback",
        "comment",
        "defect_type",
        "point_id",
        "model_version",
        "wrong_category",
        "station",
        "request_key",
    ]


def test_default_path_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECT_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("INSPECT_HISTORY_DB", raising=False)
    h = History()
    assert h.path == tmp_path / "ws" / "history.sqlite"
    assert h.thumbnails_dir == tmp_path / "ws" / "thumbnails"
    assert h.path.is_file()


def test_add_list_filter_count(database_url: str) -> None:
    h = History(database_url)
    ids = [
        h.add(_rec(1)),
        h.add(_rec(2, verdict="DEFECT", score=0.9, defect_type="crack", point_id=17)),
        h.add(_rec(3, category="grid", model="efficient_ad", point_id=UUID)),
        h.add(_rec(4, category="grid", verdict="DEFECT", score=0.7)),
    ]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert h.count() == 4
    everything = h.list()
    assert [r.id for r in everything] == ids[::-1]  # newest first
    first = h.get(ids[0])
    assert first is not None and first.created_at and first.created_at.endswith("+00:00")
    assert first.raw_score == 1.25 and first.feedback is None
    assert [r.id for r in h.list(category="grid")] == [ids[3], ids[2]]
    assert [r.id for r in h.list(model="efficient_ad")] == [ids[2]]
    assert [r.id for r in h.list(verdict="DEFECT")] == [ids[3], ids[1]]
    assert [r.id for r in h.list(category="grid", verdict="DEFECT")] == [ids[3]]
    assert len(h.list(limit=2)) == 2
    assert h.count(category="tile") == 2
    second = h.get(ids[1])
    assert second.defect_type == "crack" and second.point_id == 17
    assert h.get(ids[2]).point_id == UUID
    assert h.get(99999) is None
    with pytest.raises(ValueError, match="verdict"):
        h.add(_rec(5, verdict="MAYBE"))


def test_feedback(database_url: str) -> None:
    h = History(database_url)
    a, b = h.add(_rec(1)), h.add(_rec(2, verdict="DEFECT"))
    h.set_feedback(a, "missed_defect", "scratch near the edge")
    h.set_feedback(b, "false_alarm", None)
    assert h.get(a).feedback == "missed_defect" and h.get(a).comment == "scratch near the edge"
    assert [r.id for r in h.list(feedback="false_alarm")] == [b]
    h.set_feedback(b, None)
    assert h.get(b).feedback is None
    assert [r.id for r in h.list(feedback=UNREVIEWED)] == [b]
    with pytest.raises(ValueError, match="feedback"):
        h.set_feedback(a, "wrong")
    with pytest.raises(ValueError, match="feedback"):
        h.list(feedback="wrong")
    with pytest.raises(StoreError, match="no inspection with id 424242"):
        h.set_feedback(424242, "correct")


def test_csv(database_url: str, tmp_path: Path) -> None:
    h = History(database_url)
    h.add(_rec(1, comment='said "ok", then, no'))
    h.add(_rec(2, verdict="DEFECT"))
    text = h.to_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2
    assert rows[0]["file_name"] == "part_002.png" and rows[0]["verdict"] == "DEFECT"
    assert rows[1]["comment"] == 'said "ok", then, no'
    assert list(rows[0])[:3] == ["id", "created_at", "file_name"]
    out = tmp_path / "export.csv"
    assert h.to_csv(out, verdict="DEFECT") == out.read_text(encoding="utf-8")
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == 1


def test_persists_across_restart(database_url: str) -> None:
    h = History(database_url)
    rid = h.add(_rec(1))
    h.set_feedback(rid, "correct", "fine")
    del h
    again = History(database_url)
    assert again.count() == 1
    rec = again.get(rid)
    assert rec.feedback == "correct" and rec.file_name == "part_001.png"
    assert again.add(_rec(2)) > rid


def test_concurrent_writers_lose_nothing(database_url: str) -> None:
    History(database_url)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(tag: str) -> None:
        try:
            h = History(database_url)  # each "tab" has its own History object
            start.wait()
            for i in range(50):
                h.add(_rec(i, file_name=f"{tag}_{i}.png"))
        except BaseException as exc:  # noqa: BLE001 - any failure in the thread is reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    h = History(database_url)
    assert h.count() == 100
    names = {r.file_name for r in h.list()}
    assert names == {f"{t}_{i}.png" for t in "ab" for i in range(50)}


def test_not_sqlite_file_is_refused_and_untouched(db: Path) -> None:
    db.parent.mkdir(parents=True)
    content = b"these are somebody's notes, not a database\n" * 20
    db.write_bytes(content)
    with pytest.raises(StoreError, match="not an SQLite database") as err:
        History(db)
    assert str(db) in str(err.value)
    assert db.read_bytes() == content
    assert sorted(p.name for p in db.parent.iterdir()) == ["history.sqlite"]


def test_damaged_sqlite_file_is_refused_and_untouched(db: Path) -> None:
    h = History(db)
    for i in range(5):
        h.add(_rec(i))
    with sqlite3.connect(db) as con:  # fold the WAL back into the main file
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode = DELETE")
    for extra in db.parent.glob("history.sqlite-*"):
        extra.unlink()
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # page 1 after the header: the schema
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    with pytest.raises(StoreError, match="damaged") as err:
        History(db)
    assert "left untouched" in str(err.value)
    assert db.read_bytes() == before


def test_empty_file_is_initialised(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"")
    assert History(db).count() == 0


def test_save_thumbnail(db: Path) -> None:
    h = History(db)
    img = np.zeros((600, 800, 3), np.uint8)
    img[:, :400] = (255, 0, 0)
    sha = "ab" * 32
    path = h.save_thumbnail(img, sha)
    assert path == db.parent / "thumbnails" / f"{sha}.jpg"
    thumb = Image.open(path)
    assert thumb.size == (256, 192)
    assert h.save_thumbnail(img, sha) == path  # idempotent
    rid = h.add(_rec(1, sha256=sha, thumbnail_path=str(path)))
    assert h.get(rid).thumbnail_path == str(path)
    with pytest.raises(ValueError):
        h.save_thumbnail(img, "../../etc/passwd")


def test_concurrent_processes_lose_nothing(database_url: str) -> None:
    """Two processes (e.g. the app and a CLI run) writing at once."""
    import subprocess
    import sys

    History(database_url)
    repo = Path(__file__).resolve().parent.parent
    script = (
        "import sys\n"
        "from core.history import History, InspectionRecord\n"
        "h = History(sys.argv[1])\n"
        "for i in range(50):\n"
        "    h.add(InspectionRecord(file_name=f'{sys.argv[2]}_{i}.png', sha256='0' * 64,\n"
        "        category='tile', model='patchcore', score=0.1, threshold=0.5, verdict='GOOD'))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, database_url, tag], cwd=repo) for tag in ("p", "q")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert History(database_url).count() == 100


def test_a_full_disk_is_called_a_full_disk(tmp_path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from core import history

    usage = namedtuple("usage", "total used free")
    assert history._disk_full("database or disk is full", tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 10**9, 0))
    assert history._disk_full("disk I/O error", tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10**9, 0, 10**9))
    assert not history._disk_full("disk I/O error", tmp_path)  # room left: a real I/O error, said as such
    assert not history._disk_full("database is locked", tmp_path)


def test_each_stations_version_and_the_station_filter(database_url: str) -> None:
    """The dashboard reads which version each line station judges with from the rows it records."""
    from core.services.history_view import stations

    h = History(database_url)
    h.add(_rec(1, station="line-1", model_version="v0003"))
    h.add(_rec(2, station="line-1", model_version="v0004"))
    h.add(_rec(3, station="line-2", model_version="v0003"))
    h.add(_rec(4, model_version="v0004"))  # a single PC's row: no station
    rows = stations(h.list())
    assert [(r.station, r.version, r.inspections) for r in rows] == [("line-1", "v0004", 2), ("line-2", "v0003", 1)]
    assert [r.station for r in h.list(station="line-1")] == ["line-1", "line-1"]
    assert "line-2" in h.to_csv(station="line-2") and "line-1" not in h.to_csv(station="line-2")
