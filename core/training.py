"""Train a model on one category and store it in the registry.

Training is anomalib's ``Engine.fit``: for PatchCore one pass over ``train/good`` (feature
extraction, shown with Lightning's progress bar) followed by the coreset selection (its own
progress bar); for EfficientAD the optimisation steps. The validation pass that follows is where
anomalib's post-processor fits the thresholds and normalisation statistics, on the calibration
split described in :func:`core.data.make_datamodule`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from core import registry
from core.data import CALIBRATION_FRACTION, check_layout, file_list_hash, make_datamodule, resolve_data_root
from core.device import device_label, pick_device
from core.models import build_model
from core.settings import get_settings

CALIBRATION_SOURCE = (
    f"{int(CALIBRATION_FRACTION * 100)}% of train/good held out (never in the model), half of them given "
    "synthetic Perlin-noise defects by anomalib; no test image is used"
)


def library_versions() -> dict[str, str]:
    import anomalib
    import timm

    return {"anomalib": anomalib.__version__, "torch": torch.__version__, "timm": timm.__version__}


def calibration_of(module: Any) -> registry.Calibration:
    """Read the thresholds and min/max that anomalib's post-processor fitted during validation."""
    post = module.post_processor
    return registry.Calibration(
        image_threshold=float(post.image_threshold),
        pixel_threshold=float(post.pixel_threshold),
        image_min=float(post.image_min),
        image_max=float(post.image_max),
        pixel_min=float(post.pixel_min),
        pixel_max=float(post.pixel_max),
        source=CALIBRATION_SOURCE,
    )


def make_engine(device: torch.device, *, max_steps: int | None = None, progress: bool = True, **kwargs: Any):
    """anomalib's Engine, quiet: no logger, no checkpoints of its own (the registry stores them)."""
    from anomalib.engine import Engine

    root = get_settings().cache_dir / "lightning"
    trainer_args: dict[str, Any] = {
        "accelerator": "gpu" if device.type == "cuda" else "cpu",
        "devices": 1,
        "logger": False,
        "default_root_dir": str(root),
        "enable_progress_bar": progress,
        "enable_model_summary": False,
    }
    if max_steps is not None:
        trainer_args["max_steps"] = max_steps
    trainer_args.update(kwargs)
    return Engine(**trainer_args)


def train(
    model_name: str,
    category: str,
    *,
    data_root: str | Path | None = None,
    config: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
    batch_size: int = 8,
    num_workers: int = 0,
) -> registry.ModelMeta:
    """Train ``model_name`` on ``category`` and save it; returns the stored metadata."""
    root = resolve_data_root(data_root)
    report = check_layout(root, category)
    dev = pick_device(device)
    config = dict(config or {})
    module = build_model(model_name, config, load_weights=True)
    steps = None
    engine_kwargs: dict[str, Any] = {}
    if model_name == "efficientad":
        from core.efficientad import prepare_training

        batch_size, steps, engine_kwargs = prepare_training(module, config)
    datamodule = make_datamodule(root, category, train_batch_size=batch_size, num_workers=num_workers)
    engine = make_engine(dev, progress=progress, **engine_kwargs)
    started = time.perf_counter()
    engine.fit(model=module, datamodule=datamodule)
    train_time = time.perf_counter() - started
    module = module.cpu()
    stored_config = module_config(model_name, config)
    meta = registry.ModelMeta(
        model=model_name,
        category=category,
        config=stored_config,
        data_root=str(root),
        data_hash=file_list_hash(root, category),
        n_train_images=report.n_train - int(report.n_train * CALIBRATION_FRACTION),
        train_time_s=round(train_time, 1),
        device=device_label(dev),
        calibration=calibration_of(module),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=library_versions(),
        steps=steps,
    )
    registry.save(module, meta)
    return meta


def module_config(model_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The full config (defaults filled in) that rebuilds the module at load time."""
    if model_name == "patchcore":
        from core.models import PatchcoreConfig

        return PatchcoreConfig(**config).to_dict()
    from core.efficientad import EfficientAdConfig

    return EfficientAdConfig(**config).to_dict()
