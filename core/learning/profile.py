"""A version's reference scores: its calibration split's good images and its test set.

Recalibration and drift compare new scores with what the version scored on images it was
calibrated on; the before/after view also needs its test-set scores. Both are raw model scores of
*this* version, computed once (a forward pass over the held-out goods and the test images) and
cached under ``<cache>/learning/`` by the checkpoint's sha256, so the same bytes are never
scored twice and a new version never reuses an old one's numbers.

The calibration split is the one training used (:func:`core.data.layout.make_datamodule`,
seeded): the held-out 20% of ``train/good``, all of it read from disk as goods (anomalib gives
half of it synthetic Perlin defects for its F1 fit; the originals are still good parts, and
:func:`core.training.guard_thresholds` floors training's threshold over the same files).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.settings import get_settings

if TYPE_CHECKING:
    from core.inference.detector import Detector

#: Quantile of held-out good pixels that floors the pixel threshold (as in core.training).
GOOD_PIXEL_QUANTILE = 0.999


@dataclass
class Profile:
    """Raw scores of one version on its reference images (empty lists when the data is absent)."""

    calibration_goods: list[float] = field(default_factory=list)
    calibration_pixel_quantile: float | None = None
    test_scores: list[float] = field(default_factory=list)
    test_labels: list[int] = field(default_factory=list)  # 0 good, 1 defect
    note: str = ""


def _cache_file(detector: Detector) -> Path:
    sha = (detector.meta.checkpoint or {}).get("sha256") or detector.version or "unknown"
    meta = detector.meta
    return get_settings().cache_dir / "learning" / meta.model / meta.category / f"{sha[:16]}.json"


def cached(detector: Detector) -> Profile | None:
    """The cached profile, or None (never computes)."""
    try:
        return Profile(**json.loads(_cache_file(detector).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def profile(detector: Detector, *, with_test: bool = True) -> Profile:
    """The version's reference scores, from the cache or computed now (seconds to a minute on CPU)."""
    path = _cache_file(detector)
    try:
        cached = Profile(**json.loads(path.read_text()))
        if cached.test_scores or not with_test or cached.note:
            return cached
    except (OSError, ValueError, TypeError):
        pass
    result = compute(detector, with_test=with_test)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(result)))
    except OSError:
        pass  # a cache that cannot be written costs time, not correctness
    return result


def reference_images(data_root: str, category: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(the calibration split's held-out train/good files, the test files with labels 0/1).

    The held-out files are found with anomalib's own ``random_split`` and training's seed, so they
    are exactly the images training kept out of the model; all of them are used here as goods
    (training turned a random half of them into synthetic defects, which are not real goods' scores).
    """
    from anomalib.data.utils import random_split

    from core.data.layout import CALIBRATION_FRACTION, CALIBRATION_SEED, make_datamodule

    dm = make_datamodule(data_root, category, calibration=False)
    dm._setup()  # noqa: SLF001 - the datasets only: no synthetic anomalies are drawn
    _, held_out = random_split(dm.train_data, CALIBRATION_FRACTION, seed=CALIBRATION_SEED)
    goods = [str(p) for p in held_out.samples.image_path]
    test = [(str(p), int(lbl)) for p, lbl in zip(dm.test_data.samples.image_path, dm.test_data.samples.label_index, strict=True)]
    return goods, test


def raw_scores(detector: Detector, paths: list[str], *, batch: int = 8, with_maps: bool = False):
    """Raw image scores of image files (and their raw anomaly maps, flattened, when asked)."""
    from core.data.image_io import load_image
    from core.inference.detector import to_tensor

    scores, maps = [], []
    for start in range(0, len(paths), batch):
        chunk = [to_tensor(load_image(Path(p).read_bytes(), p)) for p in paths[start : start + batch]]
        raw, _, _ = detector.run_batch(chunk)
        scores += raw.pred_score.reshape(-1).float().cpu().tolist()
        if with_maps:
            maps.append(raw.anomaly_map.float().cpu().reshape(-1))
    return (scores, maps) if with_maps else scores


def compute(detector: Detector, *, with_test: bool = True) -> Profile:
    """Score the calibration split's held-out good images (and the test set) with ``detector``."""
    import torch

    meta = detector.meta
    if not Path(meta.data_root, meta.category, "train", "good").is_dir():
        return Profile(note=f"the training data {meta.data_root}/{meta.category} is not here: no calibration split")
    goods, test = reference_images(meta.data_root, meta.category)
    scores, maps = raw_scores(detector, goods, with_maps=True)
    quantile = float(torch.quantile(torch.cat(maps)[:16_000_000], GOOD_PIXEL_QUANTILE)) if maps else None
    out = Profile(calibration_goods=scores, calibration_pixel_quantile=quantile)
    if with_test:
        out.test_scores = raw_scores(detector, [p for p, _ in test])
        out.test_labels = [label for _, label in test]
    return out
