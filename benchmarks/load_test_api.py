"""Load test of the REST API: a real server, N concurrent clients, a bounded number of requests.

Starts ``python -m core serve`` (or, with ``--one-process``, ``streamlit run server.py``) on
127.0.0.1 on a free port with this environment (INSPECT_HOME etc.), sends ``--requests`` POST
/v1/inspect per client from ``--clients`` threads with the category's test images, stops the server
and prints throughput, median and p95 latency, errors, and the history's row count before and
after, which must differ by exactly the number of successful requests (every inspection is
recorded). Exit status 1 when it does not, or when any request failed.

    INSPECT_HOME=/tmp/api_home .venv/bin/python benchmarks/load_test_api.py --clients 8 --requests 200

``--databases sqlite postgresql://...`` runs the same test once per history database, one after
the other in one run (``--rounds`` alternates them), and ends with a table comparing them: the
workspace's SQLite file against a PostgreSQL server (which should be empty or hold only earlier
load tests' rows).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.db.engine import shown
from core.history import History
from core.services.catalog import test_images

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Tally:
    """What the clients saw, shared under a lock."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    verdicts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, status: int, verdict: str | None) -> None:
        with self.lock:
            self.latencies_ms.append(ms)
            self.statuses[status] += 1
            if verdict:
                self.verdicts[verdict] += 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, one_process: bool, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """The server subprocess and its API base URL."""
    if one_process:
        cmd = [sys.executable, "-m", "streamlit", "run", "server.py", "--server.port", str(port), "--server.headless", "true"]
        base = f"http://127.0.0.1:{port}/api"
    else:
        cmd = [sys.executable, "-m", "core", "serve", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def client(base: str, images: list[tuple[str, bytes]], form: dict[str, str], start: int, count: int, tally: Tally) -> None:
    """One line PC: ``count`` requests one after the other on one keep-alive connection."""
    with httpx.Client(timeout=120) as http:
        for i in range(count):
            name, data = images[(start + i) % len(images)]
            began = time.perf_counter()
            try:
                r = http.post(f"{base}/v1/inspect", files={"image": (name, data, "image/png")}, data=form)
                status, verdict = r.status_code, r.json().get("verdict") if r.status_code == 200 else None
            except httpx.HTTPError:
                status, verdict = 0, None
            tally.add((time.perf_counter() - began) * 1000, status, verdict)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass(frozen=True)
class Outcome:
    """One database's run, for the closing table."""

    database: str
    requests: int
    wall_s: float
    median_ms: float
    p95_ms: float
    errors: int
    rows_added: int
    answers: int


def run(args: argparse.Namespace, database: str) -> Outcome:
    """One load test against a server whose history is ``database`` ("sqlite": the workspace's file)."""
    images = [(t.path.name, t.path.read_bytes()) for t in test_images(args.category)]
    if not images:
        raise SystemExit(f"no test images for {args.category!r}: generate the demo data or set INSPECT_DATA_ROOT")
    form = {"category": args.category, "model": args.model}
    env = {k: v for k, v in os.environ.items() if k != "INSPECT_DATABASE_URL"}
    if database != "sqlite":
        env["INSPECT_DATABASE_URL"] = database
    history = History(database if database != "sqlite" else None)
    proc, base = start_server(free_port(), args.one_process, env)
    tally = Tally()
    try:
        warm = httpx.post(f"{base}/v1/inspect", files={"image": images[0]}, data=form, timeout=300)  # loads the model
        if warm.status_code != 200:
            raise SystemExit(f"warm-up request failed: {warm.status_code} {warm.text}")
        before = history.count()
        threads = [
            threading.Thread(target=client, args=(base, images, form, c * args.requests, args.requests, tally))
            for c in range(args.clients)
        ]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
    finally:
        stop_server(proc)
    after = history.count()
    return report(args, tally, wall, before, after, history.server and shown(database) or "sqlite")


def report(args: argparse.Namespace, tally: Tally, wall: float, before: int, after: int, database: str) -> Outcome:
    total = len(tally.latencies_ms)
    ok = tally.statuses.get(200, 0)
    errors = total - ok
    server = "streamlit run server.py (one process)" if args.one_process else "python -m core serve"
    print(
        f"server: {server}; history: {database}; {args.model}/{args.category}; {args.clients} clients x {args.requests} requests = {total}"
    )
    print(f"wall time {wall:.1f} s, throughput {total / wall:.1f} requests/s")
    print(
        f"latency median {statistics.median(tally.latencies_ms):.0f} ms, p95 {percentile(tally.latencies_ms, 0.95):.0f} ms, "
        f"max {max(tally.latencies_ms):.0f} ms"
    )
    print(f"errors {errors}" + (f" ({dict(tally.statuses)})" if errors else "") + f"; verdicts {dict(tally.verdicts)}")
    matches = after - before == ok
    print(
        f"history rows before {before}, after {after}: +{after - before} for {ok} successful requests ({'OK' if matches else 'MISMATCH'})"
    )
    median, p95 = statistics.median(tally.latencies_ms), percentile(tally.latencies_ms, 0.95)
    return Outcome(database, total, wall, median, p95, errors, after - before, ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", default="tile")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--one-process", action="store_true", help="test the dashboard+API server (server.py)")
    parser.add_argument(
        "--databases",
        nargs="+",
        default=["sqlite"],
        metavar="DB",
        help='"sqlite" (the workspace\'s file) and/or postgresql:// URLs',
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the databases in turn this many times")
    args = parser.parse_args()
    outcomes = [run(args, database) for _ in range(args.rounds) for database in args.databases]
    print("\n| history | requests | requests/s | median ms | p95 ms | errors | rows added = answers |")
    print("|---|---|---|---|---|---|---|")
    for o in outcomes:
        same = "yes" if o.rows_added == o.answers else f"no ({o.rows_added} for {o.answers})"
        print(
            f"| {o.database} | {o.requests} | {o.requests / o.wall_s:.1f} | {o.median_ms:.0f} | {o.p95_ms:.0f} | {o.errors} | {same} |"
        )
    return 0 if all(o.errors == 0 and o.rows_added == o.answers for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
