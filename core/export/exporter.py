"""``python -m core export``: one model version to OpenVINO IR or ONNX, kept only if it passes parity.

Through anomalib's export (``ExportMixin.to_openvino`` / ``to_onnx``, the code behind
``Engine.export``), with three choices made here:

* a dynamic batch axis and a fixed square input at the model's size (anomalib's default marks
  height and width dynamic too, and its dynamo export can come out with a fixed batch instead);
* the graph of :mod:`core.export.graph` (anomalib's pipeline, calibration inside, plus raw outputs);
* opset 18, which the dynamo exporter writes natively (anomalib asks for 14, which it then fails
  to down-convert and logs a traceback for).

The export is written into a hidden folder inside the version folder, checked
(:mod:`core.export.parity`) on the category's test images, and only then renamed to
``vNNNN/export/<format>/``: a failed check keeps nothing and names the difference.

A tiled model (``--tile``) exports the same per-tile graph: anomalib's untiled model over one
tile at ``image_size`` (:func:`core.export.graph.export_class` traces anomalib's forward, not the
tiled one). Tiling stays in Python around the runtime (the Detector cuts, scores and stitches as
the torch tiled path does), so the parity check compares full-resolution scores and maps.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core import registry
from core.auth import Actor, require_engineer
from core.data.layout import category_images, resolve_data_root
from core.errors import DatasetError, InspectError
from core.export import FORMATS, PRECISION_CHOICES
from core.export.parity import ParityReport, check_parity
from core.inference.runtime import (
    MANIFEST,
    OpenVINOEngine,
    RuntimeChoice,
    RuntimeUnavailableError,
    choose_runtime,
    export_dir,
    import_openvino,
    model_file,
    runtime_choice,
)

OPSET = 18

log = logging.getLogger(__name__)


class ExportParityError(InspectError):
    """The exported model does not answer as the torch model does; nothing was kept."""


@dataclass
class ExportResult:
    """What ``export_model`` kept and how it compared."""

    model: str
    category: str
    version: str
    format: str
    precision: str
    path: Path
    parity: ParityReport
    export_s: float
    #: precisions tried first and refused by the parity rule (``auto`` on a bf16 CPU), with why
    declined: list[ParityReport] = field(default_factory=list)


def _require_exporters(fmt: str) -> None:
    import_openvino()  # the parity check runs both formats with OpenVINO
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"exporting to {fmt} needs `onnx` and `onnxscript` (anomalib's exporter): `pip install onnx onnxscript`"
        ) from exc


def _write_file(module: torch.nn.Module, model: str, fmt: str, out: Path, image_size: int) -> Path:
    """Export the graph into ``out`` with anomalib's mixin; returns the model file there."""
    from core.export.graph import ExportGraph, anomalib_classes

    graph = ExportGraph(module, model).eval()
    size = (image_size, image_size)
    noise = io.StringIO()  # the exporter prints its progress; the CLI prints its own summary
    with anomalib_classes(module), contextlib.redirect_stdout(noise):
        if fmt == "openvino":
            written = graph.to_openvino(out / "build", input_size=size, onnx_kwargs={"opset_version": OPSET})
        else:
            written = graph.to_onnx(out / "build", input_size=size, opset_version=OPSET)
    for part in written.parent.iterdir():  # anomalib writes build/weights/<format>/model.* (.onnx.data too)
        part.rename(out / part.name)
    shutil.rmtree(out / "build", ignore_errors=True)
    return model_file(out, fmt)


#: Training images that calibrate the int8 quantisation (NNCF's default subset is 300).
QUANTISE_IMAGES = 100


def _quantise(
    path: Path, data_root: str | Path, category: str, image_size: int, tiling: tuple[int, int, int] | None = None
) -> None:
    """NNCF post-training int8 quantisation of the OpenVINO file, calibrated on ``train/good`` only.

    A tiled model's file judges tiles, so it is calibrated on the training images' tiles
    (``tiling``: the model's tile, stride and input size).

    A departure from anomalib's ``INT8_PTQ``, which calibrates on its validation split (for MVTec,
    test images with defects): the test images must stay unseen, they judge the result.
    """
    try:
        import nncf
    except ImportError as exc:
        raise RuntimeUnavailableError("--precision int8 needs NNCF: `pip install nncf`") from exc
    import openvino as ov

    from core.data.image_io import load_image
    from core.inference.detector import to_tensor

    train = category_images(data_root, category, splits=("train",))[:QUANTISE_IMAGES]
    if not train:
        raise DatasetError(f"int8 calibration needs the category's train/good images under {resolve_data_root(data_root)}")
    samples = [sample.numpy() for item in train for sample in _graph_inputs(to_tensor(load_image(item.path)), image_size, tiling)]
    samples = samples[:QUANTISE_IMAGES]
    model = ov.Core().read_model(str(path))
    quantised = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    staged = path.with_name("int8.xml")  # not over the file OpenVINO still maps: beside it, then renamed
    ov.save_model(quantised, str(staged), compress_to_fp16=False)
    staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
    staged.replace(path)


def _graph_inputs(image: torch.Tensor, image_size: int, tiling: tuple[int, int, int] | None) -> list[torch.Tensor]:
    """What the exported graph sees of one 1x3xHxW image: the resized image, or each of its tiles."""
    from core.inference.runtime import resize_for_export

    if tiling is None:
        return [resize_for_export(image, image_size)]
    from core.models.tiling import crop_tiles, grid

    tile, stride, size = tiling
    return list(crop_tiles(image[0], grid(*image.shape[-2:], tile, stride), size).split(1))


def parity_images(data_root: str | Path | None, category: str, limit: int | None = None) -> list:
    images = category_images(data_root, category, splits=("test",))
    if not images:
        root = resolve_data_root(data_root) / category / "test"
        raise DatasetError(f"the parity check needs the category's test images and {root} has none: pass --data-root")
    return images[:limit] if limit else images


def _publish(tmp: Path, target: Path) -> None:
    """Replace ``target`` by ``tmp`` (the older export goes aside first, then away)."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{time.time_ns()}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(
    model: str,
    category: str,
    *,
    fmt: str = "openvino",
    precision: str = "auto",
    version: str | None = None,
    data_root: str | Path | None = None,
    models_dir: Path | None = None,
    max_images: int | None = None,
) -> ExportResult:
    """Export one version (default: the newest), check parity, keep it in ``vNNNN/export/<fmt>/``.

    ``precision="auto"`` tries bf16 first where the CPU computes it natively
    (:func:`core.inference.device.native_bf16`) and keeps fp32 when the parity rule refuses bf16
    (the refusal is returned in ``declined`` and recorded in the manifest). An fp32 or bf16 export
    is the same file: the precision is how OpenVINO compiles it, recorded in the manifest.
    """
    from core.inference.detector import Detector, load_detector

    if fmt not in FORMATS:
        raise InspectError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if precision not in PRECISION_CHOICES:
        raise InspectError(f"unknown precision {precision!r}: use one of {', '.join(PRECISION_CHOICES)}")
    _require_exporters(fmt)
    reference = load_detector(model, category, device="cpu", models_dir=models_dir, version=version, accelerate=False)
    images = parity_images(data_root or reference.meta.data_root, category, max_images)
    folder = registry.version_files(model, category, reference.version, models_dir).folder
    image_size = int(reference.meta.config.get("image_size") or 256)
    (folder / "export").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".export-{fmt}-", dir=folder / "export"))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the published folder
    try:
        started = time.perf_counter()
        path = _write_file(reference.module, model, fmt, tmp, image_size)
        if precision == "int8":
            tiling = reference.module.model.tiling if reference.tiled else None
            _quantise(path, data_root or reference.meta.data_root, category, image_size, tiling)
        export_s = time.perf_counter() - started
        declined: list[ParityReport] = []
        for tried in _candidates(precision):
            engine = OpenVINOEngine(path, image_size=image_size, precision=tried)
            candidate = Detector(reference.module, reference.meta, torch.device("cpu"), reference.version, engine=engine)
            report = check_parity(reference, candidate, images, precision=tried)
            if report.passed:
                break
            declined.append(report)
        else:
            raise ExportParityError(
                f"the {fmt} export of {model}/{category} {reference.version} ({report.precision}) does not match the torch model: "
                f"{report.problem()}; nothing was kept"
            )
        manifest = {
            "model": model,
            "category": category,
            "version": reference.version,
            "format": fmt,
            "precision": report.precision,
            "file": path.name,
            "input": f"Bx3x{image_size}x{image_size} float32 RGB in [0, 1] (resized with antialiased bilinear)",
            # tiled: the file judges one tile; the runtime cuts the full-resolution image around it
            "tiling": _tiling(reference),
            "checkpoint_sha256": reference.meta.checkpoint.get("sha256"),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "export_s": round(export_s, 1),
            "versions": _versions(),
            "parity": report.to_dict(),
            "declined": [r.to_dict() for r in declined],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        target = export_dir(folder, fmt)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kept = report.precision
    return ExportResult(model, category, reference.version, fmt, kept, model_file(target, fmt), report, export_s, declined)


def _tiling(detector) -> dict[str, int] | None:
    """A tiled model's tile and stride (image pixels), each tile resized to the file's input size."""
    if not detector.tiled:
        return None
    tile, stride, _ = detector.module.model.tiling
    return {"tile": int(tile), "stride": int(stride)}


def _candidates(precision: str) -> list[str]:
    """The precisions to try, fastest first: ``auto`` is bf16 then fp32 on a CPU with native bf16, else fp32."""
    if precision != "auto":
        return [precision]
    from core.inference.device import native_bf16

    return ["bf16", "fp32"] if native_bf16() else ["fp32"]


def use_export(result: ExportResult, models_dir: Path | None = None, *, actor: Actor) -> None:
    """Make the export's runtime the version's choice (only OpenVINO exports run inside Inspect).

    It changes how every later inspection is computed: an engineer's action, checked here.
    """
    require_engineer(actor, "choosing the runtime a model version runs with")
    if result.format != "openvino":
        raise InspectError("only an OpenVINO export can be used by Inspect: export with --format openvino")
    reason = f"{result.precision} export, parity: {result.parity.summary()}" + "".join(
        f"; {refused.precision} refused: {refused.problem()}" for refused in result.declined
    )
    choose_runtime(registry.version_files(result.model, result.category, result.version, models_dir).folder, "openvino", reason)


def export_new_version(
    model: str,
    category: str,
    version: str,
    *,
    actor: Actor,
    data_root: str | Path | None = None,
    models_dir: Path | None = None,
) -> RuntimeChoice:
    """Export a version just written and run it with the export when the parity rule accepts it.

    What training does last (``INSPECT_EXPORT_AFTER_TRAINING``), so a new version runs on the
    fastest path Inspect can justify without a second command: ``--precision auto`` (bf16 where
    the CPU has it natively and the rule accepts it, else fp32). Anything that keeps the export
    from being used (OpenVINO or the exporter not installed, no test images to check it on, the
    rule refusing it) leaves the version on torch with the reason recorded; the version itself is
    already stored and usable either way.
    """
    folder = registry.version_files(model, category, version, models_dir).folder
    try:
        result = export_model(model, category, version=version, data_root=data_root, models_dir=models_dir)
        use_export(result, models_dir, actor=actor)
    except Exception as exc:  # noqa: BLE001 - the trained version stands; only its runtime is decided here
        if not isinstance(exc, InspectError):
            log.warning("exporting %s/%s %s failed", model, category, version, exc_info=True)
        reason = f"not exported: {exc}" if isinstance(exc, InspectError) else f"the export failed ({type(exc).__name__}: {exc})"
        choose_runtime(folder, "torch", reason)
        return RuntimeChoice("torch", reason)
    return runtime_choice(folder)


def version_runtime(
    model: str, category: str, version: str | None = None, models_dir: Path | None = None
) -> tuple[str, RuntimeChoice]:
    """A stored version's name (default: the newest) and the runtime it runs with, and why."""
    files = (
        registry.version_files(model, category, version, models_dir)
        if version
        else registry.current_files(model, category, models_dir)
    )
    return files.version, runtime_choice(files.folder)


def carry_runtime(
    model: str, category: str, parent: str, version: str, *, actor: Actor, models_dir: Path | None = None
) -> RuntimeChoice:
    """A derived version (recalibrated, grown, restored) runs as its parent ran.

    The calibration and the memory bank are inside the exported file, so a parent that ran with
    OpenVINO gets its new version exported and parity-checked again (:func:`export_new_version`);
    a parent on torch leaves the new version on torch.
    """
    if version_runtime(model, category, parent, models_dir)[1].runtime != "openvino":
        return RuntimeChoice("torch")
    return export_new_version(model, category, version, actor=actor, models_dir=models_dir)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("anomalib", "torch", "openvino", "onnx", "onnxscript"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out
