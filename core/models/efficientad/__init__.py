"""EfficientAD: a PDN teacher (distilled offline here), a student and an autoencoder."""

from core.models.spec import ModelSpec

SPEC = ModelSpec(
    name="efficientad",
    label="EfficientAD",
    module="core.models.efficientad.model",
    cli_flags=(
        ("--steps", {"type": int, "help": "the most training steps (default: the paper's 70000; stops earlier by validation)"}),
        # no argparse choices: a bad size ends in one `error:` line from the config, like the rest
        ("--model-size", {"metavar": "{small,medium}"}),
        ("--time-budget", {"metavar": "DURATION", "help": "stop after this long, e.g. 45m, 1.5h, 900s (CPU default 60m)"}),
        ("--val-every", {"type": int, "metavar": "N", "help": "score the validation split every N steps (CPU 100, GPU 1000)"}),
        (
            "--patience",
            {"type": int, "metavar": "N", "help": "stop after N validations without improvement (default 5; 0: never)"},
        ),
        ("--precision", {"metavar": "{auto,bf16,fp32}", "help": "auto: bf16 autocast on a CPU that supports it"}),
        ("--lr", {"type": float, "help": "Adam learning rate of student and autoencoder (default 1e-4, the paper's)"}),
    ),
    published={"bottle": {"image_auroc": 1.000, "source": "EfficientAD paper (Batzner et al., WACV 2024), ≈1.000"}},
)
