"""One model's entry in the registry: what training, inference, the CLI and the pages need of it."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

#: The ``train`` flags every model reads: ``--image-size`` and tiling's ``--tile`` / ``--stride``
#: (:mod:`core.models.tiling`; a model that cannot tile says so in one line from its config).
SHARED_CLI_KEYS: tuple[str, ...] = ("image_size", "tile", "stride")


@dataclass(frozen=True)
class ModelSpec:
    """Everything model-specific, behind one name (anomalib's ``get_model`` idea, for Inspect).

    The model's code lives in ``module`` (e.g. ``core.models.patchcore.model``), which defines, by
    convention:

    * ``Config`` -- the config dataclass (validates in ``__post_init__``; ``to_dict()`` is what
      the metadata stores and what rebuilds the module);
    * ``build(config, *, load_weights)`` -- an anomalib module, ready to train or to receive a
      state dict;
    * ``patch_features(module, processed)`` -- B x D x h x w descriptors for similarity search,
      and the same from the prediction's own forward pass: ``capture_target(module)`` (the
      sub-network to hook) and ``features_from_capture(module, its_output)``;
    * optionally ``training_note(category)`` (what training costs here, shown before a page offers
      to train) and ``prepare_training(module, config)`` -> (batch size, steps, Engine arguments).

    ``module`` is imported on first use, so listing models, building the command line or drawing a
    page never imports anomalib or torch.
    """

    name: str
    label: str
    module: str
    #: this model's flags of ``train``: (flag, ``add_argument`` keywords); each sets the config
    #: field of the same name (``--coreset-ratio`` -> ``coreset_ratio``)
    cli_flags: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    #: published reference figures per category, shown as labelled markers on the Compare page
    published: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def code(self) -> ModuleType:
        return importlib.import_module(self.module)

    def add_cli_args(self, group: argparse._ArgumentGroup) -> None:
        """Add this model's flags to ``train`` (an argument group named after the model)."""
        for flag, options in self.cli_flags:
            group.add_argument(flag, **options)

    def config_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """The flags of ``train`` that this model reads and the user gave (:data:`SHARED_CLI_KEYS` are shared)."""
        keys = [*SHARED_CLI_KEYS, *(flag.lstrip("-").replace("-", "_") for flag, _ in self.cli_flags)]
        return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}

    def make_config(self, **config: Any) -> Any:
        """The validated config dataclass (a one-line ConfigError when a value is out of range)."""
        return self.code().Config(**config)

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` validated, with every default filled in: what rebuilds the module later."""
        return self.make_config(**config).to_dict()

    def build_from(self, config: Mapping[str, Any], *, load_weights: bool) -> Any:
        """Build the module from a stored or user config (``load_weights=False`` when a checkpoint follows)."""
        return self.code().build(self.make_config(**config), load_weights=load_weights)

    def patch_features(self, module: Any, processed: Any) -> Any:
        """B x D x h x w descriptors of a pre-processed batch (a forward pass of their own)."""
        return self.code().patch_features(module, processed)

    def capture_target(self, module: Any) -> Any:
        """The sub-network whose output the descriptors come from (hooked during inference)."""
        return self.code().capture_target(module)

    def features_from_capture(self, module: Any, captured: Any) -> Any:
        """B x D x h x w descriptors from what :meth:`capture_target` output in the same pass."""
        return self.code().features_from_capture(module, captured)

    def training_note(self, category: str) -> str | None:
        note = getattr(self.code(), "training_note", None)
        return note(category) if note is not None else None

    def prepare_training(self, module: Any, config: dict[str, Any]) -> tuple[int | None, int | None, dict[str, Any]]:
        """(batch size or None for the caller's, steps or None for one pass, extra Engine arguments)."""
        prepare = getattr(self.code(), "prepare_training", None)
        return prepare(module, config) if prepare is not None else (None, None, {})
