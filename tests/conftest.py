"""Shared fixtures: a tiny generated MVTec-layout dataset and a PatchCore trained on it.

Everything lives in a session temp folder with ``INSPECT_HOME`` pointing there, so the tests never
touch the developer's workspace. Fixtures here are shared by the core, similarity and app tests.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite's stores are its own: SQLite in temporary workspaces unless a test asks for PostgreSQL.
os.environ.pop("INSPECT_DATABASE_URL", None)
# Models trained by the suite stay on torch (each export runs a parity check over the test images);
# the export after training is tested on its own (tests/test_export.py) with it switched back on.
os.environ["INSPECT_EXPORT_AFTER_TRAINING"] = "0"

SHARED_MVTEC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad"
TINY_CATEGORY = "tile"
TINY_SIZE = 128


@contextmanager
def inspect_home_at(home: Path) -> Iterator[Path]:
    """Point INSPECT_HOME at ``home`` for the duration, then restore the previous value."""
    old = os.environ.get("INSPECT_HOME")
    os.environ["INSPECT_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("INSPECT_HOME", None)
        else:
            os.environ["INSPECT_HOME"] = old


@pytest.fixture(scope="session")
def inspect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private workspace for the whole session (INSPECT_HOME)."""
    with inspect_home_at(tmp_path_factory.mktemp("inspect_home")) as home:
        yield home


@pytest.fixture(scope="session")
def tiny_data_root(inspect_home: Path) -> Path:
    """A small generated dataset (three categories, 128 px) under the session workspace."""
    from core.data.demo import generate_demo_dataset

    return generate_demo_dataset(
        inspect_home / "demo_data", n_train=12, n_test_good=4, n_per_defect=2, size=TINY_SIZE, progress=False
    )


@pytest.fixture(scope="session")
def tiny_patchcore(tiny_data_root: Path):
    """PatchCore trained on the tiny 'tile' category; returns its metadata."""
    from core.training import train

    return train(
        "patchcore",
        TINY_CATEGORY,
        data_root=tiny_data_root,
        config={"coreset_ratio": 0.1, "image_size": TINY_SIZE},
        progress=False,
    )


@pytest.fixture
def models(tiny_patchcore, inspect_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the session's models folder, a private history and cache: versions written here touch no other test."""
    import shutil

    target = tmp_path / "models"
    shutil.copytree(inspect_home / "models", target)
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(target))
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    monkeypatch.setenv("INSPECT_CACHE", str(tmp_path / "cache"))
    return target


@pytest.fixture(scope="session")
def shared_bottle() -> Path:
    """The real MVTec AD bottle category, when ../shared is present (skips otherwise)."""
    root = SHARED_MVTEC
    if not (root / "bottle" / "train" / "good").is_dir():
        pytest.skip("real MVTec AD bottle data (../shared/data/mvtec_ad) is not present")
    return root


# --- Dashboard (app) tests: tests/test_app_*.py and tests/e2e/ ----------------------------------

#: Environment variables that would point the app away from the test workspace.
APP_ENV_VARS = (
    "INSPECT_DATA_ROOT",
    "INSPECT_MODELS_DIR",
    "INSPECT_RESULTS",
    "INSPECT_QDRANT_PATH",
    "INSPECT_HISTORY_DB",
    "INSPECT_DATABASE_URL",
    "INSPECT_STATION",
    "INSPECT_CACHE",
    "INSPECT_USERS_FILE",
    "INSPECT_REQUIRE_LOGIN",
    "QDRANT_URL",
    "QDRANT_API_KEY",
)
APP_SCRIPT = Path(__file__).resolve().parents[1] / "app.py"


@pytest.fixture(scope="session")
def app_home(inspect_home: Path, tiny_data_root: Path, tiny_patchcore) -> Path:
    """The session workspace with the tiny PatchCore on 'tile': what the app tests run against."""
    return inspect_home


@pytest.fixture
def app_env(app_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """INSPECT_HOME = the app workspace, with every other location at its default inside it."""
    for name in APP_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INSPECT_HOME", str(app_home))
    return app_home


@pytest.fixture
def app_test(app_env: Path):
    """A factory of fresh ``AppTest`` instances of app.py (each one is a new browser session)."""
    from streamlit.testing.v1 import AppTest

    def make(timeout: float = 240):
        return AppTest.from_file(str(APP_SCRIPT), default_timeout=timeout)

    return make


@pytest.fixture(scope="session")
def app_index(app_home: Path) -> dict:
    """The similar-defect index of the tiny PatchCore."""
    from core.similarity.indexing import index_categories

    old = os.environ.get("INSPECT_HOME")
    os.environ["INSPECT_HOME"] = str(app_home)
    try:
        return index_categories(["patchcore"], [TINY_CATEGORY], progress=False)
    finally:
        if old is not None:
            os.environ["INSPECT_HOME"] = old


# --- PostgreSQL (scripts/test.sh starts a throwaway server and exports its URL) --------------


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test server's URL (INSPECT_TEST_DATABASE_URL); the test skips, saying why, without one."""
    url = os.environ.get("INSPECT_TEST_DATABASE_URL", "").strip()
    if not url:
        pytest.skip("no PostgreSQL server for the tests: scripts/test.sh starts one where Debian's postgresql can be installed")
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped after the test."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from core.db.engine import dispose_all

    name = f"inspect_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(postgres_server).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_all()
        with admin.connect() as con:
            con.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on both engines: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'history.sqlite'}"
    return request.getfixturevalue("postgres_url")
