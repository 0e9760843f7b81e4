"""What the inspector sees: heatmap overlay, defect contours, thumbnails.

The drawing reuses anomalib's own visualisation helpers
(``anomalib.visualization.image.functional``): its jet colormap (:func:`apply_colormap`) and its
alpha compositing (:func:`overlay_image`), so Inspect's pictures look like anomalib's. They are
imported lazily, inside the functions that need them: importing anomalib pulls in torch and
Lightning (seconds), and pages that only show thumbnails or history should not pay for that.

The anomaly maps handed to this module are *calibrated*: 0..1, with 0.5 at the model's threshold,
comparable across images. They are therefore mapped to colours with a fixed range
(``vmin``..``vmax``), never min-max stretched per image, so a good part stays blue and a bad one
turns red; a per-image stretch would paint the strongest noise of a perfect part red.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RGB = tuple[int, int, int]


def heatmap(
    anomaly_map: Any,
    size: tuple[int, int] | None = None,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Image.Image:
    """The anomaly map alone as a jet-coloured RGB image; ``size`` is ``(width, height)``."""
    from anomalib.visualization.image.functional import apply_colormap

    amap = _as_map(anomaly_map)
    if size is not None:
        amap = _resize_map(amap, size)
    # Deliberate departure from anomalib's visualize_anomaly_map: it would either min-max normalise
    # (normalize=True, wrong for calibrated maps) or cast floats with `* 255` only when max <= 1
    # (np_to_pil_image), which makes a map with one value above 1 wrap around. We scale by the
    # fixed vmin..vmax range and clip, then use anomalib's colormap on the 8-bit result.
    span = float(vmax) - float(vmin)
    if not np.isfinite(span) or span <= 0:
        msg = f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}"
        raise ValueError(msg)
    scaled = (amap - float(vmin)) * (255.0 / span)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    gray = Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    return apply_colormap(gray)


def heatmap_overlay(
    image_rgb: Any,
    anomaly_map: Any,
    *,
    opacity: float = 0.5,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Image.Image:
    """The image with the jet-coloured anomaly map blended on top, as an RGB PIL image.

    ``opacity`` 0 shows the image only, 1 the heatmap only. The map (any 2-D shape, e.g. the
    model's 256x256 output; singleton dimensions and torch tensors are fine) is resized to the
    image. It is *not* normalised per image: values are placed on the colormap by ``vmin``..``vmax``
    (default 0..1, where 0.5 is the model's threshold).
    """
    from anomalib.visualization.image.functional import overlay_image

    base = _as_pil_rgb(image_rgb)
    # The map is resized (bilinear, as a float array) *before* colouring, so the colours are exact
    # at full resolution; anomalib's overlay_image would instead resize the coloured picture.
    colour = heatmap(anomaly_map, base.size, vmin=vmin, vmax=vmax)
    alpha = min(max(float(opacity), 0.0), 1.0)
    return overlay_image(base, colour, alpha=alpha).convert("RGB")


def defect_mask(anomaly_map: Any, size: tuple[int, int] | None = None, threshold: float = 0.5) -> np.ndarray:
    """Boolean ``(H, W)`` mask of where the (resized) map is at or above ``threshold``."""
    amap = _as_map(anomaly_map)
    if size is not None:
        amap = _resize_map(amap, size)
    return amap >= float(threshold)


@dataclass(frozen=True)
class Region:
    """One connected region of the map at or above the threshold, as a box in *image* pixels."""

    x: int
    y: int
    width: int
    height: int
    peak: float  # the highest (calibrated) map value inside it


def defect_regions(anomaly_map: Any, image_size: tuple[int, int], threshold: float = 0.5) -> list[Region]:
    """The regions of the map at or above ``threshold``, boxed in the image's pixels, highest first.

    ``image_size`` is (width, height) of the image the map belongs to: a model-resolution map
    (256 px) is resized to it first, a tiled model's map is already at full size. 8-connected, so
    a defect that straddles two tiles of a stitched map is one region.
    """
    import cv2

    amap = _as_map(anomaly_map)
    if amap.shape[::-1] != tuple(image_size):
        amap = _resize_map(amap, image_size)
    mask = (amap >= float(threshold)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        peak = float(amap[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label].max())
        regions.append(Region(x, y, w, h, peak))
    return sorted(regions, key=lambda r: -r.peak)


def defect_contours(
    image_rgb: Any,
    anomaly_map: Any,
    threshold: float = 0.5,
    *,
    color: RGB = (255, 0, 0),
    thickness: int = 2,
) -> Image.Image:
    """The image with the outlines of every region where the map is >= ``threshold``.

    The outline is a band ``thickness`` px wide lying *inside* each region (holes get an inner
    outline too; a region touching the image edge is closed along the edge), so no pixel below the
    threshold is ever painted. Pass a heatmap overlay as ``image_rgb`` to get both in one picture.
    """
    import cv2

    base = _as_pil_rgb(image_rgb)
    mask = defect_mask(anomaly_map, base.size, threshold).astype(np.uint8)
    # Deliberate departure from anomalib's visualize_mask(mode="contour"): it traces edges with a
    # 3x3 FIND_EDGES filter, a 1 px line with no thickness control that straddles the region's
    # border and is not drawn where a region meets the image edge. An inner band (mask minus its
    # erosion, with the outside of the image counting as background) fixes all three.
    t = max(1, int(thickness))
    kernel = np.ones((2 * t + 1, 2 * t + 1), np.uint8)  # erodes t px from every side
    eroded = cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    band = (mask > 0) & (eroded == 0)
    out = np.array(base, dtype=np.uint8)  # a writable copy
    out[band] = np.asarray(color, dtype=np.uint8)[:3]
    return Image.fromarray(out, mode="RGB")


def to_png_bytes(img: Image.Image | np.ndarray) -> bytes:
    """PNG-encode a PIL image or an array (for download buttons and storage)."""
    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def thumbnail(image_rgb: Image.Image | np.ndarray, size: int = 256) -> Image.Image:
    """A copy no larger than ``size`` px on its long side (aspect kept, never enlarged), RGB."""
    pil = _as_pil_rgb(image_rgb).copy()
    pil.thumbnail((int(size), int(size)), Image.Resampling.LANCZOS)
    return pil


# --- helpers ---------------------------------------------------------------------------------


def _as_pil_rgb(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]), mode="RGB")
    msg = f"expected an image of shape (H, W, 3) or (H, W), got {arr.shape}"
    raise ValueError(msg)


def _as_map(anomaly_map: Any) -> np.ndarray:
    if hasattr(anomaly_map, "detach"):  # torch tensor, without importing torch here
        anomaly_map = anomaly_map.detach().cpu().numpy()
    amap = np.asarray(anomaly_map, dtype=np.float32).squeeze()
    if amap.ndim != 2:
        msg = f"expected a 2-D anomaly map, got shape {np.shape(anomaly_map)}"
        raise ValueError(msg)
    return np.nan_to_num(amap, nan=0.0, posinf=np.float32(3.4e38), neginf=0.0)


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    width, height = int(size[0]), int(size[1])
    if amap.shape == (height, width):
        return amap.copy()
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)
