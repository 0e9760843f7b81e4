"""Natural images that ship with installed packages, for EfficientAD's penalty loss and its teacher.

EfficientAD (anomalib's ``EfficientAd``) adds a *penalty* to the student's loss: on images that
are not from the training category the student's output is pushed towards zero, so it does not
learn to imitate the teacher on everything and stays "surprised" by unfamiliar patterns. The paper
and anomalib draw those images from ImageNet (anomalib downloads *imagenette*, 1.5 GB, at the
start of every fit whose ``imagenet_dir`` does not exist). Offline, Inspect uses the natural
photographs that scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``) keep
inside their wheels: 20 distinct pictures (portraits, animals, a rocket, coffee, coins, textures such
as brick, grass and gravel, microscopy, astronomy, text). :func:`ensure_penalty_dir` writes them,
plus random crops of them, as a torchvision ``ImageFolder`` so that anomalib finds an existing
folder and never tries the download. The same images (with heavier augmentation) are part of the
teacher's distillation set (:mod:`core.models.efficientad.teacher`).

Only images present in the installed wheels are used; the ``skimage.data`` entries that need a
download (``pooch``) are never requested.
"""

from __future__ import annotations

import json
import os
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from core.settings import get_settings

#: skimage.data images that are photographs (or micrographs) and are shipped in the wheel.
#: ``cat`` is left out: it is the same photograph as ``chelsea``.
SKIMAGE_NATURAL = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
#: scikit-learn's two sample photographs.
SKLEARN_NATURAL = ("china", "flower")

#: Default size of the penalty folder: the full images plus random crops, square PNGs.
PENALTY_COUNT = 300
PENALTY_SIZE = 256
PENALTY_CLASS = "natural"  # ImageFolder needs one sub-folder per class; the label is unused
MARKER = ".inspect_penalty.json"


def _to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (255 * (array.astype(np.float64) - array.min()) / max(float(np.ptp(array)), 1e-8)).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


@lru_cache(maxsize=1)
def natural_images() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, HxWx3 uint8) for every shipped natural image, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = []
    for name in SKIMAGE_NATURAL:
        images.append((f"skimage.{name}", _to_rgb_uint8(getattr(skimage.data, name)())))
    sample = load_sample_images()
    for name, image in zip(SKLEARN_NATURAL, sample.images, strict=True):
        images.append((f"sklearn.{name}", _to_rgb_uint8(image)))
    return tuple(images)


def _square_crop(image: np.ndarray, rng: np.random.Generator, min_frac: float) -> np.ndarray:
    h, w = image.shape[:2]
    short = min(h, w)
    side = int(round(short * rng.uniform(min_frac, 1.0)))
    side = max(side, min(32, short))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = image[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop


def _params(count: int, size: int, seed: int) -> dict:
    return {"count": count, "size": size, "seed": seed, "sources": [name for name, _ in natural_images()]}


def ensure_penalty_dir(
    root: str | Path | None = None, *, count: int = PENALTY_COUNT, size: int = PENALTY_SIZE, seed: int = 0
) -> Path:
    """An ``ImageFolder`` of ``count`` natural-image PNGs for anomalib's penalty loss; returns its root.

    ``root`` defaults to ``<workspace cache>/penalty``; images go to ``root/natural/NNNN.png``.
    The first images are the whole pictures (centre square), the rest random square crops of
    20-100% of the short side, flipped half the time, all resized to ``size``. Idempotent: a
    folder written with the same parameters is returned as is. Written to a temporary folder and
    renamed, so an interrupted run never leaves a half-filled folder that looks complete.
    """
    root = Path(root) if root is not None else get_settings().cache_dir / "penalty"
    params = _params(count, size, seed)
    marker = root / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params and len(list((root / PENALTY_CLASS).glob("*.png"))) == count:
                return root
        except (json.JSONDecodeError, OSError):
            pass
    sources = natural_images()
    rng = np.random.default_rng(seed)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / PENALTY_CLASS).mkdir(parents=True)
    for i in range(count):
        name, image = sources[i % len(sources)]
        crop = _square_crop(image, rng, 1.0) if i < len(sources) else _square_crop(image, rng, 0.2)
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC).save(tmp / PENALTY_CLASS / f"{i:04d}.png")
    (tmp / MARKER).write_text(json.dumps(params, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root
