"""Load test of the REST API: a real server, N concurrent clients, a bounded number of requests.

Starts ``python -m core serve`` (or, with ``--one-process``, ``streamlit run server.py``) on
127.0.0.1 on a free port with this environment (INSPECT_HOME etc.), sends ``--requests`` POST
/v1/inspect per client from ``--clients`` threads with the category's test images, stops the server
and prints throughput, median and p95 latency, errors, and the history's row count before and
after, which must differ by exactly the number of successful requests (every inspection is
recorded). Exit status 1 when it does not, or when any request failed.

    INSPECT_HOME=/tmp/api_home .venv/bin/python benchmarks/load_test_api.py --clients 8 --requests 200
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


def start_server(port: int, one_process: bool) -> tuple[subprocess.Popen, str]:
    """The server subprocess and its API base URL."""
    if one_process:
        cmd = [sys.executable, "-m", "streamlit", "run", "server.py", "--server.port", str(port), "--server.headless", "true"]
        base = f"http://127.0.0.1:{port}/api"
    else:
        cmd = [sys.executable, "-m", "core", "serve", "--port", str(port)]
        base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


def run(args: argparse.Namespace) -> int:
    images = [(t.path.name, t.path.read_bytes()) for t in test_images(args.category)]
    if not images:
        raise SystemExit(f"no test images for {args.category!r}: generate the demo data or set INSPECT_DATA_ROOT")
    form = {"category": args.category, "model": args.model}
    proc, base = start_server(free_port(), args.one_process)
    tally = Tally()
    try:
        warm = httpx.post(f"{base}/v1/inspect", files={"image": images[0]}, data=form, timeout=300)  # loads the model
        if warm.status_code != 200:
            raise SystemExit(f"warm-up request failed: {warm.status_code} {warm.text}")
        before = History().count()
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
    after = History().count()
    return report(args, tally, wall, before, after)


def report(args: argparse.Namespace, tally: Tally, wall: float, before: int, after: int) -> int:
    total = len(tally.latencies_ms)
    ok = tally.statuses.get(200, 0)
    errors = total - ok
    server = "streamlit run server.py (one process)" if args.one_process else "python -m core serve"
    print(f"server: {server}; {args.model}/{args.category}; {args.clients} clients x {args.requests} requests = {total}")
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
    return 0 if matches and errors == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", default="tile")
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--one-process", action="store_true", help="test the dashboard+API server (server.py)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
