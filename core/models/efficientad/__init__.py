"""EfficientAD: a PDN teacher (distilled offline here), a student and an autoencoder."""

from core.models.spec import ModelSpec

SPEC = ModelSpec(
    name="efficientad",
    label="EfficientAD",
    module="core.models.efficientad.model",
    cli_flags=(
        ("--steps", {"type": int, "help": "training steps (paper: 70000, a GPU job)"}),
        ("--model-size", {"choices": ("small", "medium")}),
        ("--lr", {"type": float, "help": "Adam learning rate of student and autoencoder (default 1e-4, the paper's)"}),
    ),
    published={"bottle": {"image_auroc": 1.000, "source": "EfficientAD paper (Batzner et al., WACV 2024), ≈1.000"}},
)
