"""The layout check names the problem before training starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.layout import check_layout, file_list_hash, list_categories
from core.errors import DatasetError


def _png(path: Path, size: int = 32, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(np.full(shape, 128, np.uint8), mode).save(path)


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    cat = tmp_path / "widget"
    for i in range(3):
        _png(cat / "train" / "good" / f"{i:03d}.png")
    _png(cat / "test" / "good" / "000.png")
    _png(cat / "test" / "scratch" / "000.png")
    _png(cat / "ground_truth" / "scratch" / "000_mask.png", mode="L")
    return tmp_path


def test_valid_layout_counts(layout: Path) -> None:
    report = check_layout(layout, "widget")
    assert report.n_train == 3 and report.n_test == 2
    assert report.defect_types == ["scratch"]
    assert list_categories(layout) == ["widget"]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        check_layout(tmp_path / "nowhere", "widget")


def test_unknown_category_lists_found_ones(layout: Path) -> None:
    with pytest.raises(DatasetError, match="categories found: widget"):
        check_layout(layout, "gadget")


def test_missing_train_good(layout: Path) -> None:
    shutil.rmtree(layout / "widget" / "train" / "good")
    with pytest.raises(DatasetError, match="train/good is missing"):
        check_layout(layout, "widget")


def test_empty_train_good(layout: Path) -> None:
    for f in (layout / "widget" / "train" / "good").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="empty"):
        check_layout(layout, "widget")


def test_defect_without_mask(layout: Path) -> None:
    (layout / "widget" / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(DatasetError, match="has no mask"):
        check_layout(layout, "widget")


def test_non_png_file(layout: Path) -> None:
    Image.new("RGB", (32, 32)).save(layout / "widget" / "train" / "good" / "004.jpg")
    with pytest.raises(DatasetError, match="not a PNG"):
        check_layout(layout, "widget")


def test_empty_defect_folder(layout: Path) -> None:
    (layout / "widget" / "test" / "dent").mkdir()
    with pytest.raises(DatasetError, match="empty folder"):
        check_layout(layout, "widget")


def test_truncated_image(layout: Path) -> None:
    path = layout / "widget" / "train" / "good" / "001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="unreadable image"):
        check_layout(layout, "widget")


def test_grayscale_and_large_images_pass(tmp_path: Path) -> None:
    """grid is 1024x1024 grayscale in the real dataset: the check accepts it and reports the mode."""
    cat = tmp_path / "grid"
    _png(cat / "train" / "good" / "000.png", size=1024, mode="L")
    _png(cat / "test" / "good" / "000.png", size=1024, mode="L")
    report = check_layout(tmp_path, "grid")
    assert report.modes == {"L"} and report.image_size == (1024, 1024)


def test_file_list_hash_changes_with_files(layout: Path) -> None:
    before = file_list_hash(layout, "widget")
    _png(layout / "widget" / "train" / "good" / "009.png")
    assert file_list_hash(layout, "widget") != before
