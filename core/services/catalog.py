"""What can be inspected: trained and unreadable models, categories, test images, cache keys, the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.data.image_io import SUPPORTED_EXTENSIONS
from core.data.layout import category_images, list_categories, resolve_data_root
from core.models import MODEL_NAMES, get_spec, model_label
from core.settings import get_settings

if TYPE_CHECKING:
    from core.registry import ModelMeta

__all__ = [
    "MODEL_NAMES",
    "TestImage",
    "available_categories",
    "checkpoint_mtime",
    "detector_cache_key",
    "device_summary",
    "model_label",
    "test_images",
    "train_command",
    "trained_models",
    "training_note",
    "unreadable_models",
]

# core.registry imports torch: it is imported inside the functions below, never at module import.


def training_note(model: str, category: str) -> str | None:
    """What training ``model`` costs on this machine, where that matters (EfficientAD's steps)."""
    return get_spec(model).training_note(category)


def train_command(model: str, category: str) -> str:
    """The terminal command that trains ``model`` on ``category``."""
    from core import registry

    return registry.train_command(model, category)


def trained_models() -> dict[tuple[str, str], ModelMeta]:
    """Every usable trained (model, category) pair with its metadata."""
    from core import registry

    return {(m.model, m.category): m for m in registry.list_trained()}


def unreadable_models() -> dict[tuple[str, str], str]:
    """(model, category) pairs whose files are there but unusable, with the one-line error to show."""
    from core import registry

    return registry.list_trained_with_problems()[1]


def available_categories() -> list[str]:
    """Categories the inspector can pick: those in the dataset root and those with a model (even a broken one)."""
    from core import registry

    cats = set(list_categories(resolve_data_root()))
    metas, problems = registry.list_trained_with_problems()
    cats.update(m.category for m in metas)
    cats.update(category for _, category in problems)
    return sorted(cats)


def checkpoint_mtime(model: str, category: str) -> float:
    """The current checkpoint's modification time (0.0 when missing): retraining changes the cache key."""
    from core import registry

    path = registry.checkpoint_path(model, category)
    try:
        return path.stat().st_mtime if path else 0.0
    except OSError:
        return 0.0


def detector_cache_key(model: str, category: str) -> tuple[str, str, str, float, float]:
    """(model, category, current checkpoint, its mtime, its runtime choice's mtime): what a cached
    detector is valid for.

    The checkpoint path names the models folder and the version (``.../v0003/model.pt``), so a new
    save, which is a new version folder, always gives a new key; choosing the version's runtime
    (``export --use``, or the export after training, which ends after the version is published)
    gives one too.
    """
    from core import registry
    from core.inference.runtime import CHOICE

    path = registry.checkpoint_path(model, category)
    try:
        chosen = (path.parent / "export" / CHOICE).stat().st_mtime if path else 0.0
    except OSError:
        chosen = 0.0
    return model, category, str(path or get_settings().models_dir), checkpoint_mtime(model, category), chosen


@dataclass(frozen=True)
class TestImage:
    """One image of a category's test set and the folder (good or defect type) it is in."""

    path: Path
    defect_type: str

    @property
    def label(self) -> str:
        return f"{self.defect_type}/{self.path.name}"


def test_images(category: str, root: str | Path | None = None) -> list[TestImage]:
    """The category's test images (``test/<type>/*``), good first, then defect types A-Z.

    Any file the loader reads is offered (a customer's test set may hold JPEGs to try).
    """
    images = category_images(root, category, ("test",), suffixes=SUPPORTED_EXTENSIONS)
    return [TestImage(image.path, image.defect_type) for image in images]


def device_summary() -> str:
    """Where models run in this process, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads)'."""
    from core.inference.device import device_label, pick_device

    return device_label(pick_device())
