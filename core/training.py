"""Train a model on one category and store it in the registry.

Training is anomalib's ``Engine.fit``: for PatchCore one pass over ``train/good`` (feature
extraction, shown with Lightning's progress bar) followed by the coreset selection (its own
progress bar); for EfficientAD the optimisation steps. The validation pass that follows is where
anomalib's post-processor fits the thresholds and normalisation statistics, on the calibration
split described in :func:`core.data.layout.make_datamodule`.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from core import registry
from core.data.layout import CALIBRATION_FRACTION, check_layout, file_list_hash, make_datamodule, resolve_data_root
from core.inference.device import device_label, pick_device
from core.models import get_spec
from core.settings import export_after_training, get_settings

log = logging.getLogger(__name__)

CALIBRATION_SOURCE = (
    f"{int(CALIBRATION_FRACTION * 100)}% of train/good held out (never in the model), half of them given "
    "synthetic Perlin-noise defects by anomalib; thresholds raised to at least the highest score of all "
    "held-out good images, originals of both halves (image) and the 99.9th percentile of their pixels "
    "(pixel); no test image is used"
)
#: Pixel threshold floor: this quantile of the held-out good images' anomaly-map values.
GOOD_PIXEL_QUANTILE = 0.999


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


@torch.inference_mode()
def guard_thresholds(module: Any, good_paths: list[str], *, batch: int = 8) -> None:
    """Raise the calibrated thresholds so the held-out good images are not flagged.

    Deliberate departure from anomalib: its F1-adaptive threshold is fitted on the calibration
    split, whose anomalies are synthetic Perlin-noise blends. Where those are fainter than real
    defects (measured on the demo grid and leather), the F1-best threshold falls to the lowest
    score of the split and every part is judged DEFECT. A factory knows its good parts best, so
    the image threshold is floored at the highest held-out good score and the pixel threshold at
    the 99.9th percentile of held-out good pixels. Only training images are used.

    ``good_paths`` are *all* the held-out ``train/good`` files, read from disk: anomalib's
    validation split holds only half of them as goods (it gives the other half synthetic
    defects), and a floor over that half alone can sit under a known good part (demo tile: 28.4
    against 30.3). The memory-bank refresh (:mod:`core.learning.bank_update`) and recalibration
    count all of them, so training does too, and a bank update no longer looks like a loss of
    detection that was only a lower threshold.
    """
    from core.data.image_io import load_image
    from core.inference.detector import to_tensor

    post = module.post_processor
    module.eval()  # in training mode PatchCore's forward stores embeddings instead of scoring
    device = next(module.model.parameters()).device
    scores, pixels = [], []
    for start in range(0, len(good_paths), batch):
        # one image at a time through the pre-processor (it resizes), as the datasets do
        images = [
            module.pre_processor(to_tensor(load_image(Path(p), str(p), max_side=None)).to(device))
            for p in good_paths[start : start + batch]
        ]
        raw = module.model(torch.cat(images))
        scores.append(raw.pred_score.reshape(-1).float().cpu())
        amap = raw.anomaly_map.float().cpu().reshape(-1)
        pixels.append(amap[torch.randperm(amap.numel(), generator=torch.Generator().manual_seed(0))[:2_000_000]])
    if not scores:
        return
    image_floor = float(torch.cat(scores).max())
    pixel_floor = float(torch.quantile(torch.cat(pixels)[:16_000_000], GOOD_PIXEL_QUANTILE))
    post._image_threshold.fill_(max(float(post.image_threshold), image_floor))  # noqa: SLF001
    post._pixel_threshold.fill_(max(float(post.pixel_threshold), pixel_floor))  # noqa: SLF001
    # keep min <= threshold <= max so the normalised score stays readable around 0.5
    post.image_max.fill_(max(float(post.image_max), float(post.image_threshold)))
    post.pixel_max.fill_(max(float(post.pixel_max), float(post.pixel_threshold)))


def make_engine(device: torch.device, *, max_steps: int | None = None, progress: bool = True, **kwargs: Any):
    """anomalib's Engine, quiet: no logger, no checkpoints of its own (the registry stores them).

    Deliberate departure from anomalib's defaults: its Engine adds a ``ModelCheckpoint`` that
    writes a Lightning checkpoint (hundreds of MB for PatchCore's memory bank) under
    ``default_root_dir`` after every fit, unless one is already in the callbacks. Inspect passes
    one that keeps nothing (``save_top_k=0``), since :mod:`core.registry` stores the model.
    """
    from anomalib.callbacks.checkpoint import ModelCheckpoint
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
    no_checkpoints = ModelCheckpoint(dirpath=str(root / "unused"), save_top_k=0, save_last=False)
    callbacks = [no_checkpoints, *trainer_args.get("callbacks", [])]
    if progress and not sys.stdout.isatty():
        # Lightning's default bar is Rich's where rich is installed, and Rich draws nothing into a
        # file until the end: a background job's log (core.jobs) would show no step for an hour.
        # tqdm writes every update, which the job panel parses.
        from lightning.pytorch.callbacks import TQDMProgressBar

        callbacks.append(TQDMProgressBar())
    trainer_args["callbacks"] = callbacks
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
    seed: int = 0,
    export: bool | None = None,
) -> registry.ModelMeta:
    """Train ``model_name`` on ``category`` and save it; returns the stored metadata.

    ``export`` (default: ``INSPECT_EXPORT_AFTER_TRAINING``, on): then export the new version and run
    it with the export where the parity rule accepts it
    (:func:`core.export.exporter.export_new_version`; the choice and its reason are in the
    version's ``export/runtime.json``, read with :func:`core.inference.runtime.runtime_choice`).

    ``seed`` seeds every generator (Python, NumPy, torch): anomalib draws the calibration split's
    synthetic anomalies from the global generators, so without it two runs on the same images
    calibrate different thresholds.
    """
    from lightning.pytorch import seed_everything

    root = resolve_data_root(data_root)
    get_spec(model_name).make_config(**(config or {}))  # a bad setting is one line before any image is read
    report = check_layout(root, category)
    seed_everything(seed, workers=True, verbose=False)
    dev = pick_device(device)
    config = dict(config or {})
    spec = get_spec(model_name)
    module = spec.build_from(config, load_weights=True)
    model_batch_size, steps, engine_kwargs = spec.prepare_training(module, config)
    batch_size = model_batch_size or batch_size
    datamodule = make_datamodule(root, category, train_batch_size=batch_size, num_workers=num_workers)
    data_hash = file_list_hash(root, category)
    # A callback that checkpoints as it goes (EfficientAD's ValidationStopper) gets a run folder
    # keyed by (category, data, settings); a training started again with the same ones resumes.
    recorders = [cb for cb in engine_kwargs.get("callbacks", []) if hasattr(cb, "attach_run")]
    runs = [cb.attach_run(category, str(root), data_hash, spec.full_config(config)) for cb in recorders]
    resume = next((r.resume_from() for r in runs if r.resume_from() is not None), None)
    if resume is not None:
        log.info(f"resuming the interrupted training from {resume}")
    engine = make_engine(dev, progress=progress, **engine_kwargs)
    started = time.perf_counter()
    engine.fit(model=module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    if steps is not None:
        steps = int(engine.trainer.global_step)  # stopped by measurement: fewer than the cap
    anomalib_thresholds = (float(module.post_processor.image_threshold), float(module.post_processor.pixel_threshold))
    from core.learning.profile import reference_images

    guard_thresholds(module, reference_images(str(root), category)[0])
    train_time = time.perf_counter() - started
    records: dict[str, Any] = {}
    for cb in recorders:
        records.update(cb.record())
        train_time = max(train_time, cb.elapsed_s())  # includes the time of interrupted runs
    module = module.cpu()
    stored_config = spec.full_config(config)
    meta = registry.ModelMeta(
        model=model_name,
        category=category,
        config=stored_config,
        data_root=str(root),
        data_hash=data_hash,
        n_train_images=report.n_train - int(report.n_train * CALIBRATION_FRACTION),
        train_time_s=round(train_time, 1),
        device=device_label(dev),
        calibration=calibration_of(module),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        versions=library_versions(),
        steps=steps,
        extra={
            "anomalib_f1_thresholds": {"image": anomalib_thresholds[0], "pixel": anomalib_thresholds[1]},
            "seed": seed,
            **records,  # EfficientAD: validation_curve, stop_reason, time_budget_s, ...
        },
    )
    version = registry.save(module, meta).name
    for run in runs:
        run.remove()
    if export if export is not None else export_after_training():
        from core.auth import COMMAND_LINE
        from core.export.exporter import export_new_version

        # training is an engineer's action (the command line, or a job an engineer started)
        export_new_version(model_name, category, version, actor=COMMAND_LINE, data_root=root)
    return meta
