"""Run a trained model on images: scores and heatmaps a person can read.

Scores and maps are normalised by anomalib's post-processor with the model's *calibrated*
statistics (never per image): 0.5 is the calibrated threshold and values are comparable across
images, so a good part does not light up just because its map was stretched to [0, 1].
The raw model outputs are kept too, for the record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import registry
from core.errors import ConfigError
from core.inference.accelerate import freeze_patchcore_backbone
from core.inference.device import pick_device
from core.inference.runtime import (
    ExportMissingError,
    OpenVINOEngine,
    RuntimeUnavailableError,
    check_runtime,
    chosen_runtime,
    load_engine,
    resize_for_export,
)
from core.inference.verdict import CALIBRATED_THRESHOLD, verdict
from core.models import build_model, get_spec

log = logging.getLogger(__name__)

#: On the CPU the torch module takes a batch this many images at a time (GPU: whole batches).
#: Measured on 2 cores (README, "Inference speed"): EfficientNet-Lite0's depthwise convolutions run
#: slower per image in a batch of 8 than one by one (their activations outgrow the caches), so a
#: batch is a loop here; what batching still buys is decoding off the scoring thread.
CPU_MICRO_BATCH = 1

#: ``progress(image index, tiles done, tiles)`` of a tiled model's prediction
TileProgress = Callable[[int, int, int], None]


@dataclass
class Prediction:
    """One image's result. ``score`` and ``anomaly_map`` are normalised (0.5 = threshold)."""

    score: float
    raw_score: float
    anomaly_map: np.ndarray  # float32, model resolution (tiled: the image's), normalised to [0, 1]
    latency_ms: float
    #: D x h x w patch descriptors from the same forward pass (similarity search), when asked for
    patch_features: torch.Tensor | None = None
    #: tiled model: the tile (image pixels) the descriptors describe, its highest-scoring one
    feature_box: Any = None

    def feature_map(self) -> np.ndarray:
        """The part of the map the descriptors describe: the whole map, or a tiled model's best tile."""
        box = self.feature_box
        if box is None:
            return self.anomaly_map
        return self.anomaly_map[box.top : box.bottom, box.left : box.right]

    def verdict(self, threshold: float = CALIBRATED_THRESHOLD) -> str:
        """Re-judged at any threshold without running the model again."""
        return verdict(self.score, threshold)

    def defect_area(self, threshold: float = CALIBRATED_THRESHOLD) -> float:
        """Share of the (calibrated) anomaly map at or above ``threshold``: how much of the part is flagged."""
        amap = self.anomaly_map
        return float((amap >= threshold).mean()) if amap.size else 0.0


def to_tensor(image_rgb: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 → float 1x3xHxW in [0, 1], the form anomalib's pre-processor takes.

    Computed by NumPy (the same float32 division, bit for bit), not by a torch kernel: a torch
    kernel wakes torch's OpenMP threads, which then spin for a while after it and take the cores
    from OpenVINO's own threads. On two cores that cost an exported model's single image a
    third of its time (``benchmarks/bench_inference.py``).
    """
    chw = np.asarray(image_rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return torch.from_numpy(chw).unsqueeze(0)


class Detector:
    """A trained model on its device, with its metadata."""

    def __init__(
        self,
        module: torch.nn.Module,
        meta: registry.ModelMeta,
        device: torch.device,
        version: str = "",
        engine: OpenVINOEngine | None = None,
    ) -> None:
        self.module = module.to(device).eval()
        #: An exported model that runs the forward pass instead of the torch module (runtime
        #: "openvino"); the module is still there for the normalisation and the metadata.
        self.engine = engine
        self.meta = meta
        self.device = device
        self.version = version  # the registry version folder it was loaded from ('v0003')
        self._spec = get_spec(meta.model)
        #: a tiled model (:mod:`core.models.tiling`) judges full-resolution images tile by tile
        self.tiled = bool((meta.config or {}).get("tile"))
        # One call at a time: a call with features hooks the module for its duration, so two
        # threads (two browser sessions, API requests) must not interleave on one module. It costs
        # little: torch already spreads one call over the cores.
        self._run_lock = threading.Lock()

    @property
    def runtime(self) -> str:
        """Which runtime runs the forward pass: 'torch' or 'openvino' (shown next to latencies)."""
        return "torch" if self.engine is None else "openvino"

    def raw_to_normalised(self, raw_score: float) -> float:
        """The post-processor's score normalisation, for a raw score (e.g. a stored one)."""
        post = self.module.post_processor
        value = post._normalize(torch.tensor([raw_score]), post.image_min, post.image_max, post.image_threshold)  # noqa: SLF001
        return float(value[0])

    def normalised_to_raw(self, score: float) -> float:
        """Inverse of the normalisation (inside its unclipped range): shows a slider value as a raw score."""
        cal = self.meta.calibration
        return (score - 0.5) * (cal.image_max - cal.image_min) + cal.image_threshold

    @torch.inference_mode()
    def run_batch(self, images: torch.Tensor | list[torch.Tensor], *, with_features: bool = False):
        """Raw and normalised outputs (and patch features) for [0, 1] images, each image through the
        network once (on the CPU one :data:`CPU_MICRO_BATCH` at a time).

        ``images``: a 1x3xHxW / Bx3xHxW tensor, or a list of 1x3xHxW tensors of any sizes (each is
        pre-processed, i.e. resized, on its own and the batch is stacked after). With
        ``with_features`` the model's own patch descriptors are captured by a forward hook on the
        part of the network that computes them (PatchCore's backbone, EfficientAD's teacher), so
        similarity search never runs the backbone a second time.
        """
        if self.engine is not None:
            if self.tiled:
                return self._run_engine_tiled(images, with_features)[:3]
            return self._run_engine(images, with_features)
        processed = self._pre_process(images)
        step = CPU_MICRO_BATCH if self.device.type == "cpu" else processed.shape[0]
        chunks = torch.split(processed, max(1, step))
        if self.tiled:
            return self._run_tiled(chunks, with_features)[:3]
        with self._run_lock:
            if not with_features:
                raw = _concat([self.module.model(chunk) for chunk in chunks])
                return raw, self.module.post_processor(raw), None
            captured: list = []
            hook = self._spec.capture_target(self.module).register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                raw = _concat([self.module.model(chunk) for chunk in chunks])
            finally:
                hook.remove()
            features = torch.cat([self._spec.features_from_capture(self.module, out) for out in captured])
            return raw, self.module.post_processor(raw), features

    @torch.inference_mode()
    def _run_tiled(self, chunks: tuple[torch.Tensor, ...], with_features: bool):
        """A tiled model's outputs, with each image's highest-scoring tile (where its features come from).

        Any model whose torch model is a :class:`~core.models.tiling.TiledForward` (PatchCore's,
        EfficientAD's): it keeps each image's best tile in ``last_best``. Under inference mode
        itself, since :meth:`predict_batch` calls it directly (EfficientAD's student would
        otherwise record gradients).
        """
        with self._run_lock:
            outputs, best = [], []
            for chunk in chunks:
                outputs.append(self.module.model(chunk))
                best += self.module.model.last_best
            raw = _concat(outputs)
            features = self._best_tile_features(torch.cat(chunks), best) if with_features else None
            return raw, self.module.post_processor(raw), features, best

    def _best_tile_features(self, processed: torch.Tensor, boxes: list) -> torch.Tensor:
        """B x D x h x w descriptors of each image's highest-scoring tile (the one holding the defect).

        A second pass of one tile per image through the part of the network the descriptors come
        from (PatchCore's backbone, EfficientAD's teacher), rather than hooking every tile: a 20 MP
        frame's tiles' features are never all held, and the descriptor describes the defect's
        neighbourhood at the scale the model was trained on.
        """
        from core.models.tiling import crop_tiles

        tile_size = int(self.meta.config.get("image_size") or 256)
        tiles = torch.cat([crop_tiles(image, [box], tile_size) for image, box in zip(processed, boxes, strict=True)])
        return self._spec.patch_features(self.module, tiles)

    def _run_engine(self, images: torch.Tensor | list[torch.Tensor], with_features: bool):
        """The exported model's outputs in the torch path's form (raw and normalised batches)."""
        from anomalib.data import InferenceBatch

        batch = resize_for_export(images, self.engine.image_size)
        with self._run_lock:
            out = self.engine.infer(batch, with_features=with_features)
        raw = InferenceBatch(pred_score=out.raw_score, anomaly_map=out.raw_anomaly_map)
        normalised = InferenceBatch(pred_score=out.pred_score, anomaly_map=out.anomaly_map)
        return raw, normalised, out.features

    def _run_engine_tiled(self, images: torch.Tensor | list[torch.Tensor], with_features: bool):
        """A tiled model on its export: the exported graph judges one tile at ``image_size``, tiling runs here.

        The same rules as the torch tiled path (:func:`core.models.tiling.run_tiled` over the same
        tiles, :data:`~core.models.tiling.MICRO_BATCH` at a time): the image score is the highest
        tile's *raw* score and the map is stitched from the tiles' raw maps, then both are
        normalised by the module's post-processor as the torch path normalises its stitched output.
        The graph's own normalised outputs are per tile, so they are not used. The descriptors are
        the highest tile's, from one more pass of that tile (as :meth:`_best_tile_features`).
        """
        from anomalib.data import InferenceBatch

        from core.models.tiling import crop_tiles, run_tiled

        engine = self.engine
        assert engine is not None
        tile, stride, size = self.module.model.tiling

        def forward(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = engine.infer(tiles)
            return out.raw_score, out.raw_anomaly_map

        batch = list(images.split(1)) if isinstance(images, torch.Tensor) else images
        scores, maps, best, features = [], [], [], []
        with self._run_lock:
            for image in batch:
                frame = image[0].float().cpu()
                out = run_tiled(frame, forward, tile=tile, stride=stride, image_size=size, progress=self.module.model.progress)
                assert out is not None  # the forward above always answers
                scores.append(out.score.reshape(1))
                maps.append(out.anomaly_map)
                best.append(out.best)
                if with_features:
                    features.append(engine.infer(crop_tiles(frame, [out.best], size), with_features=True).features)
        raw = InferenceBatch(pred_score=torch.cat(scores), anomaly_map=torch.stack(maps))
        found = torch.cat(features) if with_features and all(f is not None for f in features) else None
        return raw, self.module.post_processor(raw), found, best

    def _pre_process(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return self.module.pre_processor(images.to(self.device))
        return torch.cat([self.module.pre_processor(image.to(self.device)) for image in images])

    def predict(self, image_rgb: np.ndarray, *, with_features: bool = False) -> Prediction:
        """One image's prediction (and, on request, its patch features from the same pass)."""
        return self.predict_batch([image_rgb], with_features=with_features)[0]

    def predict_batch(
        self, images_rgb: list[np.ndarray], *, with_features: bool = False, progress: TileProgress | None = None
    ) -> list[Prediction]:
        """Predictions for several images of any sizes in one batch; ``latency_ms`` is per image.

        A tiled model takes the images one at a time: their full-resolution maps differ in size.
        ``progress(image index, tiles done, tiles)`` follows a tiled model through each image.
        """
        if self.tiled and (len(images_rgb) > 1 or progress is not None):
            out = []
            for index, image in enumerate(images_rgb):
                tell = None if progress is None else (lambda done, total, i=index: progress(i, done, total))
                with self._told(tell):
                    out += self._predict([image], with_features)
            return out
        return self._predict(images_rgb, with_features)

    @contextmanager
    def _told(self, tell):
        self.module.model.progress = tell
        try:
            yield
        finally:
            self.module.model.progress = None

    def _predict(self, images_rgb: list[np.ndarray], with_features: bool) -> list[Prediction]:
        started = time.perf_counter()
        tensors = [to_tensor(image) for image in images_rgb]
        boxes: list = []
        if self.tiled and self.engine is None:
            raw, normalised, features, boxes = self._run_tiled(tuple(self._pre_process(tensors).split(1)), with_features)
        elif self.tiled:
            raw, normalised, features, boxes = self._run_engine_tiled(tensors, with_features)
        else:
            raw, normalised, features = self.run_batch(tensors, with_features=with_features)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        latency = (time.perf_counter() - started) * 1000 / max(1, len(images_rgb))
        scores = normalised.pred_score.reshape(-1).float().cpu()
        raw_scores = raw.pred_score.reshape(-1).float().cpu()
        maps = normalised.anomaly_map.float().cpu()
        return [
            Prediction(
                score=float(scores[i]),
                raw_score=float(raw_scores[i]),
                anomaly_map=maps[i].squeeze().numpy(),
                latency_ms=latency,
                patch_features=features[i].float().cpu() if features is not None else None,
                feature_box=boxes[i] if boxes else None,
            )
            for i in range(len(images_rgb))
        ]


def _concat(outputs: list):
    """One batch from the per-chunk outputs of anomalib's torch model (a NamedTuple of tensors/None)."""
    if len(outputs) == 1:
        return outputs[0]
    first = outputs[0]
    return type(first)(
        *(
            None if value is None else torch.cat([getattr(out, name) for out in outputs])
            for name, value in first._asdict().items()
        )
    )


def load_detector(
    model: str,
    category: str,
    *,
    device: str | None = None,
    models_dir: Path | None = None,
    runtime: str | None = "torch",
    version: str | None = None,
    accelerate: bool = True,
) -> Detector:
    """Build the module from its metadata and load its checkpoint (no download, no training).

    Metadata that does not build a module, or a checkpoint that does not fit it, raises
    :class:`~core.errors.ModelUnreadableError` (one line, with the retrain command). ``runtime``
    "openvino" runs the version's OpenVINO export (``python -m core export``) on the CPU instead of
    the torch module; a missing export or a missing OpenVINO is a one-line error. ``runtime=None``
    takes the version's own choice (``python -m core export --use``), falling back to torch with a
    warning when that export cannot run here: the app then still shows the model. ``accelerate``:
    on the CPU, PatchCore's backbone is frozen for inference (:mod:`core.inference.accelerate`,
    same features within 1e-3); ``False`` keeps anomalib's eager module (export, benchmarks).
    """
    if runtime is not None:
        check_runtime(runtime)
    meta, state, version = registry.load_pair(model, category, models_dir, version=version)
    try:
        module = build_model(model, meta.config, load_weights=False)
    except (ConfigError, TypeError, ValueError) as exc:  # e.g. an unknown or out-of-range setting
        raise registry.unreadable(model, category, f"{registry.METADATA} config: {exc}") from exc
    registry.apply_state(module, state, model, category)
    _check_memory_bank(module, model, category)
    folder = registry.version_files(model, category, version, models_dir).folder if runtime != "torch" else None
    wanted = runtime or (chosen_runtime(folder) if folder is not None else "torch")
    if wanted == "torch":
        chosen = pick_device(device)
        if accelerate and model == "patchcore" and chosen.type == "cpu":
            why_not = freeze_patchcore_backbone(module, int(meta.config.get("image_size") or 256))
            if why_not:
                log.warning("%s/%s %s keeps its eager backbone: %s", model, category, version, why_not)
        return Detector(module, meta, chosen, version=version)
    size = int(meta.config.get("image_size") or 256)
    try:
        engine = load_engine(folder, image_size=size, checkpoint_sha256=meta.checkpoint.get("sha256"))
    except (ExportMissingError, RuntimeUnavailableError) as exc:
        if runtime is None:  # the version's own choice, not the caller's: still serve the model
            log.warning("%s/%s %s runs with torch: %s", model, category, version, exc)
            return Detector(module, meta, pick_device(device), version=version)
        if isinstance(exc, ExportMissingError):
            raise ExportMissingError(
                f"{exc}; make one with `python -m core export --model {model} --category {category} --format openvino`"
            ) from exc
        raise
    return Detector(module, meta, torch.device("cpu"), version=version, engine=engine)


def _check_memory_bank(module: torch.nn.Module, model: str, category: str) -> None:
    """PatchCore: the stored bank must have the width of the configured layers' features.

    ``load_state_dict`` accepts any bank (it is a buffer that starts empty), so a checkpoint from
    other layers would load and then fail on the first image; say so at load time instead.
    """
    inner = getattr(module, "model", None)
    bank = getattr(inner, "memory_bank", None)
    dims = getattr(getattr(inner, "feature_extractor", None), "out_dims", None)
    if not isinstance(bank, torch.Tensor) or dims is None:
        return
    expected = int(sum(dims))
    if bank.dim() != 2 or bank.shape[0] == 0 or bank.shape[1] != expected:
        raise registry.unreadable(
            model,
            category,
            f"{registry.CHECKPOINT} does not fit {registry.METADATA}: memory bank of shape {tuple(bank.shape)}, "
            f"the configured layers give {expected} features per patch",
        )
