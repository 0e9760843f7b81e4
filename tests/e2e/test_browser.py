"""End to end in a real browser: ``streamlit run app.py`` driven by Debian's Chromium via Playwright.

Uploads a demo defect image, waits for the verdict, follows the "Similar past defects" link, and
visits the other pages, saving a screenshot of each under ``tests/artifacts/``. Skips (with the
reason) when ``/usr/bin/chromium`` or the ``playwright`` package is missing.

By default the app runs against the tests' tiny workspace (a PatchCore trained on a small
generated 'tile' category). ``INSPECT_E2E_HOME=/path/to/workspace`` runs it against a prepared
workspace instead (e.g. the one ``python -m core setup`` builds), which is how the README's
screenshots are taken.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CATEGORY = os.environ.get("INSPECT_E2E_CATEGORY", "tile")
VIEWPORT = {"width": 1400, "height": 1500}
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = pytest.mark.filterwarnings("ignore")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"streamlit did not answer on {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def playwright_chromium():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def e2e_home(request) -> Path:
    prepared = os.environ.get("INSPECT_E2E_HOME", "").strip()
    if prepared:
        return Path(prepared).expanduser().resolve()
    home = request.getfixturevalue("app_home")
    request.getfixturevalue("app_index")  # the similar-defect index
    return home


@pytest.fixture(scope="module")
def defect_image(e2e_home: Path) -> Path:
    """A test image of CATEGORY that the trained PatchCore judges DEFECT (the most certain one)."""
    from core.data.image_io import load_image
    from core.inference.detector import load_detector

    detector = load_detector("patchcore", CATEGORY, models_dir=e2e_home / "models")
    candidates = sorted(p for p in (e2e_home / "demo_data" / CATEGORY / "test").glob("*/*.png") if p.parent.name != "good")
    assert candidates, "no defect images in the workspace"
    return max(candidates[:12], key=lambda p: detector.predict(load_image(p)).score)


@pytest.fixture(scope="module")
def app_url(e2e_home: Path, playwright_chromium):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSPECT_", "QDRANT_"))}
    env["INSPECT_HOME"] = str(e2e_home)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "streamlit.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _settle(page, seconds: float = 1.5) -> None:
    """Wait until Streamlit shows no 'running' indicator for a moment, then ``seconds`` more."""
    running = page.locator("[data-testid='stStatusWidgetRunningIcon'], [data-testid='stStatusWidgetRunningManIcon']")
    deadline = time.monotonic() + 120
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if running.count():
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            break
        time.sleep(0.2)
    time.sleep(seconds)


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label`` (no-op when it is already chosen)."""
    box = page.get_by_role("combobox", name=label)
    box.wait_for(timeout=60_000)
    if box.input_value() == option:
        return
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(
        "([label, option]) => document.querySelector(`input[aria-label='${label}']`)?.value === option",
        arg=[label, option],
        timeout=30_000,
    )
    _settle(page, 0.5)


def _shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def test_upload_verdict_and_similar_cases(playwright_chromium, app_url, defect_image):
    page = playwright_chromium.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_url)  # the Inspect page is the default one, served at /
        page.locator("[data-testid='stFileUploader'] input[type=file]").wait_for(state="attached", timeout=120_000)
        _choose(page, "Category", CATEGORY)
        page.locator("[data-testid='stFileUploader'] input[type=file]").wait_for(state="attached", timeout=120_000)
        page.set_input_files("[data-testid='stFileUploader'] input[type=file]", str(defect_image))
        verdict = page.locator(".inspect-verdict")
        verdict.wait_for(timeout=180_000)
        assert verdict.inner_text().strip() == "DEFECT"
        assert page.get_by_text("Threshold calibrated on").count() >= 1
        # the page streams: the verdict is drawn before the images below it, so wait for them
        page.locator("[data-testid='stImage'] img").nth(2).wait_for(timeout=60_000)
        assert page.locator("[data-testid='stImage'] img").count() >= 3
        _settle(page)
        _shot(page, "inspect")

        page.get_by_role("link", name=re.compile("Similar past defects")).click()
        page.wait_for_url(re.compile(r"/similar\?"), timeout=60_000)
        page.get_by_role("heading", name="Similar past defects").wait_for(timeout=60_000)
        assert f"category={CATEGORY}" in page.url
        assert page.get_by_role("combobox", name="Category").input_value() == CATEGORY
        page.get_by_text(re.compile(r"most similar past cases|python -m core index")).first.wait_for(timeout=60_000)
        body = page.inner_text("[data-testid='stMain']")
        if "most similar past cases" in body:
            # The index exists: five similar cases, each with its similarity (heatmaps load in turn).
            page.get_by_text(re.compile(r"^similarity \d\.\d{3}")).nth(4).wait_for(timeout=120_000)
            _settle(page, 2)
            body = page.inner_text("[data-testid='stMain']")
            assert len(re.findall(r"similarity \d\.\d{3}", body)) == 5
        else:
            assert "python -m core index" in body  # a plain message, never made-up results
        _shot(page, "similar")
    finally:
        page.close()


def test_history_and_compare_pages_render(playwright_chromium, app_url):
    page = playwright_chromium.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{app_url}/history")
        page.get_by_role("heading", name="Inspection history").wait_for(timeout=120_000)
        _settle(page)
        assert page.locator("[data-testid='stException']").count() == 0
        _shot(page, "history")

        page.goto(f"{app_url}/compare")
        page.get_by_role("heading", name="Compare models").wait_for(timeout=120_000)
        _settle(page, 3)
        assert page.locator("[data-testid='stException']").count() == 0
        _shot(page, "compare")
    finally:
        page.close()


def test_bad_upload_shows_an_error_and_the_app_keeps_running(playwright_chromium, app_url, tmp_path):
    fake = tmp_path / "renamed.png"
    fake.write_text("this is not an image\n" * 20)
    page = playwright_chromium.new_page(viewport=VIEWPORT)
    try:
        page.goto(app_url)  # the Inspect page is the default one, served at /
        page.locator("[data-testid='stFileUploader'] input[type=file]").wait_for(state="attached", timeout=120_000)
        page.set_input_files("[data-testid='stFileUploader'] input[type=file]", str(fake))
        alert = page.locator("[data-testid='stAlertContentError']")
        alert.wait_for(timeout=60_000)
        assert "renamed.png is not an image file" in alert.inner_text()
        assert page.locator("[data-testid='stException']").count() == 0
        page.get_by_role("link", name="History").click()
        page.get_by_role("heading", name="Inspection history").wait_for(timeout=60_000)
    finally:
        page.close()
