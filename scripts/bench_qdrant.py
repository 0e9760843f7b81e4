"""Benchmark the embedded Qdrant store: indexing time and query latency at 1k, 10k, 100k points.

Each size gets a fresh store in a temporary folder, written through ``SimilarityStore.upsert``
(the app's own path: validation, batches of ``--batch-size``, one sqlite row per point). Then the
store is closed and reopened (embedded mode loads every point into memory on open: the app's
start-up cost), and ``--queries`` random query vectors are searched with k nearest neighbours on
the ``defect`` vector, with the app's payload filter (label = anomalous, query hash excluded), and
once more without a filter. Latencies are per query, median and 95th percentile.

Embedded mode is exact brute force with filters checked point by point in Python, so query time
grows linearly with the collection; ``--max-query-seconds`` bounds the time spent querying one
size (fewer queries are then reported in the ``n`` column), and ``--max-upsert-seconds`` the time
spent indexing one size (the row then shows the points reached, marked ``*``). Example::

    .venv/bin/python scripts/bench_qdrant.py                       # 1k, 10k, 100k; 2 x 300 dims
    .venv/bin/python scripts/bench_qdrant.py --sizes 1000,10000 --dims 1536 --queries 100
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from core.similarity.store import SimilarityStore, make_record

MODEL, CATEGORY = "bench", "synthetic"
DEFECT_TYPES = ("crack", "hole", "scratch", "stain")


def make_records(start: int, stop: int, dims: dict[str, int], rng: np.random.Generator) -> list:
    """Points start..stop-1: 80 % good, 20 % anomalous across four defect types."""
    records = []
    for i in range(start, stop):
        anomalous = i % 5 == 0
        records.append(
            make_record(
                sha256=hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                model=MODEL,
                category=CATEGORY,
                vectors={name: rng.standard_normal(size, dtype=np.float32) for name, size in dims.items()},
                image_path=f"{CATEGORY}/{i:06d}.png",
                split="test" if anomalous else "train",
                label="anomalous" if anomalous else "good",
                defect_type=DEFECT_TYPES[(i // 5) % len(DEFECT_TYPES)] if anomalous else "good",
                score=float(rng.random()),
                time="2025-01-01T00:00:00+00:00",
            )
        )
    return records


def time_queries(store: SimilarityStore, queries: np.ndarray, k: int, filtered: bool, budget_s: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + budget_s
    for j, vector in enumerate(queries):
        kwargs = {"label": "anomalous", "exclude_sha256": hashlib.sha256(f"bench-{j}".encode()).hexdigest()} if filtered else {}
        t0 = time.perf_counter()
        hits = store.similar(MODEL, CATEGORY, vector=vector, using="defect", k=k, **kwargs)
        latencies.append(time.perf_counter() - t0)
        assert len(hits) == k
        if time.perf_counter() > deadline:
            break
    return latencies


def bench_size(n: int, args: argparse.Namespace, dims: dict[str, int], root: Path) -> dict:
    path = root / f"store_{n}"
    rng = np.random.default_rng(args.seed)
    upsert_s = 0.0
    written = 0
    with SimilarityStore.open(path) as store, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "local mode is not recommended above 20,000 points"
        store.ensure_collection(MODEL, CATEGORY, dims)
        chunk = 5000  # records are generated per chunk (outside the timing) to bound memory
        for start in range(0, n, chunk):
            if upsert_s > args.max_upsert_seconds:
                break  # bounded: the row reports the points actually written
            records = make_records(start, min(n, start + chunk), dims, rng)
            t0 = time.perf_counter()
            written += store.upsert(MODEL, CATEGORY, records, batch_size=args.batch_size)
            upsert_s += time.perf_counter() - t0
            print(f"  [{n}] {written} points in {upsert_s:.1f} s", file=sys.stderr, flush=True)
        assert store.count(MODEL, CATEGORY) == written

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "local mode is not recommended above 20,000 points"
        store = SimilarityStore.open(path)
    reopen_s = time.perf_counter() - t0
    try:
        queries = np.random.default_rng(args.seed + 1).standard_normal((args.queries, dims["defect"]), dtype=np.float32)
        store.similar(MODEL, CATEGORY, vector=queries[0], k=args.k)  # warm-up
        filtered = time_queries(store, queries, args.k, True, args.max_query_seconds)
        plain = time_queries(store, queries, args.k, False, args.max_query_seconds)
    finally:
        store.close()
    disk_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    shutil.rmtree(path, ignore_errors=True)
    ms = lambda xs, q: 1000 * float(np.percentile(xs, q))  # noqa: E731
    return {
        "n": written,
        "stopped": written < n,
        "upsert_s": upsert_s,
        "rate": written / upsert_s,
        "reopen_s": reopen_s,
        "disk_mb": disk_mb,
        "f_med": ms(filtered, 50),
        "f_p95": ms(filtered, 95),
        "f_n": len(filtered),
        "p_med": ms(plain, 50),
        "p_p95": ms(plain, 95),
        "p_n": len(plain),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated point counts")
    parser.add_argument("--dims", type=int, default=300, help="size of each named vector")
    parser.add_argument("--vectors", default="global,defect", help="named vectors (must include defect)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-query-seconds", type=float, default=30.0, help="query time budget per size and mode")
    parser.add_argument(
        "--max-upsert-seconds",
        type=float,
        default=180.0,
        help="indexing time budget per size; past it the size is cut short (marked *) and benchmarked as reached",
    )
    parser.add_argument("--dir", type=Path, default=None, help="parent folder for the temporary stores")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    dims = {name.strip(): args.dims for name in args.vectors.split(",") if name.strip()}
    if "defect" not in dims:
        parser.error("--vectors must include 'defect'")
    print(
        f"embedded Qdrant, {len(dims)} named vectors x {args.dims} dims, cosine; k={args.k}; "
        f"{args.queries} queries per size (at most {args.max_query_seconds:g} s each mode); batch {args.batch_size}"
    )
    header = (
        f"{'points':>8} | {'upsert s':>8} | {'pts/s':>7} | {'reopen s':>8} | {'disk MB':>7} | "
        f"{'filtered med ms':>15} | {'p95 ms':>7} | {'n':>4} | {'no-filter med ms':>16} | {'p95 ms':>7} | {'n':>4}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_qdrant_", dir=args.dir) as tmp:
        for n in sizes:
            r = bench_size(n, args, dims, Path(tmp))
            rows.append(r)
            print(
                f"{str(r['n']) + ('*' if r['stopped'] else ''):>8} | {r['upsert_s']:>8.1f} | {r['rate']:>7.0f} | {r['reopen_s']:>8.2f} | {r['disk_mb']:>7.0f} | "
                f"{r['f_med']:>15.1f} | {r['f_p95']:>7.1f} | {r['f_n']:>4} | {r['p_med']:>16.1f} | {r['p_p95']:>7.1f} | {r['p_n']:>4}",
                flush=True,
            )
    if any(r["stopped"] for r in rows):
        print("* indexing stopped at --max-upsert-seconds; figures are for the points reached")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
