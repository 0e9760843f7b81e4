"""The offline backbone's weights are real ImageNet weights, and missing weights say what to do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.errors import WeightsMissingError
from core.models.backbones import build_classifier, full_model_state_dict, load_pretrained_weights, resolve_backbone

EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282  # ImageNet classes


def _chelsea() -> torch.Tensor:
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255  # a cat photo shipped by scikit-image
    image = F.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
    return (image - 0.5) / 0.5  # EfficientNet-Lite's normalisation


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_offline_weights_classify_a_cat(name: str) -> None:
    model = build_classifier(name)
    with torch.no_grad():
        probs = model(_chelsea()).softmax(-1)[0]
    assert int(probs.argmax()) in {EGYPTIAN_CAT, TABBY, TIGER_CAT}
    assert float(probs[[EGYPTIAN_CAT, TABBY, TIGER_CAT]].sum()) > 0.8


def test_all_296_tensors_load_by_position() -> None:
    state = full_model_state_dict("efficientnet_lite0")
    assert len(state) == 296
    assert "conv_stem.weight" in state and "classifier.weight" in state


def test_features_only_model_gets_the_same_weights() -> None:
    import timm

    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3))
    load_pretrained_weights(features, "efficientnet_lite0")
    full = full_model_state_dict("efficientnet_lite0")
    assert torch.equal(features.state_dict()["conv_stem.weight"], full["conv_stem.weight"])


def test_lite_spec_uses_half_normalisation() -> None:
    spec = resolve_backbone("efficientnet_lite0")
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert spec.default_layers == ("blocks.2", "blocks.4")


def test_other_backbone_without_file_or_network_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*_a, **_k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("INSPECT_BACKBONE_WEIGHTS", raising=False)
    with pytest.raises(WeightsMissingError, match="--backbone-weights"):
        full_model_state_dict("resnet18")


def test_local_weights_file_is_used(tmp_path) -> None:
    import timm

    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    state = full_model_state_dict("resnet18", path)
    assert torch.equal(state["fc.weight"], reference.state_dict()["fc.weight"])


def test_missing_weights_file_is_reported(tmp_path) -> None:
    with pytest.raises(WeightsMissingError, match="not found"):
        full_model_state_dict("resnet18", tmp_path / "nope.pth")
