"""Benchmark the embedded similarity store at factory scale: Qdrant Edge against qdrant-client's local mode.

For each engine and size a fresh store in a temporary folder is filled through
``SimilarityStore.upsert`` (the app's own path: validation, batches of ``--batch-size``), 80 % good and
20 % anomalous points with two named vectors. On Edge the HNSW build is then timed separately (the
app builds it in a child process once a collection passes ``edge_store.HNSW_THRESHOLD`` points;
here it is forced, so every size gets it). Queries run in a fresh child process pinned to
``--cpus`` (default two cores): the store is opened there (``open s``: start-up cost), ``--queries``
random vectors are searched top-k on the ``defect`` vector with the app's filter (label anomalous,
query hash excluded) and without, and filtered again as the Similar page asks
(``re-ranked``: ``label_metric.similar``, the 500 nearest re-ranked by the metric learned from the
points' defect types), and the child's resident memory (with its own children: the shard host
that serves a built collection) after the queries above what it held before opening the store
is reported (``mem MB``: anonymous + file-backed pages, so Edge's
Rust allocations and its memory-mapped segments count; ``anon MB``: the anonymous part alone),
with the folder's size on disk. (Peak RSS, ``ru_maxrss``, read 0 for Edge: the imports' peak was
higher than anything the store added.)

``page ms`` (Edge only, ``--page-check``): the worst latency of a page's store calls (a filtered
top-5 search and a count, back to back from another thread, as a page does) while 50 uploads
are indexed one by one and a new HNSW generation is built and swapped in; one figure per
``--page-think`` (the page's mean pause between calls: 0.02 s polls without pause, so the process
is never idle and the new generation is loaded once overdue, while the page polls; 2 s is an
inspector clicking). Each call is timed from when it was due, so a wake-up held up by the GIL counts.

Local mode is exact brute force in Python and loads everything at open; it is run up to
``--local-max`` points (default 100,000). 1M points may use fewer queries (``--queries``); the
table says how many ran (``n``). Examples::

    .venv/bin/python scripts/bench_qdrant.py --sizes 10000,100000 --queries 200
    .venv/bin/python scripts/bench_qdrant.py --sizes 1000000 --engines edge --queries 50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.similarity import edge_store, label_metric  # noqa: E402
from core.similarity.store import SimilarityStore, make_record  # noqa: E402

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


def set_engine(engine: str) -> None:
    os.environ.pop("QDRANT_URL", None)
    os.environ["INSPECT_QDRANT_BACKEND"] = engine


def pin(cpus: str) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


# -- the child process: open, query, memory ---------------------------------------------------


def resident_mb() -> dict[str, float]:
    """Resident memory now of this process and its children (a shard host serves a built
    collection from a process of its own): total and anonymous, in MB (``/proc/<pid>/status``)."""
    pids = ["self"]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                pids.append(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    fields = {"VmRSS": 0.0, "RssAnon": 0.0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    key, _, value = line.partition(":")
                    if key in fields:
                        fields[key] += int(value.split()[0]) / 1024
        except OSError:
            continue
    return {"total": fields["VmRSS"], "anon": fields["RssAnon"]}


def query_child(args: argparse.Namespace) -> int:
    pin(args.cpus)
    set_engine(args.engine)
    base = resident_mb()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # local mode: "not recommended above 20,000 points"
        store = SimilarityStore.open(Path(args.child))
        store.count(MODEL, CATEGORY)  # Edge loads a shard on first use
    open_s = time.perf_counter() - t0
    points = store.count(MODEL, CATEGORY)
    info = store.backend.info(store.name(MODEL, CATEGORY)) if args.engine == "edge" else {}
    dims = store.dims(MODEL, CATEGORY) or {}
    queries = np.random.default_rng(args.seed + 1).standard_normal((args.queries, dims["defect"]), dtype=np.float32)
    store.similar(MODEL, CATEGORY, vector=queries[0], k=args.k)  # warm-up
    out = {"open_s": open_s, "points": points, "indexed_vectors": info.get("indexed_vectors")}

    def reranked(model: str, category: str, **kwargs: Any) -> list:
        return label_metric.similar(store, model, category, **kwargs)

    label_metric.similar(store, MODEL, CATEGORY, vector=queries[0], k=args.k, label="anomalous")  # warm-up: the fit
    for mode, filtered, search in (("f", True, store.similar), ("p", False, store.similar), ("r", True, reranked)):
        latencies: list[float] = []
        deadline = time.perf_counter() + args.max_query_seconds
        for j, vector in enumerate(queries):
            kwargs = (
                {"label": "anomalous", "exclude_sha256": hashlib.sha256(f"bench-{j}".encode()).hexdigest()} if filtered else {}
            )
            t1 = time.perf_counter()
            hits = search(MODEL, CATEGORY, vector=vector, using="defect", k=args.k, **kwargs)
            latencies.append(time.perf_counter() - t1)
            assert len(hits) == args.k
            if time.perf_counter() > deadline:
                break
        out[f"{mode}_med"] = 1000 * float(np.percentile(latencies, 50))
        out[f"{mode}_p95"] = 1000 * float(np.percentile(latencies, 95))
        out[f"{mode}_n"] = len(latencies)
    after = resident_mb()
    out["mem_mb"] = after["total"] - base["total"]
    out["anon_mb"] = after["anon"] - base["anon"]
    store.close()
    print(json.dumps(out))
    return 0


# -- the parent: index, build, page check -------------------------------------------------------


def fill(store: SimilarityStore, n: int, dims: dict[str, int], args: argparse.Namespace) -> float:
    rng = np.random.default_rng(args.seed)
    upsert_s = 0.0
    written = 0
    for start in range(0, n, 5000):  # records are generated per chunk, outside the timing
        records = make_records(start, min(n, start + 5000), dims, rng)
        t0 = time.perf_counter()
        written += store.upsert(MODEL, CATEGORY, records, batch_size=args.batch_size)
        upsert_s += time.perf_counter() - t0
        print(f"  [{args.engine} {n}] {written} points in {upsert_s:.1f} s", file=sys.stderr, flush=True)
    assert store.count(MODEL, CATEGORY) == n
    return upsert_s


def page_check(store: SimilarityStore, n: int, dims: dict[str, int], think_s: float) -> float:
    """Worst page call (filtered top-5 + count) while uploads are indexed and HNSW is rebuilt.

    The page pauses ``think_s`` between calls (exponentially distributed, fixed seed: an inspector
    clicking); at or below 0.05 it polls every 20 ms and never lets the process be idle. A call is
    timed from when it was due (the end of the pause), so a wake-up delayed by the GIL counts. The new
    generation is swapped in by the process itself, as in the app (``edge_store``: the idle thread,
    or a page call once the swap is overdue), not forced by this script.
    """
    name = store.name(MODEL, CATEGORY)
    stop = threading.Event()
    worst = [0.0]
    query = np.random.default_rng(5).standard_normal(dims["defect"], dtype=np.float32)
    pauses = np.random.default_rng(11)

    def page() -> None:
        arrives = time.perf_counter()
        while not stop.is_set():
            store.similar(MODEL, CATEGORY, vector=query, k=5, label="anomalous")
            store.count(MODEL, CATEGORY)
            # timed from when the request was due, not from when this thread got to run: a thread
            # that wakes while another holds the GIL (a shard load) waits before it can read a clock
            worst[0] = max(worst[0], time.perf_counter() - arrives)
            pause = pauses.exponential(think_s) if think_s > 0.05 else 0.02
            arrives = time.perf_counter() + pause
            stop.wait(pause)

    thread = threading.Thread(target=page)
    thread.start()
    try:
        uploads = make_records(n, n + 50, dims, np.random.default_rng(7))
        for rec in uploads:
            store.upsert(MODEL, CATEGORY, [rec])
            time.sleep(0.01)
        engine = store.backend.engine
        with engine.lock:
            engine.start_build(name)  # in a child process, as the app does
        deadline = time.monotonic() + 600 + edge_store.SWAP_DEADLINE_S
        while engine.build_pending(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if engine.build_pending(name):
            raise RuntimeError("the HNSW generation was not swapped in within 10 minutes")
    finally:
        stop.set()
        thread.join()
    return 1000 * worst[0]


def bench(engine: str, n: int, args: argparse.Namespace, dims: dict[str, int], root: Path) -> dict:
    set_engine(engine)
    args.engine = engine
    path = root / f"{engine}_{n}"
    build_s = None
    page_ms = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # No background build while filling: it is timed below. (Not by raising HNSW_THRESHOLD: a
        # collection keeps the indexing threshold it was created with, and would never get HNSW.)
        maybe_build = edge_store.EdgeEngine.maybe_build
        edge_store.EdgeEngine.maybe_build = lambda _self, _name: False  # type: ignore[method-assign]
        try:
            store = SimilarityStore.open(path)
            upsert_s = fill(store, n, dims, args)
        finally:
            edge_store.EdgeEngine.maybe_build = maybe_build  # type: ignore[method-assign]
        if engine == "edge":
            t0 = time.perf_counter()
            store.backend.build_hnsw(store.name(MODEL, CATEGORY))
            build_s = time.perf_counter() - t0
            if args.page_check:
                page_ms = [page_check(store, n, dims, float(t)) for t in args.page_think.split(",")]
        store.close()
        edge_store.release_all()
    disk_mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    child = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--engine", engine]
    child += ["--queries", str(args.queries), "--k", str(args.k), "--cpus", args.cpus, "--seed", str(args.seed)]
    child += ["--max-query-seconds", str(args.max_query_seconds)]
    done = subprocess.run(child, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"query child failed: {done.stderr[-2000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(path, ignore_errors=True)
    return {
        "engine": engine,
        "n": n,
        "upsert_s": upsert_s,
        "build_s": build_s,
        "disk_mb": disk_mb,
        "page_ms": page_ms,
        **measured,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated point counts")
    parser.add_argument("--engines", default="edge,local", help="edge and/or local")
    parser.add_argument("--local-max", type=int, default=100_000, help="largest size run on local mode")
    parser.add_argument("--dims", type=int, default=152, help="size of each named vector")
    parser.add_argument("--vectors", default="global,defect", help="named vectors (must include defect)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus", default="0,1", help="cores the query process is pinned to ('' for all)")
    parser.add_argument("--max-query-seconds", type=float, default=120.0, help="query time budget per size and mode")
    parser.add_argument("--page-check", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--page-think",
        default="0.02,2",
        help="comma-separated mean pauses (s) between a page's calls: one page check each (0.02: never idle)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--dir", type=Path, default=None, help="parent folder for the temporary stores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory",
        default="default",
        help="Edge memory placement of the new stores: default (edge_store.SHARD_MEMORY), pinned (Edge's own default) or cached",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="edge", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return query_child(args)
    if args.memory != "default":  # written into each new shard's config; the query child reads it from there
        edge_store.SHARD_MEMORY = {"pinned": None, "cached": "Cached"}[args.memory]

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    dims = {name.strip(): args.dims for name in args.vectors.split(",") if name.strip()}
    if "defect" not in dims:
        parser.error("--vectors must include 'defect'")
    print(
        f"{len(dims)} named vectors x {args.dims} dims, cosine; top-{args.k}; up to {args.queries} queries per size "
        f"and mode (at most {args.max_query_seconds:g} s each), query process on cpus {args.cpus or 'all'}; "
        f"Edge memory placement: {edge_store.SHARD_MEMORY or 'Edge default (RAM)'}"
    )
    header = (
        f"{'engine':<6} | {'points':>8} | {'index s':>8} | {'HNSW s':>7} | {'open s':>6} | {'disk MB':>7} | {'mem MB':>7} | {'anon MB':>7} | "
        f"{'filtered med/p95 ms':>19} | {'n':>4} | {'no filter med/p95 ms':>20} | {'n':>4} | {'re-ranked med/p95 ms':>20} | "
        f"{'page ms':>7}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_qdrant_", dir=args.dir) as tmp:
        for n in sizes:
            for engine in engines:
                if engine == "local" and n > args.local_max:
                    continue
                r = bench(engine, n, args, dims, Path(tmp))
                rows.append(r)
                hnsw = "-" if r["build_s"] is None else f"{r['build_s']:.1f}"
                page = "-" if r["page_ms"] is None else " / ".join(f"{ms:.0f}" for ms in r["page_ms"])
                print(
                    f"{engine:<6} | {n:>8} | {r['upsert_s']:>8.1f} | {hnsw:>7} | {r['open_s']:>6.2f} | {r['disk_mb']:>7.0f} | "
                    f"{r['mem_mb']:>7.0f} | {r['anon_mb']:>7.0f} | {r['f_med']:>9.1f} / {r['f_p95']:>7.1f} | {r['f_n']:>4} | "
                    f"{r['p_med']:>10.1f} / {r['p_p95']:>7.1f} | {r['p_n']:>4} | {r['r_med']:>10.1f} / {r['r_p95']:>7.1f} | "
                    f"{page:>7}",
                    flush=True,
                )
                hnsw_note = "" if r["indexed_vectors"] is None else f", {r['indexed_vectors']} vectors in HNSW"
                print(f"         (the query process saw {r['points']} points{hnsw_note})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
