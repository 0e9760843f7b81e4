"""One model's entry in the registry: what training, inference, the CLI and the pages need of it."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: (module, config) -> (batch size, steps or None, extra Engine/Trainer arguments)
PrepareTraining = Callable[[Any, dict[str, Any]], tuple[int, int | None, dict[str, Any]]]


@dataclass(frozen=True)
class ModelSpec:
    """Everything model-specific, behind one name (anomalib's ``get_model`` idea, for Inspect).

    The callables import anomalib only when called, so listing models, building the command line
    or drawing a page never pays for it.
    """

    name: str
    label: str
    #: ``**config`` -> the model's config dataclass (validates; ``.to_dict()`` is what meta stores)
    make_config: Callable[..., Any]
    #: (config dataclass, load_weights) -> an anomalib module ready to train or to load a state dict
    build: Callable[[Any, bool], Any]
    #: (module, pre-processed batch) -> B x D x h x w patch descriptors (similarity search)
    patch_features: Callable[[Any, Any], Any]
    #: adds this model's flags to ``train`` (an argument group named after the model)
    add_cli_args: Callable[[argparse._ArgumentGroup], None]
    #: ``argparse`` attribute names copied into the config when given (``image_size`` is shared)
    cli_keys: tuple[str, ...]
    #: what training costs here, shown before a page offers to train (None: nothing to say)
    training_note: Callable[[str], str | None] = lambda _category: None
    #: set-up before ``Engine.fit`` (None: one pass, batch 8, no step count)
    prepare_training: PrepareTraining | None = None
    #: published reference figures per category, shown as labelled markers on the Compare page
    published: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def config_from_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """The flags of ``train`` that this model reads and the user gave."""
        return {key: getattr(args, key) for key in self.cli_keys if getattr(args, key, None) is not None}

    def full_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` validated, with every default filled in: what rebuilds the module later."""
        return self.make_config(**config).to_dict()

    def build_from(self, config: Mapping[str, Any], *, load_weights: bool) -> Any:
        """Build the module from a stored or user config (``load_weights=False`` when a checkpoint follows)."""
        return self.build(self.make_config(**config), load_weights)
