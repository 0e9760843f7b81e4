"""What the Similar page's store calls cost, re-ranking by the learned metric included
(core/similarity/label_metric.py).

Fills an embedded collection like bench_qdrant.py's (random 152-d vectors, 20% defects of four
types; exact search), then times filtered top-5 queries plain (``SimilarityStore.similar``) and
re-ranked (``label_metric.similar``) for each candidate pool, the read and fit of the named cases,
a query by a point that is itself one of them, and the page's other store calls (a defect-type
filter, the dataset count, the gallery's list of defects).

    .venv/bin/python benchmarks/bench_similar_rerank.py --points 100000 --pools 100 500

The store stays in ``--folder`` (default /tmp/bench_rerank_<points>) and is reused when present.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.pop("QDRANT_URL", None)

import bench_qdrant as bq  # noqa: E402  (this folder is on the path of a script run from it: the same records)

from core.similarity import label_metric  # noqa: E402
from core.similarity.store import SimilarityStore  # noqa: E402

DIMS = {"global": 152, "defect": 152}  # EfficientNet-Lite0 blocks.2 + blocks.4, as in bench_qdrant.py


def timed(fn, queries: np.ndarray) -> tuple[float, float]:
    """(median, p95) ms of ``fn(query)`` over ``queries``, after one warm-up call."""
    fn(queries[0])
    times = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return times[len(times) // 2], times[int(0.95 * len(times))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--pools", type=int, nargs="+", default=[100, label_metric.POOL])
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    folder = args.folder or Path(f"/tmp/bench_rerank_{args.points}")
    fresh = not folder.exists()
    store = SimilarityStore.open(folder, embedded=True)
    if fresh:
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for first in range(0, args.points, 2000):
            store.upsert(bq.MODEL, bq.CATEGORY, bq.make_records(first, min(args.points, first + 2000), DIMS, rng))
        print(f"filled {args.points} points in {time.perf_counter() - start:.1f} s")
    print("collection:", store.count(bq.MODEL, bq.CATEGORY), "points")
    start = time.perf_counter()
    labelled = label_metric.labelled_points(store, bq.MODEL, bq.CATEGORY, "defect")
    read = time.perf_counter()
    label_metric.fit(labelled)
    print(
        f"read {len(labelled.ids)} named cases: {1000 * (read - start):.0f} ms; fit: {1000 * (time.perf_counter() - read):.0f} ms"
    )
    queries = np.random.default_rng(1).standard_normal((args.queries, 152)).astype(np.float32)
    median, p95 = timed(lambda v: store.similar(bq.MODEL, bq.CATEGORY, vector=v, k=5, label="anomalous"), queries)
    print(f"plain top-5 (defects)         median {median:5.1f} ms  p95 {p95:5.1f} ms")
    for pool in args.pools:
        label_metric.POOL = pool
        median, p95 = timed(
            lambda v: label_metric.similar(store, bq.MODEL, bq.CATEGORY, vector=v, k=5, label="anomalous"), queries
        )
        print(f"re-ranked, pool {pool:4d}          median {median:5.1f} ms  p95 {p95:5.1f} ms")
    # the page's other store calls (keyword indexes on label, defect_type and split)
    median, p95 = timed(
        lambda v: store.similar(bq.MODEL, bq.CATEGORY, vector=v, k=5, label="anomalous", defect_type=bq.DEFECT_TYPES[0]),
        queries,
    )
    print(f"plain top-5, one defect type   median {median:5.1f} ms  p95 {p95:5.1f} ms")
    median, p95 = timed(lambda _: store.count(bq.MODEL, bq.CATEGORY, splits=("train", "test")), queries[:20])
    print(f"count of the dataset's points  median {median:5.1f} ms  p95 {p95:5.1f} ms")
    median, p95 = timed(lambda _: sum(1 for _ in store.points(bq.MODEL, bq.CATEGORY, label="anomalous")), queries[:5])
    print(f"gallery: every defect listed   median {median:5.1f} ms  (5 runs)")
    member = labelled.ids[-1]
    median, _ = timed(
        lambda _: label_metric.similar(store, bq.MODEL, bq.CATEGORY, point_id=member, k=5, label="anomalous", leave_one_out=True),
        queries[:10],
    )
    print(f"query by a fitted case, leave-one-out (refit without it)  median {median:.1f} ms")


if __name__ == "__main__":
    main()
