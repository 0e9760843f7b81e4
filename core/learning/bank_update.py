"""Grow PatchCore's memory bank with images an inspector confirmed as good, without retraining.

PatchCore's model *is* its memory bank: a coreset of normal patch features, and an image's score
is its patches' distance to the nearest of them. So a confirmed-good image teaches the model by
adding its patches: they are subsampled with the same greedy coreset training uses
(:func:`core.models.patchcore.coreset.greedy_coreset_indices`, anomalib's KCenterGreedy, at the
model's ``coreset_ratio``) and appended; the old rows stay as they were, first, in order.

The calibration is then refreshed as training calibrates (the image threshold is the highest good
score, the pixel threshold the 99.9th percentile of good pixels), over the calibration split's
held-out goods scored with the grown bank *and* the new images, each scored without its own
patches (leave-one-out: a patch never vouches for itself). anomalib's F1 threshold on synthetic
anomalies is not refitted: training already found it below that floor on the demo categories.

One guard on top (:func:`guarded_threshold`): a bank update teaches the model good parts, so it
must not unlearn defects. Known defects (inspections reviewed as defective) that the current
version catches stay caught: when a confirmed good scores above one of them, the threshold stays
under that defect and the good stays flagged, and the update says so. Trading a known defect for a
good part is a decision for a person, through recalibration, which weighs both.

A tiled PatchCore (:mod:`core.models.tiling`) learns the same way at the camera's pixels: its
bank holds tiles' patches, so a confirmed-good frame adds the patches of every one of its tiles,
and scoring against a candidate bank follows the tiled rule (highest tile score, map stitched at
full resolution), the numbers the tiled model itself gives.

EfficientAD has no memory bank: what it knows of normal parts is in a student network trained for
thousands of steps, so new images mean retraining it; it gets recalibration only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core import registry
from core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from core.inference.detector import Detector

EFFICIENTAD_REASON = (
    "EfficientAD has no memory bank to grow: what it knows of good parts is in a student network "
    "trained for thousands of steps, so adding images means retraining it; use "
    "`python -m core recalibrate --model efficientad ...` to move its threshold instead"
)
CORESET_SEED = 0


@dataclass
class Embedded:
    """Patch embeddings of a few images, with the map geometry to score them.

    Untiled: ``rows`` is B x (h*w) x D, one h x w patch grid per image. Tiled (``frames`` set):
    ``rows`` is 1 x R x D, every image's tiles' patches one after the other, each image's tiles
    in :func:`core.models.tiling.grid` order, h x w patches per tile; ``frames`` holds each image's
    full-resolution (height, width), from which its tiles follow. ``output_size`` is the map size
    of one forward input (the image, or one tile, at ``image_size``).
    """

    rows: torch.Tensor
    hw: tuple[int, int]
    output_size: tuple[int, int]
    frames: list[tuple[int, int]] | None = None
    #: tiled: (tile, stride) in image pixels
    tiling: tuple[int, int] | None = None

    @property
    def n_images(self) -> int:
        return self.rows.shape[0] if self.frames is None else len(self.frames)

    def boxes(self, j: int) -> list:
        """Image ``j``'s tiles (tiled only)."""
        from core.models.tiling import grid

        assert self.frames is not None and self.tiling is not None
        tile, stride = self.tiling
        return grid(*self.frames[j], tile, stride)

    def counts(self) -> list[int]:
        """How many rows each image has."""
        patches = self.hw[0] * self.hw[1]
        if self.frames is None:
            return [patches] * self.rows.shape[0]
        return [len(self.boxes(j)) * patches for j in range(len(self.frames))]

    def flat(self) -> torch.Tensor:
        """Every row, N x D."""
        return self.rows.reshape(-1, self.rows.shape[-1])

    def source(self) -> torch.Tensor:
        """For each row of :meth:`flat`, the index of the image it came from."""
        import torch

        return torch.repeat_interleave(torch.arange(self.n_images), torch.tensor(self.counts()))

    def image(self, j: int) -> Embedded:
        """Image ``j`` alone."""
        if self.frames is None:
            return Embedded(self.rows[j : j + 1], self.hw, self.output_size)
        counts = self.counts()
        start = sum(counts[:j])
        rows = self.rows[:, start : start + counts[j]]
        return Embedded(rows, self.hw, self.output_size, [self.frames[j]], self.tiling)


def require_patchcore(model: str) -> None:
    if model == "efficientad":
        raise ConfigError(EFFICIENTAD_REASON)
    if model != "patchcore":
        raise ConfigError(f"only PatchCore has a memory bank to grow (got {model!r})")


def embed(detector: Detector, images_rgb: list[np.ndarray], *, batch: int = 8) -> Embedded:
    """The memory-bank features of every patch of the images (one backbone pass each).

    A tiled model embeds every tile of each full-resolution image, as its training does (the
    image normalised, then cut into tiles resized to ``image_size``,
    :data:`~core.models.tiling.MICRO_BATCH` tiles per backbone pass).
    """
    import torch

    from core.inference.detector import to_tensor
    from core.models.patchcore.model import patchcore_patch_features

    if detector.tiled:
        return _embed_tiled(detector, images_rgb)
    module = detector.module
    parts, hw, size = [], (0, 0), (0, 0)
    with torch.inference_mode():
        for start in range(0, len(images_rgb), batch):
            tensors = [to_tensor(im).to(detector.device) for im in images_rgb[start : start + batch]]
            processed = torch.cat([module.pre_processor(t) for t in tensors])
            emb = patchcore_patch_features(module, processed)  # B x D x h x w
            b, d, h, w = emb.shape
            hw, size = (h, w), (int(processed.shape[-2]), int(processed.shape[-1]))
            parts.append(emb.permute(0, 2, 3, 1).reshape(b, h * w, d).float())
    return Embedded(torch.cat(parts), hw, size)


def _embed_tiled(detector: Detector, images_rgb: list[np.ndarray]) -> Embedded:
    import torch

    from core.inference.detector import to_tensor
    from core.models.patchcore.model import patchcore_patch_features
    from core.models.tiling import crop_tiles, grid, micro_batches

    module = detector.module
    tile, stride, size = module.model.tiling
    parts, frames, hw = [], [], (0, 0)
    with torch.inference_mode():
        for im in images_rgb:
            processed = module.pre_processor(to_tensor(im).to(detector.device))[0]  # normalised, full resolution
            height, width = (int(v) for v in processed.shape[-2:])
            frames.append((height, width))
            for boxes in micro_batches(grid(height, width, tile, stride)):
                emb = patchcore_patch_features(module, crop_tiles(processed, boxes, size))  # T x D x h x w
                t, d, h, w = emb.shape
                hw = (h, w)
                parts.append(emb.permute(0, 2, 3, 1).reshape(t * h * w, d).float())
    return Embedded(torch.cat(parts).unsqueeze(0), hw, (size, size), frames, (tile, stride))


def score(
    detector: Detector, emb: Embedded, bank: torch.Tensor | None = None
) -> tuple[list[float], torch.Tensor | list[torch.Tensor]]:
    """Raw image scores and raw anomaly maps of embedded images against ``bank`` (default: the model's).

    The tail of anomalib's ``PatchcoreModel.forward`` (search, re-weighted score, blurred map), so
    the numbers equal the model's own for the same bank; the backbone is not run again. A tiled
    model's tiles are scored so, and combined by the tiled rule (:func:`core.models.tiling.run_tiled`):
    the image score is the highest tile score, the map is stitched at full resolution (a list of
    1 x H x W maps then, one per image, as their sizes may differ).
    """
    import torch

    inner = detector.module.model
    old = inner.memory_bank
    with detector._run_lock, torch.inference_mode():  # noqa: SLF001 - the bank is swapped for the call
        try:
            if bank is not None:
                inner.memory_bank = bank
            if emb.frames is not None:
                return _score_tiled(inner, emb)
            b, n, d = emb.rows.shape
            pred, amap = _score_rows(inner, emb.rows.reshape(b * n, d), b, emb.hw, emb.output_size)
        finally:
            inner.memory_bank = old
    return pred.reshape(-1).float().cpu().tolist(), amap.float().cpu()


def _score_rows(inner, flat: torch.Tensor, b: int, hw: tuple[int, int], output_size: tuple[int, int]):
    """Scores (B) and maps (B x 1 x output_size) of ``b`` inputs' patch rows, as anomalib's forward."""
    patch_scores, locations = inner.nearest_neighbors(embedding=flat, n_neighbors=1)
    patch_scores, locations = patch_scores.reshape(b, -1), locations.reshape(b, -1)
    pred = inner.compute_anomaly_score(patch_scores, locations, flat)
    return pred, inner.anomaly_map_generator(patch_scores.reshape(b, 1, *hw), output_size)


def _score_tiled(inner, emb: Embedded) -> tuple[list[float], list]:
    from core.models.tiling import combine_tiles

    scores, maps, start = [], [], 0
    for j, ((height, width), count) in enumerate(zip(emb.frames or [], emb.counts(), strict=True)):
        out = combine_tiles(height, width, _scored_tiles(inner, emb, j, start))
        assert out is not None  # every image has at least one tile
        scores.append(float(out.score))
        maps.append(out.anomaly_map.float().cpu())
        start += count
    return scores, maps


def _scored_tiles(inner, emb: Embedded, j: int, start: int):
    """Image ``j``'s tiles scored from their stored patch rows (from row ``start``), a micro-batch at a time."""
    from core.models.tiling import micro_batches

    patches = emb.hw[0] * emb.hw[1]
    flat = emb.flat()
    for boxes in micro_batches(emb.boxes(j)):
        rows = flat[start : start + len(boxes) * patches]
        start += len(boxes) * patches
        yield boxes, *_score_rows(inner, rows, len(boxes), emb.hw, emb.output_size)


@dataclass
class Growth:
    """The grown bank and where its new rows came from."""

    bank: torch.Tensor
    n_old: int
    source: torch.Tensor  # for each added row, the index of the image it came from
    embedded: Embedded
    notes: list[str] = field(default_factory=list)


def grow(detector: Detector, images_rgb: list[np.ndarray], *, coreset_ratio: float | None = None) -> Growth:
    """Old bank + the greedy coreset of the new images' patches (seeded: same images, same rows)."""
    import torch

    from core.models.patchcore.coreset import greedy_coreset_indices

    if not images_rgb:
        raise ConfigError("no confirmed-good images to add to the memory bank")
    ratio = float(coreset_ratio or detector.meta.config.get("coreset_ratio") or 0.1)
    emb = embed(detector, images_rgb)
    flat = emb.flat().cpu()
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CORESET_SEED)
        np.random.seed(CORESET_SEED)  # sklearn's projection draws from numpy's global generator
        try:
            idx = greedy_coreset_indices(flat, ratio, progress=False)
        finally:
            np.random.set_state(state)
    old = detector.module.model.memory_bank.detach().cpu()
    bank = torch.cat([old, flat[idx]])
    return Growth(bank=bank, n_old=old.shape[0], source=emb.source()[idx], embedded=emb)


def guarded_threshold(goods: list[float], protected: list[float]) -> float:
    """The highest good score, unless that would pass a known defect the current version catches.

    Then the threshold sits midway between that defect (the lowest of them) and the highest good
    below it, recalibration's convention (or at the defect, when every good is above it): the defect
    stays caught and the goods above it stay flagged.
    """
    if not goods:
        raise ConfigError("no good-part scores to set a threshold from")
    highest = max(goods)
    if not protected or min(protected) >= highest:  # a score at the threshold is DEFECT
        return highest
    low = min(protected)
    under = [g for g in goods if g < low]
    return (max(under) + low) / 2 if under else low


@dataclass
class Refresh:
    """The refreshed calibration and the scores it came from (raw scores)."""

    calibration: registry.Calibration
    held_out_goods: list[float]
    new_goods: list[float]  # each new image without its own patches (leave-one-out)
    unguarded: float  # the highest good: the threshold without the known-defect guard
    defects_before: list[float] = field(default_factory=list)  # known defects under the current version
    defects_after: list[float] = field(default_factory=list)  # and under the grown bank
    held_out_before: list[float] = field(default_factory=list)  # held-out goods under the current version

    @property
    def guarded(self) -> bool:
        """True when a known defect kept the threshold under the highest good."""
        return self.calibration.image_threshold < self.unguarded


def refreshed_calibration(
    detector: Detector,
    growth: Growth,
    held_out: Embedded | None,
    old: registry.Calibration,
    source: str,
    known_defects: Embedded | None = None,
) -> Refresh:
    """The calibration of the grown model: goods = held-out calibration goods + new images (leave-one-out).

    ``known_defects``: images reviewed as defective; those the current version catches (at ``old``'s
    threshold) are kept caught (:func:`guarded_threshold`).
    """
    import torch

    from core.learning.profile import GOOD_PIXEL_QUANTILE

    goods: list[float] = []
    pixels = []
    held: list[float] = []
    held_before: list[float] = []
    if held_out is not None and held_out.n_images:
        held, maps = score(detector, held_out, growth.bank)
        held_before, _ = score(detector, held_out)
        pixels += _flat_pixels(maps)
    new: list[float] = []
    emb = growth.embedded
    for j in range(emb.n_images):
        keep = torch.ones(growth.bank.shape[0], dtype=torch.bool)
        keep[growth.n_old :] = growth.source != j
        s, m = score(detector, emb.image(j), growth.bank[keep])
        new += s
        pixels += _flat_pixels(m)
    goods = held + new
    before: list[float] = []
    after: list[float] = []
    if known_defects is not None and known_defects.n_images:
        before, _ = score(detector, known_defects)
        after, _ = score(detector, known_defects, growth.bank)
    protected = [a for b, a in zip(before, after, strict=True) if b >= old.image_threshold]
    image_t = guarded_threshold(goods, protected)
    pixel_t = float(torch.quantile(torch.cat(pixels)[:16_000_000], GOOD_PIXEL_QUANTILE))
    cal = registry.Calibration(
        image_threshold=image_t,
        pixel_threshold=pixel_t,
        image_min=min(old.image_min, min(goods)),
        image_max=max(old.image_max, image_t),
        pixel_min=min(old.pixel_min, pixel_t),
        pixel_max=max(old.pixel_max, pixel_t),
        source=source,
    )
    return Refresh(cal, held, new, max(goods), before, after, held_before)


def _flat_pixels(maps) -> list:
    """Every pixel of a score call's maps (a batch tensor, or a tiled model's list of maps)."""
    return [m.reshape(-1) for m in maps] if isinstance(maps, list) else [maps.reshape(-1)]


def install(detector: Detector, growth: Growth) -> None:
    """Put the grown bank into the detector's module (before saving it as a new version)."""
    detector.module.model.memory_bank = growth.bank.to(detector.device)
