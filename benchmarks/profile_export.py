"""Where an exported model's inference time goes: OpenVINO's per-op profile, summed by op type.

    python benchmarks/profile_export.py --model patchcore --category bottle
    python benchmarks/profile_export.py --model patchcore --category bottle --precision fp32

Compiles the version's OpenVINO export (``python -m core export`` first) with ``PERF_COUNT`` at the
export's precision (or the one given), runs one test image ``--runs`` times, and prints the mean
milliseconds per op type (and the kernel OpenVINO chose), then the most expensive single nodes.
The per-op times add up to less than a call's wall time (scheduling and copies are not counted).
"""

from __future__ import annotations

import argparse
import collections

from core.inference.runtime import OV_PRECISIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--precision", choices=tuple(OV_PRECISIONS), help="default: the export's own")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=12, help="rows of each table")
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
    image = parity_images(detector.meta.data_root, args.category)[0]
    batch = np.ascontiguousarray(resize_for_export([to_tensor(load_image(image.path))], engine.image_size).numpy())
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"}
    request = core.compile_model(core.read_model(str(engine.path)), "CPU", config).create_infer_request()
    for _ in range(3):
        request.infer({0: batch})
    by_type: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    for _ in range(args.runs):
        request.infer({0: batch})
        for op in request.profiling_info:
            ms = op.real_time.total_seconds() * 1000 / args.runs
            by_type[f"{op.node_type} ({op.exec_type})"] += ms
            by_node[f"{op.node_type} {op.node_name}"] += ms
    print(f"{args.model}/{args.category} {detector.version}, export compiled in {precision}, one image, {args.runs} runs")
    print(f"sum of per-op times: {sum(by_type.values()):.2f} ms\n\n{'ms':>8}  op type (kernel)")
    for name, ms in by_type.most_common(args.top):
        print(f"{ms:>8.2f}  {name}")
    print(f"\n{'ms':>8}  node")
    for name, ms in by_node.most_common(args.top):
        print(f"{ms:>8.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
