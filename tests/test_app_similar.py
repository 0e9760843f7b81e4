"""The Similar defects page: gallery of past defects, five similar cases, link from Inspect."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import TINY_CATEGORY
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore")

K = 5


def open_similar(at):
    at.run()
    at.switch_page("pages/similar_defects.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def similarity_captions(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("similarity ")]


def test_clicking_a_past_defect_lists_five_similar_cases(app_test, app_index):
    at = open_similar(app_test())
    assert at.selectbox(key="similar_category").value == TINY_CATEGORY
    buttons = [b for b in at.button if (b.key or "").startswith("similar:")]
    assert len(buttons) >= 1  # the gallery: anomalous test images
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.session_state["similar_hits"]) == K
    captions = similarity_captions(at)
    assert len(captions) == K
    scores = [float(c.split()[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)  # best first
    # The page says how the cases are ordered (learned from the gallery's labels, or plain cosine).
    assert len([c for c in at.caption if c.value.startswith("Ranked by ")]) == 1
    # Each case shows its picture and its heatmap.
    assert len(at.get("image")) >= 2 * (K + 1)
    # "Only past defects" leaves good parts out.
    at.toggle(key="similar_only_defects").set_value(True).run()
    captions = similarity_captions(at)
    assert len(captions) == K and all(" · anomalous" in c for c in captions)


def test_gallery_filters_by_defect_type(app_test, app_index):
    at = open_similar(app_test())
    key = f"similar_type:patchcore:{TINY_CATEGORY}"
    types = [t for t in at.selectbox(key=key).options if t != "All"]
    assert "crack" in types
    at.selectbox(key=key).set_value("crack").run()
    gallery_captions = [c.value for c in at.caption if c.value.startswith("crack ·")]
    assert gallery_captions and len(gallery_captions) == len([b for b in at.button if (b.key or "").startswith("similar:")])


def test_inspect_link_opens_the_similar_cases_of_an_upload(app_test, app_index, app_home):
    from core.history import History

    # A defect image changed by one pixel: a new upload (not byte-identical to the dataset file).
    path = sorted((app_home / "demo_data" / TINY_CATEGORY / "test" / "crack").glob("*.png"))[0]
    arr = np.array(Image.open(path).convert("RGB"))
    arr[0, 0] = (arr[0, 0].astype(int) + 7) % 256
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    at = app_test()
    at.run()
    at.file_uploader(key="inspect_upload").upload("new_part.png", buf.getvalue(), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    entry = next(iter(at.session_state["inspections"].values()))
    if entry.result.prediction.score < 0.5:
        pytest.skip("the tiny model judged this upload GOOD")
    link = next(link for link in at.get("page_link") if "similar" in link.proto.page)
    # The DEFECT upload joined the index and the history knows its point.
    assert entry.result.point_id
    assert History().get(entry.result.inspection_id).point_id == entry.result.point_id

    for part in link.proto.query_string.split("&"):
        name, _, value = part.partition("=")
        at.query_params[name] = value
    at.switch_page("pages/similar_defects.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(similarity_captions(at)) == K
    assert any("Query: new_part.png" in m.value for m in at.markdown)

    # It is in the gallery of past defects too, as an inspected upload.
    at.button(key="similar_clear").click().run()
    assert any(c.value.startswith("inspected ·") or "inspected upload" in c.value for c in at.caption)


def test_without_an_index_the_page_says_how_to_build_it(app_test, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(tmp_path / "empty_qdrant"))
    at = open_similar(app_test())
    text = " ".join(i.value for i in at.info)
    assert f"python -m core index --model patchcore --category {TINY_CATEGORY}" in text
    assert not similarity_captions(at)
    assert [b for b in at.button if b.label.startswith("Build the index")]
