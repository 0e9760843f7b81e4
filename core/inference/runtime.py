"""Run an exported model with OpenVINO behind the :class:`~core.inference.detector.Detector`.

The exported file (``python -m core export``) holds anomalib's whole pipeline with the model's
calibration inside, plus the raw score, raw map and patch descriptors (:mod:`core.export.graph`),
so a detector on this runtime answers every call the torch one does, with the same numbers (the
export's parity check made sure of it before the file was kept).

OpenVINO is an optional dependency: without it, asking for this runtime is a one-line error and
the torch runtime works as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import InspectError
from core.export import RUNTIMES
from core.inference.outputs import ModelOutputs

#: The export manifest beside the model file (format, precision, checkpoint, parity figures).
MANIFEST = "export.json"
#: Precisions an OpenVINO export may run at on a CPU (``bf16`` only where the CPU has it natively).
#: Images per OpenVINO request: a batch runs as requests of this many images, each compiled with
#: a static shape, which OpenVINO runs faster than the dynamic batch axis
#: (``benchmarks/bench_request_sizes.py``, 2 cores, ms an image for 8 images: tile fp32 8.4-8.7 in
#: static requests of 1, 2 or 4 against 10.1 through the dynamic axis; bottle bf16 9.5-9.7 against
#: 10.1). It also bounds PatchCore's distance matrix ((images x 1,024) x bank size: 70 MB an image
#: on bottle) whatever the batch.
MICRO_BATCH = 2
#: Inspect's precision names -> OpenVINO's inference precision (an int8 model's quantised layers
#: run in int8 whatever the hint; the rest in f32).
OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class RuntimeUnavailableError(InspectError):
    """The runtime asked for cannot run here (OpenVINO not installed)."""


class ExportMissingError(InspectError):
    """The model version has no usable export for the runtime asked for."""


def check_runtime(name: str) -> str:
    if name not in RUNTIMES:
        raise InspectError(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)}")
    return name


def import_openvino() -> Any:
    """The ``openvino`` package, or a one-line error that says how to get it."""
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "OpenVINO is not installed: install it with `pip install openvino` (pinned in requirements.txt) "
            "or use --runtime torch"
        ) from exc
    return openvino


def export_dir(version_folder: Path, fmt: str) -> Path:
    """Where a version's export of ``fmt`` lives: inside the version, so it belongs to exactly one."""
    return version_folder / "export" / fmt


def model_file(folder: Path, fmt: str) -> Path:
    return folder / ("model.xml" if fmt == "openvino" else "model.onnx")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class OpenVINOEngine:
    """An exported model (OpenVINO IR, or ONNX read by OpenVINO) compiled for the CPU.

    Takes [0, 1] RGB images already at the model's square input size: the Detector resizes with
    the same torchvision op the torch pre-processor uses, so the exported resize is the identity.
    Not thread-safe by itself: the Detector calls it under its run lock.
    """

    def __init__(self, path: Path, *, image_size: int, precision: str = "fp32") -> None:
        ov = import_openvino()
        if precision not in OV_PRECISIONS:
            raise InspectError(f"unknown OpenVINO precision {precision!r}: use one of {', '.join(OV_PRECISIONS)}")
        self.path = path
        self.image_size = image_size
        self.precision = precision
        core = ov.Core()
        # The precision is set explicitly: on a CPU with native bf16 (AVX512_BF16, AMX) OpenVINO
        # otherwise runs an f32 model in bf16, and its scores drift from the torch model's.
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        model = core.read_model(str(path))
        # One compilation per request size (1 and MICRO_BATCH), each with a static batch: OpenVINO
        # runs a graph whose shapes are all known faster than the dynamic-batch one (no shape
        # inference and memory planning at each call); anomalib's single-image export is static too.
        self._requests: dict[int, tuple[Any, dict[str, Any]]] = {}
        for size in (1, MICRO_BATCH):
            model.reshape({model.inputs[0]: ov.PartialShape([size, *model.inputs[0].get_partial_shape()[1:]])})
            compiled = core.compile_model(model, "CPU", config)
            # an output may carry several names (ONNX read by OpenVINO): index it by each
            outputs = {name: out for out in compiled.outputs for name in out.get_names()}
            self._requests[size] = (compiled.create_infer_request(), outputs)

    def infer(self, images: torch.Tensor, *, with_features: bool = False) -> ModelOutputs:
        """Run a Bx3xSxS float batch (S = the export's input size) in requests of :data:`MICRO_BATCH`."""
        step = MICRO_BATCH
        parts = [self._infer(images[i : i + step], with_features) for i in range(0, images.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        fields = {}
        for name in ModelOutputs._fields:
            values = [getattr(part, name) for part in parts]
            fields[name] = None if values[0] is None else torch.cat(values)
        return ModelOutputs(**fields)

    def _infer(self, images: torch.Tensor, with_features: bool) -> ModelOutputs:
        request, outputs = self._requests[images.shape[0]]
        request.infer({0: np.ascontiguousarray(images.detach().cpu().float().numpy())})

        def get(name: str) -> torch.Tensor:
            return torch.from_numpy(np.array(request.get_tensor(outputs[name]).data, copy=True))

        has_features = with_features and "features" in outputs
        return ModelOutputs(
            pred_score=get("pred_score").reshape(-1),
            anomaly_map=get("anomaly_map"),
            raw_score=get("raw_score").reshape(-1),
            raw_anomaly_map=get("raw_anomaly_map"),
            features=get("features") if has_features else None,
        )


def resize_for_export(images: torch.Tensor | list[torch.Tensor], size: int) -> torch.Tensor:
    """[0, 1] images at ``size`` x ``size``, resized exactly as the torch pre-processor resizes.

    The pre-processor's ``Resize`` (antialiased bilinear) is the identity at its own size, so the
    exported graph then sees what the torch model sees after its resize.
    """
    from torchvision.transforms.v2.functional import resize

    def one(batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[-2:]) == (size, size):
            return batch
        return resize(batch, [size, size], antialias=True)

    if isinstance(images, torch.Tensor):
        return one(images)
    resized = [one(image) for image in images]
    if len(resized) == 1:
        return resized[0]
    # stacked by NumPy: no torch kernel, so torch's threads stay asleep beside OpenVINO's (to_tensor)
    return torch.from_numpy(np.concatenate([image.numpy() for image in resized]))


def load_engine(version_folder: Path, *, image_size: int, checkpoint_sha256: str | None) -> OpenVINOEngine:
    """The version's OpenVINO export, compiled; a one-line error when it is missing or not this version's.

    An export whose manifest names another checkpoint (a model.pt replaced by hand) or that did not
    pass its parity check is refused: it would answer differently from the model the app shows.
    """
    import_openvino()
    folder = export_dir(version_folder, "openvino")
    manifest = read_manifest(folder)
    path = model_file(folder, "openvino")
    if manifest is None or not path.is_file():
        raise ExportMissingError(f"no OpenVINO export in {folder}")
    if checkpoint_sha256 and manifest.get("checkpoint_sha256") not in (None, checkpoint_sha256):
        raise ExportMissingError(f"the OpenVINO export in {folder} was made from another checkpoint: export again")
    if not (manifest.get("parity") or {}).get("passed"):
        raise ExportMissingError(f"the OpenVINO export in {folder} has not passed its parity check: export again")
    return OpenVINOEngine(path, image_size=image_size, precision=str(manifest.get("precision") or "fp32"))


#: The version's chosen runtime (``python -m core export --use``, or the export after training),
#: beside its exports, with why a version stays on torch when its export was not kept.
CHOICE = "runtime.json"


@dataclass(frozen=True)
class RuntimeChoice:
    """Which runtime a model version runs with, and why (the export's precision and parity, or
    why there is no usable export)."""

    runtime: str
    reason: str = ""

    def describe(self, version: str) -> str:
        """``v0003 runs with openvino: bf16 export, parity: ...`` (what ``train`` prints)."""
        return f"{version} runs with {self.runtime}" + (f": {self.reason}" if self.reason else "")


def runtime_choice(version_folder: Path) -> RuntimeChoice:
    """The runtime chosen for this model version: 'openvino' once an export was chosen for it.

    Anything unreadable counts as no choice ('torch'): the torch model is always there.
    """
    try:
        record = json.loads((version_folder / "export" / CHOICE).read_text())
        name, reason = record.get("runtime"), str(record.get("reason") or "")
    except (OSError, ValueError, AttributeError):
        return RuntimeChoice("torch")
    return RuntimeChoice(name, reason) if name in RUNTIMES else RuntimeChoice("torch")


def chosen_runtime(version_folder: Path) -> str:
    return runtime_choice(version_folder).runtime


def choose_runtime(version_folder: Path, runtime: str, reason: str = "") -> None:
    """Record ``runtime`` as this version's choice (the app and commands without ``--runtime`` use it)."""
    check_runtime(runtime)
    folder = version_folder / "export"
    folder.mkdir(exist_ok=True)
    from core.files import write_atomically

    write_atomically(folder / CHOICE, json.dumps({"runtime": runtime, "reason": reason}).encode())
