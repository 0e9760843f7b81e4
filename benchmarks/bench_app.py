"""How long the inspector waits: cold start to first verdict, and warm verdicts, on the CPU.

Cold start is measured in a *fresh* Python process, the way the app's first inspection after a
start pays it: import the libraries (torch, anomalib...), load the trained model from the
registry, decode the image, run the model, draw the heatmap overlay and the defect contours. Warm
verdicts are the same work for further images with everything loaded (what every later upload
costs), and a re-judgement at another threshold (what moving the slider costs: no model run).

    .venv/bin/python benchmarks/bench_app.py                       # PatchCore on demo 'tile'
    .venv/bin/python benchmarks/bench_app.py --category grid --cold-runs 3 --warm 30
    INSPECT_HOME=/path/to/workspace .venv/bin/python benchmarks/bench_app.py --json out.json

Needs a trained model (``python -m core setup`` prepares the demo ones). Runs on the CPU
(``CUDA_VISIBLE_DEVICES`` is emptied for the measured processes) with torch's default threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    """One fresh process: time each stage up to the first verdict, then warm verdicts."""
    spawn_s = time.time() - float(os.environ.get("BENCH_T0", time.time()))
    t_start = time.perf_counter()
    import numpy as np  # noqa: F401 - part of the import cost

    from core.data.image_io import load_image
    from core.inference.detector import load_detector
    from core.inference.overlay import defect_contours, heatmap_overlay

    t_import = time.perf_counter()
    detector = load_detector(args.model, args.category, device="cpu")
    t_load = time.perf_counter()

    images = [Path(p) for p in args.images]

    def verdict(path: Path) -> tuple[str, float]:
        image = load_image(path.read_bytes(), path.name)
        prediction = detector.predict(image)
        heatmap_overlay(image, prediction.anomaly_map, opacity=0.5)
        defect_contours(image, prediction.anomaly_map, threshold=0.5)
        return prediction.verdict(0.5), prediction.latency_ms

    first, first_model_ms = verdict(images[0])
    t_first = time.perf_counter()

    warm_total, warm_model = [], []
    for i in range(args.warm):
        path = images[(i + 1) % len(images)]
        t0 = time.perf_counter()
        _, model_ms = verdict(path)
        warm_total.append((time.perf_counter() - t0) * 1000)
        warm_model.append(model_ms)

    prediction = detector.predict(load_image(images[0]))
    t0 = time.perf_counter()
    for threshold in np.linspace(0, 1, 101):
        prediction.verdict(float(threshold))
    rejudge_us = (time.perf_counter() - t0) / 101 * 1e6

    import torch

    print(
        json.dumps(
            {
                "spawn_s": spawn_s,
                "import_s": t_import - t_start,
                "load_model_s": t_load - t_import,
                "first_verdict_s": t_first - t_load,
                "first_model_ms": first_model_ms,
                "in_process_to_first_verdict_s": t_first - t_start,
                "first_verdict": first,
                "warm_verdict_ms": warm_total,
                "warm_model_ms": warm_model,
                "rejudge_us": rejudge_us,
                "torch_threads": torch.get_num_threads(),
                "device": str(detector.device),
            }
        )
    )


def pick_images(model: str, category: str, n: int) -> list[str]:
    from core import registry
    from core.services.catalog import test_images

    meta = registry.load_meta(model, category)
    items = test_images(category, meta.data_root)
    if not items:
        raise SystemExit(f"no test images for '{category}' under {meta.data_root}")
    defects = [i for i in items if i.defect_type != "good"] or items
    ordered = defects + [i for i in items if i not in defects]
    return [str(i.path) for i in ordered[: max(1, n)]]


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
    return f"median {statistics.median(values):7.1f}   p90 {p90:7.1f}   min {values[0]:7.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--category", default="tile")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes to time (default 3)")
    parser.add_argument("--warm", type=int, default=20, help="warm verdicts per process (default 20)")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    images = pick_images(args.model, args.category, 12)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    runs = []
    for _ in range(max(1, args.cold_runs)):
        env["BENCH_T0"] = repr(time.time())
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--model",
                args.model,
                "--category",
                args.category,
                "--warm",
                str(args.warm),
                "--images",
                *images,
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-3000:])
            return out.returncode
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    def cold(key: str) -> str:
        return fmt([r[key] for r in runs])

    first_total = [r["spawn_s"] + r["in_process_to_first_verdict_s"] for r in runs]
    warm_all = [v for r in runs for v in r["warm_verdict_ms"]]
    warm_model = [v for r in runs for v in r["warm_model_ms"]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Inspect app benchmark: {args.model}/{args.category}, {runs[0]['device']}, "
        f"{runs[0]['torch_threads']} torch threads, {len(runs)} fresh processes x {args.warm} warm verdicts "
        f"(load average {load:.1f} on {os.cpu_count()} CPUs at the end)"
    )
    print("cold start (seconds, per fresh process):")
    print(f"  start the interpreter           {cold('spawn_s')}")
    print(f"  import libraries                {cold('import_s')}")
    print(f"  load the trained model          {cold('load_model_s')}")
    print(f"  first verdict (decode+model+draw) {cold('first_verdict_s')}")
    print(f"  => start to first verdict       {fmt(first_total)}")
    print("warm verdict (milliseconds):")
    print(f"  decode + model + overlays       {fmt(warm_all)}")
    print(f"  model call alone                {fmt(warm_model)}")
    print(f"threshold re-judgement (no model run): {statistics.median([r['rejudge_us'] for r in runs]):.1f} us")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "category": args.category, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
