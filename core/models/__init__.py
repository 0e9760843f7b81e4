"""The models Inspect trains, found by name: one :class:`~core.models.spec.ModelSpec` each.

Adding a model (say PaDiM) is one module ``core/models/padim/__init__.py`` defining ``SPEC`` and
one line in :data:`_REGISTRY`; training, inference, the command line, the pages and the tests
that loop over :data:`MODEL_NAMES` pick it up from here.
"""

from __future__ import annotations

import importlib
from typing import Any

from core.errors import ConfigError
from core.models.spec import ModelSpec

# name -> (label, module defining SPEC). Labels live here so pages can list models without
# importing any model code.
_REGISTRY: dict[str, tuple[str, str]] = {
    "patchcore": ("PatchCore", "core.models.patchcore"),
    "efficientad": ("EfficientAD", "core.models.efficientad"),
}

#: Every model name, in the order pages and tables show them.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def list_models() -> tuple[str, ...]:
    return MODEL_NAMES


def model_label(name: str) -> str:
    """The display name ('PatchCore'); an unknown name is shown as it is."""
    return _REGISTRY[name][0] if name in _REGISTRY else name


def get_spec(name: str) -> ModelSpec:
    """The spec of model ``name``, or a one-line :class:`ConfigError` naming the known ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}': choose one of {', '.join(MODEL_NAMES)}")
    spec = importlib.import_module(_REGISTRY[name][1]).SPEC
    assert spec.name == name, f"{_REGISTRY[name][1]}.SPEC is named {spec.name!r}, not {name!r}"
    return spec


def build_model(name: str, config: dict[str, Any], *, load_weights: bool) -> Any:
    """Build model ``name`` from its config (``load_weights=False`` when a checkpoint follows)."""
    return get_spec(name).build_from(config, load_weights=load_weights)
