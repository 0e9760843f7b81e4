"""The Inspect page with several images: a table of verdicts, its CSV, and a row opening one image.

Driven with Streamlit's AppTest against the tiny trained PatchCore. The model is spied on at
``Detector.predict_batch`` (what ``inspection.inspect_images`` calls): each chosen image goes
through it once, and reruns (threshold, row selection) never run it again.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import app_test as app_test_module

from core.services.batch import CSV_COLUMNS

pytestmark = pytest.mark.filterwarnings("ignore")

NOT_AN_IMAGE = ("notes.png", b"this is a text file, not an image\n" * 10)


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def verdicts(at) -> list[str]:
    return ["DEFECT" if "inspect-defect" in md.value else "GOOD" for md in at.markdown if "inspect-verdict" in md.value]


def pixels_key(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.fixture
def model_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A spy on ``Detector.predict_batch``: the pixels' hash of every image the model ran on
    (but the blank image a newly loaded model is warmed up with)."""
    from core.inference.detector import Detector

    runs: list[str] = []
    real = Detector.predict_batch

    def spy(self, images, **kwargs):
        runs.extend(pixels_key(image) for image in images if image.any())
        return real(self, images, **kwargs)

    monkeypatch.setattr(Detector, "predict_batch", spy)
    return runs


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> list[MemoryMediaFileStorage]:
    """The media stores of AppTest's runs (where a download button's file lives), kept for reading."""
    stores: list[MemoryMediaFileStorage] = []

    class Kept(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", Kept)
    return stores


def downloaded(at, media: list[MemoryMediaFileStorage], key: str) -> bytes:
    """The bytes behind the download button ``key`` in the latest run."""
    button = next(b for b in at.get("download_button") if b.proto.id.endswith(key))
    file_id = button.proto.url.rsplit("/", 1)[-1]
    return media[-1].get_file(file_id).content


@pytest.fixture(scope="module")
def test_images(app_home: Path) -> dict[str, Path]:
    root = app_home / "demo_data" / TINY_CATEGORY / "test"
    return {"good": root / "good" / "000.png", "defect": root / "crack" / "000.png"}


def history_count() -> int:
    from core.history import History

    return History().count()


def upload_three(app_test, test_images):
    at = app_test()
    at.run()
    no_exceptions(at)
    files = [
        ("part_good.png", test_images["good"].read_bytes(), "image/png"),
        ("part_crack.png", test_images["defect"].read_bytes(), "image/png"),
        (*NOT_AN_IMAGE, "image/png"),
    ]
    at.file_uploader(key="inspect_upload").set_value(files).run()
    no_exceptions(at)
    return at


def table(at):
    frames = [d for d in at.dataframe if (d.key or "").startswith("inspect_batch:")]
    assert len(frames) == 1
    return frames[0]


def expected_scores(test_images) -> dict[str, float]:
    from core.data.image_io import load_image
    from core.inference.detector import load_detector
    from core.settings import get_settings

    detector = load_detector("patchcore", TINY_CATEGORY, models_dir=get_settings().models_dir)
    return {
        "part_good.png": detector.predict(load_image(test_images["good"])).score,
        "part_crack.png": detector.predict(load_image(test_images["defect"])).score,
    }


def test_three_uploads_give_a_table_with_two_verdicts_and_the_bad_files_error(app_test, test_images, model_runs):
    from core.data.image_io import load_image

    scores = expected_scores(test_images)
    runs_before = len(model_runs)
    before = history_count()
    at = upload_three(app_test, test_images)

    frame = table(at).value
    assert len(frame) == 3
    by_file = {row["file"]: row for row in frame.to_dict("records")}
    for name, score in scores.items():
        row = by_file[name]
        assert abs(row["score"] - score) < 1e-5
        assert row["verdict"] == ("DEFECT" if score >= 0.5 else "GOOD")
        assert str(row["image"]).startswith("data:image/jpeg;base64,")
    bad = by_file["notes.png"]
    assert bad["verdict"] == "FAILED" and "notes.png is not an image file" in bad["error"]
    assert [e.value for e in at.error] == [bad["error"]]
    assert list(frame["score"].iloc[:2]) == sorted(scores.values(), reverse=True)  # most suspicious first
    assert [m.label for m in at.metric] == ["Images", "DEFECT", "Failed"]
    assert [m.value for m in at.metric] == ["3", str(sum(s >= 0.5 for s in scores.values())), "1"]
    assert verdicts(at) == []  # no row selected yet: no one-image view

    # Each readable image went through the model exactly once, and was recorded once.
    expected = sorted(pixels_key(load_image(p)) for p in test_images.values())
    assert sorted(model_runs[runs_before:]) == expected
    assert history_count() == before + 2
    at.slider(key="inspect_threshold").set_value(0.0).run()
    no_exceptions(at)
    assert list(table(at).value["verdict"]) == ["DEFECT", "DEFECT", "FAILED"]  # re-judged, not re-run
    assert sorted(model_runs[runs_before:]) == expected
    assert history_count() == before + 2


def test_the_csv_download_has_the_command_columns(app_test, test_images, media):
    at = upload_three(app_test, test_images)
    text = downloaded(at, media, "inspect_batch_csv").decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert sorted(r["file"] for r in rows) == ["notes.png", "part_crack.png", "part_good.png"]
    shown = {row["file"]: row for row in table(at).value.to_dict("records")}
    for row in rows:
        assert (row["category"], row["model"]) == (TINY_CATEGORY, "patchcore")
        assert row["model version"].startswith("v")
        if row["file"] == "notes.png":
            assert row["verdict"] == "" and "not an image file" in row["error"]
        else:
            assert row["verdict"] == shown[row["file"]]["verdict"] and row["error"] == ""
            assert abs(float(row["score"]) - shown[row["file"]]["score"]) < 1e-9
            assert int(row["inspection id"]) > 0 and len(row["sha256"]) == 64


def test_a_file_name_that_looks_like_a_formula_is_text_in_the_csv(app_test, test_images, media):
    at = app_test()
    at.run()
    files = [("=HYPERLINK(1).png", test_images["good"].read_bytes(), "image/png")]
    files.append(("b.png", test_images["defect"].read_bytes(), "image/png"))
    at.file_uploader(key="inspect_upload").set_value(files).run()
    no_exceptions(at)
    text = downloaded(at, media, "inspect_batch_csv").decode("utf-8")
    assert "'=HYPERLINK(1).png" in {row["file"] for row in csv.DictReader(io.StringIO(text))}


def test_selecting_a_row_opens_the_one_image_view_without_running_the_model(app_test, test_images, model_runs):
    scores = expected_scores(test_images)
    at = upload_three(app_test, test_images)
    runs = len(model_runs)
    frame = table(at)
    position = list(frame.value["file"]).index("part_crack.png")

    at.session_state[frame.key] = {"selection": {"rows": [position], "columns": [], "cells": []}}
    at.run()
    no_exceptions(at)

    assert verdicts(at) == ["DEFECT" if scores["part_crack.png"] >= 0.5 else "GOOD"]
    assert any("part\\_crack.png" in h.value or "part_crack.png" in h.value for h in at.subheader)
    assert len(at.get("image")) == 3  # the image, its heatmap, the defect region
    assert any(c.value.startswith("Raw score") for c in at.caption)
    assert any(b.proto.id.endswith("inspect_download") for b in at.get("download_button"))
    assert len(model_runs) == runs  # opened from the session's cache
    # The same threshold slider judges the table and the open image.
    at.slider(key="inspect_threshold").set_value(1.0).run()
    no_exceptions(at)
    assert verdicts(at) == ["DEFECT" if scores["part_crack.png"] >= 1.0 else "GOOD"]
    assert len(model_runs) == runs


def test_several_test_set_images_make_a_batch(app_test, test_images, model_runs):
    at = app_test()
    at.run()
    at.radio(key="inspect_source").set_value("Test set").run()
    at.selectbox(key=f"inspect_test_type:{TINY_CATEGORY}").set_value("good").run()
    picker = at.multiselect(key=f"inspect_test_image:{TINY_CATEGORY}:good")
    assert picker.value == ["000.png"]  # one image by default: the one-image view, as before
    assert len(verdicts(at)) == 1
    names = picker.options[:3]
    runs = len(model_runs)
    picker.set_value(names).run()
    no_exceptions(at)
    files = sorted(table(at).value["file"])
    assert files == sorted(f"{TINY_CATEGORY}/test/good/{n}" for n in names)
    assert len(model_runs) - runs == 2  # 000.png was already judged in this session
