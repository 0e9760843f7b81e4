"""The model registry: one folder per (model, category) with a checkpoint and its metadata.

``MODELS_DIR/<model>/<category>/model.pt`` holds the anomalib module's state dict (the memory
bank or the trained networks, and the post-processor's calibrated thresholds and normalisation
statistics); ``meta.json`` beside it says how it was made. Loading rebuilds the module from the
metadata and loads the state dict, so no pickled classes are involved and no weights are
downloaded. Writes go to a temporary file and are renamed into place, so a crash mid-save never
leaves a half-written model that the app would try to load.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ModelNotTrainedError
from core.settings import get_settings

CHECKPOINT = "model.pt"
METADATA = "meta.json"


@dataclass
class Calibration:
    """The post-processor's statistics, as raw model scores, and which images produced them."""

    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float
    source: str = ""


@dataclass
class ModelMeta:
    """What a trained model is and how it was made; shown next to every number it produces."""

    model: str
    category: str
    config: dict[str, Any]
    data_root: str
    data_hash: str
    n_train_images: int
    train_time_s: float
    device: str
    calibration: Calibration
    created_at: str
    versions: dict[str, str] = field(default_factory=dict)
    steps: int | None = None  # training steps (EfficientAD); None for PatchCore (one pass)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        data = dict(data)
        data["calibration"] = Calibration(**data["calibration"])
        return cls(**data)


def model_dir(model: str, category: str, models_dir: Path | None = None) -> Path:
    return (models_dir or get_settings().models_dir) / model / category


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(module: torch.nn.Module, meta: ModelMeta, models_dir: Path | None = None) -> Path:
    """Store the module's state dict and metadata; returns the folder."""
    folder = model_dir(meta.model, meta.category, models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    _atomic_write(folder / CHECKPOINT, lambda p: torch.save(state, p))
    _atomic_write(folder / METADATA, lambda p: p.write_text(json.dumps(asdict(meta), indent=2)))
    return folder


def train_command(model: str, category: str) -> str:
    return f"python -m core train --model {model} --category {category}"


def load_meta(model: str, category: str, models_dir: Path | None = None) -> ModelMeta:
    folder = model_dir(model, category, models_dir)
    meta_file, ckpt = folder / METADATA, folder / CHECKPOINT
    if not meta_file.is_file() or not ckpt.is_file():
        raise ModelNotTrainedError(
            f"no trained {model} for '{category}' in {folder}: train it with `{train_command(model, category)}`"
        )
    try:
        return ModelMeta.from_dict(json.loads(meta_file.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise ModelNotTrainedError(f"{meta_file} is unreadable ({exc}); retrain with `{train_command(model, category)}`") from exc


def list_trained(models_dir: Path | None = None) -> list[ModelMeta]:
    """Every (model, category) with a complete checkpoint, sorted by model then category."""
    base = models_dir or get_settings().models_dir
    metas = []
    for meta_file in sorted(base.glob(f"*/*/{METADATA}")):
        try:
            metas.append(load_meta(meta_file.parent.parent.name, meta_file.parent.name, base))
        except ModelNotTrainedError:
            continue
    return metas


def load_state(model: str, category: str, models_dir: Path | None = None) -> dict[str, torch.Tensor]:
    path = model_dir(model, category, models_dir) / CHECKPOINT
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same message
        raise ModelNotTrainedError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); retrain with `{train_command(model, category)}`"
        ) from exc
