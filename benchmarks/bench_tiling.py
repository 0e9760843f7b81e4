"""Tiled against untiled PatchCore on the high-resolution demo category, and what tiling costs.

    python benchmarks/bench_tiling.py                                      # train both, measure
    python benchmarks/bench_tiling.py --untiled-version v0002 --tiled-version v0001   # reuse them

What it does, in one workspace (``INSPECT_HOME``):

1. writes the high-resolution demo category ``hires_metal`` (``python -m core demo-data --hires``:
   2048 px frames, defects of 6-20 px, masks at full size);
2. trains PatchCore on it twice on the same images, untiled (the whole frame resized to 256 px)
   and tiled (``--tile 256 --stride 224`` by default: the camera's pixels), 1% coreset, and
   measures both on the test set with ``evaluate``'s own collection: image and pixel AUROC (pixel
   AUROC at the masks' full resolution for the tiled model, at 256 px for the untiled one, whose
   map is 256 px);
3. times ``Detector.predict`` on one 5 MP frame (2448 x 2048) with both models, interleaved so a
   busy machine slows both alike: median and p95 ms;
4. measures the peak resident memory of a fresh process that loads the tiled model and judges one
   20 MP frame (5472 x 3648), against the same process with the model and the frame loaded.

``--runtime openvino`` (both versions given, the tiled one exported first) times the tiled version
on its OpenVINO export against itself on torch instead, and measures the 20 MP peak on the export.

Both models are versions of ``patchcore/hires_metal``; the tiled one is trained last, so it is the
newest version (the one the app uses) when the bench ends. Results go to
``INSPECT_HOME/bench_tiling.json`` and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "hires_metal"
FIVE_MP = (2048, 2448)  # height, width
TWENTY_MP = (3648, 5472)


def frame(height: int, width: int, seed: int = 7) -> np.ndarray:
    """A good frame of the demo surface at the given size (RGB uint8): a 2048 px render, mirrored
    to cover larger sizes (rendering 20 MP directly would itself take gigabytes)."""
    from core.data.demo import HIRES_SIZE, render_hires_sample

    clean, _, _ = render_hires_sample(None, seed, size=min(max(height, width), HIRES_SIZE))
    reps = (-(-height // clean.shape[0]), -(-width // clean.shape[1]))
    grey = np.pad(clean, ((0, (reps[0] - 1) * clean.shape[0]), (0, (reps[1] - 1) * clean.shape[1])), mode="symmetric")
    return np.repeat(grey[:height, :width, None], 3, axis=2)


def _rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_version(root: Path, config: dict) -> str:
    """Train PatchCore on the category with ``config``; the new version's name."""
    from core import registry
    from core.training import train

    train("patchcore", CATEGORY, data_root=root, config=config, progress=False)
    return registry.current_files("patchcore", CATEGORY).version


def accuracy(version: str) -> dict:
    """Image and pixel AUROC of one version on the test set (``evaluate``'s collection and metrics).

    Only the two AUROCs: AUPRO and the latency loop of ``evaluate`` add many minutes on 20 frames of
    4 MP and are not what this bench compares. Pixel AUROC is over every pixel of the model's map:
    the masks' full 2048 px for the tiled model, 256 px for the untiled one (the masks resized to it).
    """
    import anomalib.metrics as am

    from core.data.layout import make_datamodule
    from core.evaluation.evaluate import collect, image_auroc
    from core.inference.detector import load_detector

    detector = load_detector("patchcore", CATEGORY, version=version)
    datamodule = make_datamodule(detector.meta.data_root, CATEGORY, calibration=False)
    datamodule.setup()
    started = time.perf_counter()
    out = collect(detector, datamodule, progress=False)
    pixel = am.AUROC(fields=["anomaly_map", "gt_mask"])
    pixel.update(SimpleNamespace(anomaly_map=out.ranking("maps").flatten(), gt_mask=out.cat("masks").flatten()))
    return {
        "version": version,
        "config": {k: detector.meta.config.get(k) for k in ("image_size", "tile", "stride", "coreset_ratio")},
        "train_s": detector.meta.train_time_s,
        "image_auroc": round(image_auroc(out.ranking("scores"), out.cat("labels")), 4),
        "pixel_auroc": round(float(pixel.compute()), 4),
        "map_shape": list(out.maps[0].shape[-2:]),
        "eval_s": round(time.perf_counter() - started, 1),
    }


def time_both(runs: dict[str, tuple[str, str]], repeats: int) -> dict[str, dict[str, float]]:
    """Median and p95 ms of each (version, runtime) on one 5 MP frame, the two interleaved."""
    from core.inference.detector import load_detector

    image = frame(*FIVE_MP)
    detectors = {name: load_detector("patchcore", CATEGORY, version=v, runtime=rt) for name, (v, rt) in runs.items()}
    for detector in detectors.values():
        detector.predict(image)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for i in range(repeats):
        order = list(detectors) if i % 2 == 0 else list(reversed(detectors))
        for name in order:
            started = time.perf_counter()
            detectors[name].predict(image)
            times[name].append((time.perf_counter() - started) * 1000)
    return {
        name: {"median_ms": round(float(np.median(t)), 1), "p95_ms": round(float(np.percentile(t, 95)), 1), "runs": len(t)}
        for name, t in times.items()
    }


def peak_memory_child(version: str, runtime: str = "torch") -> None:
    """In a fresh process: resident memory with the model and the decoded frame loaded, and the peak
    while judging one 20 MP frame (the peak is reset first: Linux ``clear_refs``), printed as JSON."""
    from core.inference.detector import load_detector

    detector = load_detector("patchcore", CATEGORY, version=version, runtime=runtime)
    image = frame(*TWENTY_MP)
    before = _rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS, so the peak below is the call's
    started = time.perf_counter()
    prediction = detector.predict(image)
    elapsed = time.perf_counter() - started
    after = _rss_mb("VmHWM")
    print(
        json.dumps(
            {
                "peak_rss_mb": round(after),
                "rss_before_call_mb": round(before),
                "map_shape": list(prediction.anomaly_map.shape),
                "seconds": round(elapsed, 1),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--stride", type=int, default=224)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--coreset-ratio", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=10, help="timed predictions of the 5 MP frame per model")
    parser.add_argument("--untiled-version", help="use this trained version (vNNNN) instead of training one")
    parser.add_argument("--tiled-version", help="use this trained tiled version (vNNNN) instead of training one")
    parser.add_argument("--out", default=None, help="results JSON (default: INSPECT_HOME/bench_tiling.json)")
    parser.add_argument("--no-accuracy", action="store_true", help="only the latency and the memory (both versions given)")
    parser.add_argument(
        "--runtime",
        choices=("torch", "openvino"),
        default="torch",
        help="openvino: time the tiled version on its export against itself on torch, and measure the 20 MP "
        "peak on the export (python -m core export --model patchcore --category hires_metal --version V first)",
    )
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_child:
        peak_memory_child(args.peak_child, args.runtime)
        return 0

    from core.data.demo import generate_hires_dataset
    from core.settings import get_settings

    settings = get_settings()
    out = Path(args.out) if args.out else settings.workspace / "bench_tiling.json"
    root = generate_hires_dataset(settings.demo_data_root, progress=False)
    base = {"image_size": args.image_size, "coreset_ratio": args.coreset_ratio}
    versions = {
        "untiled": args.untiled_version or train_version(root, base),
        "tiled": args.tiled_version or train_version(root, {**base, "tile": args.tile, "stride": args.stride}),
    }
    results: dict = {} if args.no_accuracy else {name: accuracy(version) for name, version in versions.items()}
    print(json.dumps(results, indent=2), flush=True)
    results["runtime"] = args.runtime
    if args.runtime == "torch":
        runs = {name: (version, "torch") for name, version in versions.items()}
    else:
        runs = {"tiled": (versions["tiled"], "torch"), "tiled_openvino": (versions["tiled"], "openvino")}
    results["latency_5mp"] = time_both(runs, args.repeats)
    child = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--peak-child", versions["tiled"], "--runtime", args.runtime],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    results["memory_20mp_tiled"] = json.loads(child.stdout.strip().splitlines()[-1])
    results["cpu_threads"] = __import__("torch").get_num_threads()
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
