"""The API over real HTTP: ``python -m core serve`` and the one-process ``streamlit run server.py``.

Each server runs in a subprocess on a free port with a private workspace holding the session's
tiny PatchCore; requests go over the loopback with urllib (and the README's httpx example).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import APP_ENV_VARS, TINY_CATEGORY

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(app_home: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in APP_ENV_VARS and not k.startswith("INSPECT_")}
    env.update(
        INSPECT_HOME=str(home),
        INSPECT_MODELS_DIR=str(app_home / "models"),
        INSPECT_DATA_ROOT=str(app_home / "demo_data"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_image(url: str, image: bytes, fields: dict[str, str]) -> tuple[int, dict]:
    """A multipart POST with urllib alone (what a line PC without extra packages can do)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="part.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        url, data=b"".join(parts), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_until_up(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the server did not answer {url} within {START_TIMEOUT_S} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def test_image(app_home: Path) -> Path:
    return sorted((app_home / "demo_data" / TINY_CATEGORY / "test" / "crack").glob("*.png"))[0]


@pytest.fixture
def served(app_home: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``python -m core serve`` on a free loopback port; yields (base url, its workspace)."""
    port, home = free_port(), tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--port", str(port)],
        cwd=REPO,
        env=server_env(app_home, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{base}/healthz")
        yield base, home
    finally:
        stop(proc)


def test_serve_answers_over_http(served: tuple[str, Path], test_image: Path) -> None:
    base, home = served
    status, body = get(f"{base}/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, result = post_image(f"{base}/v1/inspect", test_image.read_bytes(), {"category": TINY_CATEGORY, "model": "patchcore"})
    assert status == 200, result
    assert result["verdict"] == "DEFECT" and result["inspection_id"] == 1
    assert (home / "history.sqlite").is_file()
    status, row = get(f"{base}/v1/inspections/{result['inspection_id']}")
    assert status == 200 and json.loads(row)["verdict"] == "DEFECT"
    status, bad = post_image(f"{base}/v1/inspect", b"not an image", {"category": TINY_CATEGORY})
    assert status == 422 and "not an image" in bad["error"]
    assert "loaded" in json.loads(get(f"{base}/readyz")[1]) and get(f"{base}/docs")[0] == 200


def _readme_python_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Inspect from the line") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_against_serve(served: tuple[str, Path], test_image: Path) -> None:
    example = _readme_python_example()
    definitions, _, usage = example.partition("\n\nresult = ")
    assert "inspect(" in usage  # the example calls what it defines
    namespace: dict = {}
    exec(definitions, namespace)  # noqa: S102 - the README's own code
    result = namespace["inspect"](str(test_image), TINY_CATEGORY, base=served[0])
    assert result["verdict"] == "DEFECT" and result["inspection_id"]


def test_serve_refuses_an_open_api_on_the_network(app_home: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "core", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=REPO,
        env=server_env(app_home, tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve the API on 0.0.0.0 with no API key")


def test_one_process_serves_dashboard_and_api(app_home: Path, tmp_path: Path, test_image: Path) -> None:
    """``streamlit run server.py`` (scripts/run.sh): the dashboard at /, the API under /api, one process."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "server.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=REPO,
        env=server_env(app_home, tmp_path / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{base}/api/healthz")
        status, page = get(f"{base}/")
        assert status == 200 and b"<html" in page.lower()  # the dashboard's page
        assert get(f"{base}/_stcore/health") == (200, b"ok")
        status, result = post_image(f"{base}/api/v1/inspect", test_image.read_bytes(), {"category": TINY_CATEGORY})
        assert status == 200 and result["verdict"] == "DEFECT", result
        status, ready = get(f"{base}/api/readyz")
        assert status == 200 and f"patchcore/{TINY_CATEGORY}@{result['model_version']}" in json.loads(ready)["loaded"]
        status, openapi = get(f"{base}/api/openapi.json")
        assert status == 200 and "/v1/inspect" in json.loads(openapi)["paths"]
    finally:
        stop(proc)
