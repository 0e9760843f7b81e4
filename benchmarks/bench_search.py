"""PatchCore's nearest-neighbour search: anomalib's method against Inspect's, interleaved, same data.

    python benchmarks/bench_search.py [--bank 17203] [--dims 152] [--queries 1024] [--rounds 7]

The default shape is real bottle's (10% coreset of EfficientNet-Lite0 blocks.2+blocks.4 features,
1,024 patches per 256 px image). Prints the median ms of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from core.models.patchcore.search import FastPatchcoreModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=int, default=17_203)
    parser.add_argument("--dims", type=int, default=152)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    model = PatchcoreModel(layers=["blocks.2"], backbone="tf_efficientnet_lite0", pre_trained=False).eval()
    model.memory_bank = torch.randn(args.bank, args.dims, generator=g)
    queries = torch.randn(args.queries, args.dims, generator=g)
    times: dict[str, list[float]] = {"anomalib": [], "inspect": []}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, cls in (("anomalib", PatchcoreModel), ("inspect", FastPatchcoreModel)):
                model.__class__ = cls
                started = time.perf_counter()
                model.nearest_neighbors(queries, 1)
                times[name].append((time.perf_counter() - started) * 1000)
    a, i = statistics.median(times["anomalib"]), statistics.median(times["inspect"])
    print(f"{args.queries} queries x bank {args.bank} x {args.dims}, {torch.get_num_threads()} threads, median of {args.rounds}:")
    print(f"  anomalib PatchcoreModel.nearest_neighbors: {a:7.1f} ms")
    print(f"  Inspect FastPatchcoreModel.nearest_neighbors: {i:7.1f} ms   ({a / i:.2f}x faster)")


if __name__ == "__main__":
    main()
