"""Dashboard reliability and safety, driven with Streamlit's AppTest.

* A damaged history costs the record, not the verdict: the Inspect page shows the verdict and says
  beside it that this inspection was not recorded, and the file is left byte for byte as it was.
* User-provided names are shown as text: a file name written in Markdown (an image that would make
  every viewer's browser fetch a URL) is escaped on the Inspect and Similar pages.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY
from PIL import Image
from test_reliability_history import make_damaged_history

pytestmark = pytest.mark.filterwarnings("ignore")

MARKDOWN_NAME = "![i](http://127.0.0.1:9/x.png) [link](http://127.0.0.1:9/) _part_.png"
ESCAPED = r"\!\[i\]\(http://127.0.0.1:9/x.png\) \[link\]\(http://127.0.0.1:9/\) \_part\_.png"
# Markdown that would still render: "[", "]", "(", ")" or "!" not preceded by a backslash.
UNESCAPED = re.compile(r"(?<!\\)[\[\]()!]")


def no_exceptions(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def verdicts(at) -> list[str]:
    return ["DEFECT" if "inspect-defect" in md.value else "GOOD" for md in at.markdown if "inspect-verdict" in md.value]


def image_captions(at) -> list[str]:
    return [img.caption for el in at.get("image") for img in el.proto.imgs]


def new_upload(app_home: Path, folder: str = "good") -> bytes:
    """A test image changed by one pixel: an upload the index does not hold byte for byte."""
    path = sorted((app_home / "demo_data" / TINY_CATEGORY / "test" / folder).glob("*.png"))[0]
    arr = np.array(Image.open(path).convert("RGB"))
    arr[0, 0] = (arr[0, 0].astype(int) + 11) % 256
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def upload(at, name: str, data: bytes):
    at.run()
    no_exceptions(at)
    at.file_uploader(key="inspect_upload").upload(name, data, "image/png")
    at.run()
    no_exceptions(at)
    return at


def test_damaged_history_keeps_the_verdict_and_says_it_was_not_recorded(app_test, app_home, tmp_path, monkeypatch):
    db = tmp_path / "history.sqlite"
    damaged = make_damaged_history(db)
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(db))
    at = upload(app_test(), "part.png", new_upload(app_home))
    assert len(verdicts(at)) == 1
    warnings = [w.value for w in at.warning]
    assert any("not recorded" in w and "damaged" in w and "move it aside" in w for w in warnings), warnings
    assert not at.error, [e.value for e in at.error]
    entry = next(iter(at.session_state["inspections"].values()))
    assert entry.result.inspection_id is None
    # Reruns keep saying it, and still write nothing.
    at.slider(key="inspect_opacity").set_value(0.8).run()
    assert any("not recorded" in w.value for w in at.warning)
    assert db.read_bytes() == damaged
    # The History page says the same file is damaged and left untouched.
    at.switch_page("pages/inspection_history.py").run()
    no_exceptions(at)
    assert "damaged" in at.error[0].value and "left untouched" in at.error[0].value
    assert db.read_bytes() == damaged


def test_markdown_in_an_upload_name_is_shown_as_text(app_test, app_home, app_index):
    data = new_upload(app_home)
    at = upload(app_test(), MARKDOWN_NAME, data)
    assert len(verdicts(at)) == 1
    caption = next(c for c in image_captions(at) if "127.0.0.1" in c)
    assert caption.startswith(ESCAPED + " ("), caption  # then the image size
    assert not UNESCAPED.search(caption[: len(ESCAPED)])

    # The Similar page's query heading, reached as the Inspect page's link reaches it.
    for name, value in {"model": "patchcore", "category": TINY_CATEGORY, "sha": hashlib.sha256(data).hexdigest()}.items():
        at.query_params[name] = value
    at.switch_page("pages/similar_defects.py").run()
    no_exceptions(at)
    heading = next(m.value for m in at.markdown if m.value.startswith("**Query:"))
    assert heading == f"**Query: {ESCAPED}**"
    assert not UNESCAPED.search(heading)


def test_markdown_in_a_bad_file_name_is_shown_as_text(app_test):
    name = "![i](http://127.0.0.1:9/x.png).png"
    at = upload(app_test(), name, b"not an image at all\n" * 8)
    assert len(at.error) == 1
    message = at.error[0].value
    assert r"\!\[i\]\(http://127.0.0.1:9/x.png\).png" in message, message
    assert name not in message
