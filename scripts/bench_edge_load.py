"""How long loading a Qdrant Edge shard stalls the rest of the process, with and without its WAL.

Loading a shard (``EdgeShard.load``) is what the app does when it swaps in a new HNSW generation
(:mod:`core.similarity.edge_store`). This script builds one shard as the app's store does (two
named 152-d cosine vectors, uuid ids and the app's payload, its keyword payload indexes, HNSW
built), then loads copies of it while
a Python thread ticks every millisecond: the ticker's longest gap is how long every other thread
(every page of the app) waited. Copies are loaded as built (with the write-ahead log the HNSW copy
must keep, see :mod:`core.similarity.hnsw_build`) and with the log removed, alternately.

    python scripts/bench_edge_load.py --points 100000 --repeats 5
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

DIMS = {"defect": 152, "image": 152}


def build(folder: Path, n: int, fields: tuple[str, ...], batch: int = 256) -> float:
    """A shard of ``n`` points like the app's, HNSW built; returns the build seconds."""
    shard = qe.EdgeShard.create(str(folder), edge_store._config(DIMS))  # noqa: SLF001 - the app's own config
    for field in fields:
        shard.update(qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword))
    rng = np.random.default_rng(0)
    for start in range(0, n, batch):  # the app's points: uuid ids, its payload (bench_qdrant's records)
        records = make_records(start, min(n, start + batch), DIMS, rng)
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(r.id, dict(r.vectors), dict(r.payload)) for r in records]))
    shard.flush()
    started = time.perf_counter()
    shard.optimize()
    shard.flush()
    seconds = time.perf_counter() - started
    shard.close()
    return seconds


def timed_load(folder: Path) -> tuple[float, float, int]:
    """(load ms, the ticker thread's longest gap in ms, vectors in HNSW) of one load of ``folder``."""
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
    shard = qe.EdgeShard.load(str(folder))
    load = time.perf_counter() - started
    time.sleep(0.05)
    stop.set()
    ticker.join()
    indexed = shard.info().indexed_vectors_count
    shard.close()
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
    args = parser.parse_args()
    edge_store.SHARD_MEMORY = None if args.memory == "default" else "Cached"
    edge_store.ON_DISK_PAYLOAD = args.on_disk_payload
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "built"
        print(f"building {args.points} points (HNSW), keyword indexes on {', '.join(args.fields) or 'nothing'} ...", flush=True)
        print(f"  HNSW build {build(source, args.points, tuple(args.fields)):.1f} s")
        rows: dict[str, list[tuple[float, float, int]]] = {"with WAL": [], "WAL removed": []}
        for _ in range(args.repeats):
            for name in rows:
                copy = Path(tmp) / "copy"
                shutil.rmtree(copy, ignore_errors=True)
                subprocess.run(["cp", "-r", "--sparse=always", str(source), str(copy)], check=True)
                if name == "WAL removed":
                    shutil.rmtree(copy / "wal")
                rows[name].append(timed_load(copy))
        print(f"{args.points} points, {args.repeats} loads each (alternating)")
        print("| shard | load ms, median (all) | longest stall of another thread, ms, median | vectors in HNSW |")
        print("|---|---:|---:|---:|")
        for name, values in rows.items():
            loads = [round(v[0]) for v in values]
            print(
                f"| {name} | {statistics.median(loads):.0f} ({', '.join(map(str, loads))}) | {statistics.median(v[1] for v in values):.0f} | {values[0][2]} |"
            )


if __name__ == "__main__":
    main()
