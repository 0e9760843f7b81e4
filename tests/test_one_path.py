"""One inspection path: the Inspect page, the REST API and the ``inspect`` command judge, record and
index the same images the same way, because all three call ``core.services.inspection``.

The same three uploads go through each entry into a workspace of its own (history and
similar-defect store copied from the session's): a defect and a good part of the model's category,
and a part of another category. Each entry's history rows and gallery membership must equal what
the service itself writes, and the other category's part, judged DEFECT, is kept in the history,
marked, and left out of the gallery.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore")

ENTRIES = ("page", "api", "command")


def _changed(path: Path) -> bytes:
    """The image with one pixel changed: an upload no dataset point holds byte for byte."""
    arr = np.array(Image.open(path).convert("RGB"))
    arr[0, 0] = (arr[0, 0].astype(int) + 7) % 256
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def uploads(app_home: Path) -> dict[str, bytes]:
    root = app_home / "demo_data"
    pick = {
        "defect.png": sorted((root / TINY_CATEGORY / "test").glob("crack/*.png"))[0],
        "good.png": sorted((root / TINY_CATEGORY / "test" / "good").glob("*.png"))[0],
        "other_category.png": sorted((root / "grid" / "test" / "good").glob("*.png"))[0],
    }
    return {name: _changed(path) for name, path in pick.items()}


@pytest.fixture
def workspace(app_env: Path, app_index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private history and a copy of the session's similar-defect store, over its models and data."""
    store = tmp_path / "qdrant"
    shutil.copytree(app_env / "qdrant", store, ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(store))
    monkeypatch.setenv("INSPECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("INSPECT_API_KEY", raising=False)
    return tmp_path


def _rows() -> dict[str, tuple]:
    """Per uploaded image (by content): what the history holds and whether the gallery does."""
    from core.history import History

    out = {}
    for r in History().list():
        out[r.sha256] = (r.verdict, round(r.score, 5), r.threshold, bool(r.wrong_category), r.point_id is not None, r.model)
    return out


def _through_the_service(uploads: dict[str, bytes]) -> None:
    from core.history import History
    from core.services import inspection

    detector = inspection.load_detector("patchcore", TINY_CATEGORY)
    items = [(name, inspection.load_image(data, name), inspection.sha256_of(data)) for name, data in uploads.items()]
    inspection.inspect_images(detector, items, history=History())


def _through(entry: str, uploads: dict[str, bytes], app_test, folder: Path) -> None:
    if entry == "page":
        at = app_test()
        at.run()
        at.file_uploader(key="inspect_upload").set_value([(n, d, "image/png") for n, d in uploads.items()]).run()
        assert not at.exception, [e.value for e in at.exception]
    elif entry == "api":
        from fastapi.testclient import TestClient

        from core.api.app import create_api

        files = [("images", (n, d, "image/png")) for n, d in uploads.items()]
        answer = TestClient(create_api()).post("/v1/inspect/batch", files=files, data={"category": TINY_CATEGORY})
        assert answer.status_code == 200, answer.text
    else:
        from core.cli import main

        folder.mkdir()
        for name, data in uploads.items():
            (folder / name).write_bytes(data)
        assert main(["inspect", str(folder), "--category", TINY_CATEGORY, "--model", "patchcore"]) == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_page_api_and_command_record_and_index_alike(
    entry: str, uploads: dict[str, bytes], workspace: Path, app_test, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(workspace / "reference.sqlite"))
    _through_the_service(uploads)
    expected = _rows()
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(workspace / f"{entry}.sqlite"))
    _through(entry, uploads, app_test, workspace / "folder")
    assert _rows() == expected
    from core.services.inspection import sha256_of

    foreign = expected[sha256_of(uploads["other_category.png"])]
    assert foreign[0] == "DEFECT" and foreign[3] is True and foreign[4] is False  # marked, kept out of the gallery
    defect = expected[sha256_of(uploads["defect.png"])]
    assert defect[0] == "DEFECT" and defect[3] is False and defect[4] is True  # in the gallery


def test_a_marked_inspection_joins_the_gallery_only_once_confirmed(uploads: dict[str, bytes], workspace: Path) -> None:
    from core.history import History
    from core.services import inspection

    detector = inspection.load_detector("patchcore", TINY_CATEGORY)
    data = uploads["other_category.png"]
    history = History()
    (result,) = inspection.inspect_images(
        detector, [("other.png", inspection.load_image(data, "other.png"), inspection.sha256_of(data))], history=history
    )
    assert result.wrong_category and result.point_id is None and "History page" in result.notes[-1]
    assert history.list_unindexed_defects() == []  # `index` does not catch it up behind the person's back
    point, _ = inspection.add_to_gallery(history, result.inspection_id)
    record = history.get(result.inspection_id)
    assert point and record.point_id == point and record.wrong_category is False
