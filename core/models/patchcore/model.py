"""PatchCore, anomalib's, with an offline backbone and a fast coreset.

Inspect only changes what cannot work offline or is too slow on a 2-core CPU, and says so where it
does: the pre-processor normalises with the backbone's own statistics and resizes the whole image
(:func:`core.models.common.make_pre_processor`); the backbone is created with
``pre_trained=False`` and loaded from a local file (:mod:`core.models.backbones`); the coreset
selection is anomalib's greedy k-center algorithm, vectorised (:mod:`core.models.patchcore.coreset`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from anomalib.models import Patchcore

from core.errors import ConfigError
from core.models.backbones import DEFAULT_BACKBONE, load_pretrained_weights, resolve_backbone
from core.models.common import check_image_size, make_pre_processor
from core.models.patchcore.blur import SeparableGaussianBlur2d
from core.models.patchcore.search import FastPatchcoreModel
from core.models.tiling import TiledForward, check_tiling, make_tiled

MIN_PATCHCORE_SIZE = 64  # 4x4 positions at stride 16


@dataclass
class PatchcoreConfig:
    """Everything that defines a PatchCore model; stored in the model's metadata."""

    backbone: str = DEFAULT_BACKBONE
    layers: list[str] = field(default_factory=list)  # empty: the backbone's default mid-level pair
    #: Chosen by measurement (benchmarks/bench_patchcore_settings.py, README "Choosing the coreset
    #: ratio"): the fastest ratio whose mean image AUROC over bottle and the demo categories is
    #: within 0.002 of the best; 2.5% was also the best, with a bank 4x smaller than anomalib's 10%.
    coreset_ratio: float = 0.025
    num_neighbors: int = 9
    image_size: int = 256
    backbone_weights: str | None = None  # a local weights file for non-offline backbones
    #: Tiled inspection (:mod:`core.models.tiling`): tile side and step in image pixels; None: the
    #: whole image resized to ``image_size``. Stored resolved (stride defaults to the tile).
    tile: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        # checked here, before any image is read, rather than after minutes of feature extraction
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError(
                f"--coreset-ratio must be in (0, 1] (got {self.coreset_ratio}); Inspect's default is 0.025, anomalib's 0.1"
            )
        check_image_size(self.image_size, MIN_PATCHCORE_SIZE, "PatchCore's stride-16 layer needs at least 4x4 positions")
        if self.num_neighbors < 1:
            raise ConfigError(f"num_neighbors must be at least 1 (got {self.num_neighbors})")
        check_tiling(self.tile, self.stride)
        if self.tile is not None and self.stride is None:
            self.stride = self.tile

    def resolved_layers(self) -> list[str]:
        if self.layers:
            return list(self.layers)
        spec = resolve_backbone(self.backbone)
        if not spec.default_layers:
            raise ConfigError(f"say which layers of '{self.backbone}' to use with --layers")
        return list(spec.default_layers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = self.resolved_layers()
        return data


class OfflinePatchcore(Patchcore):
    """anomalib's Patchcore with a fast coreset selection (:mod:`core.models.patchcore.coreset`),
    a fast nearest-neighbour search (:mod:`core.models.patchcore.search`) and a separable map blur
    (:mod:`core.models.patchcore.blur`): same answers as anomalib's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The torch model is anomalib's; only its search method differs (FastPatchcoreModel adds no
        # state, so the state dict and every other method stay anomalib's).
        self.model.__class__ = FastPatchcoreModel
        # and the map's Gaussian blur runs as two 1-D passes (core/models/patchcore/blur.py): same values
        self.model.anomaly_map_generator.blur.__class__ = SeparableGaussianBlur2d

    def fit(self) -> None:  # anomalib: self.model.subsample_embedding(ratio) with KCenterGreedy
        from core.models.patchcore.coreset import subsample_memory_bank

        subsample_memory_bank(self.model, self.coreset_sampling_ratio)


class TiledPatchcoreModel(TiledForward, FastPatchcoreModel):
    """anomalib's PatchCore torch model run tile by tile over full-resolution images.

    Training: every tile's embedding joins the embedding store, so the coreset and the memory bank
    are anomalib's, over every tile's patches. Inference: each tile is scored by anomalib's own
    forward, the image score is the highest tile score and the map is stitched at full resolution
    (:meth:`~core.models.tiling.TiledForward.tiled_inference`). No state of its own: the state
    dict is anomalib's.
    """

    def forward(self, input_tensor: torch.Tensor):  # type: ignore[override]
        untiled = super().forward
        if not self.training:
            return self.tiled_inference(input_tensor, untiled)

        def embed(tiles: torch.Tensor) -> None:
            untiled(tiles)  # the tiles' embeddings join the embedding store

        for image in input_tensor:
            self.run_tiles(image, embed)
        return self.embedding_store[-1] if self.embedding_store else None


def build_patchcore(config: PatchcoreConfig, *, load_weights: bool = True) -> OfflinePatchcore:
    """A PatchCore ready to train (``load_weights``) or to receive a saved state dict."""
    spec = resolve_backbone(config.backbone)
    layers = config.resolved_layers()
    model = OfflinePatchcore(
        backbone=spec.timm_name,
        layers=list(layers),  # a copy: anomalib drops unknown names from the list it is given
        pre_trained=False,
        coreset_sampling_ratio=config.coreset_ratio,
        num_neighbors=config.num_neighbors,
        # tiled: the full-resolution image is only normalised; each tile is resized on its own
        pre_processor=make_pre_processor(spec, config.image_size, resize=config.tile is None),
        evaluator=False,  # core.evaluation.evaluate computes the metrics itself, on the test set only
        visualizer=False,
    )
    _check_layers(model, layers, spec.timm_name)
    if config.tile is not None:
        make_tiled(model.model, TiledPatchcoreModel, config.tile, config.stride, config.image_size)
    if load_weights:
        load_pretrained_weights(model.model.feature_extractor.feature_extractor, config.backbone, config.backbone_weights)
    return model


def _check_layers(model: OfflinePatchcore, requested: list[str], timm_name: str) -> None:
    """anomalib logs a warning for a layer the backbone lacks and fails later with a KeyError."""
    kept = list(model.model.feature_extractor.layers)
    missing = [layer for layer in requested if layer not in kept]
    if missing:
        import timm

        probe = timm.create_model(timm_name, pretrained=False, features_only=True)
        available = ", ".join(info["module"] for info in probe.feature_info.info)
        raise ConfigError(f"--layers {' '.join(missing)}: no such layer in {timm_name} (available: {available})")


def capture_target(module: Patchcore) -> torch.nn.Module:
    """The backbone's feature extractor: its output is where the embedding starts."""
    return module.model.feature_extractor


def features_from_capture(module: Patchcore, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """B x D x h x w: the locally aware, multi-layer embedding that the memory bank holds.

    Computed from the backbone's output as anomalib's ``PatchcoreModel.forward`` does (pooling,
    upsampling, concatenation: cheap next to the backbone itself).
    """
    inner = module.model
    return inner.generate_embedding({layer: inner.feature_pooler(f) for layer, f in features.items()})


def patchcore_patch_features(module: Patchcore, processed: torch.Tensor) -> torch.Tensor:
    """B x D x h x w embedding of a pre-processed batch (a backbone pass of its own)."""
    return features_from_capture(module, module.model.feature_extractor(processed))


# The names core.models.spec.ModelSpec looks up in a model's module.
Config = PatchcoreConfig
build = build_patchcore
patch_features = patchcore_patch_features
