"""The History page: survives a restart, filters, exports CSV, edits feedback."""

from __future__ import annotations

import pytest
from conftest import TINY_CATEGORY

pytestmark = pytest.mark.filterwarnings("ignore")


def _inspect_one(at, path) -> int:
    at.run()
    at.file_uploader(key="inspect_upload").upload(path.name, path.read_bytes(), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return next(e.result.inspection_id for e in at.session_state["inspections"].values() if e.result)


def test_history_survives_a_restart_and_edits_feedback(app_test, app_home):
    from core.history import History

    path = sorted((app_home / "demo_data" / TINY_CATEGORY / "test" / "good").glob("*.png"))[-1]
    first = app_test()
    record_id = _inspect_one(first, path)

    # A new AppTest is a new session (as after a restart): the record is read back from disk.
    at = app_test()
    at.run()
    at.switch_page("pages/inspection_history.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "Inspection history"
    total = int(next(m.value for m in at.metric if m.label == "Inspections"))
    assert total == History().count() >= 1
    assert len(at.dataframe) == 1

    # Filters narrow the list.
    at.selectbox(key="history_verdict").set_value("DEFECT").run()
    defects = int(next(m.value for m in at.metric if m.label == "Inspections"))
    assert defects == History().count(verdict="DEFECT")
    at.selectbox(key="history_verdict").set_value("All").run()
    at.selectbox(key="history_category").set_value(TINY_CATEGORY).run()
    assert int(next(m.value for m in at.metric if m.label == "Inspections")) == History().count(category=TINY_CATEGORY)

    # Feedback editing.
    at.selectbox(key="history_edit_id").set_value(record_id).run()
    at.radio(key=f"history_fb:{record_id}").set_value("missed_defect").run()
    at.text_input(key=f"history_comment:{record_id}").set_value("scratch under the label").run()
    at.button(key="history_save").click().run()
    assert not at.exception, [e.value for e in at.exception]
    rec = History().get(record_id)
    assert rec.feedback == "missed_defect" and rec.comment == "scratch under the label"

    at.selectbox(key="history_feedback").set_value("missed_defect").run()
    assert int(next(m.value for m in at.metric if m.label == "Inspections")) == History().count(feedback="missed_defect")

    # CSV export is offered.
    assert any(el.type == "download_button" or "download_button" in str(type(el)).lower() for el in at.get("download_button"))


def test_history_csv_matches_the_store(app_env):
    from core.history import History

    text = History().to_csv()
    header = text.splitlines()[0].split(",")
    assert header[:3] == ["id", "created_at", "file_name"]
    assert len(text.splitlines()) == History().count() + 1


def test_empty_history_says_what_to_do(app_test, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "empty.sqlite"))
    at = app_test()
    at.run()
    at.switch_page("pages/inspection_history.py").run()
    assert not at.exception
    assert at.info, [e.value for e in at.error]
    assert "No inspections yet" in at.info[0].value


def test_damaged_history_is_an_error_not_a_traceback(app_test, tmp_path, monkeypatch):
    bad = tmp_path / "history.sqlite"
    bad.write_text("not a database")
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(bad))
    at = app_test()
    at.run()
    at.switch_page("pages/inspection_history.py").run()
    assert not at.exception
    assert "not an SQLite database" in at.error[0].value
    assert bad.read_text() == "not a database"  # left untouched


def test_the_page_logic_imports_no_heavy_library():
    """``core.services`` (what the History page reads through) imports no torch, anomalib, qdrant,
    pandas, plotly or Streamlit at import time: each is imported by the function that needs it."""
    import subprocess
    import sys

    heavy = ["torch", "anomalib", "qdrant_client", "pandas", "plotly", "streamlit"]
    code = f"import sys, core.services; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_stations_are_filtered_and_listed(app_test, tmp_path, monkeypatch):
    from core.history import History, InspectionRecord

    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    history = History()
    for i, where in enumerate(("line-1", "line-2", "line-2")):
        record = InspectionRecord(f"p{i}.png", f"{i:064x}", TINY_CATEGORY, "patchcore", 0.3, 0.5, "GOOD", station=where)
        history.add(record)
    from core.stations import report

    report("line-3", ["patchcore/tile@v0002"], "2026-12-06T08:00:00+00:00")  # up, nothing inspected yet
    at = app_test()
    at.run()
    at.switch_page("pages/inspection_history.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.label for e in at.expander if e.label.startswith("Line stations")] == ["Line stations (3)"]
    beats = at.table[0].value
    assert list(beats["station"]) == ["line-3"] and list(beats["loaded now"]) == ["patchcore/tile@v0002"]
    assert list(beats["state"]) == ["up"]
    at.selectbox(key="history_station").set_value("line-2").run()
    assert int(next(m.value for m in at.metric if m.label == "Inspections")) == 2
