"""How many images an OpenVINO request should take: ms an image for a batch of 8, by request shape.

    python benchmarks/bench_request_sizes.py --model patchcore --category tile
    python benchmarks/bench_request_sizes.py --model patchcore --category bottle --precision fp32

Compiles the version's OpenVINO export (``python -m core export`` first) once with its dynamic
batch axis and once per static batch size, runs 8 test images through each (one request of 8, or
requests of 4, 2 or 1), and prints the median ms an image. What Inspect's runtime uses is
:data:`core.inference.runtime.MICRO_BATCH`.
"""

from __future__ import annotations

import argparse
import statistics
import time

from core.inference.runtime import OV_PRECISIONS

BATCH = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--category", default="tile")
    parser.add_argument("--precision", choices=tuple(OV_PRECISIONS), help="default: the export's own")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)

    import numpy as np
    import openvino as ov

    from core.data.image_io import load_image
    from core.export.exporter import parity_images
    from core.inference.detector import load_detector, to_tensor
    from core.inference.runtime import resize_for_export

    detector = load_detector(args.model, args.category, runtime="openvino")
    engine = detector.engine
    precision = args.precision or engine.precision
    items = parity_images(detector.meta.data_root, args.category)[:BATCH]
    images = resize_for_export([to_tensor(load_image(item.path)) for item in items], engine.image_size).numpy()
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}

    def request(size: int | None):
        model = core.read_model(str(engine.path))
        if size is not None:
            model.reshape({model.inputs[0]: ov.PartialShape([size, *model.inputs[0].get_partial_shape()[1:]])})
        return core.compile_model(model, "CPU", config).create_infer_request()

    def ms_per_image(run) -> float:
        for _ in range(3):
            run()
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000 / BATCH)
        return statistics.median(times)

    print(f"{args.model}/{args.category} {detector.version}, export in {precision}, {BATCH} images, median of {args.runs}")
    dynamic = request(None)
    print(f"{'one request of 8, dynamic batch axis':<40}{ms_per_image(lambda: dynamic.infer({0: images})):>8.2f} ms an image")
    for size in (8, 4, 2, 1):
        static = request(size)

        def run(static=static, size=size) -> None:
            for start in range(0, BATCH, size):
                static.infer({0: np.ascontiguousarray(images[start : start + size])})

        print(f"{f'requests of {size}, static shape':<40}{ms_per_image(run):>8.2f} ms an image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
