"""core.inference.overlay: calibrated heatmaps are not stretched, contours follow the threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.inference.overlay import (
    defect_contours,
    defect_mask,
    heatmap,
    heatmap_overlay,
    thumbnail,
    to_png_bytes,
)


@pytest.fixture
def grey() -> np.ndarray:
    return np.full((120, 160, 3), 128, dtype=np.uint8)


def _red(img: Image.Image) -> np.ndarray:
    """Pixels that are clearly red (hot)."""
    a = np.asarray(img).astype(int)
    return (a[..., 0] > a[..., 2] + 60) & (a[..., 0] > a[..., 1] + 30)


def _blue(img: Image.Image) -> np.ndarray:
    a = np.asarray(img).astype(int)
    return a[..., 2] > a[..., 0] + 60


def test_overlay_shape_and_type(grey: np.ndarray) -> None:
    out = heatmap_overlay(grey, np.random.default_rng(0).random((32, 32)), opacity=0.5)
    assert isinstance(out, Image.Image)
    assert out.mode == "RGB"
    assert out.size == (160, 120)  # map resized to the image


def test_zero_map_is_cool_and_ones_map_is_hot(grey: np.ndarray) -> None:
    cool = heatmap_overlay(grey, np.zeros((64, 64), np.float32), opacity=0.6)
    assert not _red(cool).any()
    assert _blue(cool).all()
    hot = heatmap_overlay(grey, np.ones((64, 64), np.float32), opacity=0.6)
    assert _red(hot).all()


def test_no_per_image_normalisation(grey: np.ndarray) -> None:
    # A good part: low scores with a little noise. Min-max stretching would paint its maximum red.
    rng = np.random.default_rng(1)
    good = 0.1 + 0.05 * rng.random((64, 64))
    assert not _red(heatmap_overlay(grey, good, opacity=1.0)).any()
    # The same colours for the same values whatever else is in the map.
    two = np.zeros((64, 64))
    two[:, 32:] = 0.2
    three = two.copy()
    three[0, 0] = 1.0
    a = np.asarray(heatmap(two, (64, 64)))
    b = np.asarray(heatmap(three, (64, 64)))
    assert np.array_equal(a[10:, 40:], b[10:, 40:])


def test_opacity_extremes(grey: np.ndarray) -> None:
    amap = np.ones((16, 16))
    assert np.array_equal(np.asarray(heatmap_overlay(grey, amap, opacity=0.0)), grey)
    full = np.asarray(heatmap_overlay(grey, amap, opacity=1.0))
    assert np.array_equal(full, np.asarray(heatmap(amap, (160, 120))))


def test_vmin_vmax_and_odd_inputs(grey: np.ndarray) -> None:
    raw = np.full((1, 1, 16, 16), 7.0)  # batch/channel dims, raw scores
    assert _red(heatmap_overlay(grey, raw, vmin=0.0, vmax=7.0, opacity=1.0)).all()
    assert _blue(heatmap_overlay(grey, raw, vmin=7.0, vmax=20.0, opacity=1.0)).all()
    with pytest.raises(ValueError):
        heatmap_overlay(grey, raw, vmin=1.0, vmax=1.0)
    nan_map = np.full((16, 16), np.nan)
    assert not _red(heatmap_overlay(grey, nan_map, opacity=1.0)).any()


def test_contours_only_where_map_reaches_threshold(grey: np.ndarray) -> None:
    amap = np.zeros((120, 160), np.float32)
    amap[40:80, 60:110] = 0.8  # one defect region
    amap[5:15, 5:15] = 0.45  # just below the threshold: no contour
    out = np.asarray(defect_contours(grey, amap, threshold=0.5, color=(255, 0, 0), thickness=2))
    drawn = np.all(out == (255, 0, 0), axis=-1)
    assert drawn.any()
    region = amap >= 0.5
    assert not (drawn & ~region).any()  # nothing drawn outside the region
    assert not drawn[5:15, 5:15].any()
    # an outline, not a fill: the inside of the region is untouched, the border is drawn
    assert np.all(out[50:70, 70:100] == 128)
    assert drawn[40, 60:110].all() and drawn[41, 60:110].all() and not drawn[42, 70:100].any()
    assert drawn[40:80, 60].all()
    # nothing above the threshold: image unchanged
    calm = np.asarray(defect_contours(grey, amap * 0.5, threshold=0.5))
    assert np.array_equal(calm, grey)


def test_contours_on_resized_map_and_image_edge(grey: np.ndarray) -> None:
    small = np.zeros((12, 16), np.float32)
    small[:, 8:] = 1.0  # right half, touching the image edge
    out = np.asarray(defect_contours(grey, small, thickness=1, color=(0, 255, 0)))
    assert out.shape == (120, 160, 3)
    drawn = np.all(out == (0, 255, 0), axis=-1)
    mask = defect_mask(small, (160, 120))
    assert not (drawn & ~mask).any()
    assert drawn[:, -1].all()  # closed along the image edge
    assert drawn[0, 100:150].all()


def test_png_bytes_and_thumbnail(grey: np.ndarray) -> None:
    data = to_png_bytes(Image.fromarray(grey))
    assert data.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(data)).size == (160, 120)
    assert to_png_bytes(grey) == data
    big = np.zeros((600, 1000, 3), np.uint8)
    thumb = thumbnail(big, size=256)
    assert thumb.size == (256, 154) and thumb.mode == "RGB"
    assert thumbnail(grey, size=256).size == (160, 120)  # never enlarged
