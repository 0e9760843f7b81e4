"""The Inspect page, driven with Streamlit's AppTest against a tiny trained PatchCore.

Covers: an upload gets a verdict and one history record; the threshold slider re-judges without
running the model again; bad files give a clear error and the app keeps working; feedback is
saved; a DEFECT verdict links to its similar cases; an untrained model says how to train it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore")


def verdicts(at) -> list[str]:
    """The verdict badges on the page ('GOOD' / 'DEFECT')."""
    out = []
    for md in at.markdown:
        if "inspect-verdict" in md.value:
            out.append("DEFECT" if "inspect-defect" in md.value else "GOOD")
    return out


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def scored_images(app_home: Path, tiny_patchcore) -> list[tuple[Path, float]]:
    """Every tile test image with the tiny model's normalised score."""
    from core.data.image_io import load_image
    from core.inference.detector import load_detector
    from core.settings import get_settings

    detector = load_detector("patchcore", TINY_CATEGORY, models_dir=get_settings().models_dir)
    root = app_home / "demo_data" / TINY_CATEGORY / "test"
    return [(p, detector.predict(load_image(p)).score) for p in sorted(root.glob("*/*.png"))]


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def open_upload(at):
    at.run()
    no_exceptions(at)
    assert at.radio(key="inspect_source").value == "Upload"
    return at.file_uploader(key="inspect_upload")


def history_count() -> int:
    from core.history import History

    return History().count()


@pytest.fixture
def model_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """A spy on ``core.services.inspection.inspect_images``, the one path that runs a model on
    inspected images (page, API and command alike): one (model, category) per image judged."""
    from core.services import inspection

    runs: list[tuple[str, str]] = []
    real = inspection.inspect_images

    def spy(detector, images, **kwargs):
        runs.extend((detector.meta.model, detector.meta.category) for _ in images)
        return real(detector, images, **kwargs)

    monkeypatch.setattr(inspection, "inspect_images", spy)
    return runs


def test_upload_gives_a_verdict_and_one_history_record(app_test, scored_images, model_runs):
    path = next(p for p, _ in scored_images if p.parent.name != "good")
    at = app_test()
    before = history_count()
    open_upload(at).upload(path.name, path.read_bytes(), "image/png")
    at.run()
    no_exceptions(at)
    assert not at.error, [e.value for e in at.error]
    assert len(verdicts(at)) == 1
    assert len(model_runs) == 1  # the model ran once, for this upload
    assert [m.label for m in at.metric][:3] == ["Anomaly score", "Threshold", "Inference"]
    assert any("Threshold calibrated on" in c.value for c in at.caption)
    assert len(at.get("image")) == 3  # the image, its heatmap and the defect region
    assert history_count() == before + 1
    # Reruns (any widget interaction) neither re-run the model nor record the image again.
    at.slider(key="inspect_opacity").set_value(0.8).run()
    at.run()
    assert len(model_runs) == 1
    assert history_count() == before + 1


def test_threshold_rejudges_without_running_the_model(app_test, scored_images, model_runs):
    # An image the model does not score as certain (score < 1), so a threshold of 1.0 clears it.
    path, score = max(((p, s) for p, s in scored_images if s < 0.99), key=lambda t: t[1])
    at = app_test()
    at.run()
    at.radio(key="inspect_source").set_value("Test set").run()
    at.selectbox(key=f"inspect_test_type:{TINY_CATEGORY}").set_value(path.parent.name).run()
    at.multiselect(key=f"inspect_test_image:{TINY_CATEGORY}:{path.parent.name}").set_value([path.name]).run()
    no_exceptions(at)
    calls = len(model_runs)
    assert verdicts(at) == ["DEFECT" if score >= 0.5 else "GOOD"]

    at.slider(key="inspect_threshold").set_value(0.0).run()
    assert verdicts(at) == ["DEFECT"]
    low_caption = next(c.value for c in at.caption if c.value.startswith("Raw score"))
    at.slider(key="inspect_threshold").set_value(1.0).run()
    assert verdicts(at) == ["GOOD"]
    high_caption = next(c.value for c in at.caption if c.value.startswith("Raw score"))
    assert low_caption != high_caption  # the raw threshold follows the slider

    # Same Prediction, re-judged: no model call at all.
    assert len(model_runs) == calls
    no_exceptions(at)


BAD_FILES = {
    "text renamed .png": ("notes.png", b"this is a text file, not an image\n" * 10),
    "truncated PNG": ("cut.png", None),
    "1x1 pixel": ("dot.png", png_bytes(np.zeros((1, 1, 3), np.uint8))),
    "empty file": ("empty.png", b""),
}


def _truncated_png() -> bytes:
    rng = np.random.default_rng(0)
    data = png_bytes(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    return data[: len(data) // 2]


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_give_a_clear_error(app_test, case):
    name, data = BAD_FILES[case]
    data = _truncated_png() if data is None else data
    at = app_test()
    before = history_count()
    open_upload(at).upload(name, data, "image/png")
    at.run()
    no_exceptions(at)
    assert len(at.error) == 1 and name in at.error[0].value, [e.value for e in at.error]
    assert verdicts(at) == []
    assert history_count() == before
    # The app keeps running: the history page still opens.
    at.switch_page("pages/inspection_history.py").run()
    no_exceptions(at)


def test_unusual_but_valid_images_are_inspected(app_test):
    """16-bit grayscale, RGBA and a 12000x12000 frame: a verdict, not a crash."""
    rng = np.random.default_rng(1)
    gray16 = (rng.integers(0, 65535, (160, 160), dtype=np.uint16)).astype(np.uint16)
    buf16 = io.BytesIO()
    Image.fromarray(gray16).save(buf16, format="PNG")  # mode I;16
    rgba = png_bytes(rng.integers(0, 255, (140, 140, 4), dtype=np.uint8), mode="RGBA")
    big = io.BytesIO()
    Image.new("L", (12000, 12000), 128).save(big, format="PNG")
    at = app_test()
    uploader = open_upload(at)
    for name, data in (("gray16.png", buf16.getvalue()), ("rgba.png", rgba), ("huge.png", big.getvalue())):
        uploader = at.file_uploader(key="inspect_upload")
        uploader.set_value((name, data, "image/png"))
        at.run()
        no_exceptions(at)
        if at.error:  # allowed: a clear one-line message naming the file
            assert name in at.error[0].value
        else:
            assert len(verdicts(at)) == 1, name


def test_feedback_is_saved(app_test, scored_images):
    from core.history import History

    path = scored_images[0][0]
    at = app_test()
    open_upload(at).upload("feedback_case.png", path.read_bytes(), "image/png")
    at.run()
    no_exceptions(at)
    record_id = next(e.result.inspection_id for e in at.session_state["inspections"].values() if e.result)
    at.text_input(key=f"comment:{record_id}").set_value("glare on the left").run()
    at.button(key=f"feedback:false_alarm:{record_id}").click().run()
    no_exceptions(at)
    rec = History().get(record_id)
    assert rec.feedback == "false_alarm"
    assert rec.comment == "glare on the left"


def test_defect_links_to_its_similar_cases(app_test, scored_images):
    path = next(p for p, s in scored_images if s >= 0.5)
    at = app_test()
    open_upload(at).upload(path.name, path.read_bytes(), "image/png")
    at.run()
    assert verdicts(at) == ["DEFECT"]
    links = [link for link in at.get("page_link") if "similar" in link.proto.page]
    assert len(links) == 1
    query = links[0].proto.query_string
    assert "model=patchcore" in query and f"category={TINY_CATEGORY}" in query and "sha=" in query
    # A GOOD verdict (threshold at the top) offers no such link.
    at.slider(key="inspect_threshold").set_value(1.0).run()
    if verdicts(at) == ["GOOD"]:
        assert not [link for link in at.get("page_link") if "similar" in link.proto.page]


def test_untrained_model_says_how_to_train_it(app_test):
    at = app_test()
    at.run()
    at.selectbox(key="inspect_category").set_value("leather").run()
    no_exceptions(at)
    text = " ".join(m.value for m in at.markdown)
    assert "python -m core train --model patchcore --category leather" in text
    assert "python -m core train --model efficientad --category leather" in text
    labels = [b.label for b in at.button]
    assert "Train PatchCore on 'leather'" in labels
    assert verdicts(at) == []
    # EfficientAD's cost is stated before anyone starts it: steps, minutes, the flag for more
    from core.models.efficientad.model import default_steps

    note = next(c.value for c in at.caption if "EfficientAD trains for" in c.value)
    assert f"{default_steps():,} steps" in note
    if "No GPU" in note:
        assert " min " in note and "--steps N" in note
