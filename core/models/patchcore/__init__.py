"""PatchCore: a memory bank of pretrained patch features, reduced by greedy coreset subsampling."""

from __future__ import annotations

import argparse
from typing import Any

from core.models.spec import ModelSpec


def _config(**config: Any) -> Any:
    from core.models.patchcore.model import PatchcoreConfig

    return PatchcoreConfig(**config)


def _build(config: Any, load_weights: bool) -> Any:
    from core.models.patchcore.model import build_patchcore

    return build_patchcore(config, load_weights=load_weights)


def _patch_features(module: Any, processed: Any) -> Any:
    from core.models.patchcore.model import patchcore_patch_features

    return patchcore_patch_features(module, processed)


def _cli(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--backbone", help="efficientnet_lite0 (default, offline), _lite1, _lite2, or a timm name")
    group.add_argument("--backbone-weights", help="local weights file for the backbone (e.g. wide_resnet50_2.pth)")
    group.add_argument("--layers", nargs="+", help="backbone layers (default: the backbone's stride-8 and stride-16 blocks)")
    group.add_argument("--coreset-ratio", type=float, help="share of patch features kept in the memory bank (default 0.1)")


SPEC = ModelSpec(
    name="patchcore",
    label="PatchCore",
    make_config=_config,
    build=_build,
    patch_features=_patch_features,
    add_cli_args=_cli,
    cli_keys=("backbone", "layers", "coreset_ratio", "image_size", "backbone_weights"),
    published={
        "bottle": {
            "image_auroc": 1.000,
            "pixel_auroc": 0.986,
            "source": "PatchCore paper (Roth et al., CVPR 2022), WideResNet-50 backbone",
        }
    },
)
