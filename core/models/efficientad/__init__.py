"""EfficientAD: a PDN teacher (distilled offline here), a student and an autoencoder."""

from __future__ import annotations

import argparse
from typing import Any

from core.models.spec import ModelSpec


def _config(**config: Any) -> Any:
    from core.models.efficientad.model import EfficientAdConfig

    return EfficientAdConfig(**config)


def _build(config: Any, load_weights: bool) -> Any:
    from core.models.efficientad.model import build_efficientad

    return build_efficientad(config, load_weights=load_weights)


def _patch_features(module: Any, processed: Any) -> Any:
    from core.models.efficientad.model import teacher_patch_features

    return teacher_patch_features(module, processed)


def _training_note(category: str) -> str:
    from core.models.efficientad.model import training_plan_note

    return training_plan_note(category)


def _prepare_training(module: Any, config: dict[str, Any]) -> tuple[int, int | None, dict[str, Any]]:
    from core.models.efficientad.model import prepare_training

    return prepare_training(module, config)


def _cli(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--steps", type=int, help="training steps (paper: 70000, a GPU job)")
    group.add_argument("--model-size", choices=("small", "medium"))
    group.add_argument("--lr", type=float, help="Adam learning rate of student and autoencoder (default 1e-4, the paper's)")


SPEC = ModelSpec(
    name="efficientad",
    label="EfficientAD",
    make_config=_config,
    build=_build,
    patch_features=_patch_features,
    add_cli_args=_cli,
    cli_keys=("steps", "model_size", "image_size", "lr"),
    training_note=_training_note,
    prepare_training=_prepare_training,
    published={"bottle": {"image_auroc": 1.000, "source": "EfficientAD paper (Batzner et al., WACV 2024), ≈1.000"}},
)
