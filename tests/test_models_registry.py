"""Every registered model, looked up by name: what training, inference, the CLI and the pages use."""

from __future__ import annotations

import argparse

import pytest
import torch

from core.errors import ConfigError
from core.models import MODEL_NAMES, build_model, get_spec, list_models, model_label


def test_registry_lists_both_models_with_labels() -> None:
    assert list_models() == MODEL_NAMES == ("patchcore", "efficientad")
    assert [model_label(m) for m in MODEL_NAMES] == ["PatchCore", "EfficientAD"]
    assert model_label("padim") == "padim"  # unknown names are shown as they are


def test_unknown_model_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model 'padim': choose one of patchcore, efficientad"):
        get_spec("padim")


def test_importing_the_registry_and_building_the_cli_imports_no_model_code() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import core.models as m; from core.cli import build_parser; build_parser(); "
        "[m.get_spec(n) for n in m.MODEL_NAMES]; "
        "print(sorted(x for x in ('torch', 'anomalib') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spec_builds_configs_modules_and_features(name: str) -> None:
    spec = get_spec(name)
    assert spec.name == name
    config = spec.full_config({})
    assert config["image_size"] == 256 and spec.full_config(config) == config  # stable round trip
    with pytest.raises(ConfigError):
        spec.full_config({"image_size": "big"})
    module = build_model(name, config, load_weights=False).eval()
    processed = module.pre_processor(torch.rand(1, 3, 256, 256))
    with torch.no_grad():
        features = spec.patch_features(module, processed)
    assert features.ndim == 4 and features.shape[0] == 1 and features.shape[1] > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spec_flags_reach_the_config(name: str) -> None:
    spec = get_spec(name)
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int)
    spec.add_cli_args(parser.add_argument_group(spec.label))
    args = parser.parse_args(["--image-size", "320"])
    assert spec.config_from_args(args) == {"image_size": 320}
    flags = [flag for flag, _ in spec.cli_flags]
    assert flags and all(flag.lstrip("-").replace("-", "_") in spec.full_config({}) for flag in flags)
