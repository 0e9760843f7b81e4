"""A plant on real components: two line stations and the dashboard on one PostgreSQL.

Two ``python -m core serve --station ...`` processes and one ``streamlit run server.py`` (the
dashboard, API under /api) share a PostgreSQL database and a models folder; 8 clients send 100
uploads each, spread over the stations, each with its own Idempotency-Key, retrying a failed
request (on either station) with the same key. Half-way one station is killed with SIGKILL and
started again. Afterwards every upload that was answered is one row, none is twice, every feedback
given at a station is seen from the dashboard, and the tables and indexes pass PostgreSQL's own
integrity checks (amcheck).

A second test takes the database away from a station mid-run: answers keep their verdicts and say
they were not recorded, and once the database is back the clients' retries record each upload once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import TINY_CATEGORY
from tests.test_api_server import REPO, free_port, get, server_env, stop, wait_until_up

CLIENTS, UPLOADS = 8, 100
KILL_AFTER = CLIENTS * UPLOADS // 3


def post(url: str, image: bytes, key: str, timeout: float = 60) -> tuple[int, dict]:
    """One upload with its Idempotency-Key (urllib: what a line PC has)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="category"\r\n\r\n{TINY_CATEGORY}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="part.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Idempotency-Key": key}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def post_json(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Station:
    """One ``core serve --station NAME`` process on a fixed port (restartable on the same port)."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name, self.env, self.port = name, env, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "core", "serve", "--station", self.name, "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait(self) -> None:
        wait_until_up(self.proc, f"{self.base}/readyz")


@pytest.fixture
def plant_env(app_home: Path, tmp_path: Path, postgres_url: str):
    """Environment of a plant's process: the shared database and models, a workspace of its own."""

    def env(name: str) -> dict[str, str]:
        return {**server_env(app_home, tmp_path / name), "INSPECT_DATABASE_URL": postgres_url}

    return env


def _images(app_home: Path) -> list[bytes]:
    test = app_home / "demo_data" / TINY_CATEGORY / "test"
    return [p.read_bytes() for p in sorted(test.glob("*/*.png"))[:12]]


def _upload_all(stations: list[Station], images: list[bytes], answers: dict, failures: list, kill) -> None:
    """8 clients x 100 uploads; a request that fails is retried, same key, on the other station."""

    def client(c: int) -> None:
        for n in range(UPLOADS):
            key = f"client{c}-upload{n}"
            for attempt in range(240):
                station = stations[(c + n + attempt) % len(stations)]
                try:
                    status, body = post(f"{station.base}/v1/inspect", images[(c + n) % len(images)], key)
                except OSError:  # the station is down (killed, restarting): the other one answers
                    time.sleep(0.25)
                    continue
                if status == 200 and body.get("inspection_id"):
                    answers[key] = (station.name, body)
                    kill()
                    break
                if status != 503:
                    failures.append((key, status, body))
                    break
                time.sleep(0.25)
            else:
                failures.append((key, "no station answered", None))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)


def _integrity(url: str) -> dict[str, int]:
    """PostgreSQL's amcheck over every table (heap) and every B-tree index; row counts."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with engine.connect() as con:
        con.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
        tables = con.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        for table in tables:
            damage = con.execute(text("SELECT * FROM verify_heapam(CAST(:t AS regclass))"), {"t": table}).all()
            assert damage == [], f"table {table}: {damage[:3]}"
        indexes = con.execute(
            text(
                "SELECT c.oid, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relnamespace = 'public'::regnamespace"
            )
        ).all()
        for oid, _name in indexes:
            con.execute(text("SELECT bt_index_check(CAST(:o AS oid), true)"), {"o": oid})  # every row is in the index
        counts = {t: con.execute(text(f'SELECT COUNT(*) FROM "{t}"')).scalar_one() for t in tables}
        counts["distinct request keys"] = con.execute(text("SELECT COUNT(DISTINCT request_key) FROM inspections")).scalar_one()
        counts["rows without a thumbnail"] = con.execute(
            text("SELECT COUNT(*) FROM inspections i LEFT JOIN thumbnails t ON t.sha256 = i.sha256 WHERE t.sha256 IS NULL")
        ).scalar_one()
    engine.dispose()
    assert len(indexes) >= 6
    return counts


def test_two_stations_and_a_dashboard_on_one_postgresql(plant_env, app_home: Path, postgres_url: str) -> None:
    stations = [Station("line-1", plant_env("line-1")), Station("line-2", plant_env("line-2"))]
    port = free_port()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "server.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO,
        env=plant_env("dashboard"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dash = f"http://127.0.0.1:{port}/api"
    answers: dict[str, tuple[str, dict]] = {}
    failures: list = []
    killed = threading.Event()

    def kill_once() -> None:
        if len(answers) >= KILL_AFTER and not killed.is_set():
            killed.set()
            victim = stations[0]
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(timeout=30)
            victim.start()  # same port: the clients find it again

    try:
        for s in stations:
            s.start()
        for s in stations:
            s.wait()
        wait_until_up(dashboard, f"{dash}/healthz")
        _upload_all(stations, _images(app_home), answers, failures, kill_once)
        assert killed.is_set() and stations[0].proc.poll() is None
        stations[0].wait()
        assert failures == []
        assert len(answers) == CLIENTS * UPLOADS
        by_station = {name for name, _ in answers.values()}
        assert by_station == {"line-1", "line-2"}
        assert all(body["station"] == name for name, body in answers.values())
        assert not [b["notes"] for _, b in answers.values() if any(n.startswith("not recorded:") for n in b["notes"])]
        # a retry after the kill whose first try had been recorded is answered with that row
        retried = [b for _, b in answers.values() if any(n.startswith("already recorded as inspection") for n in b["notes"])]
        assert all(b["inspection_id"] for b in retried)

        # feedback at the stations, read back from the dashboard
        given = {}
        for i, (_key, (_, body)) in enumerate(sorted(answers.items())):
            if i % 10 == 0:
                feedback = "false_alarm" if body["verdict"] == "DEFECT" else "correct"
                station = stations[i % 2]
                status, row = post_json(f"{station.base}/v1/inspections/{body['inspection_id']}/feedback", {"feedback": feedback})
                assert status == 200, row
                given[body["inspection_id"]] = feedback
        for inspection_id, feedback in given.items():
            status, row = get(f"{dash}/v1/inspections/{inspection_id}")
            assert status == 200 and json.loads(row)["feedback"] == feedback
    finally:
        for s in stations:
            if s.proc is not None:
                stop(s.proc)
        stop(dashboard)

    from core.stations import list_stations

    beats = list_stations(postgres_url)  # what the dashboard's History page lists
    assert [b.name for b in beats] == ["line-1", "line-2"]
    assert all(len(b.loaded) == 1 and b.loaded[0].startswith(f"patchcore/{TINY_CATEGORY}@v") for b in beats)
    counts = _integrity(postgres_url)
    ids = {body["inspection_id"] for _, body in answers.values()}
    assert counts["inspections"] == len(answers) == len(ids)  # rows = answers, none twice
    assert counts["distinct request keys"] == len(answers)
    assert counts["rows without a thumbnail"] == 0


def test_a_database_that_goes_away_does_not_stop_inspection(plant_env, app_home: Path, postgres_url: str) -> None:
    station = Station("line-1", plant_env("line-1"))
    name = postgres_url.rsplit("/", 1)[1]
    admin = create_engine(
        postgres_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    image = _images(app_home)[0]
    try:
        station.start()
        station.wait()
        status, first = post(f"{station.base}/v1/inspect", image, "before")
        assert status == 200 and first["inspection_id"] == 1
        with admin.connect() as con:  # the database goes away: no new connections, the open ones cut
            con.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            con.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        away = [post(f"{station.base}/v1/inspect", image, f"away-{i}") for i in range(3)]
        for status, body in away:
            assert status == 200, body
            assert body["verdict"] == first["verdict"] and body["inspection_id"] is None
            assert any(n.startswith("not recorded: the history database") for n in body["notes"]), body["notes"]
        assert get(f"{station.base}/readyz")[0] == 503
        with admin.connect() as con:
            con.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        # the clients retry what was not recorded (same keys), twice: each is recorded once
        again = [post(f"{station.base}/v1/inspect", image, f"away-{i}") for i in range(3) for _ in range(2)]
        assert all(status == 200 and body["inspection_id"] for status, body in again)
        ids = [body["inspection_id"] for _, body in again]
        assert ids[0::2] == ids[1::2] and len(set(ids)) == 3  # each key: one row, its retry answered with it
        assert get(f"{station.base}/readyz")[0] == 200
    finally:
        stop(station.proc)
        admin.dispose()
    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as con:
        assert con.execute(text("SELECT COUNT(*), COUNT(DISTINCT request_key) FROM inspections")).one() == (4, 4)
    engine.dispose()
