"""``python -m core inspect``: files, folders and globs judged in batches, one CSV row per file.

Against the tiny trained PatchCore on 'tile': the CSV's scores are the model's own (the same image
through ``Detector.predict``), verdicts follow the threshold, a bad file is a row with its error
and exit status 1, ``--no-record`` leaves the history and the index alone, ``--overlays`` writes
one PNG per image, and usage problems are one ``error:`` line with exit status 2.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY
from PIL import Image

from core.cli import main
from core.services.batch import CSV_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
NOT_AN_IMAGE = b"this is a text file, not an image\n" * 10


@pytest.fixture
def line(app_env: Path, tmp_path: Path) -> Path:
    """A copy of the tiny category's test folders (good and defect types), as a line-side folder."""
    folder = tmp_path / "line"
    shutil.copytree(app_env / "demo_data" / TINY_CATEGORY / "test", folder)
    return folder


@pytest.fixture(scope="module")
def detector(app_home: Path):
    from core.inference.detector import load_detector
    from core.settings import get_settings

    return load_detector("patchcore", TINY_CATEGORY, models_dir=get_settings().models_dir)


def images_in(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def inspect(*args: str) -> int:
    return main(["inspect", *args, "--category", TINY_CATEGORY])


def history_count() -> int:
    from core.history import History

    return History().count()


def test_folder_rows_are_the_models_scores_and_a_bad_file_is_a_row_with_exit_1(line, tmp_path, detector, capsys):
    from core.data.image_io import load_image, sha256_of
    from core.history import History

    (line / "good" / "notes.png").write_bytes(NOT_AN_IMAGE)
    out = tmp_path / "out.csv"
    before = history_count()

    assert inspect(str(line), "--csv", str(out), "--threshold", "0.6") == 1

    columns, rows = read_csv(out)
    assert tuple(columns) == CSV_COLUMNS
    files = images_in(line)
    # an absolute folder argument: rows and records name files from that folder on, no server path
    assert sorted(r["file"] for r in rows) == sorted(p.relative_to(line.parent).as_posix() for p in files)
    by_file = {str(line.parent / r["file"]): r for r in rows}
    bad = by_file.pop(str(line / "good" / "notes.png"))
    assert "notes.png" in bad["error"] and "\n" not in bad["error"]
    assert bad["verdict"] == bad["score"] == bad["inspection id"] == ""
    for name, row in by_file.items():
        expected = detector.predict(load_image(Path(name)))
        assert abs(float(row["score"]) - expected.score) < 1e-5, name
        assert abs(float(row["raw score"]) - expected.raw_score) <= 1e-5 * max(1.0, abs(expected.raw_score)), name
        assert float(row["threshold"]) == 0.6
        assert row["verdict"] == ("DEFECT" if float(row["score"]) >= 0.6 else "GOOD")
        assert row["sha256"] == sha256_of(Path(name))
        assert (row["category"], row["model"], row["model version"]) == (TINY_CATEGORY, "patchcore", detector.version)
        assert 0.0 <= float(row["defect area share"]) <= 1.0 and float(row["inference ms"]) > 0 and row["error"] == ""
        record = History().get(int(row["inspection id"]))
        assert (
            record.file_name == row["file"] == Path(name).relative_to(line.parent).as_posix()
            and record.verdict == row["verdict"]
            and record.threshold == 0.6
        )
    assert history_count() == before + len(by_file)

    summary = capsys.readouterr().out.strip().splitlines()[-1]
    n_defect = sum(r["verdict"] == "DEFECT" for r in by_file.values())
    assert summary.startswith(f"{len(files)} images, {n_defect} DEFECT, 1 failed, ") and "images/s" in summary


def test_no_record_writes_no_history_rows_and_no_index_points(line, tmp_path, monkeypatch, capsys):
    from core.services import inspection

    indexed: list[str] = []
    monkeypatch.setattr(inspection, "index_inspection", lambda *a, **k: indexed.append(k["sha256"]) or (None, None))
    out = tmp_path / "out.csv"
    before = history_count()

    assert inspect(str(line), "--csv", str(out), "--no-record", "--threshold", "0") == 0

    _, rows = read_csv(out)
    assert len(rows) == len(images_in(line)) and {r["verdict"] for r in rows} == {"DEFECT"}  # threshold 0: all DEFECT
    assert all(r["inspection id"] == "" for r in rows)
    assert history_count() == before
    assert indexed == []
    assert ", 0 failed, " in capsys.readouterr().out


def test_a_glob_judges_exactly_its_matches_in_batches(line, monkeypatch, capsys):
    from core.inference.detector import Detector

    sizes: list[int] = []
    real = Detector.predict_batch

    def spy(self, images, **kwargs):
        sizes.append(len(images))
        return real(self, images, **kwargs)

    monkeypatch.setattr(Detector, "predict_batch", spy)
    pattern = str(line / "*" / "00[01].png")

    assert inspect(pattern, "--no-record", "--batch-size", "3") == 0

    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("GOOD", "DEFECT"))]
    expected = sorted(p.relative_to(line.parent).as_posix() for p in images_in(line) if p.name in ("000.png", "001.png"))
    assert sorted(ln.split()[-1] for ln in lines) == expected
    assert sum(sizes) == len(expected) and max(sizes) == 3  # each image once, three per forward pass


def test_overlays_are_written_one_png_per_image(line, tmp_path):
    overlays = tmp_path / "overlays"
    files = images_in(line)

    assert inspect(str(line), "--overlays", str(overlays), "--no-record") == 0

    pngs = sorted(overlays.glob("*.png"))
    assert len(pngs) == len(files)  # test/good/000.png and test/crack/000.png do not overwrite each other
    assert {p.name for p in pngs} >= {"good_000_overlay.png", "crack_000_overlay.png"}
    for png in pngs:
        with Image.open(png) as img:
            assert img.format == "PNG" and img.size == (128, 128)


def test_file_names_in_the_csv_never_become_formulas(app_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "=1+2.png")

    assert inspect("=1+2.png", "--csv", "out.csv", "--no-record") == 0

    text = (tmp_path / "out.csv").read_text(encoding="utf-8")
    assert next(csv.reader(io.StringIO(text.splitlines()[1])))[0] == "'=1+2.png"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--category", "no-such-part"], "unknown category 'no-such-part'"),
        (["--category", "leather"], "python -m core train --model patchcore --category leather"),
    ],
)
def test_unknown_category_or_untrained_model_is_one_error_line_and_exit_2(line, capsys, args, needle):
    assert main(["inspect", str(line), *args]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err


def test_no_images_and_missing_paths_are_usage_errors(app_env, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("not an image")
    assert inspect(str(tmp_path / "empty")) == 2
    assert "error: no images found" in capsys.readouterr().err
    assert inspect(str(tmp_path / "missing")) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc"])
def test_threshold_must_be_on_the_normalised_scale(app_env, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "x.png", "--category", TINY_CATEGORY, "--threshold", value])
    assert exit_info.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_exit_status_of_the_real_command(line, app_env):
    """``python -m core inspect`` exits 1 when a file failed (scripts on the line test $?)."""
    (line / "good" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    env = {**os.environ, "INSPECT_HOME": str(app_env), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "core", "inspect", str(line / "good"), "--category", TINY_CATEGORY, "--no-record"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "FAILED" in result.stdout and "cut.png" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("5 images, ")


def test_links_and_folders_named_like_images_are_rows_not_silence(line, tmp_path, capsys):
    """A dangling link, a looping link and a folder called x.png each give a row and count as failed."""
    (line / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (line / "loop.png").symlink_to(line / "loop.png")
    (line / "x.png").mkdir()
    out = tmp_path / "out.csv"
    assert inspect(str(line), "--csv", str(out), "--no-record") == 1
    _, rows = read_csv(out)
    errors = {r["file"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"line/dangling.png", "line/loop.png", "line/x.png"}
    assert "No such file" in errors["line/dangling.png"] and "symbolic links" in errors["line/loop.png"]
    assert "Is a directory" in errors["line/x.png"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith(f"{len(rows)} images, ") and ", 3 failed, " in summary


def test_a_full_disk_under_the_csv_is_one_line_not_a_traceback(line, capsys):
    from core.cli import main

    code = main(["inspect", str(line / "good"), "--category", TINY_CATEGORY, "--no-record", "--csv", "/dev/full"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("Inspecting")]  # no progress bar
    assert code == 2 and err == [
        "error: cannot write the CSV /dev/full: the disk is full; stopped, nothing was recorded (--no-record)"
    ]
