"""A deterministic generator of a small MVTec-AD-layout dataset: tile, leather and grid.

Why it exists: the app has to be demonstrable on a machine with no internet and no copy of MVTec
AD, so it synthesises three texture categories modelled on MVTec AD's (same names, same defect
types, same folder layout, same image modes) and writes them where the rest of Inspect expects a
dataset. Nothing here is a model of the real photographs; it is a fair, non-trivial stand-in whose
ground truth is exact.

Layout (MVTec AD exactly)::

    ROOT/CATEGORY/train/good/000.png ...
    ROOT/CATEGORY/test/good/000.png ...
    ROOT/CATEGORY/test/DEFECT/000.png ...
    ROOT/CATEGORY/ground_truth/DEFECT/000_mask.png   (mode 'L', values 0/255)

Design choices:

* Every sample is rendered twice from one seed: the clean texture, then the same texture with the
  defect. The mask is the defect's drawn footprint restricted to the pixels it actually changed,
  and the defective image is forced back to the clean one outside it, so *a mask pixel is 255 iff
  the defect changed that pixel* (:func:`render_sample` returns the clean image so tests can
  check this).
* Seeds per file come from ``(seed, category, split, defect, index)`` through a hash, never from
  iteration order, so asking for more images, fewer categories or another order leaves the files
  that exist in both runs byte-identical.
* ``ROOT/.inspect_demo.json`` records the parameters each category was written with; a re-run with
  the same parameters skips complete categories (the app's set-up calls this on every start).
* Everything is vectorised numpy/OpenCV; the default dataset (390 images of 256 px) takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.errors import DatasetError
from core.files import write_atomically
from core.settings import DEMO_CATEGORIES

__all__ = [
    "DEFECT_TYPES",
    "GRAYSCALE_CATEGORIES",
    "MARKER_NAME",
    "MAX_DEFECT_FRACTION",
    "MIN_DEFECT_FRACTION",
    "DRIFTS",
    "Drift",
    "expected_counts",
    "generate_demo_dataset",
    "generate_drifted_set",
    "generate_hires_dataset",
    "HIRES_CATEGORY",
    "HIRES_DEFECT_TYPES",
    "render_hires_sample",
    "summary",
    "render_sample",
]

#: Defect types per category: MVTec AD's own names for tile, leather and grid.
DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "tile": ("crack", "glue_strip", "gray_stroke", "oil", "rough"),
    "leather": ("color", "cut", "fold", "glue", "poke"),
    "grid": ("bent", "broken", "glue", "metal_contamination", "thread"),
}

#: Categories saved as single-channel 'L' PNGs, as the real MVTec AD grid is.
GRAYSCALE_CATEGORIES: frozenset[str] = frozenset({"grid"})

#: Bounds on a defect's area as a fraction of the image: visible, yet local.
MIN_DEFECT_FRACTION = 0.003
MAX_DEFECT_FRACTION = 0.06

#: The marker file in the output root that makes generation idempotent.
MARKER_NAME = ".inspect_demo.json"

#: Bump when the rendering changes, so that old datasets are regenerated rather than reused.
GENERATOR_VERSION = 1

MIN_SIZE = 64
_MAX_ATTEMPTS = 40  # redraws of a defect whose area falls outside the bounds (rarely > 3)
_CHANGE_EPS = 0.5 / 255.0  # a drawn pixel counts as changed when it moved by >= half a grey level

Array = np.ndarray


# --------------------------------------------------------------------------------------------------
# Small vectorised helpers
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _coords(size: int) -> tuple[Array, Array]:
    """Pixel coordinate maps (X, Y), cached per size and read-only (shared by all renders)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> Array:
    """Zero-mean, unit-std Gaussian-filtered noise with correlation length ``sigma`` pixels.

    Large sigmas are drawn on a coarse grid and upsampled, which keeps every call a few ms.
    """
    h, w = shape
    if sigma < 0.3:
        out = rng.standard_normal((h, w), dtype=np.float32)
    else:
        f = max(1, int(sigma / 2.0))
        pad = 3
        small = rng.standard_normal((h // f + 2 * pad, w // f + 2 * pad), dtype=np.float32)
        small = cv2.GaussianBlur(small, (0, 0), sigma / f, borderType=cv2.BORDER_REFLECT)
        if f > 1:
            small = cv2.resize(small, (small.shape[1] * f, small.shape[0] * f), interpolation=cv2.INTER_CUBIC)
        out = np.ascontiguousarray(small[pad * f : pad * f + h, pad * f : pad * f + w])
    out = out - out.mean()
    return (out / (out.std() + 1e-8)).astype(np.float32)


def _smoothstep(edge0: float, edge1: float, x: Array) -> Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _over(base: Array, color: Array | float, alpha: Array) -> Array:
    """Alpha-composite ``color`` over ``base`` (2-D alpha broadcast over channels)."""
    a = alpha[..., None] if base.ndim == 3 and alpha.ndim == 2 else alpha
    return base * (1.0 - a) + np.asarray(color, dtype=np.float32) * a


def _blend(base: Array, other: Array, alpha: Array) -> Array:
    """``base`` where alpha=0, ``other`` where alpha=1 (2-D alpha broadcast over channels)."""
    a = alpha[..., None] if base.ndim == 3 and alpha.ndim == 2 else alpha
    return base + (other - base) * a


def _blob(
    rng: np.random.Generator,
    size: int,
    center: tuple[float, float],
    radii: tuple[float, float],
    angle: float,
    irregular: float = 0.25,
    soft: float = 0.2,
) -> Array:
    """Soft irregular ellipse in [0, 1]: the shape of stains, glue, rough patches and flecks."""
    xs, ys = _coords(size)
    dx, dy = xs - center[0], ys - center[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / radii[0]
    v = (-dx * s + dy * c) / radii[1]
    r = np.sqrt(u * u + v * v)
    wobble = _smooth_noise(rng, (size, size), max(1.0, 0.35 * min(radii)))
    r = r + irregular * np.clip(wobble, -2.0, 2.0)  # additive: no stray islands far away
    return np.clip((1.0 - r) / soft, 0.0, 1.0).astype(np.float32)


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    n_steps: int,
    step: float,
    turn_sd: float,
    curvature_sd: float = 0.0,
) -> Array:
    """A polyline from a random walk of the heading (jagged: turn_sd; smooth: curvature_sd)."""
    turns = rng.normal(0.0, turn_sd, n_steps)
    if curvature_sd > 0:
        turns = turns + np.cumsum(rng.normal(0.0, curvature_sd, n_steps))
    headings = heading + np.cumsum(turns)
    steps = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    pts = np.vstack([np.asarray(start, dtype=np.float64)[None], start + np.cumsum(steps, axis=0)])
    return pts


def _polyline(size: int, polylines: Sequence[Array], thickness: float) -> Array:
    """Anti-aliased coverage in [0, 1] of open polylines (sub-pixel precise via ``shift``)."""
    canvas = np.zeros((size, size), np.uint8)
    pts = [np.round(np.asarray(p) * 16).astype(np.int32).reshape(-1, 1, 2) for p in polylines]
    cv2.polylines(canvas, pts, False, 255, max(1, int(round(thickness))), cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255.0


def _polygon(size: int, pts: Array) -> Array:
    """Anti-aliased coverage in [0, 1] of a filled polygon."""
    canvas = np.zeros((size, size), np.uint8)
    poly = np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(canvas, [poly], 255, cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255.0


def _to_u8(img: Array) -> Array:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _centre(rng: np.random.Generator, size: int, margin: float = 0.18) -> tuple[float, float]:
    lo, hi = margin * size, (1.0 - margin) * size
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def _shade(height: Array, light_angle: float, gain: float) -> Array:
    """Directional lighting of a height map (Sobel gradient dotted with the light direction)."""
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    return gain * (gx * math.cos(light_angle) + gy * math.sin(light_angle))


# --------------------------------------------------------------------------------------------------
# Textures. Each returns a float32 image in [0, 1] (H x W x 3 RGB, or H x W for grid) and a
# context the defect painters may need (the grid re-renders itself with warped coordinates).
# --------------------------------------------------------------------------------------------------


@dataclass
class _Scene:
    image: Array  # the clean float image
    size: int
    scale: float  # size / 256: every length below is given at 256 px and multiplied by this
    grid: _GridSpec | None = None


def _tile_texture(rng: np.random.Generator, size: int) -> _Scene:
    """Terrazzo-like ceramic: light grey body, dark irregular flakes, fine speckle and grain."""
    s = size / 256.0
    shape = (size, size)
    base = np.array([0.80, 0.79, 0.76], np.float32) + rng.normal(0, 0.006, 3).astype(np.float32)
    base *= np.float32(rng.uniform(0.93, 1.05))
    body = 1.0 + 0.035 * _smooth_noise(rng, shape, 40 * s) + 0.02 * _smooth_noise(rng, shape, 9 * s)
    img = base[None, None, :] * body[..., None]

    # Dark flakes: thresholded mid-frequency noise gives irregular chips of varying size.
    chips = _smooth_noise(rng, shape, 2.6 * s) + 0.5 * _smooth_noise(rng, shape, 6 * s)
    thr = rng.uniform(1.35, 1.6)
    flake = _smoothstep(thr, thr + 0.25, chips)
    flake_tone = 0.38 + 0.07 * _smooth_noise(rng, shape, 10 * s)
    flake_color = flake_tone[..., None] * np.array([1.0, 1.0, 1.03], np.float32)
    img = _over(img, flake_color, flake * 0.9)

    # Small light and dark speckles.
    fine = _smooth_noise(rng, shape, 1.0 * s)
    img = _over(img, np.float32(0.55), _smoothstep(2.1, 2.5, fine) * 0.6)
    img = _over(img, np.float32(0.93), _smoothstep(2.2, 2.6, -fine) * 0.5)

    grain = 0.018 * _smooth_noise(rng, shape, 0.5)
    img = img + grain[..., None]
    return _Scene(np.clip(img, 0, 1).astype(np.float32), size, s)


def _leather_texture(rng: np.random.Generator, size: int) -> _Scene:
    """Brown leather grain: Worley cells (bumps) separated by darker creases, lit from one side."""
    s = size / 256.0
    shape = (size, size)
    cell = max(2.5, rng.uniform(5.5, 7.0) * s)
    # Jittered lattice of cell centres -> distance to the nearest centre (Worley F1).
    n = int(math.ceil(size / cell)) + 2
    gy, gx = np.mgrid[-1 : n - 1, -1 : n - 1].astype(np.float64)
    px = (gx + 0.5 + rng.uniform(-0.45, 0.45, gx.shape)) * cell
    py = (gy + 0.5 + rng.uniform(-0.45, 0.45, gy.shape)) * cell
    keep = (px >= 0) & (px < size) & (py >= 0) & (py < size)
    seeds = np.full(shape, 255, np.uint8)
    seeds[py[keep].astype(int), px[keep].astype(int)] = 0
    dist = cv2.distanceTransform(seeds, cv2.DIST_L2, 5) / np.float32(cell)
    height = -np.clip(dist, 0, 1.2)
    height = cv2.GaussianBlur(height, (0, 0), 0.6 * max(s, 0.6))
    height = height + 0.08 * _smooth_noise(rng, shape, 1.0)
    light = rng.uniform(-2.6, -2.0)
    lit = 1.0 + _shade(height, light, 0.35)
    crease = 1.0 - 0.22 * _smoothstep(0.45, 0.9, dist)

    base = np.array([0.56, 0.36, 0.24], np.float32) * np.float32(rng.uniform(0.9, 1.08))
    base = base + rng.normal(0, 0.006, 3).astype(np.float32)
    tone = 1.0 + 0.05 * _smooth_noise(rng, shape, 30 * s) + 0.03 * _smooth_noise(rng, shape, 8 * s)
    lum = lit * crease * tone + 0.02 * _smooth_noise(rng, shape, 0.5)
    img = base[None, None, :] * lum[..., None]
    return _Scene(np.clip(img, 0, 1).astype(np.float32), size, s)


@dataclass(eq=False)
class _GridSpec:
    """A woven wire mesh as a function of pixel coordinates, so it can be re-rendered warped."""

    size: int
    angle: float
    period: float
    half_width: float
    off_u: float
    off_v: float
    bg_level: float
    wire_level: float
    bg_noise: Array  # smooth noise, sampled at (possibly warped) coordinates
    margin: int
    light: Array  # illumination, fixed to the camera (not warped)
    sensor: Array  # sensor noise, fixed to the camera

    def uv(self, xs: Array, ys: Array) -> tuple[Array, Array]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        cx = cy = self.size / 2.0
        u = (xs - cx) * c + (ys - cy) * s + self.off_u
        v = -(xs - cx) * s + (ys - cy) * c + self.off_v
        return u, v

    def render(self, xs: Array, ys: Array, cut_v: Array | None = None, cut_h: Array | None = None) -> Array:
        p, w = self.period, self.half_width
        u, v = self.uv(xs, ys)
        ku = np.floor(u / p + 0.5)
        kv = np.floor(v / p + 0.5)
        du = u - ku * p
        dv = v - kv * p
        cov_v = np.clip(w + 0.5 - np.abs(du), 0, 1)  # wires running along v (constant u)
        cov_h = np.clip(w + 0.5 - np.abs(dv), 0, 1)
        if cut_v is not None:
            cov_v = cov_v * (1 - cut_v)
        if cut_h is not None:
            cov_h = cov_h * (1 - cut_h)
        prof_v = np.sqrt(np.clip(1 - (du / w) ** 2, 0, 1))  # round-wire shading across the wire
        prof_h = np.sqrt(np.clip(1 - (dv / w) ** 2, 0, 1))
        # Weave: each wire alternates over/under at successive crossings.
        height_v = np.cos(np.pi * v / p + np.pi * ku)
        height_h = -np.cos(np.pi * u / p + np.pi * kv)
        val_v = self.wire_level * (0.55 + 0.35 * prof_v + 0.2 * height_v)
        val_h = self.wire_level * (0.55 + 0.35 * prof_h + 0.2 * height_h)
        m = self.margin
        bgn = cv2.remap(self.bg_noise, xs + m, ys + m, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        # Wires cast a soft shadow on the floor below them.
        shadow_v = np.clip(w + 3.0 - np.abs(du), 0, 3) / 3.0
        shadow_h = np.clip(w + 3.0 - np.abs(dv), 0, 3) / 3.0
        if cut_v is not None:
            shadow_v = shadow_v * (1 - cut_v)
        if cut_h is not None:
            shadow_h = shadow_h * (1 - cut_h)
        shadow = 1.0 - 0.35 * np.maximum(shadow_v, shadow_h)
        bg = self.bg_level * (1.0 + 0.3 * bgn) * shadow
        v_top = height_v >= height_h
        h_then_v = (bg * (1 - cov_h) + val_h * cov_h) * (1 - cov_v) + val_v * cov_v
        v_then_h = (bg * (1 - cov_v) + val_v * cov_v) * (1 - cov_h) + val_h * cov_h
        img = np.where(v_top, h_then_v, v_then_h)
        return np.clip(img * self.light + self.sensor, 0, 1).astype(np.float32)


def _grid_texture(rng: np.random.Generator, size: int) -> _Scene:
    """Regular woven metal mesh on a dark floor, slightly rotated and shifted per image."""
    s = size / 256.0
    shape = (size, size)
    period = rng.uniform(17.0, 20.0) * s
    margin = int(16 * s) + 8
    spec = _GridSpec(
        size=size,
        angle=math.radians(rng.uniform(-6, 6)),
        period=period,
        half_width=period * rng.uniform(0.17, 0.21),
        off_u=rng.uniform(0, period),
        off_v=rng.uniform(0, period),
        bg_level=rng.uniform(0.17, 0.24),
        wire_level=rng.uniform(0.62, 0.72),
        bg_noise=_smooth_noise(rng, (size + 2 * margin, size + 2 * margin), 3.0 * s),
        margin=margin,
        light=(1.0 + 0.06 * _smooth_noise(rng, shape, 50 * s)).astype(np.float32),
        sensor=(0.012 * _smooth_noise(rng, shape, 0.5)).astype(np.float32),
    )
    xs, ys = _coords(size)
    return _Scene(spec.render(xs, ys), size, s, spec)


_TEXTURES: dict[str, Callable[[np.random.Generator, int], _Scene]] = {
    "tile": _tile_texture,
    "leather": _leather_texture,
    "grid": _grid_texture,
}


# --------------------------------------------------------------------------------------------------
# Defects. Each painter returns (defective float image, drawn footprint as bool). The footprint is
# where the drawing touched; the final mask also drops pixels the drawing left unchanged.
# --------------------------------------------------------------------------------------------------

Painter = Callable[[np.random.Generator, _Scene], tuple[Array, Array]]


#: (low, high) of a uniform draw, e.g. a size in px at 256 px.
Span = tuple[float, float]
#: A blob's coverage, its centre and its radius.
Blob = tuple[Array, tuple[float, float], float]


def _random_stroke(
    rng: np.random.Generator,
    sc: _Scene,
    length: Span,
    steps: int,
    turn_sd: float,
    curvature_sd: float,
    *,
    centred: bool,
) -> Array:
    """A random-walk polyline of ``steps`` steps and a total length drawn from ``length`` (px at
    256, scaled), heading anywhere from a point 30% inside the image; ``centred``: on that point."""
    start = _centre(rng, sc.size, 0.3)
    total = rng.uniform(*length) * sc.scale
    path = _walk(rng, start, rng.uniform(0, 2 * np.pi), steps, total / steps, turn_sd, curvature_sd)
    return path - (path[-1] - path[0]) / 2.0 if centred else path


def _random_blob(rng: np.random.Generator, sc: _Scene, radius: Span, aspect: Span, *, irregular: float, soft: float) -> Blob:
    """A soft blob of a radius drawn from ``radius`` (px at 256, scaled), squashed by a factor from
    ``aspect`` at a random angle; returns the blob, its centre and its radius."""
    r = rng.uniform(*radius) * sc.scale
    centre = _centre(rng, sc.size)
    blob = _blob(rng, sc.size, centre, (r, r * rng.uniform(*aspect)), rng.uniform(0, np.pi), irregular=irregular, soft=soft)
    return blob, centre, r


def _tile_crack(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    start = _centre(rng, n, 0.25)
    heading = rng.uniform(0, 2 * np.pi)
    main = _walk(rng, start, heading, int(rng.integers(18, 34)), 3.5 * s, 0.35)
    lines = [main]
    for _ in range(int(rng.integers(1, 4))):
        at = main[int(rng.integers(3, len(main) - 2))]
        side = rng.choice([-1.0, 1.0])
        lines.append(_walk(rng, tuple(at), heading + side * rng.uniform(0.5, 1.1), int(rng.integers(5, 14)), 3.0 * s, 0.4))
    core = _polyline(n, lines[:1], 1.6 * s) if s >= 1 else _polyline(n, lines[:1], 1)
    core = np.maximum(core, _polyline(n, lines[1:], 1))
    halo = cv2.GaussianBlur(core, (0, 0), 1.2 * max(s, 0.7)) * 0.5
    alpha = np.maximum(core, halo)
    out = _over(sc.image, np.float32(0.13), alpha * 0.92)
    return out, alpha > 0.06


def _tile_glue_strip(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    band = _polyline(n, [_random_stroke(rng, sc, (60, 130), 12, 0.02, 0.015, centred=True)], rng.uniform(7, 13) * s)
    streak = _smooth_noise(rng, (n, n), 1.5 * s)
    edge = np.clip(band - cv2.erode(band, np.ones((3, 3), np.uint8)), 0, 1)
    alpha = band * (0.38 + 0.07 * streak) + 0.25 * edge
    color = np.array([0.95, 0.93, 0.82], np.float32)
    out = _over(sc.image, color, np.clip(alpha, 0, 1))
    return out, band > 0.1


def _tile_gray_stroke(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    stroke = _polyline(n, [_random_stroke(rng, sc, (35, 90), 10, 0.05, 0.04, centred=False)], rng.uniform(5, 11) * s)
    bristle = _smooth_noise(rng, (n, n), 0.8 * s)
    alpha = stroke * np.clip(0.7 + 0.2 * bristle, 0.3, 1.0)
    tone = np.float32(rng.uniform(0.42, 0.58))
    out = _over(sc.image, tone * np.array([1.0, 1.0, 1.02], np.float32), alpha)
    return out, stroke > 0.1


def _tile_oil(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    blob, _, _ = _random_blob(rng, sc, (11, 22), (0.6, 1.0), irregular=0.2, soft=0.45)
    dark = sc.image * np.array([0.5, 0.47, 0.42], np.float32)
    out = _blend(sc.image, dark, blob * 0.85)
    return out, blob > 0.04


def _tile_rough(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    blob, _, _ = _random_blob(rng, sc, (12, 24), (0.5, 0.9), irregular=0.35, soft=0.35)
    pits = _smooth_noise(rng, (n, n), 0.7 * s)
    rough = sc.image * (0.9 + 0.2 * np.clip(pits, -2.5, 2.5))[..., None]
    out = _blend(sc.image, np.clip(rough, 0, 1), blob)
    return out, blob > 0.08


def _leather_color(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    blob, _, _ = _random_blob(rng, sc, (12, 24), (0.5, 1.0), irregular=0.25, soft=0.3)
    tints = (
        np.array([0.5, 0.45, 0.42], np.float32),  # dark stain
        np.array([1.4, 1.2, 1.0], np.float32),  # bleached patch
        np.array([1.3, 0.75, 0.7], np.float32),  # red dye
        np.array([0.8, 0.95, 1.4], np.float32),  # cold discolouration
    )
    tint = tints[int(rng.integers(0, len(tints)))]
    out = _blend(sc.image, np.clip(sc.image * tint, 0, 1), blob)
    return out, blob > 0.06


def _leather_cut(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    cx, cy = _centre(rng, n, 0.25)
    length = rng.uniform(35, 70) * s
    half_w = rng.uniform(1.6, 2.8) * s + 0.4
    ang = rng.uniform(0, np.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    t = np.linspace(-0.5, 0.5, 24)
    open_w = half_w * np.sqrt(np.clip(1 - (2 * t) ** 2, 0, 1)) + 0.3  # lens-shaped opening
    centre = np.array([cx, cy]) + np.outer(t * length, d)
    slit = np.vstack([centre + open_w[:, None] * nrm, (centre - open_w[:, None] * nrm)[::-1]])
    lip_off = np.vstack(
        [centre + (open_w + 1.2 * s + 0.6)[:, None] * nrm, (centre - (open_w + 1.2 * s + 0.6)[:, None] * nrm)[::-1]]
    )
    core = _polygon(n, slit)
    lip = np.clip(_polygon(n, lip_off) - core, 0, 1)
    out = _over(sc.image, np.array([0.08, 0.05, 0.04], np.float32), core * 0.95)
    out = _blend(out, np.clip(sc.image * 1.25, 0, 1), lip * 0.8)
    return out, (core + lip) > 0.06


def _leather_fold(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    path = _random_stroke(rng, sc, (45, 100), 12, 0.03, 0.03, centred=True)
    w = rng.uniform(3.0, 5.0) * s
    line = _polyline(n, [path], 1)
    dist = cv2.distanceTransform(np.where(line > 0.3, 0, 255).astype(np.uint8), cv2.DIST_L2, 5)
    ridge = np.exp(-((dist / w) ** 2)).astype(np.float32)
    ridge[dist > 2.2 * w] = 0.0
    light = rng.uniform(-2.6, -2.0)
    shade = np.clip(_shade(ridge * 2.0, light, 0.5), -0.5, 0.5)
    out = np.clip(sc.image * (1.0 + shade - 0.1 * ridge)[..., None], 0, 1)
    return out, ridge > 0.05


def _leather_glue(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    blob, c, r = _random_blob(rng, sc, (8, 17), (0.55, 1.0), irregular=0.3, soft=0.25)
    filled = cv2.GaussianBlur(sc.image, (0, 0), 1.8 * max(s, 0.6))  # glue fills the grain
    glue = 0.6 * filled + 0.4 * np.array([0.78, 0.62, 0.42], np.float32)
    xs, ys = _coords(n)
    hx, hy = c[0] - 0.35 * r, c[1] - 0.35 * r
    spec = np.exp(-((xs - hx) ** 2 + (ys - hy) ** 2) / (2 * (0.35 * r) ** 2)).astype(np.float32)
    glue = np.clip(glue + 0.35 * spec[..., None], 0, 1)
    out = _blend(sc.image, glue, blob * 0.9)
    return out, blob > 0.06


def _leather_poke(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    xs, ys = _coords(n)
    out = sc.image.copy()
    foot = np.zeros((n, n), bool)
    cx, cy = _centre(rng, n, 0.2)
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(3.5, 6.0) * s + 0.5
        px, py = cx + rng.normal(0, 10 * s), cy + rng.normal(0, 10 * s)
        rr = np.sqrt((xs - px) ** 2 + (ys - py) ** 2) / r
        hole = _smoothstep(1.0, 0.6, rr)  # dark centre fading to the rim
        rim = np.clip(1.0 - np.abs(rr - 1.2) / 0.4, 0, 1)  # pushed-in, lit from one side
        shade = np.clip(_shade(rim, -2.3, 0.35), -0.25, 0.25)
        out = out * (1.0 - 0.12 * rim + shade)[..., None]
        out = _over(out, np.array([0.07, 0.04, 0.03], np.float32), hole * 0.95)
        foot |= rr < 1.6
    return np.clip(out, 0, 1), foot


def _grid_bent(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    assert sc.grid is not None
    s, n = sc.scale, sc.size
    xs, ys = _coords(n)
    cx, cy = _centre(rng, n, 0.2)
    # A dent: wires are pushed sideways by up to ~half a mesh period, most along a short stretch,
    # so the wires crossing it bow visibly while the mesh a few periods away is untouched.
    push = rng.uniform(0, 2 * np.pi)
    c, si = math.cos(push), math.sin(push)
    sig_along, sig_across = rng.uniform(5, 8) * s, rng.uniform(8, 13) * s
    a = ((xs - cx) * c + (ys - cy) * si) / sig_along
    b = (-(xs - cx) * si + (ys - cy) * c) / sig_across
    g = np.exp(-0.5 * (a * a + b * b)).astype(np.float32)
    amp = rng.uniform(0.35, 0.55) * sc.grid.period
    dx = amp * c * g
    dy = amp * si * g
    out = sc.grid.render(xs + dx, ys + dy)
    return out, amp * g > 0.3


def _grid_broken(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    spec = sc.grid
    assert spec is not None
    n = sc.size
    xs, ys = _coords(n)
    u, v = spec.uv(xs, ys)
    p, w = spec.period, spec.half_width
    cx, cy = _centre(rng, n, 0.25)
    u0, v0 = spec.uv(np.float32(cx), np.float32(cy))
    vertical = bool(rng.integers(0, 2))
    along, across = (v, u) if vertical else (u, v)
    a0, c0 = (v0, u0) if vertical else (u0, v0)
    k = math.floor(c0 / p + 0.5)
    gap_len = rng.uniform(1.2, 2.2) * p
    gap = np.zeros((n, n), np.float32)
    for j in range(int(rng.integers(1, 3))):  # one or two neighbouring wires
        kk = k + j * rng.choice([-1, 1])
        shift = rng.uniform(-0.3, 0.3) * p
        sel = (np.abs(across - kk * p) < w + 1.0) & (np.abs(along - a0 - shift) < gap_len / 2)
        gap = np.maximum(gap, sel.astype(np.float32))
    out = spec.render(xs, ys, cut_v=gap if vertical else None, cut_h=None if vertical else gap)
    return out, gap > 0


def _grid_glue(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    blob, c, r = _random_blob(rng, sc, (10, 20), (0.55, 1.0), irregular=0.22, soft=0.25)
    filled = cv2.GaussianBlur(sc.image, (0, 0), 2.5 * max(s, 0.6))
    glue = 0.45 * filled + 0.55 * rng.uniform(0.6, 0.75)
    xs, ys = _coords(n)
    spec = np.exp(-((xs - c[0] + 0.3 * r) ** 2 + (ys - c[1] + 0.3 * r) ** 2) / (2 * (0.3 * r) ** 2))
    glue = np.clip(glue + 0.3 * spec.astype(np.float32), 0, 1)
    out = _blend(sc.image, glue, blob * 0.85)
    return out, blob > 0.06


def _grid_metal(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    r = rng.uniform(10, 15) * s + 0.5
    c = _centre(rng, n)
    ang = rng.uniform(0, np.pi)
    k = int(rng.integers(5, 9))
    theta = np.sort(rng.uniform(0, 2 * np.pi, k))
    radius = r * rng.uniform(0.55, 1.25, k)
    ca, sa = math.cos(ang), math.sin(ang)
    px = radius * np.cos(theta)
    py = radius * np.sin(theta) * 0.7
    pts = np.stack([c[0] + px * ca - py * sa, c[1] + px * sa + py * ca], axis=1)
    fleck = _polygon(n, pts)
    xs, ys = _coords(n)
    hl = np.exp(-((xs - c[0] + 0.3 * r) ** 2 + (ys - c[1] + 0.3 * r) ** 2) / (2 * (0.45 * r) ** 2))
    inner = cv2.erode(fleck, np.ones((3, 3), np.uint8))
    metal = 0.72 + 0.28 * hl.astype(np.float32) - 0.25 * (fleck - inner)
    out = _over(sc.image, np.clip(metal, 0, 1), fleck)
    return out, fleck > 0.05


def _grid_thread(rng: np.random.Generator, sc: _Scene) -> tuple[Array, Array]:
    s, n = sc.scale, sc.size
    path = _random_stroke(rng, sc, (70, 150), 30, 0.04, 0.025, centred=True)
    fibre = _polyline(n, [path], 1.4 * s if s >= 1 else 1)
    shadow = _polyline(n, [path + 1.5 * max(s, 0.7)], 1.4 * s if s >= 1 else 1)
    shadow = cv2.GaussianBlur(shadow, (0, 0), 0.8) * 0.6
    tone = np.float32(rng.uniform(0.78, 0.92))
    out = sc.image * (1.0 - 0.5 * shadow)
    out = _over(out, tone, fibre * 0.95)
    return out, np.maximum(fibre, shadow) > 0.06


_PAINTERS: dict[tuple[str, str], Painter] = {
    ("tile", "crack"): _tile_crack,
    ("tile", "glue_strip"): _tile_glue_strip,
    ("tile", "gray_stroke"): _tile_gray_stroke,
    ("tile", "oil"): _tile_oil,
    ("tile", "rough"): _tile_rough,
    ("leather", "color"): _leather_color,
    ("leather", "cut"): _leather_cut,
    ("leather", "fold"): _leather_fold,
    ("leather", "glue"): _leather_glue,
    ("leather", "poke"): _leather_poke,
    ("grid", "bent"): _grid_bent,
    ("grid", "broken"): _grid_broken,
    ("grid", "glue"): _grid_glue,
    ("grid", "metal_contamination"): _grid_metal,
    ("grid", "thread"): _grid_thread,
}
assert set(_PAINTERS) == {(c, d) for c, ds in DEFECT_TYPES.items() for d in ds}


def _finalize(clean_u8: Array, defect_f: Array, footprint: Array, clean_f: Array) -> tuple[Array, Array]:
    """Make the mask exact: 255 iff the defect changed the pixel.

    The mask is the drawn footprint minus the pixels the drawing left (nearly) untouched; outside
    the mask the defective image is reset to the clean one bit for bit. A masked pixel whose change
    vanished in rounding to 8 bits is moved one grey level in the defect's direction, so that every
    mask pixel really differs.
    """
    delta = defect_f - clean_f
    moved = np.abs(delta) >= _CHANGE_EPS
    if moved.ndim == 3:
        moved = moved.any(axis=-1)
    mask = footprint & moved
    mask3 = mask[..., None] if clean_u8.ndim == 3 else mask
    out = np.where(mask3, _to_u8(defect_f), clean_u8)
    same = out == clean_u8
    if same.ndim == 3:
        same = same.all(axis=-1)
    same &= mask
    if same.any():
        direction = delta.sum(axis=-1) if delta.ndim == 3 else delta
        c = clean_u8[same].astype(np.int16)
        up = direction[same] >= 0
        if c.ndim == 2:
            up = up[:, None]
        nudged = np.where(up, c + 1, c - 1)
        nudged = np.where(nudged > 255, 254, np.where(nudged < 0, 1, nudged))
        out[same] = nudged.astype(np.uint8)
    return out, mask.astype(np.uint8) * 255


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _check_category(category: str) -> None:
    if category not in DEFECT_TYPES:
        raise DatasetError(f"unknown demo category {category!r}; choose from {', '.join(DEFECT_TYPES)}")


def render_sample(category: str, defect: str | None, seed: int, size: int = 256) -> tuple[Array, Array | None, Array | None]:
    """Render one sample: ``(clean, defective or None, mask or None)`` as uint8 arrays.

    The clean image is the same texture the defect was painted on (same seed, defect or not), which
    is what lets tests verify that the mask is exactly the set of changed pixels. Images are
    H x W x 3 RGB, or H x W for grey categories (grid); the mask is H x W with values 0/255. The
    defect's area is kept within [MIN_DEFECT_FRACTION, MAX_DEFECT_FRACTION] of the image by
    redrawing it (deterministically) when a draw falls outside.
    """
    _check_category(category)
    if defect is not None and defect not in DEFECT_TYPES[category]:
        raise DatasetError(f"unknown defect {defect!r} for {category}; choose from {', '.join(DEFECT_TYPES[category])}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {size}")
    tex_seq, def_seq = np.random.SeedSequence(int(seed) & (2**128 - 1)).spawn(2)
    scene = _TEXTURES[category](np.random.default_rng(tex_seq), size)
    clean_u8 = _to_u8(scene.image)
    if defect is None:
        return clean_u8, None, None
    rng = np.random.default_rng(def_seq)
    painter = _PAINTERS[(category, defect)]
    for _ in range(_MAX_ATTEMPTS):
        defect_f, footprint = painter(rng, scene)
        out, mask = _finalize(clean_u8, defect_f, footprint, scene.image)
        frac = float(np.count_nonzero(mask)) / mask.size
        if MIN_DEFECT_FRACTION <= frac <= MAX_DEFECT_FRACTION:
            return clean_u8, out, mask
    raise RuntimeError(  # a bug in a painter's size range, not a user error
        f"could not draw a {category}/{defect} defect of plausible size at {size} px (seed {seed})"
    )


def file_seed(seed: int, category: str, split: str, defect: str, index: int) -> int:
    """The render seed of one file, from its identity rather than from generation order."""
    key = f"inspect-demo/{seed}/{category}/{split}/{defect}/{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def _defects_of(category: str) -> tuple[str, ...]:
    return HIRES_DEFECT_TYPES if category == HIRES_CATEGORY else DEFECT_TYPES[category]


def expected_counts(category: str, n_train: int, n_test_good: int, n_per_defect: int) -> dict[str, int]:
    """PNG count per folder (relative to the category) for the given parameters."""
    counts = {"train/good": n_train, "test/good": n_test_good}
    for d in _defects_of(category):
        counts[f"test/{d}"] = n_per_defect
        counts[f"ground_truth/{d}"] = n_per_defect
    return counts


def _save_png(arr: Array, path: Path) -> None:
    # Pillow's PNG writer adds no timestamps, so the same pixels give the same bytes.
    Image.fromarray(arr).save(path, format="PNG", compress_level=6)


def _marker_params(size: int, seed: int, n_train: int, n_test_good: int, n_per_defect: int, defects) -> dict:
    """What a generated category was made with (the marker compares it to skip regenerating)."""
    return {
        "version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_per_defect": n_per_defect,
        "defects": list(defects),
    }


def _read_marker(root: Path) -> dict:
    try:
        data = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("categories"), dict) else {}


def _write_marker(root: Path, marker: dict) -> None:
    write_atomically(root / MARKER_NAME, (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _is_complete(cat_dir: Path, counts: dict[str, int]) -> bool:
    for folder, n in counts.items():
        d = cat_dir / folder
        if n == 0:
            continue
        if not d.is_dir() or sum(1 for p in d.iterdir() if p.suffix == ".png") != n:
            return False
    return True


Render = Callable[[str, str | None, int], tuple[Array, Array | None]]


def _write_category(
    root: Path,
    marker: dict[str, Any],
    category: str,
    params: dict[str, Any],
    n_train: int,
    n_test_good: int,
    n_per_defect: int,
    render: Render,
    *,
    desc: str,
    progress: bool,
) -> None:
    """Write one category (train/good, test/good, test/<defect> with masks) unless it is already
    complete with ``params``; ``render(split, defect, i)`` gives an image and its mask.

    A category this generator wrote with other parameters (or did not finish) is deleted and
    rewritten; a non-empty folder it did not write raises :class:`DatasetError` rather than being
    touched, so pointing ``root`` at real data cannot destroy it.
    """
    from tqdm import tqdm

    counts = expected_counts(category, n_train, n_test_good, n_per_defect)
    cat_dir = root / category
    entry = marker["categories"].get(category)
    if isinstance(entry, dict) and entry.get("complete") and entry.get("params") == params and _is_complete(cat_dir, counts):
        return
    if cat_dir.exists():
        if entry is None and any(cat_dir.iterdir()):
            raise DatasetError(
                f"{cat_dir} exists and was not written by the demo generator; "
                "choose another output folder, or delete that one to regenerate it"
            )
        shutil.rmtree(cat_dir)
    marker["categories"][category] = {"params": params, "complete": False}
    _write_marker(root, marker)

    jobs: list[tuple[str, str | None, int]] = [("train", None, i) for i in range(n_train)]
    jobs += [("test", None, i) for i in range(n_test_good)]
    jobs += [("test", d, i) for d in _defects_of(category) for i in range(n_per_defect)]
    for folder in counts:
        (cat_dir / folder).mkdir(parents=True, exist_ok=True)
    for split, defect, i in tqdm(jobs, desc=f"{desc}: {category}", unit="img", disable=not progress, leave=False):
        name = defect or "good"
        image, mask = render(split, defect, i)
        _save_png(image, cat_dir / split / name / f"{i:03d}.png")
        if mask is not None:
            _save_png(mask, cat_dir / "ground_truth" / name / f"{i:03d}_mask.png")
    marker["categories"][category] = {"params": params, "complete": True}
    _write_marker(root, marker)


def generate_demo_dataset(
    root: Path,
    categories: Sequence[str] = DEMO_CATEGORIES,
    *,
    n_train: int = 80,
    n_test_good: int = 20,
    n_per_defect: int = 6,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the demo dataset under ``root`` in MVTec AD layout and return ``root``.

    Idempotent: a category already written completely with the same parameters (recorded in
    ``root/.inspect_demo.json``) is skipped, so calling this on every start of the app is cheap. A
    category this generator wrote with other parameters (or did not finish) is deleted and
    rewritten; a non-empty category folder it did not write raises :class:`DatasetError` rather
    than being touched, so pointing ``root`` at real data cannot destroy it. Deterministic: the
    same arguments give byte-identical files.
    """

    root = Path(root)
    for c in categories:
        _check_category(c)
    if n_train < 1 or n_test_good < 0 or n_per_defect < 0:
        raise ValueError("need n_train >= 1, n_test_good >= 0 and n_per_defect >= 0")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {size}")
    root.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(root) or {"generator": "inspect.core.data.demo", "categories": {}}

    for category in dict.fromkeys(categories):  # de-duplicate, keep order
        params = _marker_params(size, seed, n_train, n_test_good, n_per_defect, DEFECT_TYPES[category])

        def render(split: str, defect: str | None, i: int, category: str = category) -> tuple[Array, Array | None]:
            clean, bad, mask = render_sample(category, defect, file_seed(seed, category, split, defect or "good", i), size)
            return (clean if bad is None else bad), mask

        _write_category(
            root, marker, category, params, n_train, n_test_good, n_per_defect, render, desc="demo data", progress=progress
        )
    return root


# --------------------------------------------------------------------------------------------------
# A drifted set: the same material after a change on the line
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """A mild, realistic shift of the same material: a lamp, a camera, a new batch.

    ``gain`` scales brightness, ``colour`` tints each RGB channel (grey categories stay grey), and
    ``scale`` renders the texture at ``size * scale`` and shrinks it back, so its grains, cells or
    wires look ``1 / scale`` as large (a camera moved back).
    """

    gain: float = 0.88
    colour: tuple[float, float, float] = (1.06, 1.0, 0.90)
    scale: float = 1.12

    def apply(self, image: Array) -> Array:
        out = image.astype(np.float32) * self.gain
        if out.ndim == 3:
            out = out * np.asarray(self.colour, np.float32)[None, None, :]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


#: The shift each demo category's drifted set is written with.
DRIFTS: dict[str, Drift] = {"tile": Drift(), "leather": Drift(gain=0.9, colour=(1.05, 1.0, 0.92)), "grid": Drift(gain=0.85)}
#: Written beside the normal demo data by default (``python -m core demo-data --drift``).
DRIFT_FOLDER = "demo_data_drift"


def render_drifted(category: str, defect: str | None, seed: int, size: int, drift: Drift) -> tuple[Array, Array | None]:
    """One drifted sample: ``(image, mask or None)``, the texture rescaled, then shifted in colour."""
    big = max(MIN_SIZE, round(size * drift.scale))
    clean, bad, mask = render_sample(category, defect, seed, big)
    image = clean if bad is None else bad
    if big != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = np.where(cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA) >= 128, 255, 0).astype(np.uint8)
    return drift.apply(image), mask


def generate_drifted_set(
    root: Path,
    categories: Sequence[str] = DEMO_CATEGORIES,
    *,
    n_confirm: int = 20,
    n_test_good: int = 20,
    n_per_defect: int = 4,
    size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a drifted set per category under ``root`` (MVTec layout) and return ``root``.

    ``train/good`` is the *confirmation pool*: drifted good parts an inspector may confirm (to
    recalibrate or to grow the memory bank), never the images the loop is measured on;
    ``test/`` holds drifted good and defective parts (with masks) to measure it on. Seeds differ
    from the normal demo data's ("drift/..."), so no image repeats. Idempotent and deterministic
    like :func:`generate_demo_dataset`.
    """

    root = Path(root)
    for c in categories:
        _check_category(c)
    if n_confirm < 1 or n_test_good < 0 or n_per_defect < 0:
        raise ValueError("need n_confirm >= 1, n_test_good >= 0 and n_per_defect >= 0")
    root.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(root) or {"generator": "inspect.core.data.demo (drifted)", "categories": {}}
    for category in dict.fromkeys(categories):
        drift = DRIFTS[category]
        params = {
            "version": GENERATOR_VERSION,
            "drift": [drift.gain, list(drift.colour), drift.scale],
            "size": size,
            "seed": seed,
            "n_train": n_confirm,
            "n_test_good": n_test_good,
            "n_per_defect": n_per_defect,
        }

        def render(
            split: str, defect: str | None, i: int, category: str = category, drift: Drift = drift
        ) -> tuple[Array, Array | None]:
            return render_drifted(category, defect, file_seed(seed, category, f"drift/{split}", defect or "good", i), size, drift)

        _write_category(
            root, marker, category, params, n_confirm, n_test_good, n_per_defect, render,
            desc="drifted demo data", progress=progress,
        )  # fmt: skip
    return root


# --------------------------------------------------------------------------------------------------
# A high-resolution category: a line camera's frame with defects of a few pixels
# --------------------------------------------------------------------------------------------------

#: The category :func:`generate_hires_dataset` writes (beside the demo categories, not one of them).
HIRES_CATEGORY = "hires_metal"
#: Its defect types: small dark or bright spots and short scratches.
HIRES_DEFECT_TYPES: tuple[str, ...] = ("scratch", "spot")
#: Side of its images (a 4 MP frame) and the span of its defects' longest extent, in pixels.
HIRES_SIZE = 2048
HIRES_DEFECT_PX = (6, 20)


def _hires_texture(rng: np.random.Generator, size: int) -> Array:
    """Brushed metal at the camera's scale: fine streaks along x, mild grain and shading.

    Unlike the demo textures, its features do not grow with ``size``: the grain is a few pixels
    wide at any image size, as on a real part photographed at a higher resolution.
    """
    base = float(rng.uniform(0.55, 0.62))
    streaks = cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), sigmaX=25, sigmaY=0.8)
    streaks /= streaks.std() + 1e-8
    img = base + 0.03 * streaks + 0.012 * _smooth_noise(rng, (size, size), 1.2) + 0.04 * _smooth_noise(rng, (size, size), 300)
    return np.clip(img, 0, 1).astype(np.float32)


def render_hires_sample(defect: str | None, seed: int, size: int = HIRES_SIZE) -> tuple[Array, Array | None, Array | None]:
    """``(clean, defective or None, mask or None)`` of the high-resolution category (grey, uint8).

    A defect's longest extent is :data:`HIRES_DEFECT_PX` pixels at any ``size``: under 1.5 px once
    a 2048 px frame is resized to the models' 256 px. The mask is exact, as for the demo
    categories (:func:`_finalize`): 255 iff the defect changed the pixel.
    """
    if defect is not None and defect not in HIRES_DEFECT_TYPES:
        raise DatasetError(f"unknown defect {defect!r} for {HIRES_CATEGORY}; choose from {', '.join(HIRES_DEFECT_TYPES)}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {size}")
    tex_seq, def_seq = np.random.SeedSequence(int(seed) & (2**128 - 1)).spawn(2)
    clean_f = _hires_texture(np.random.default_rng(tex_seq), size)
    clean_u8 = _to_u8(clean_f)
    if defect is None:
        return clean_u8, None, None
    rng = np.random.default_rng(def_seq)
    extent = float(rng.uniform(*HIRES_DEFECT_PX))
    margin = HIRES_DEFECT_PX[1]
    cx, cy = (float(rng.uniform(margin, size - margin)) for _ in range(2))
    tone = float(rng.choice([0.15, 0.95]))  # dark pit or bright burr
    canvas = np.zeros((size, size), np.uint8)
    if defect == "spot":
        cv2.circle(canvas, (round(cx * 16), round(cy * 16)), round(extent / 2 * 16), 255, -1, cv2.LINE_AA, 4)
    else:
        angle = float(rng.uniform(0, math.pi))
        dx, dy = math.cos(angle) * extent / 2, math.sin(angle) * extent / 2
        ends = np.round(np.array([[cx - dx, cy - dy], [cx + dx, cy + dy]]) * 16).astype(np.int32)
        cv2.line(canvas, tuple(ends[0]), tuple(ends[1]), 255, 2, cv2.LINE_AA, 4)
    alpha = canvas.astype(np.float32) / 255.0 * 0.9
    out, mask = _finalize(clean_u8, _blend(clean_f, np.float32(tone), alpha), alpha > 0.05, clean_f)
    return clean_u8, out, mask


def generate_hires_dataset(
    root: Path,
    *,
    n_train: int = 10,
    n_test_good: int = 10,
    n_per_defect: int = 5,
    size: int = HIRES_SIZE,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the high-resolution category (:data:`HIRES_CATEGORY`) under ``root`` and return ``root``.

    Few training images by default: the surface is uniform, and one 2048 px frame already gives a
    tiled model about 80 tiles. Idempotent and deterministic like :func:`generate_demo_dataset`.
    """
    root = Path(root)
    if n_train < 1 or n_test_good < 0 or n_per_defect < 0:
        raise ValueError("need n_train >= 1, n_test_good >= 0 and n_per_defect >= 0")
    root.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(root) or {"generator": "inspect.core.data.demo", "categories": {}}
    params = _marker_params(size, seed, n_train, n_test_good, n_per_defect, HIRES_DEFECT_TYPES)

    def render(split: str, defect: str | None, i: int) -> tuple[Array, Array | None]:
        clean, bad, mask = render_hires_sample(defect, file_seed(seed, HIRES_CATEGORY, split, defect or "good", i), size)
        return (clean if bad is None else bad), mask

    _write_category(
        root, marker, HIRES_CATEGORY, params, n_train, n_test_good, n_per_defect, render,
        desc="high-resolution demo data", progress=progress,
    )  # fmt: skip
    return root


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def summary(root: Path, category: str) -> str:
    """One line: how many images of each kind the category holds under ``root``."""
    cat = root / category

    def n(folder: str) -> int:
        return sum(1 for _ in (cat / folder).glob("*.png"))

    defects = ", ".join(f"{d} {n(f'test/{d}')}" for d in _defects_of(category))
    return f"{category}: train/good {n('train/good')}, test/good {n('test/good')}, defects: {defects}"
