"""Inference speed of one trained model on four paths, measured interleaved in one run.

    python benchmarks/bench_inference.py --model patchcore --category bottle tile leather grid --images 40
    python benchmarks/bench_inference.py --model patchcore --category bottle tile leather grid --images 40 --precision f32

One interleaved run per category, one table each. ``--precision f32`` switches bf16 off for both
sides: anomalib's ``OpenVINOInferencer`` is compiled with ``INFERENCE_PRECISION_HINT=f32`` and
Inspect's export too (a bf16 export is the same file, compiled in bf16; an int8 export is skipped).
Inspect's torch paths are fp32 always. Without it, anomalib's path runs at OpenVINO's default for this CPU (bf16 where the CPU
has it natively, :func:`core.inference.device.native_bf16`) and Inspect's at its export's precision.

Paths, all on the same decoded test images of the same trained model (the newest version):

* ``inspect-torch``: Inspect's ``Detector.predict`` on the torch module (CPU: PatchCore's backbone
  frozen, :mod:`core.inference.accelerate`);
* ``inspect-torch-eager``: the same with anomalib's eager module (Inspect before the freeze);
* ``inspect-openvino``: the same Detector on the version's OpenVINO export
  (``python -m core export --model M --category C`` first; its precision is printed);
* ``anomalib-openvino``: anomalib's ``OpenVINOInferencer`` on anomalib's own export of the same
  module (``to_openvino`` with its defaults, what ``Engine.export(model, ExportType.OPENVINO)`` does),
  with OpenVINO's default precision on this CPU (printed: bf16 where the CPU has it natively);
  where that export has a fixed batch, single images go through a batch-1 export (printed);
* ``anomalib-torch``: anomalib's ``TorchInferencer`` on ``to_torch``'s file of the same module.

Calls are interleaved (each image goes through every path, in rotating order; each batch round
runs every path) so background load on a shared machine hits all paths alike: read the ratios,
which are stable, rather than the absolute times, which are not. Prints median and p95 ms per
single image, images/s in batches (8 and 32 by default), and every path's ratio to anomalib's
OpenVINO path (>1: faster than it). Also the largest score difference of each path from the fp32
model (Inspect's eager torch module) on the same images: how far each path's precision moves the
scores, and a check that all paths ran the same model.

``--paths inspect-openvino anomalib-openvino`` times the two OpenVINO paths alone. Interleaved
with the torch paths, every OpenVINO call pays for the torch call before it: torch's OpenMP
threads keep spinning after a torch model has run and take the cores from OpenVINO's threads
(tile, 2 cores: Inspect's export 10.1 ms alone, 14.6 ms after a torch call; docs/benchmarks.md).
A process serving one runtime never pays it (Inspect's OpenVINO path runs no torch kernel at a
model's input size), so the two-path run is the deployment comparison and the five-path run shows
every path side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

#: The goal of issue 30: Inspect's path at least this many times anomalib-openvino's speed.
LEAD = 1.2
PATHS = ("inspect-torch", "inspect-torch-eager", "inspect-openvino", "anomalib-openvino", "anomalib-torch")
BASELINE = "anomalib-openvino"
#: The order the calls rotate through: each OpenVINO path right after a torch path, so both pay the
#: same for the torch threads that still spin when they start (see the module docstring).
ROTATION = ("inspect-torch", "inspect-openvino", "inspect-torch-eager", "anomalib-openvino", "anomalib-torch")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def anomalib_paths(
    module: torch.nn.Module, workdir: Path, image_hw: tuple[int, int], config: dict | None = None
) -> dict[str, Callable]:
    """anomalib's two inferencers on anomalib's own exports of ``module``.

    anomalib's default OpenVINO export can come out with a fixed batch (PatchCore at 256 px: 2,
    because its search loops over query chunks in Python and the tracer unrolls the loop). Then
    single images go through a second anomalib export with a fixed batch of 1 at the images' size
    (no chunk loop for one image), and batches through the default export, that many at a time.
    """
    import contextlib
    import io
    import logging

    from anomalib.deploy import OpenVINOInferencer, TorchInferencer

    # anomalib exports at opset 14, which the exporter cannot down-convert to: it logs a traceback
    # and keeps opset 18. Harmless; kept off the terminal with the exporter's progress lines.
    logging.getLogger("onnxscript").setLevel(logging.CRITICAL)
    # anomalib's own torch model class (Inspect's fast PatchCore search is a subclass of it), so
    # these paths are anomalib's code from end to end.
    inner = module.model
    original = type(inner)
    inner.__class__ = next(c for c in original.__mro__ if c.__module__.startswith("anomalib."))
    quiet = contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            xml = module.to_openvino(workdir / "default")  # anomalib's defaults (Engine.export's)
        batch = _static_batch(xml)
        single_xml = xml
        if batch is not None:
            print(f"anomalib's default OpenVINO export has a fixed batch of {batch}: single images use a batch-1 export")
            with quiet:
                single_xml = module.to_openvino(workdir / "single", input_size=image_hw, onnx_kwargs={"dynamic_axes": {}})
        pt = module.to_torch(workdir)
    finally:
        inner.__class__ = original
    cwd = os.getcwd()
    os.chdir(workdir)  # OpenVINOInferencer creates ./openvino_cache wherever it is started
    try:
        batched = OpenVINOInferencer(path=xml, device="CPU", config=config)
        single = OpenVINOInferencer(path=single_xml, device="CPU", config=config) if single_xml != xml else batched
    finally:
        os.chdir(cwd)
    # TorchInferencer unpickles the module, which anomalib allows only when told to trust the file:
    # it is the file this script just wrote.
    os.environ["TRUST_REMOTE_CODE"] = "1"
    torch_inferencer = TorchInferencer(path=pt, device="cpu")
    precision = batched.model.get_property("INFERENCE_PRECISION_HINT")
    print(f"anomalib-openvino compiled with inference precision {precision} ({'asked' if config else 'OpenVINO default here'})")

    def ov_call(images: list[np.ndarray]) -> np.ndarray:
        if len(images) == 1:
            return np.asarray(single.predict(images[0]).pred_score).reshape(-1)
        step = batch or len(images)
        padded = images + images[: (-len(images)) % step]  # whole batches of the fixed size
        scores = [
            np.asarray(batched.predict(np.stack(padded[i : i + step])).pred_score).reshape(-1)
            for i in range(0, len(padded), step)
        ]
        return np.concatenate(scores)[: len(images)]

    @torch.inference_mode()
    def torch_call(images: list[np.ndarray]) -> np.ndarray:
        batch_t = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return torch_inferencer.predict(batch_t).pred_score.reshape(-1).float().numpy()

    return {"anomalib-openvino": ov_call, "anomalib-torch": torch_call}


def _static_batch(xml: Path) -> int | None:
    """The fixed batch size of an OpenVINO model's input, or None when it is dynamic."""
    import openvino as ov

    dim = ov.Core().read_model(str(xml)).inputs[0].get_partial_shape()[0]
    return None if dim.is_dynamic else dim.get_length()


def inspect_path(detector) -> Callable:
    def call(images: list[np.ndarray]) -> np.ndarray:
        return np.array([p.score for p in detector.predict_batch(images)])

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--category", nargs="+", default=["bottle"], help="one table per category")
    parser.add_argument("--data-root", help="where the test images are (default: where the model was trained)")
    parser.add_argument("--images", type=int, default=40, help="test images for the single-image timings")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per path first")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--batch-rounds", type=int, default=3, help="timed batches per path and batch size")
    parser.add_argument(
        "--precision",
        choices=("default", "f32"),
        default="default",
        help="f32: bf16 off for anomalib's OpenVINO path (INFERENCE_PRECISION_HINT=f32) and Inspect's",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=list(PATHS),
        help="time only these paths (anomalib-openvino always runs: the ratios are to it); e.g. the two "
        "OpenVINO paths alone, so no torch model runs between their calls (see the module docstring)",
    )
    args = parser.parse_args(argv)
    from core.inference.device import native_bf16

    print(f"native bf16 on this CPU: {native_bf16()}; --precision {args.precision}")
    status = 0
    for category in args.category:
        status |= bench_category(args, category)
    return status


def bench_category(args: argparse.Namespace, category: str) -> int:
    """One interleaved run on one category: every path, single images then batches, one table."""

    import cv2

    from core.data.image_io import load_image
    from core.export.exporter import parity_images
    from core.inference.detector import load_detector

    torch_detector = load_detector(args.model, category, device="cpu", runtime="torch")
    eager_detector = load_detector(args.model, category, device="cpu", runtime="torch", accelerate=False)
    ov_detector = load_detector(args.model, category, runtime="openvino")
    ov_precision = ov_detector.engine.precision
    if args.precision == "f32" and ov_precision == "bf16":  # the same file, compiled in f32
        from core.inference.detector import Detector
        from core.inference.runtime import OpenVINOEngine

        engine = OpenVINOEngine(ov_detector.engine.path, image_size=ov_detector.engine.image_size, precision="fp32")
        ov_detector = Detector(ov_detector.module, ov_detector.meta, ov_detector.device, ov_detector.version, engine=engine)
        ov_precision = "fp32"
    meta = torch_detector.meta
    items = parity_images(args.data_root or meta.data_root, category)
    step = max(1, len(items) // args.images)
    images = [load_image(item.path) for item in items[::step][: args.images]]
    # anomalib's fixed-size exports take one image size: a category's images share one (MVTec AD),
    # and any other is resized to the first image's size here, outside the timings.
    height, width = images[0].shape[:2]
    images = [img if img.shape[:2] == (height, width) else cv2.resize(img, (width, height)) for img in images]
    sizes = {img.shape for img in images}
    print(
        f"\n{args.model}/{category} {torch_detector.version}, {len(images)} test images {sorted(sizes)}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    )
    print(f"inspect-openvino runs the version's export compiled in {ov_precision}")
    config = {"INFERENCE_PRECISION_HINT": "f32"} if args.precision == "f32" else None
    with tempfile.TemporaryDirectory() as tmp:
        calls: dict[str, Callable] = {
            "inspect-torch": inspect_path(torch_detector),
            "inspect-torch-eager": inspect_path(eager_detector),
        }
        if args.precision == "default" or ov_precision == "fp32":
            calls["inspect-openvino"] = inspect_path(ov_detector)
        calls.update(anomalib_paths(eager_detector.module, Path(tmp), images[0].shape[:2], config))
        # the fp32 reference of the score column, computed before any timing
        reference = np.concatenate([inspect_path(eager_detector)([image]) for image in images])
        timed = {name: call for name, call in calls.items() if name in args.paths or name == BASELINE}
        return run(args, timed, images, reference)


def run(args: argparse.Namespace, calls: dict[str, Callable], images: list[np.ndarray], reference: np.ndarray) -> int:
    for call in calls.values():
        for i in range(args.warmup):
            call([images[i % len(images)]])
    single: dict[str, list[float]] = {name: [] for name in calls}
    scores: dict[str, list[float]] = {name: [] for name in calls}
    names = [name for name in ROTATION if name in calls]
    for i, image in enumerate(images):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate who goes first
            started = time.perf_counter()
            score = calls[name]([image])
            single[name].append((time.perf_counter() - started) * 1000)
            scores[name].append(float(score[0]))
    throughput: dict[int, dict[str, float]] = {}
    for size in args.batch_sizes:
        batch = [images[i % len(images)] for i in range(size)]
        for name in names:  # untimed: the first call at a new batch shape sets things up
            calls[name](batch)
        elapsed: dict[str, float] = dict.fromkeys(names, 0.0)
        for _ in range(args.batch_rounds):
            for name in names:
                started = time.perf_counter()
                calls[name](batch)
                elapsed[name] += time.perf_counter() - started
        throughput[size] = {n: size * args.batch_rounds / max(1e-9, elapsed[n]) for n in names}
    report(args, single, scores, throughput, reference)
    return 0


def report(
    args: argparse.Namespace,
    single: dict[str, list[float]],
    scores: dict[str, list[float]],
    throughput: dict[int, dict[str, float]],
    reference: np.ndarray,
) -> None:
    """The table: one row per path, ratios to anomalib's OpenVINO path, and the target check."""
    base_median = statistics.median(single[BASELINE])
    head = f"{'path':<20}{'median ms':>11}{'p95 ms':>9}" + "".join(f"{f'img/s @{b}':>11}" for b in throughput)
    head += f"{'x single':>10}" + "".join(f"{f'x @{b}':>8}" for b in throughput) + f"{'max |Δscore| vs fp32':>22}"
    print()
    print(head)
    for name in single:
        med = statistics.median(single[name])
        row = f"{name:<20}{med:>11.1f}{percentile(single[name], 95):>9.1f}"
        row += "".join(f"{throughput[b][name]:>11.1f}" for b in throughput)
        row += f"{base_median / med:>10.2f}" + "".join(
            f"{throughput[b][name] / throughput[b][BASELINE]:>8.2f}" for b in throughput
        )
        row += f"{float(np.abs(np.array(scores[name]) - reference).max()):>22.2e}"
        print(row)
    print("\nratios: anomalib-openvino's time / the path's (single image), the path's images/s / anomalib-openvino's (batches)")
    fastest = min((n for n in single if n.startswith("inspect-")), key=lambda n: statistics.median(single[n]))
    goal = " ".join(
        f"{label} {ratio:.2f}x ({'met' if ratio >= LEAD else 'NOT met'})"
        for label, ratio in (
            ("single", base_median / statistics.median(single[fastest])),
            *((f"@{b}", throughput[b][fastest] / throughput[b][BASELINE]) for b in throughput),
        )
    )
    print(f"Inspect's fastest path here: {fastest}; goal >= {LEAD:g}x anomalib-openvino: {goal}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
