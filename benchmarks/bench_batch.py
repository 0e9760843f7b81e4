"""Folder inspection vs one image at a time, on the same images and model, in one process.

Prints, for each round (interleaved, so a change in machine load hits both alike):

* one-at-a-time: for each file, decode it (``load_image``) and ``Detector.predict`` it, in turn;
* folder path: ``core.services.batch.inspect_paths`` (files decoded in a background thread,
  scored in batches through ``inspect_images``, patch features included) with ``--no-record``
  semantics, so neither side writes history rows or Qdrant points;

then the median images/s and ms per image of each and their ratio. Usage::

    python benchmarks/bench_batch.py --category bottle --rounds 3 [--batch-size 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from core.data.image_io import load_image
from core.services import batch, catalog, inspection


def one_at_a_time(detector, paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        detector.predict(load_image(path))
    return time.perf_counter() - started


def folder_path(detector, paths: list[Path], batch_size: int) -> float:
    report = batch.inspect_paths(
        detector,
        [batch.ImageFile(p, str(p)) for p in paths],
        lambda _row: None,
        record=False,
        batch_size=batch_size,
        progress=False,
    )
    assert report.failed == 0, report.summary()
    return report.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=batch.DEFAULT_BATCH_SIZE)
    args = parser.parse_args()

    detector = inspection.load_detector(args.model, args.category)
    paths = [item.path for item in catalog.test_images(args.category, detector.meta.data_root)]
    inspection.warm_up(detector)
    print(f"{args.model}/{args.category} ({detector.version}) on {detector.device}: {len(paths)} test images")
    single, folder = [], []
    for r in range(args.rounds):
        single.append(one_at_a_time(detector, paths))
        folder.append(folder_path(detector, paths, args.batch_size))
        print(f"  round {r + 1}: one-at-a-time {single[-1]:.2f} s, folder path {folder[-1]:.2f} s")
    n = len(paths)
    s, f = statistics.median(single), statistics.median(folder)
    print(f"one-at-a-time (decode + Detector.predict): {n / s:6.1f} images/s, {1000 * s / n:6.1f} ms/image")
    print(f"folder path (batch {args.batch_size}, background decode): {n / f:6.1f} images/s, {1000 * f / n:6.1f} ms/image")
    print(f"ratio folder / one-at-a-time: {s / f:.2f}x")


if __name__ == "__main__":
    main()
