"""How long loading a Qdrant Edge shard stalls the rest of the process, with and without its WAL.

Loading a shard (``EdgeShard.load``) is what the app does when it swaps in a new HNSW generation
(:mod:`core.similarity.edge_store`). This script builds one shard as the app's store does (two
named 152-d cosine vectors, uuid ids and the app's payload, its keyword payload indexes, HNSW
built), then loads copies of it while
a Python thread ticks every millisecond: the ticker's longest gap is how long every other thread
(every page of the app) waited. Copies are loaded as built (with the write-ahead log the HNSW copy
must keep, see :mod:`core.similarity.hnsw_build`) and with the log removed, alternately.
With ``--host`` the copies are loaded in this process and opened by a shard host
(:class:`core.similarity.edge_shard.RemoteShard`, what the app now does with a new generation),
alternately: the ticker shows what each costs the app's other threads.

    python scripts/bench_edge_load.py --points 100000 --repeats 5
    python scripts/bench_edge_load.py --points 1000000 --repeats 3 --host --no-hnsw
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import qdrant_edge as qe
from bench_qdrant import make_records  # scripts/ is on sys.path when this script runs

from core.similarity import edge_store
from core.similarity.conditions import Conditions
from core.similarity.edge_shard import LocalShard, RemoteShard

DIMS = {"defect": 152, "image": 152}
#: With --host: (top-5 ms, 500-with-vectors ms) medians per place the shard is open.
QUERIES: dict[str, list[tuple[float, float]]] = {"this process": [], "shard host": []}
MEASURE_QUERIES = False


def build(folder: Path, n: int, fields: tuple[str, ...], batch: int = 256, hnsw: bool = True) -> float:
    """A shard of ``n`` points like the app's, HNSW built (unless not ``hnsw``); returns the build seconds."""
    shard = qe.EdgeShard.create(str(folder), edge_store._config(DIMS))  # noqa: SLF001 - the app's own config
    for field in fields:
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    rng = np.random.default_rng(0)
    for start in range(0, n, batch):  # the app's points: uuid ids, its payload (bench_qdrant's records)
        records = make_records(start, min(n, start + batch), DIMS, rng)
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(r.id, dict(r.vectors), dict(r.payload)) for r in records]))
    shard.flush()
    started = time.perf_counter()
    if hnsw:
        shard.optimize()
        shard.flush()
    seconds = time.perf_counter() - started
    shard.close()
    return seconds


def timed_queries(shard: LocalShard | RemoteShard, n: int = 100) -> tuple[float, float]:
    """Median ms of ``n`` top-5 searches filtered to anomalous (the app's query) and of ``n``
    searches for the 500 nearest with their vectors (what the learned ranking reads)."""
    rng = np.random.default_rng(1)
    cond = Conditions(equals={"label": "anomalous"})
    top5, pool = [], []
    for _ in range(n):
        vector = rng.standard_normal(DIMS["defect"]).astype(np.float32).tolist()
        started = time.perf_counter()
        shard.query(vector, "defect", cond, 5, False, False, True)
        top5.append(time.perf_counter() - started)
        started = time.perf_counter()
        shard.query(vector, "defect", cond, 500, False, True, False)
        pool.append(time.perf_counter() - started)
    return statistics.median(top5) * 1000, statistics.median(pool) * 1000


def timed_load(folder: Path, host: bool = False) -> tuple[float, float, int]:
    """(load ms, the ticker thread's longest gap in ms, vectors in HNSW) of one load of ``folder``,
    in this process or (``host``) by a shard host, whose time includes starting its process."""
    gap, stop = [0.0], threading.Event()

    def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            gap[0], last = max(gap[0], now - last), now

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.2)
    gap[0] = 0.0
    started = time.perf_counter()
    if host:
        remote = RemoteShard.open(folder)
    else:
        shard = qe.EdgeShard.load(str(folder))
    load = time.perf_counter() - started
    time.sleep(0.05)
    stop.set()
    ticker.join()
    opened = remote if host else LocalShard(shard)
    indexed = opened.info()["indexed_vectors"]
    if MEASURE_QUERIES:
        QUERIES["shard host" if host else "this process"].append(timed_queries(opened))
    opened.close()
    return load * 1000, gap[0] * 1000, indexed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--fields", nargs="*", default=list(edge_store.INDEXED_FIELDS), help="payload fields with a keyword index"
    )
    parser.add_argument(
        "--memory", choices=["default", "cached"], default="default", help="edge_store.SHARD_MEMORY for the shard"
    )
    parser.add_argument("--on-disk-payload", action="store_true", help="keep payloads on disk (edge_store.ON_DISK_PAYLOAD)")
    parser.add_argument("--host", action="store_true", help="compare a load in this process with a shard host's open")
    parser.add_argument("--no-hnsw", action="store_true", help="skip the HNSW build (minutes at 1M points)")
    args = parser.parse_args()
    edge_store.SHARD_MEMORY = None if args.memory == "default" else "Cached"
    edge_store.ON_DISK_PAYLOAD = args.on_disk_payload
    global MEASURE_QUERIES
    MEASURE_QUERIES = args.host
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "built"
        kind = "plain index" if args.no_hnsw else "HNSW"
        print(f"building {args.points} points ({kind}), keyword indexes on {', '.join(args.fields) or 'nothing'} ...", flush=True)
        seconds = build(source, args.points, tuple(args.fields), hnsw=not args.no_hnsw)
        print("  HNSW build skipped" if args.no_hnsw else f"  HNSW build {seconds:.1f} s")
        names = ("loaded in this process", "opened by a shard host") if args.host else ("with WAL", "WAL removed")
        rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for name in rows:
                copy = Path(tmp) / "copy"
                shutil.rmtree(copy, ignore_errors=True)
                subprocess.run(["cp", "-r", "--sparse=always", str(source), str(copy)], check=True)
                if name == "WAL removed":
                    shutil.rmtree(copy / "wal")
                rows[name].append(timed_load(copy, host=name == "opened by a shard host"))
        print(f"{args.points} points, {args.repeats} loads each (alternating)")
        print("| shard | load ms, median (all) | longest stall of another thread, ms, median | vectors in HNSW |")
        print("|---|---:|---:|---:|")
        for name, values in rows.items():
            loads = [round(v[0]) for v in values]
            print(
                f"| {name} | {statistics.median(loads):.0f} ({', '.join(map(str, loads))}) | {statistics.median(v[1] for v in values):.0f} | {values[0][2]} |"
            )
        if args.host:
            print("\n| shard open in | top-5 filtered, ms (median of medians) | 500 nearest with vectors, ms |")
            print("|---|---:|---:|")
            for name, values in QUERIES.items():
                print(
                    f"| {name} | {statistics.median(v[0] for v in values):.2f} | {statistics.median(v[1] for v in values):.2f} |"
                )


if __name__ == "__main__":
    main()
