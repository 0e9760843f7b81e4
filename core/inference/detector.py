"""Run a trained model on images: scores and heatmaps a person can read.

Scores and maps are normalised by anomalib's post-processor with the model's *calibrated*
statistics (never per image): 0.5 is the calibrated threshold and values are comparable across
images, so a good part does not light up just because its map was stretched to [0, 1].
The raw model outputs are kept too, for the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import registry
from core.errors import ConfigError
from core.inference.device import pick_device
from core.inference.verdict import CALIBRATED_THRESHOLD, verdict
from core.models import build_model, get_spec


@dataclass
class Prediction:
    """One image's result. ``score`` and ``anomaly_map`` are normalised (0.5 = threshold)."""

    score: float
    raw_score: float
    anomaly_map: np.ndarray  # float32, model resolution, normalised to [0, 1]
    latency_ms: float

    def verdict(self, threshold: float = CALIBRATED_THRESHOLD) -> str:
        """Re-judged at any threshold without running the model again."""
        return verdict(self.score, threshold)


def to_tensor(image_rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → float 1x3xHxW in [0, 1], the form anomalib's pre-processor takes."""
    tensor = torch.from_numpy(np.array(image_rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
    return tensor.unsqueeze(0)


class Detector:
    """A trained model on its device, with its metadata."""

    def __init__(self, module: torch.nn.Module, meta: registry.ModelMeta, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.meta = meta
        self.device = device

    def raw_to_normalised(self, raw_score: float) -> float:
        """The post-processor's score normalisation, for a raw score (e.g. a stored one)."""
        post = self.module.post_processor
        value = post._normalize(torch.tensor([raw_score]), post.image_min, post.image_max, post.image_threshold)  # noqa: SLF001
        return float(value[0])

    def normalised_to_raw(self, score: float) -> float:
        """Inverse of the normalisation (inside its unclipped range): shows a slider value as a raw score."""
        cal = self.meta.calibration
        return (score - 0.5) * (cal.image_max - cal.image_min) + cal.image_threshold

    @torch.inference_mode()
    def run_batch(self, images: torch.Tensor):
        """Raw and normalised outputs for a batch of [0, 1] images (any size; resized inside)."""
        images = images.to(self.device)
        processed = self.module.pre_processor(images)
        raw = self.module.model(processed)
        normalised = self.module.post_processor(raw)
        return raw, normalised

    @torch.inference_mode()
    def patch_features(self, image_rgb: np.ndarray) -> torch.Tensor:
        """D x h x w patch descriptors of one image from the model's own feature extractor."""
        processed = self.module.pre_processor(to_tensor(image_rgb).to(self.device))
        return get_spec(self.meta.model).patch_features(self.module, processed)[0].float().cpu()

    def predict(self, image_rgb: np.ndarray) -> Prediction:
        started = time.perf_counter()
        raw, normalised = self.run_batch(to_tensor(image_rgb))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        latency = (time.perf_counter() - started) * 1000
        return Prediction(
            score=float(normalised.pred_score.reshape(-1)[0]),
            raw_score=float(raw.pred_score.reshape(-1)[0]),
            anomaly_map=normalised.anomaly_map[0].squeeze().float().cpu().numpy(),
            latency_ms=latency,
        )


def load_detector(model: str, category: str, *, device: str | None = None, models_dir: Path | None = None) -> Detector:
    """Build the module from its metadata and load its checkpoint (no download, no training).

    Metadata that does not build a module, or a checkpoint that does not fit it, raises
    :class:`~core.errors.ModelUnreadableError` (one line, with the retrain command).
    """
    meta, state = registry.load_pair(model, category, models_dir)
    try:
        module = build_model(model, meta.config, load_weights=False)
    except (ConfigError, TypeError, ValueError) as exc:  # e.g. an unknown or out-of-range setting
        raise registry.unreadable(model, category, f"{registry.METADATA} config: {exc}") from exc
    registry.apply_state(module, state, model, category)
    _check_memory_bank(module, model, category)
    return Detector(module, meta, pick_device(device))


def _check_memory_bank(module: torch.nn.Module, model: str, category: str) -> None:
    """PatchCore: the stored bank must have the width of the configured layers' features.

    ``load_state_dict`` accepts any bank (it is a buffer that starts empty), so a checkpoint from
    other layers would load and then fail on the first image; say so at load time instead.
    """
    inner = getattr(module, "model", None)
    bank = getattr(inner, "memory_bank", None)
    dims = getattr(getattr(inner, "feature_extractor", None), "out_dims", None)
    if not isinstance(bank, torch.Tensor) or dims is None:
        return
    expected = int(sum(dims))
    if bank.dim() != 2 or bank.shape[0] == 0 or bank.shape[1] != expected:
        raise registry.unreadable(
            model,
            category,
            f"{registry.CHECKPOINT} does not fit {registry.METADATA}: memory bank of shape {tuple(bank.shape)}, "
            f"the configured layers give {expected} features per patch",
        )
