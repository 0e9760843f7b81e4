"""Benchmark anomalib's greedy k-center coreset against core.models.patchcore.coreset on a bottle-shaped embedding.

MVTec AD "bottle" has 209 training images; at 256 px PatchCore keeps 32 x 32 patches per image, so
its memory bank starts from 214,016 patch embeddings (152 dims for EfficientNet-Lite0 blocks.2 +
blocks.4) and keeps 10 % of them: 21,401 points, 21,400 greedy iterations.

anomalib needs ~50 minutes for that on 2 cores, so it is timed over ``--anomalib-iters`` iterations
(after its projection) and its rate is extrapolated to the full count; ours is timed over the full
run. Both start from the same seeds, and the script checks that they choose the same points over
the iterations anomalib ran.

anomalib's time depends only on the shape. Ours depends on it mostly, and a little on the content:
how many points each new centre claims (exact updates) and how often the batch of likeliest next
centres is right (passes over the data). Random data and real bottle features gave the same rate.

Usage::

    .venv/bin/python benchmarks/bench_coreset.py                     # random bottle-shaped data
    .venv/bin/python benchmarks/bench_coreset.py --embedding bank.pt # a saved (N, D) float tensor
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from core.models.patchcore.coreset import coreset_size, prepare, select


def _seed(seed: int) -> None:
    # anomalib's projection draws from torch's and numpy's global generators.
    torch.manual_seed(seed)
    np.random.seed(seed)


def _anomalib_bounded(embedding: torch.Tensor, ratio: float, iters: int, seed: int) -> tuple[float, float, list[int]]:
    """anomalib's KCenterGreedy.select_coreset_idxs, stopped after ``iters`` iterations.

    The body mirrors anomalib 2.7.0's method statement by statement (minus its tqdm bar), calling
    the sampler's own methods, so the rate measured is anomalib's. Returns (projection seconds,
    loop seconds, selected indices: the start plus one per iteration).
    """
    from anomalib.models.components.sampling import KCenterGreedy

    _seed(seed)
    sampler = KCenterGreedy(embedding=embedding, sampling_ratio=ratio)
    start = time.perf_counter()
    sampler.model.fit(sampler.embedding)
    sampler.features = sampler.model.transform(sampler.embedding)
    sampler.reset_distances()
    projection_s = time.perf_counter() - start

    idx = torch.randint(high=sampler.n_observations, size=(1,), device=sampler.features.device).squeeze()
    selected = [idx]
    start = time.perf_counter()
    for _ in range(iters):
        sampler.update_distances(cluster_center=idx)
        idx = sampler.get_new_idx()
        sampler.min_distances.scatter_(0, idx.unsqueeze(0).unsqueeze(1), 0.0)
        selected.append(idx)
    loop_s = time.perf_counter() - start
    return projection_s, loop_s, torch.stack(selected).cpu().tolist()


def _total(seconds: float, label: str) -> str:
    return f"{seconds:,.0f} s = {seconds / 60:.1f} min ({label})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--rows", type=int, default=214_016, help="N patch embeddings (default: bottle, 209 x 32 x 32)")
    add("--dims", type=int, default=152, help="D per embedding (default 152: EfficientNet-Lite0 blocks.2+blocks.4)")
    add("--ratio", type=float, default=0.1, help="coreset sampling ratio (default 0.1)")
    add("--seed", type=int, default=0, help="seed for the data and both samplers")
    add("--anomalib-iters", type=int, default=200, help="iterations to time anomalib over (default 200)")
    add("--embedding", type=Path, help="load an (N, D) tensor saved with torch.save instead of random data")
    add("--threads", type=int, help=f"torch intra-op threads (default: torch's, here {torch.get_num_threads()})")
    add("--device", help="device for our loop (default: the embedding's, i.e. cpu)")
    add("--no-progress", action="store_true", help="hide our progress bar")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.embedding:
        embedding = torch.load(args.embedding, map_location="cpu").float().contiguous()
        source = f"{args.embedding} (real embedding)"
    else:
        gen = torch.Generator().manual_seed(args.seed)
        embedding = torch.rand(args.rows, args.dims, generator=gen)
        source = (
            f"random uniform float32, seed {args.seed}\n  (anomalib's timing depends on the shape only, not the content; "
            "ours mostly on the shape, a little on the content: check real features with --embedding)"
        )
    n_rows, n_dims = embedding.shape
    size = coreset_size(n_rows, args.ratio)
    iters = min(args.anomalib_iters, size - 1)

    import anomalib

    print(f"embedding: {n_rows:,} x {n_dims} float32, {source}")
    print(f"coreset: ratio {args.ratio} -> {size:,} points = {size - 1:,} greedy iterations")
    print(
        f"torch {torch.__version__}, anomalib {anomalib.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )

    print(f"\nanomalib KCenterGreedy: projection, then {iters} iterations ...", flush=True)
    a_proj, a_loop, a_selected = _anomalib_bounded(embedding, args.ratio, iters, args.seed)
    a_rate = iters / a_loop if a_loop > 0 else float("inf")
    a_total = a_proj + (size - 1) / a_rate
    a_measured = iters == size - 1

    print("core.models.patchcore.coreset: full run ...", flush=True)
    _seed(args.seed)
    start = time.perf_counter()
    space, first = prepare(embedding, device=args.device)
    o_proj = time.perf_counter() - start
    stats: dict[str, int] = {}
    start = time.perf_counter()
    ours = select(space, first, size, progress=not args.no_progress, stats=stats).cpu().tolist()
    o_loop = time.perf_counter() - start
    o_rate = (size - 1) / o_loop
    o_total = o_proj + o_loop

    k = len(a_selected)
    pairs = zip(a_selected, ours[:k], strict=True)
    mismatch = next((i for i, (a, b) in enumerate(pairs) if a != b), None)

    a_label = "measured" if a_measured else f"extrapolated from {iters} iterations"
    rows = [
        ("method", "projection / setup", "iterations/s", "total"),
        ("anomalib KCenterGreedy", f"{a_proj:.1f} s", f"{a_rate:,.1f}", _total(a_total, a_label)),
        ("core.models.patchcore.coreset", f"{o_proj:.1f} s", f"{o_rate:,.1f}", _total(o_total, "measured")),
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    print()
    for i, r in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nspeed-up: {a_total / o_total:.1f}x (total), {o_rate / a_rate:.1f}x (iterations/s)")
    print(
        f"ours: {stats['passes']:,} passes over the {n_rows:,} x {space.matrix.shape[1]} screen matrix, "
        f"{stats['exact_updates']:,} exact distance updates (anomalib: {(size - 1) * n_rows:,})"
    )
    if mismatch is None:
        print(f"selected indices: identical over the first {k:,} selections (start + {iters} iterations)")
    else:
        print(f"selected indices: DIFFER from selection {mismatch} (of the first {k:,})")
    print(f"load average {os.getloadavg()[0]:.1f} at end (the machine may be shared; timings move with it)")
    return 0 if mismatch is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
