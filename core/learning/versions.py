"""Model versions with their lineage: list, load any one, restore one, write a derived one.

A derived version (recalibrated, grown, restored) is written through :func:`save_derived`, which
records in ``meta.lineage`` the parent version, what changed, which inspections caused it, who
made it and when. Restoring writes the old version's checkpoint *bytes* as a new version, so the
restored model gives byte-identical scores and the version it replaced stays restorable too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import registry
from core.data.image_io import sha256_of
from core.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from core.inference.detector import Detector

#: ``lineage.kind`` values.
KINDS = ("recalibrate", "update-bank", "restore")


@dataclass(frozen=True)
class VersionInfo:
    """One stored version as the History page and ``python -m core versions`` list it."""

    version: str
    created: str  # when this version was written (lineage.when, else the training time)
    kind: str  # 'train' or one of KINDS
    change: str
    parent: str | None
    who: str
    inspections: list[int]
    image_threshold: float
    n_train_images: int
    is_latest: bool


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def list_versions(model: str, category: str, models_dir: Path | None = None) -> list[VersionInfo]:
    """Every stored version of (model, category), oldest first (unreadable ones are skipped)."""
    files = registry.list_versions(registry.model_dir(model, category, models_dir))
    out = []
    for i, f in enumerate(files):
        try:
            meta = registry.read_meta(f, model, category)
        except registry.ModelUnreadableError:
            continue
        lin = meta.lineage or {}
        out.append(
            VersionInfo(
                version=f.version,
                created=str(lin.get("when") or meta.created_at),
                kind=str(lin.get("kind") or "train"),
                change=str(lin.get("change") or f"trained on {meta.n_train_images} images of {meta.data_root}"),
                parent=lin.get("parent"),
                who=str(lin.get("who") or ""),
                inspections=[int(x) for x in lin.get("inspections") or []],
                image_threshold=meta.calibration.image_threshold,
                n_train_images=meta.n_train_images,
                is_latest=i == len(files) - 1,
            )
        )
    return out


def load_detector(
    model: str, category: str, version: str | None = None, *, device: str | None = None, models_dir: Path | None = None
) -> Detector:
    """A detector of ``version`` (default: the newest), built exactly as the app builds the newest."""
    from core.inference.detector import Detector, _check_memory_bank
    from core.inference.device import pick_device
    from core.models import build_model

    meta, state, name = registry.load_pair(model, category, models_dir, version=version)
    module = build_model(model, meta.config, load_weights=False)
    registry.apply_state(module, state, model, category)
    _check_memory_bank(module, model, category)
    return Detector(module, meta, pick_device(device), version=name)


def derived_meta(
    parent: Detector, *, kind: str, change: str, inspections: list[int] | None, who: str, **extra: Any
) -> registry.ModelMeta:
    """A copy of the parent's metadata with the lineage of a new version filled in."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    meta = copy.deepcopy(parent.meta)
    meta.lineage = {
        "parent": parent.version,
        "kind": kind,
        "change": change,
        "inspections": sorted({int(i) for i in inspections or []}),
        "who": who or "unknown",
        "when": now_iso(),
        **extra,
    }
    meta.checkpoint = {}
    return meta


def set_calibration(module: torch.nn.Module, cal: registry.Calibration) -> None:
    """Write a calibration into the module's post-processor (the checkpoint carries it too)."""
    post = module.post_processor
    post._image_threshold.fill_(cal.image_threshold)  # noqa: SLF001
    post._pixel_threshold.fill_(cal.pixel_threshold)  # noqa: SLF001
    post.image_min.fill_(cal.image_min)
    post.image_max.fill_(cal.image_max)
    post.pixel_min.fill_(cal.pixel_min)
    post.pixel_max.fill_(cal.pixel_max)


def save_derived(detector: Detector, meta: registry.ModelMeta, models_dir: Path | None = None) -> str:
    """Store the detector's module with ``meta`` as the version after its parent; returns its name.

    Compare-and-set on ``meta.lineage["parent"]``: when another change was published since the
    parent was loaded, :class:`~core.errors.VersionConflictError` and nothing is written.
    """
    set_calibration(detector.module, meta.calibration)
    module = detector.module
    device = next(module.parameters()).device
    try:
        folder = registry.save(module.cpu(), meta, models_dir, parent=(meta.lineage or {}).get("parent"))
    finally:
        module.to(device)
    return folder.name


def restore(model: str, category: str, version: str, *, who: str = "", models_dir: Path | None = None) -> str:
    """Make ``version`` the newest again: its checkpoint bytes and calibration as a new version."""
    files = registry.version_files(model, category, version, models_dir)
    old = registry.read_meta(files, model, category)
    data = files.checkpoint.read_bytes()
    registry.read_state(files, model, category, old)  # refuse a damaged or mismatched checkpoint
    current = registry.current_files(model, category, models_dir)
    now = registry.read_meta(current, model, category)
    if current.version == files.version or (
        now.checkpoint.get("sha256") == sha256_of(data) and now.calibration == old.calibration
    ):
        raise ConfigError(f"{version} is what {model}/{category} runs now ({current.version}): nothing to restore")
    meta = copy.deepcopy(old)
    meta.lineage = {
        "parent": current.version,
        "kind": "restore",
        "change": f"restored {version}",
        "restored_from": version,
        "inspections": [],
        "who": who or "unknown",
        "when": now_iso(),
    }
    meta.checkpoint = {}
    return registry.save_bytes(data, meta, models_dir, parent=current.version).name
