"""anomalib's datasets read every image through Inspect's loader (:func:`core.data.image_io.load_image`).

Deliberate departure from anomalib: its ``read_image`` is ``Image.open(path).convert("RGB")``,
which turns a 16-bit grayscale PNG (mode ``I;16``, what Mono12/Mono16 industrial cameras write)
into an all-white image. A model trained that way learns nothing (image AUROC 0.500 where the same
images in 8 bits give 1.000) while the Inspect page, which decodes uploads with
:func:`~core.data.image_io.load_image`, sees the real part, so every upload is judged DEFECT. Two
loaders that disagree are the bug; the fix is one loader.

anomalib binds ``read_image``/``read_mask`` by name in every module that uses them (the dataset
base class, the synthetic-anomaly generator that makes the calibration split, its inferencers...),
so :func:`use_inspect_loader` replaces every such binding in the loaded ``anomalib`` modules, once
per process, with functions of the same signature that call :func:`~core.data.image_io.load_image`.
Only ``anomalib.data.utils.image``, where the originals are defined, keeps them. A test checks
that no other loaded anomalib module keeps an original, and that the two modules Inspect's
training path depends on are among those patched.
"""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from core.data.image_io import load_image

#: The anomalib modules Inspect's training and evaluation read images through (checked by tests).
REQUIRED: tuple[str, ...] = ("anomalib.data.datasets.base.image", "anomalib.data.utils.synthetic")
_DEFINING_MODULE = "anomalib.data.utils.image"

_LOCK = threading.Lock()
_installed = False
#: ``module.name`` of every binding replaced (for tests and debugging).
patched: list[str] = []


def read_image(path: str | Path, as_tensor: bool = False) -> torch.Tensor | np.ndarray:
    """anomalib's ``read_image`` contract (RGB in [0, 1]) on top of Inspect's loader.

    Full resolution (``max_side=None``): anomalib resizes later, and the image must keep the size
    of its ground-truth mask.
    """
    rgb = load_image(Path(path), str(path), max_side=None)
    if as_tensor:
        from torchvision.tv_tensors import Image as TvImage

        return TvImage(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0))
    return rgb / 255.0


def read_mask(path: str | Path, as_tensor: bool = False) -> torch.Tensor | np.ndarray:
    """anomalib's ``read_mask`` contract (``Mask`` of 0/1, or a uint8 array) on Inspect's loader."""
    gray = load_image(Path(path), str(path), max_side=None)[..., 0]
    if as_tensor:
        from torchvision.tv_tensors import Mask

        return Mask(torch.from_numpy(gray > 0), dtype=torch.uint8)
    return gray


def use_inspect_loader() -> None:
    """Point anomalib's image readers at Inspect's loader (idempotent, thread-safe)."""
    global _installed
    if _installed:
        return
    with _LOCK:
        if _installed:
            return
        for name in REQUIRED:
            importlib.import_module(name)
        original = importlib.import_module(_DEFINING_MODULE)
        replacements = {original.read_image: read_image, original.read_mask: read_mask}
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith("anomalib.") or module_name == _DEFINING_MODULE or module is None:
                continue
            for attr in ("read_image", "read_mask"):
                replacement = replacements.get(getattr(module, attr, None))
                if replacement is not None:
                    setattr(module, attr, replacement)
                    patched.append(f"{module_name}.{attr}")
        _installed = True
