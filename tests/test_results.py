"""The results file survives corruption: writers keep the bad file aside, readers never crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.evaluation.results import load_results, load_results_checked, update_results, write_results

CORRUPT = {
    "truncated JSON": b'{"version": 1, "models": {"patchcore/tile": {"image_auroc": 0.9',
    "not an object": b"[1, 2, 3]",
    "models not an object": b'{"version": 1, "models": [], "retrieval": {}}',
    "entry not an object": b'{"version": 1, "models": {"patchcore/tile": 3}, "retrieval": {}}',
    "roc not an object": b'{"version": 1, "models": {"patchcore/tile": {"roc": [0, 1]}}}',
    "not UTF-8": b"\xff\xfe\x00garbage",
}


def asides(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


@pytest.mark.parametrize("raw", CORRUPT.values(), ids=CORRUPT.keys())
def test_writer_keeps_the_corrupt_file_aside_and_writes_its_entries(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(raw)
    written = write_results("models", {"patchcore/tile": {"image_auroc": 0.75}}, path)
    assert json.loads(path.read_text())["models"] == {"patchcore/tile": {"image_auroc": 0.75}}
    [aside] = asides(path)
    assert aside.read_bytes() == raw  # byte for byte: nothing of the old file is lost
    assert written.notice is not None and "\n" not in written.notice
    assert written.notice.startswith("results.json was unreadable (")
    assert f"kept it as {aside} and wrote a fresh one" in written.notice


def test_a_second_recovery_never_overwrites_the_first_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.evaluation.results as results

    monkeypatch.setattr(results, "_utc_stamp", lambda: "20250101T000000Z")  # both in the same second
    path = tmp_path / "results.json"
    path.write_bytes(b"first")
    write_results("models", {"a/b": {}}, path)
    path.write_bytes(b"second")
    write_results("models", {"a/b": {}}, path)
    assert [p.read_bytes() for p in asides(path)] == [b"first", b"second"]


def test_a_good_file_keeps_other_entries_and_makes_no_copy(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    update_results("retrieval", {"patchcore/tile": {"k": 5}}, path)
    written = update_results("models", {"patchcore/tile": {"image_auroc": 0.9}}, path)
    assert written.notice is None and not asides(path)
    data = load_results(path)
    assert data["retrieval"] == {"patchcore/tile": {"k": 5}} and data["models"]["patchcore/tile"]["image_auroc"] == 0.9


def test_update_results_logs_the_notice_for_commands_that_do_not_print_it(tmp_path: Path, caplog) -> None:
    path = tmp_path / "results.json"
    path.write_text("{oops")
    with caplog.at_level("WARNING", logger="core.evaluation.results"):
        update_results("retrieval", {"patchcore/tile": {"k": 5}}, path)
    [record] = [r for r in caplog.records if r.name == "core.evaluation.results"]
    assert "was unreadable" in record.getMessage() and "kept it as" in record.getMessage()


@pytest.mark.parametrize("raw", CORRUPT.values(), ids=CORRUPT.keys())
def test_readers_get_the_skeleton_and_a_one_line_problem(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "results.json"
    path.write_bytes(raw)
    status = load_results_checked(path)
    assert status.data == {"version": 1, "models": {}, "retrieval": {}}
    assert status.problem.startswith("results.json is unreadable (") and "\n" not in status.problem
    assert load_results(path) == status.data
    assert path.read_bytes() == raw  # reading never touches the file


def test_missing_file_is_no_problem(tmp_path: Path) -> None:
    status = load_results_checked(tmp_path / "none.json")
    assert status.problem is None and status.data["models"] == {}


def test_best_descriptor_falls_back_to_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    indexing = pytest.importorskip("core.similarity.indexing")
    path = tmp_path / "results.json"
    monkeypatch.setenv("INSPECT_RESULTS", str(path))
    measured = {
        "descriptors": {
            "global": {"precision_anomalous": 0.9, "precision_same_defect": 0.9},
            "defect": {"precision_anomalous": 0.1, "precision_same_defect": 0.1},
        }
    }
    path.write_text(json.dumps({"version": 1, "models": {}, "retrieval": {"patchcore/tile": measured}}))
    assert indexing.best_descriptor("patchcore", "tile") == "global"  # measured: the better one
    for raw in (
        "{not json",
        '"a string"',
        '{"retrieval": {"patchcore/tile": {"descriptors": [1]}}}',
        '{"retrieval": {"patchcore/tile": {"descriptors": {"global": "high"}}}}',
    ):
        path.write_text(raw)
        assert indexing.best_descriptor("patchcore", "tile") == indexing.DEFAULT_DESCRIPTOR
