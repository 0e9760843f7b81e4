"""The model registry: per (model, category), versions of a checkpoint and its metadata.

Layout::

    MODELS_DIR/<model>/<category>/v0003/model.pt    the anomalib module's state dict
    MODELS_DIR/<model>/<category>/v0003/meta.json   how it was made (config, calibration, data)

A save writes both files into a hidden temporary folder beside the versions and renames that
folder to the next ``vNNNN`` in *one* step, so a crash leaves either the previous version or the
complete new one, never a new meta.json beside an old model.pt. Loading takes the newest complete
version unless a version is named.

A change derived from a version (recalibrated, grown, restored) is published by compare-and-set:
``save(..., parent="v0006")`` renames into exactly ``v0007`` and only while ``v0006`` is still the
newest. Two changes computed from the same version race for the same folder name; ``rename`` lets
one win and the other gets :class:`~core.errors.VersionConflictError` naming the winner, never a
silent loss. The rename is the only step, so the same holds on a models folder shared by several
machines (``INSPECT_MODELS_DIR`` on a network share whose ``rename`` is atomic, as NFS and SMB's are).

Versions are kept: a save never removes one. Every change an inspector's feedback makes
(:mod:`core.learning`: a recalibrated threshold, a grown memory bank, a restore) is a new version
whose ``meta.json`` says in ``lineage`` which version it came from, what changed, which inspections
caused it, who made it and when; any earlier version can be restored (a restore is itself a new
version holding the old one's bytes), so deleting one a user may go back to is never automatic.
A PatchCore version weighs what its memory bank does (tens of MB at 256 px); remove old
``vNNNN`` folders by hand if the disk fills (never the newest). The old flat layout (``model.pt`` and ``meta.json`` directly in ``<category>/``) still
loads, as the oldest version, so existing workspaces keep working.

Loading rebuilds the module from the metadata and loads the state dict, so no pickled classes are
involved and no weights are downloaded. Metadata is validated on load: a model whose files are there
but cannot be used raises :class:`~core.errors.ModelUnreadableError` with a one-line reason and the
command that retrains it, and :func:`list_trained_with_problems` reports such models instead of
hiding them.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.data.image_io import sha256_of
from core.data.layout import validate_category_name
from core.errors import ModelNotTrainedError, ModelUnreadableError, VersionConflictError
from core.settings import get_settings

CHECKPOINT = "model.pt"
METADATA = "meta.json"
#: A version folder's name: v0001, v0002, ... (more digits once past 9999).
VERSION_RE = re.compile(r"v(\d{4,})")
#: Temporary folders of saves in progress start with this; a crashed save's is removed after a day.
SAVING_PREFIX = ".saving-"
STALE_SAVE_S = 24 * 3600
#: Plausible square input sizes; model-specific minimums are checked when the module is built.
IMAGE_SIZE_RANGE = (32, 4096)


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
    #: {"bytes": ..., "sha256": ...} of the model.pt saved with this metadata (filled in by save();
    #: absent in older metadata): a model.pt from another save is caught before it is used.
    checkpoint: dict[str, Any] = field(default_factory=dict)
    #: Where this version came from (empty for a training run): ``parent`` (version name),
    #: ``change`` (one line), ``kind`` (recalibrate / update-bank / restore), ``inspections``
    #: (history ids that caused it), ``who``, ``when``; see :mod:`core.learning.versions`.
    lineage: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        data = dict(data)
        data["calibration"] = Calibration(**data["calibration"])
        return cls(**data)


@dataclass(frozen=True)
class ModelFiles:
    """The checkpoint and metadata of one stored version."""

    folder: Path
    version: str  # "v0003", or "flat" for the old layout

    @property
    def meta_file(self) -> Path:
        return self.folder / METADATA

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT


def model_dir(model: str, category: str, models_dir: Path | None = None) -> Path:
    """The (model, category) folder that holds its versions (the category name is checked first)."""
    return (models_dir or get_settings().models_dir) / model / validate_category_name(category)


def train_command(model: str, category: str) -> str:
    return f"python -m core train --model {model} --category {category}"


def unreadable(model: str, category: str, reason: str) -> ModelUnreadableError:
    """The one-line error for a model whose files are there but unusable."""
    return ModelUnreadableError(
        f"model {model}/{category} is unreadable ({reason}): retrain with `{train_command(model, category)}`"
    )


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


def _version_number(path: Path) -> int | None:
    match = VERSION_RE.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _is_complete(folder: Path) -> bool:
    return (folder / METADATA).is_file() and (folder / CHECKPOINT).is_file()


def list_versions(folder: Path) -> list[ModelFiles]:
    """Complete versions in a (model, category) folder, oldest first; the flat layout counts as the oldest."""
    found = [ModelFiles(folder, "flat")] if _is_complete(folder) else []
    if folder.is_dir():
        numbered = [(n, p) for p in folder.iterdir() if (n := _version_number(p)) is not None and _is_complete(p)]
        found += [ModelFiles(p, p.name) for _, p in sorted(numbered)]
    return found


def find_files(model: str, category: str, models_dir: Path | None = None) -> ModelFiles | None:
    """The newest complete version, or None when nothing complete is stored."""
    versions = list_versions(model_dir(model, category, models_dir))
    return versions[-1] if versions else None


def current_files(model: str, category: str, models_dir: Path | None = None) -> ModelFiles:
    files = find_files(model, category, models_dir)
    if files is None:
        folder = model_dir(model, category, models_dir)
        raise ModelNotTrainedError(
            f"no trained {model} for '{category}' in {folder}: train it with `{train_command(model, category)}`"
        )
    return files


def checkpoint_path(model: str, category: str, models_dir: Path | None = None) -> Path | None:
    """The checkpoint loading would use now (None when there is none): identifies the model version."""
    files = find_files(model, category, models_dir)
    return files.checkpoint if files else None


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    # fsync before the rename: after a power cut the renamed folder must not hold empty files.
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _next_number(folder: Path) -> int:
    numbers = [n for p in folder.iterdir() if (n := _version_number(p)) is not None]
    return max(numbers, default=0) + 1


def _describe(files: ModelFiles, model: str, category: str) -> str:
    """'v0007 (update-bank by alice at 2026-12-06T10:00:00+00:00: memory bank ...)' for a conflict message."""
    try:
        lin = read_meta(files, model, category).lineage or {}
    except ModelUnreadableError:
        return files.version
    if not lin:
        return f"{files.version} (a training)"
    return f"{files.version} ({lin.get('kind')} by {lin.get('who') or 'unknown'} at {lin.get('when')}: {lin.get('change')})"


def _conflict(folder: Path, parent: str, model: str, category: str) -> VersionConflictError:
    newest = list_versions(folder)
    other = _describe(newest[-1], model, category) if newest else "another change"
    return VersionConflictError(
        f"{model}/{category} changed while this change was computed from {parent}: {other} is now the newest; "
        "nothing was written, run the change again on the newest version",
        parent=parent,
        newest=other,
    )


def _publish_after(tmp: Path, folder: Path, parent: str, model: str, category: str) -> Path:
    """Rename the temporary folder to the version right after ``parent``, only while ``parent`` is the newest."""
    versions = list_versions(folder)
    if not versions or versions[-1].version != parent:
        raise _conflict(folder, parent, model, category)
    number = _version_number(Path(parent)) if parent != "flat" else 0
    target = folder / f"v{(number or 0) + 1:04d}"
    try:
        os.rename(tmp, target)  # fails when another change took the name first: that is the compare-and-set
    except OSError:
        if not target.exists():
            raise
        raise _conflict(folder, parent, model, category) from None
    return target


def _publish(tmp: Path, folder: Path) -> Path:
    """Rename the finished temporary folder to the next free version: the one step that publishes it."""
    for _ in range(100):
        target = folder / f"v{_next_number(folder):04d}"
        try:
            os.rename(tmp, target)
            return target
        except OSError:
            if not target.exists():  # not a concurrent save taking the same number: a real failure
                raise
    raise OSError(f"could not find a free version folder in {folder}")


def _prune(folder: Path) -> None:
    """Remove temporary folders of crashed saves (versions are kept: see the module docstring)."""
    for tmp in folder.glob(f"{SAVING_PREFIX}*"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_SAVE_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue


def save(module: torch.nn.Module, meta: ModelMeta, models_dir: Path | None = None, *, parent: str | None = None) -> Path:
    """Store the module's state dict and metadata as a new version; returns the version folder.

    Records the checkpoint's size and sha256 in ``meta.checkpoint`` (so a later mix-up is caught).
    ``parent``: the version this one was derived from; it is published only while that is the newest.
    """
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return save_bytes(buffer.getvalue(), meta, models_dir, parent=parent)


def save_bytes(data: bytes, meta: ModelMeta, models_dir: Path | None = None, *, parent: str | None = None) -> Path:
    """Store an already serialised checkpoint with its metadata as a new version (a restore copies
    the old bytes exactly, so the restored model scores exactly as the old one did).

    ``parent`` (a derived version): compare-and-set, see the module docstring; without it (a new
    training) the next free number is taken.
    """
    folder = model_dir(meta.model, meta.category, models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    meta.checkpoint = {"bytes": len(data), "sha256": sha256_of(data)}
    tmp = Path(tempfile.mkdtemp(prefix=SAVING_PREFIX, dir=folder))
    try:
        _write_synced(tmp / CHECKPOINT, data)
        _write_synced(tmp / METADATA, json.dumps(asdict(meta), indent=2).encode())
        if parent is None:
            version = _publish(tmp, folder)
        else:
            version = _publish_after(tmp, folder, parent, meta.model, meta.category)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(folder)
    return version


# --------------------------------------------------------------------------------------------
# Validating metadata
# --------------------------------------------------------------------------------------------


class _Invalid(ValueError):
    """One problem with meta.json, phrased for the user."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise _Invalid(message)


def _kind(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__


def _check_config(config: Any) -> None:
    _need(isinstance(config, dict), f"config must be an object, got {_kind(config)}")
    size = config.get("image_size")
    if size is not None:
        low, high = IMAGE_SIZE_RANGE
        _need(_is_int(size), f"image_size must be an integer, got {_kind(size)}")
        _need(low <= size <= high, f"image_size must be between {low} and {high}, got {size}")
    for key in ("backbone", "model_size", "backbone_weights", "teacher_weights"):
        value = config.get(key)
        _need(value is None or isinstance(value, str), f"{key} must be a string, got {_kind(value)}")
    layers = config.get("layers")
    _need(
        layers is None or (isinstance(layers, list) and all(isinstance(x, str) for x in layers)),
        f"layers must be a list of names, got {_kind(layers)}",
    )
    for key in ("coreset_ratio", "lr", "weight_decay"):
        value = config.get(key)
        _need(value is None or _is_number(value), f"{key} must be a finite number, got {_kind(value)}")
    for key in ("num_neighbors", "steps"):
        value = config.get(key)
        _need(value is None or _is_int(value), f"{key} must be an integer, got {_kind(value)}")


def _check_calibration(cal: Any) -> Calibration:
    _need(isinstance(cal, dict), f"calibration must be an object, got {_kind(cal)}")
    values = {}
    for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        _need(name in cal, f"calibration.{name} is missing")
        _need(_is_number(cal[name]), f"calibration.{name} must be a finite number, got {_kind(cal[name])}")
        values[name] = float(cal[name])
    source = cal.get("source", "")
    _need(isinstance(source, str), f"calibration.source must be a string, got {_kind(source)}")
    return Calibration(**values, source=source)


def validate_meta(data: Any, model: str, category: str) -> ModelMeta:
    """The metadata as a ModelMeta, after checking every field the code relies on; raises ValueError."""
    _need(isinstance(data, dict), f"expected an object, got {_kind(data)}")
    required = (
        "model",
        "category",
        "config",
        "data_root",
        "data_hash",
        "n_train_images",
        "train_time_s",
        "device",
        "calibration",
        "created_at",
    )
    missing = [key for key in required if key not in data]
    _need(not missing, f"missing {', '.join(missing)}")
    _need(data["model"] == model, f"model is {_kind(data['model'])}, but it is stored under '{model}'")
    _need(data["category"] == category, f"category is {_kind(data['category'])}, but it is stored under '{category}'")
    _check_config(data["config"])
    for key in ("data_root", "data_hash", "device", "created_at"):
        _need(isinstance(data[key], str), f"{key} must be a string, got {_kind(data[key])}")
    _need(
        _is_int(data["n_train_images"]) and data["n_train_images"] >= 0,
        f"n_train_images must be a non-negative integer, got {_kind(data['n_train_images'])}",
    )
    _need(
        _is_number(data["train_time_s"]) and data["train_time_s"] >= 0,
        f"train_time_s must be a non-negative number, got {_kind(data['train_time_s'])}",
    )
    steps = data.get("steps")
    _need(steps is None or _is_int(steps), f"steps must be an integer, got {_kind(steps)}")
    checkpoint = data.get("checkpoint", {})
    _need(
        isinstance(checkpoint, dict)
        and (not checkpoint or (_is_int(checkpoint.get("bytes")) and isinstance(checkpoint.get("sha256"), str))),
        f"checkpoint must be an object with bytes and sha256, got {_kind(checkpoint)}",
    )
    for key in ("versions", "extra", "lineage"):
        _need(isinstance(data.get(key, {}), dict), f"{key} must be an object, got {_kind(data.get(key))}")
    known = {f for f in ModelMeta.__dataclass_fields__}  # unknown keys (a newer writer) are ignored
    fields = {k: v for k, v in data.items() if k in known}
    fields["calibration"] = _check_calibration(data["calibration"])
    return ModelMeta(**fields)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_meta(files: ModelFiles, model: str, category: str) -> ModelMeta:
    try:
        data = json.loads(files.meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(model, category, f"{METADATA}: {_first_line(exc)}") from exc
    try:
        return validate_meta(data, model, category)
    except ValueError as exc:
        raise unreadable(model, category, f"{METADATA}: {exc}") from exc


def _not_the_pair(model: str, category: str, detail: str) -> ModelUnreadableError:
    return unreadable(model, category, f"{CHECKPOINT} is not the one {METADATA} was saved with: {detail}")


def check_checkpoint(files: ModelFiles, model: str, category: str, meta: ModelMeta | None = None) -> None:
    """A cheap look at the checkpoint (its size and zip directory, not its tensors).

    Catches a truncated file, a file that is no checkpoint, and (when the metadata records it) a
    model.pt from another save.
    """
    expected = (meta.checkpoint or {}).get("bytes") if meta else None
    if expected is not None:
        try:
            size = files.checkpoint.stat().st_size
        except OSError as exc:
            raise unreadable(model, category, f"{CHECKPOINT}: {_first_line(exc)}") from exc
        if size != expected:
            raise _not_the_pair(model, category, f"{size} bytes, expected {expected}")
    try:
        with zipfile.ZipFile(files.checkpoint) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise unreadable(model, category, f"{CHECKPOINT} is truncated or not a checkpoint: {_first_line(exc)}") from exc
    if not any(name.endswith("data.pkl") for name in names):
        raise unreadable(model, category, f"{CHECKPOINT} is not a PyTorch checkpoint")


def load_meta(model: str, category: str, models_dir: Path | None = None) -> ModelMeta:
    return read_meta(current_files(model, category, models_dir), model, category)


def read_state(files: ModelFiles, model: str, category: str, meta: ModelMeta | None = None) -> dict[str, torch.Tensor]:
    """The state dict; with ``meta``, only if it is the very checkpoint saved with that metadata."""
    try:
        data = files.checkpoint.read_bytes()
    except OSError as exc:
        raise unreadable(model, category, f"{CHECKPOINT}: {_first_line(exc)}") from exc
    expected = (meta.checkpoint or {}).get("sha256") if meta else None
    if expected and sha256_of(data) != expected:
        raise _not_the_pair(model, category, "its sha256 differs")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same message
        raise unreadable(model, category, f"{CHECKPOINT}: {type(exc).__name__}: {_first_line(exc, 100)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise unreadable(model, category, f"{CHECKPOINT} does not hold a state dict")
    return state


def load_state(model: str, category: str, models_dir: Path | None = None) -> dict[str, torch.Tensor]:
    return read_state(current_files(model, category, models_dir), model, category)


def version_files(model: str, category: str, version: str, models_dir: Path | None = None) -> ModelFiles:
    """One stored version by name ('v0003', or 'flat'), or :class:`ModelNotTrainedError` naming those there are."""
    versions = list_versions(model_dir(model, category, models_dir))
    for files in versions:
        if files.version == version:
            return files
    known = ", ".join(f.version for f in versions) or "none"
    raise ModelNotTrainedError(f"{model}/{category} has no version {version!r} (stored: {known})")


def load_pair(
    model: str, category: str, models_dir: Path | None = None, version: str | None = None
) -> tuple[ModelMeta, dict[str, torch.Tensor], str]:
    """Metadata, state dict and version name ('v0003') of the *same* version (a save in between
    cannot mix two versions); the newest one unless ``version`` names another."""
    if version is not None:
        files = version_files(model, category, version, models_dir)
        meta = read_meta(files, model, category)
        return meta, read_state(files, model, category, meta), files.version
    for attempt in range(2):
        files = current_files(model, category, models_dir)
        try:
            meta = read_meta(files, model, category)
            return meta, read_state(files, model, category, meta), files.version
        except ModelUnreadableError:
            if attempt == 0 and not _is_complete(files.folder):
                continue  # pruned by a concurrent save between finding and reading: take the new one
            raise
    raise AssertionError("unreachable")


def apply_state(module: torch.nn.Module, state: dict[str, torch.Tensor], model: str, category: str) -> None:
    """Load ``state`` into the module built from the metadata; a checkpoint that does not fit is unreadable."""
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [_first_line(exc)]
        reason = details[0] if len(details[0]) <= 160 else details[0][:159] + "…"
        raise unreadable(model, category, f"{CHECKPOINT} does not fit {METADATA}: {reason}") from exc


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def list_trained_with_problems(models_dir: Path | None = None) -> tuple[list[ModelMeta], dict[tuple[str, str], str]]:
    """Usable models (sorted by model, category) and, per unusable one, its one-line error.

    A model is listed as a problem, not hidden, when its files are there but its metadata is invalid
    or its checkpoint is truncated; whether the tensors fit the metadata only shows when it loads.
    """
    base = models_dir or get_settings().models_dir
    metas: list[ModelMeta] = []
    problems: dict[tuple[str, str], str] = {}
    for folder in sorted(p for p in base.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        model, category = folder.parent.name, folder.name
        versions = list_versions(folder)
        if not versions:
            continue
        try:
            meta = read_meta(versions[-1], model, category)
            check_checkpoint(versions[-1], model, category, meta)
        except ModelUnreadableError as exc:
            problems[(model, category)] = str(exc)
            continue
        metas.append(meta)
    return metas, problems


def list_trained(models_dir: Path | None = None) -> list[ModelMeta]:
    """Every (model, category) with a usable checkpoint, sorted by model then category."""
    return list_trained_with_problems(models_dir)[0]
