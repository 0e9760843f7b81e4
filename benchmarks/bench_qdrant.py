"""The embedded similarity store at factory scale: how long the Similar page's searches take, per size.

For each size a fresh embedded store (Qdrant Edge, exact search) in a temporary folder is filled
through ``SimilarityStore.upsert`` (the app's own path: checks, batches of ``--batch-size``), 80 %
good and 20 % anomalous points of four defect types, two named 152-d vectors each. The searches
then run in a fresh process pinned to ``--cpus`` (two cores by default), as the app would run them:
the store is opened there (``open s``), and ``--queries`` random vectors are searched top-k on the
``defect`` vector with the Similar page's filter (label anomalous, the query's hash excluded),
without a filter, and re-ranked as the page ranks (``label_metric.similar``: the 500 nearest
re-ranked by the metric learned from the points' defect types). It reports the index time, the
folder's size on disk, the query process's resident memory added by the store, and median / p95
latencies; then the largest size whose filtered top-5 p95 stayed under ``--target-ms``, the figure
``core.similarity.store.EMBEDDED_MAX_POINTS`` is set from. Examples::

    .venv/bin/python benchmarks/bench_qdrant.py --sizes 100000
    .venv/bin/python benchmarks/bench_qdrant.py --sizes 200000,300000,400000 --queries 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.similarity import label_metric
from core.similarity.store import SimilarityStore, make_record, release

ROOT = Path(__file__).resolve().parents[1]

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
                image_path=f"{CATEGORY}/{i:07d}.png",
                split="test" if anomalous else "train",
                label="anomalous" if anomalous else "good",
                defect_type=DEFECT_TYPES[(i // 5) % len(DEFECT_TYPES)] if anomalous else "good",
                score=float(rng.random()),
                time="2025-01-01T00:00:00+00:00",
            )
        )
    return records


def resident_mb() -> float:
    """Resident memory of this process now, in MB (anonymous + file-backed: Edge's memory maps count)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(search, queries: np.ndarray, budget_s: float) -> dict[str, float]:
    latencies = []
    deadline = time.perf_counter() + budget_s
    for j, vector in enumerate(queries):
        start = time.perf_counter()
        search(j, vector)
        latencies.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return {
        "med": 1000 * float(np.percentile(latencies, 50)),
        "p95": 1000 * float(np.percentile(latencies, 95)),
        "n": len(latencies),
    }


def query_child(args: argparse.Namespace) -> int:
    """The searches, in a process of their own pinned to ``--cpus``: prints one JSON line."""
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    base = resident_mb()
    start = time.perf_counter()
    store = SimilarityStore.open(Path(args.child), embedded=True)
    points = store.count(MODEL, CATEGORY)  # loads the shard
    out: dict = {"open_s": time.perf_counter() - start, "points": points}
    queries = np.random.default_rng(args.seed + 1).standard_normal((args.queries, 152), dtype=np.float32)

    def excluded(j: int) -> str:
        return hashlib.sha256(f"bench-{j}".encode()).hexdigest()

    searches = {
        "filtered": lambda j, v: store.similar(
            MODEL, CATEGORY, vector=v, k=args.k, label="anomalous", exclude_sha256=excluded(j)
        ),
        "unfiltered": lambda j, v: store.similar(MODEL, CATEGORY, vector=v, k=args.k),
        "re-ranked": lambda j, v: label_metric.similar(
            store, MODEL, CATEGORY, vector=v, k=args.k, label="anomalous", exclude_sha256=excluded(j)
        ),
    }
    for name, search in searches.items():
        search(0, queries[0])  # warm-up (and, re-ranked, the fit)
        out[name] = timed(search, queries, args.max_query_seconds)
    out["mem_mb"] = resident_mb() - base
    print(json.dumps(out))
    return 0


def bench(n: int, args: argparse.Namespace, root: Path) -> dict:
    path = root / f"edge_{n}"
    dims = {"global": 152, "defect": 152}
    store = SimilarityStore.open(path, embedded=True)
    rng = np.random.default_rng(args.seed)
    upsert_s = 0.0
    for start in range(0, n, 5000):  # records are made per chunk, outside the timing
        records = make_records(start, min(n, start + 5000), dims, rng)
        t0 = time.perf_counter()
        store.upsert(MODEL, CATEGORY, records, batch_size=args.batch_size)
        upsert_s += time.perf_counter() - t0
        print(f"  [{n}] {start + len(records)} points in {upsert_s:.1f} s", file=sys.stderr, flush=True)
    assert store.count(MODEL, CATEGORY) == n
    release()  # the query process opens it
    disk_mb = sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file()) / 2**20  # allocated: files are sparse
    child = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--queries", str(args.queries)]
    child += [
        "--k",
        str(args.k),
        "--cpus",
        args.cpus,
        "--seed",
        str(args.seed),
        "--max-query-seconds",
        str(args.max_query_seconds),
    ]
    done = subprocess.run(child, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"query process failed: {done.stderr[-2000:]}")
    return {"n": n, "upsert_s": upsert_s, "disk_mb": disk_mb, **json.loads(done.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated point counts")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus", default="0,1", help="cores the query process is pinned to ('' for all)")
    parser.add_argument("--max-query-seconds", type=float, default=120.0, help="time budget per size and search")
    parser.add_argument("--target-ms", type=float, default=20.0, help="the filtered top-k p95 a size must stay under")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--dir", type=Path, default=None, help="parent folder for the temporary stores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.pop("QDRANT_URL", None)
    if args.child:
        return query_child(args)
    print(
        f"Qdrant Edge, exact search; 2 named vectors x 152 dims, cosine; top-{args.k}; up to {args.queries} queries per "
        f"size and search (at most {args.max_query_seconds:g} s each); query process on cpus {args.cpus or 'all'}"
    )
    header = (
        f"{'points':>9} | {'index s':>7} | {'open s':>6} | {'disk MB':>7} | {'mem MB':>6} | {'filtered med/p95 ms':>19} | "
        f"{'unfiltered med/p95 ms':>21} | {'re-ranked med/p95 ms':>20} | {'n':>4}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_qdrant_", dir=args.dir) as tmp:
        for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
            r = bench(n, args, Path(tmp))
            rows.append(r)
            f, u, rr = r["filtered"], r["unfiltered"], r["re-ranked"]
            print(
                f"{n:>9} | {r['upsert_s']:>7.1f} | {r['open_s']:>6.2f} | {r['disk_mb']:>7.0f} | {r['mem_mb']:>6.0f} | "
                f"{f['med']:>9.1f} / {f['p95']:>7.1f} | {u['med']:>11.1f} / {u['p95']:>7.1f} | "
                f"{rr['med']:>10.1f} / {rr['p95']:>7.1f} | {f['n']:>4}",
                flush=True,
            )
    fast = [r["n"] for r in rows if r["filtered"]["p95"] < args.target_ms]
    print(f"largest size measured with a filtered top-{args.k} p95 under {args.target_ms:g} ms: {max(fast) if fast else 'none'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
