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
TILED_REASON = (
    "a tiled model's memory bank cannot be grown here yet (its bank holds tiles' patches, scored tile by "
    "tile); put the confirmed-good images in train/good and train again with the same --tile/--stride"
)


@dataclass
class Embedded:
    """Patch embeddings of a few images: B x (h*w) x D, with the map geometry to score them."""

    rows: torch.Tensor
    hw: tuple[int, int]
    output_size: tuple[int, int]


def require_patchcore(model: str) -> None:
    if model == "efficientad":
        raise ConfigError(EFFICIENTAD_REASON)
    if model != "patchcore":
        raise ConfigError(f"only PatchCore has a memory bank to grow (got {model!r})")


def embed(detector: Detector, images_rgb: list[np.ndarray], *, batch: int = 8) -> Embedded:
    """The memory-bank features of every patch of the images (one backbone pass each)."""
    import torch

    if detector.tiled:  # the whole-image geometry below (one h x w map per image) does not hold
        raise ConfigError(TILED_REASON)

    from core.inference.detector import to_tensor
    from core.models.patchcore.model import patchcore_patch_features

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


def score(detector: Detector, emb: Embedded, bank: torch.Tensor | None = None) -> tuple[list[float], torch.Tensor]:
    """Raw image scores and raw anomaly maps of embedded images against ``bank`` (default: the model's).

    The tail of anomalib's ``PatchcoreModel.forward`` (search, re-weighted score, blurred map), so
    the numbers equal the model's own for the same bank; the backbone is not run again.
    """
    import torch

    inner = detector.module.model
    old = inner.memory_bank
    b, n, d = emb.rows.shape
    with detector._run_lock, torch.inference_mode():  # noqa: SLF001 - the bank is swapped for the call
        try:
            if bank is not None:
                inner.memory_bank = bank
            flat = emb.rows.reshape(b * n, d)
            patch_scores, locations = inner.nearest_neighbors(embedding=flat, n_neighbors=1)
            patch_scores, locations = patch_scores.reshape(b, -1), locations.reshape(b, -1)
            pred = inner.compute_anomaly_score(patch_scores, locations, flat)
            amap = inner.anomaly_map_generator(patch_scores.reshape(b, 1, *emb.hw), emb.output_size)
        finally:
            inner.memory_bank = old
    return pred.reshape(-1).float().cpu().tolist(), amap.float().cpu()


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
    b, n, d = emb.rows.shape
    flat = emb.rows.reshape(b * n, d).cpu()
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
    return Growth(bank=bank, n_old=old.shape[0], source=idx // n, embedded=emb)


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
    if held_out is not None and held_out.rows.shape[0]:
        held, maps = score(detector, held_out, growth.bank)
        held_before, _ = score(detector, held_out)
        pixels.append(maps.reshape(-1))
    new: list[float] = []
    emb = growth.embedded
    for j in range(emb.rows.shape[0]):
        keep = torch.ones(growth.bank.shape[0], dtype=torch.bool)
        keep[growth.n_old :] = growth.source != j
        one = Embedded(emb.rows[j : j + 1], emb.hw, emb.output_size)
        s, m = score(detector, one, growth.bank[keep])
        new += s
        pixels.append(m.reshape(-1))
    goods = held + new
    before: list[float] = []
    after: list[float] = []
    if known_defects is not None and known_defects.rows.shape[0]:
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


def install(detector: Detector, growth: Growth) -> None:
    """Put the grown bank into the detector's module (before saving it as a new version)."""
    detector.module.model.memory_bank = growth.bank.to(detector.device)
