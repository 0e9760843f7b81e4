"""PatchCore: a memory bank of pretrained patch features, reduced by greedy coreset subsampling."""

from core.models.spec import ModelSpec

SPEC = ModelSpec(
    name="patchcore",
    label="PatchCore",
    module="core.models.patchcore.model",
    cli_flags=(
        ("--backbone", {"help": "efficientnet_lite0 (default, offline), _lite1, _lite2, or a timm name"}),
        ("--backbone-weights", {"help": "local weights file for the backbone (e.g. wide_resnet50_2.pth)"}),
        ("--layers", {"nargs": "+", "help": "backbone layers (default: the backbone's stride-8 and stride-16 blocks)"}),
        (
            "--coreset-ratio",
            {"type": float, "help": "share of patch features kept in the memory bank (default 0.025, chosen by measurement)"},
        ),
    ),
    published={
        "bottle": {
            "image_auroc": 1.000,
            "pixel_auroc": 0.986,
            "source": "PatchCore paper (Roth et al., CVPR 2022), WideResNet-50 backbone",
        }
    },
)
