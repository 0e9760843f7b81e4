"""Reliability and safety of the inspection history (core level, no Streamlit).

* The CSV export is safe to open in a spreadsheet: text that would start a formula is made inert,
  numbers stay numbers, and no absolute server path is exported (core.csv_safety).
* A history whose middle pages are corrupt is detected when opened (PRAGMA quick_check, cached per
  version of the file) and never written to again: add/set_feedback/set_point_id raise StoreError
  and the file's bytes stay exactly as they were.
"""

from __future__ import annotations

import csv
import io
import random
import sqlite3
from pathlib import Path

import pytest

import core.history as history_mod
from core.csv_safety import FORMULA_START, csv_text, safe_cell
from core.errors import StoreError
from core.history import History
from tests.test_history import _rec

PAGE = 4096

FORMULAS = {
    "equals": '=HYPERLINK("http://127.0.0.1:9/?leak="&A1,"open")',
    "plus": "+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "carriage return": "\r=1+1",
}


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


# --- CSV export -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(FORMULAS))
def test_formula_comment_and_file_name_are_exported_inert(tmp_path: Path, case: str) -> None:
    formula = FORMULAS[case]
    h = History(tmp_path / "history.sqlite")
    h.add(_rec(1, comment=formula))
    h.add(_rec(2, file_name=formula + ".png", defect_type=formula))
    rows = {row["sha256"]: row for row in _read_csv(h.to_csv())}
    commented, named = rows[f"{1:064x}"], rows[f"{2:064x}"]
    inert = "'" + formula.replace("\r", "\n")  # the text is all there, behind a quote
    assert commented["comment"] == inert
    assert named["file_name"] == inert + ".png"
    assert named["defect_type"] == inert
    assert len(rows) == 2  # a carriage return did not split a row
    for row in rows.values():  # no text cell of the export can start a formula
        for column, cell in row.items():
            if column not in ("score", "threshold", "raw_score", "id"):
                assert not cell.startswith(FORMULA_START), (column, cell)


def test_numbers_stay_numbers_in_the_csv(tmp_path: Path) -> None:
    h = History(tmp_path / "history.sqlite")
    rid = h.add(_rec(1, score=0.75, threshold=0.5, raw_score=-2.5, comment="-1"))
    h.set_point_id(rid, 12345)
    (row,) = _read_csv(h.to_csv())
    assert int(row["id"]) == rid
    assert float(row["score"]) == 0.75 and float(row["threshold"]) == 0.5
    assert float(row["raw_score"]) == -2.5  # a negative number is data: no quote in front
    assert row["point_id"] == "12345"
    assert row["comment"] == "'-1"  # ...but text that looks like one is still text


def test_csv_export_has_no_absolute_server_path(tmp_path: Path) -> None:
    h = History(tmp_path / "history.sqlite")
    thumb = h.save_thumbnail(__import__("numpy").zeros((8, 8, 3), "uint8"), "ab" * 32)
    h.add(_rec(1, sha256="ab" * 32, thumbnail_path=str(thumb)))
    text = h.to_csv()
    assert str(tmp_path) not in text and "thumbnails" not in text
    assert "thumbnail_path" not in _read_csv(text)[0]
    assert _read_csv(text)[0]["sha256"] == "ab" * 32  # the thumbnail's name stays findable


def test_safe_cell_rule() -> None:
    assert safe_cell("=1+1") == "'=1+1" and safe_cell("@x") == "'@x" and safe_cell("\tx") == "'\tx"
    assert safe_cell("plain, text") == "plain, text" and safe_cell("a=b") == "a=b"
    assert safe_cell(-3) == -3 and safe_cell(-0.5) == -0.5 and safe_cell(None) == ""
    assert safe_cell("\r+x") == "'\n+x" and safe_cell("a\rb\r\nc") == "a\nb\nc"
    # Rows may be mappings (in field order) or sequences; the header goes through the rule too.
    text = csv_text(["name", "n"], [{"n": -1, "name": "=A1"}, ["+x", 2.5]])
    assert list(csv.reader(io.StringIO(text))) == [["name", "n"], ["'=A1", "-1"], ["'+x", "2.5"]]


# --- A damaged history ------------------------------------------------------------------------


def fill_history(path: Path, n: int = 300) -> History:
    """A history of ``n`` rows spread over many pages, fully written to the main file."""
    h = History(path)
    for i in range(n):
        h.add(_rec(i, comment=f"inspection {i} " + "x" * 120))
    # Every connection is closed, so SQLite has checkpointed the WAL into the file and removed it.
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return h


def corrupt_middle_pages(path: Path, pages: int = 3, seed: int = 0) -> bytes:
    """Overwrite ``pages`` 4096-byte pages in the middle of the file with random bytes."""
    data = bytearray(path.read_bytes())
    total = len(data) // PAGE
    assert total > 2 * pages + 4, "the history is too small to damage only its middle"
    rng = random.Random(seed)
    first = total // 2 - pages // 2
    for page in range(first, first + pages):
        data[page * PAGE : (page + 1) * PAGE] = rng.randbytes(PAGE)
    path.write_bytes(bytes(data))
    return bytes(data)


def make_damaged_history(path: Path) -> bytes:
    """A few hundred rows, then three corrupt middle pages; returns the damaged bytes."""
    fill_history(path)
    return corrupt_middle_pages(path)


def test_damaged_history_refuses_every_write_and_stays_untouched(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    h = fill_history(db)  # opened while sound, as a long-running process would hold it
    damaged = corrupt_middle_pages(db)
    # SQLite itself would take the row: the damage is in the middle, the table grows at the end.
    for write in (
        lambda: h.add(_rec(999)),
        lambda: h.set_feedback(1, "false_alarm", "wrong"),
        lambda: h.set_point_id(1, 7),
    ):
        with pytest.raises(StoreError) as err:
            write()
        message = str(err.value)
        assert "damaged" in message and "left untouched" in message and "move it aside" in message
        assert "\n" not in message and str(db) in message
    with pytest.raises(StoreError, match="damaged"):
        History(db)  # opening it again says so too, before the schema set-up could write
    assert db.read_bytes() == damaged


def test_damage_check_runs_once_per_version_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = history_mod._quick_check

    def counting(path: Path, timeout: float) -> str | None:
        calls.append(path)
        return real(path, timeout)

    monkeypatch.setattr(history_mod, "_quick_check", counting)
    db = tmp_path / "history.sqlite"
    History(db).add(_rec(1))
    calls.clear()
    for _ in range(3):  # a page opens the history on every rerun
        History(db).count()
    assert len(calls) == 1
    make_damaged_history(tmp_path / "bad.sqlite")
    calls.clear()
    for _ in range(3):
        with pytest.raises(StoreError, match="damaged"):
            History(tmp_path / "bad.sqlite")
    assert len(calls) == 1


def test_a_sound_history_is_not_taken_for_damaged(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    h = fill_history(db)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert History(db).add(_rec(1000)) > 0 and h.count() == 301


def test_damage_found_by_a_read_also_stops_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Damage that the open-time check did not see (simulated: quick_check says "sound") is
    # remembered when a read runs into it, and the next write is refused all the same.
    monkeypatch.setattr(history_mod, "_quick_check", lambda path, timeout: None)
    db = tmp_path / "history.sqlite"
    fill_history(db)
    damaged = corrupt_middle_pages(db)
    h = History(db)
    with pytest.raises(StoreError, match="damaged"):
        h.list()
    with pytest.raises(StoreError, match="damaged.*left untouched"):
        h.add(_rec(999))
    assert db.read_bytes() == damaged
