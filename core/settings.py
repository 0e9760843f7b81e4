"""Where Inspect reads and writes its files, in one place.

Every generated artefact (demo data, checkpoints, results, the Qdrant store, the inspection
history) lives under one *workspace* folder, ``var/`` in the repository by default, so that a
clean checkout is a clean state and ``.gitignore`` needs one line. Each location can be moved with
an environment variable, which is how a factory points the app at its own dataset or disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, ImageError

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"

#: The demo categories the generator writes; modelled on MVTec AD's tile, leather and grid.
DEMO_CATEGORIES: tuple[str, ...] = ("tile", "leather", "grid")


#: Default pixel-count limit (width x height) of an image, read from its header; ``INSPECT_MAX_PIXELS``.
DEFAULT_MAX_PIXELS = 150_000_000


def _path_from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else default


@dataclass(frozen=True)
class Settings:
    """Resolved locations; build one with :func:`get_settings` so env vars are read at call time."""

    workspace: Path
    data_root: Path
    models_dir: Path
    results_file: Path
    qdrant_path: Path
    history_db: Path
    cache_dir: Path

    @property
    def similarity_queue(self) -> Path:
        """Uploads waiting to be added to the similar-defect index (the store was unavailable)."""
        return self.workspace / "similarity_queue"

    @property
    def similarity_manifest(self) -> Path:
        """What each ``index`` run wrote, per store and (model, category); kept outside the store
        folder so that an emptied or damaged store can be told from one never built."""
        return self.workspace / "similarity_index.json"

    @property
    def demo_data_root(self) -> Path:
        return self.workspace / "demo_data"

    @property
    def database_url(self) -> str:
        """The relational store: ``INSPECT_DATABASE_URL`` (``postgresql://...`` for a plant), else
        the SQLite history file in the workspace (one PC). core.db reads it; nothing else should."""
        value = os.environ.get("INSPECT_DATABASE_URL", "").strip()
        return value or f"sqlite:///{self.history_db}"

    @property
    def users_file(self) -> Path:
        """Login users and API-key hashes (core.auth); INSPECT_USERS_FILE moves it out of the workspace."""
        return _path_from_env("INSPECT_USERS_FILE", self.workspace / "users.json")


def get_settings() -> Settings:
    """Read the environment now (tests and the CLI change it between calls)."""
    workspace = _path_from_env("INSPECT_HOME", REPO_ROOT / "var")
    return Settings(
        workspace=workspace,
        # INSPECT_DATA_ROOT: a folder holding MVTec-layout categories (CATEGORY/train/good/...).
        data_root=_path_from_env("INSPECT_DATA_ROOT", workspace / "demo_data"),
        models_dir=_path_from_env("INSPECT_MODELS_DIR", workspace / "models"),
        results_file=_path_from_env("INSPECT_RESULTS", workspace / "results" / "results.json"),
        qdrant_path=_path_from_env("INSPECT_QDRANT_PATH", workspace / "qdrant"),
        history_db=_path_from_env("INSPECT_HISTORY_DB", workspace / "history.sqlite"),
        cache_dir=_path_from_env("INSPECT_CACHE", workspace / "cache"),
    )


# --- Access and load limits (not locations: read on each call, so tests can change them) ----------


def _number_from_env(name: str, default: float, minimum: float, kind: type = int) -> float:
    """``name`` as an int (or float), at least ``minimum``; a bad value is a one-line ConfigError."""
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {'whole ' if kind is int else ''}number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, not {value:g}")
    return value


def require_login() -> bool:
    """INSPECT_REQUIRE_LOGIN=1: ask for a login even when the app is bound to this computer only."""
    return os.environ.get("INSPECT_REQUIRE_LOGIN", "").strip().lower() in ("1", "true", "yes", "on")


def export_after_training() -> bool:
    """INSPECT_EXPORT_AFTER_TRAINING=0: keep a newly trained version on torch instead of exporting it.

    On by default: a trained version is exported to OpenVINO and runs with the export when the
    parity rule accepts it (:func:`core.export.exporter.export_new_version`).
    """
    return os.environ.get("INSPECT_EXPORT_AFTER_TRAINING", "").strip().lower() not in ("0", "false", "no", "off")


def large_decode_pixels() -> int:
    """INSPECT_LARGE_DECODE_PIXELS: above this many pixels an image counts as large (default 16 MP)."""
    return int(_number_from_env("INSPECT_LARGE_DECODE_PIXELS", 16_000_000, 1))


def max_large_decodes() -> int:
    """INSPECT_MAX_LARGE_DECODES: large images decoded at once per process (default 2, ~1.4 GB each)."""
    return int(_number_from_env("INSPECT_MAX_LARGE_DECODES", 2, 1))


def decode_wait_s() -> float:
    """INSPECT_DECODE_WAIT_S: how long a large decode waits for a free slot before 'busy' (default 5)."""
    return float(_number_from_env("INSPECT_DECODE_WAIT_S", 5.0, 0.0, float))


def max_pixels() -> int:
    """INSPECT_MAX_PIXELS: the largest image accepted, in pixels (an integer, ``_`` allowed; 150 MP).

    A bad value is an :class:`ImageError`: it is met while loading an image, and says so there.
    """
    raw = os.environ.get("INSPECT_MAX_PIXELS", "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise ImageError(f"INSPECT_MAX_PIXELS must be a whole number of pixels, e.g. 150000000, not {raw!r}") from None
    if value <= 0:
        raise ImageError(f"INSPECT_MAX_PIXELS must be positive, not {value}")
    return value


# --- The REST API (core/api/) ----------------------------------------------------------------------


def api_key() -> str | None:
    """INSPECT_API_KEY: one shared key the REST API accepts (``Authorization: Bearer``), or None.

    Keys made with ``python -m core users add-key`` work beside it; with neither, the API is open
    and may only be served on this computer (see core.api.security).
    """
    return os.environ.get("INSPECT_API_KEY", "").strip() or None


def max_upload_bytes() -> int:
    """INSPECT_MAX_UPLOAD_MB: the largest image file the API accepts, in MB (default 50), checked
    while the request is read so an oversized upload never reaches the disk or the decoder."""
    return int(_number_from_env("INSPECT_MAX_UPLOAD_MB", 50.0, 0.001, float) * 1_000_000)


def api_max_batch() -> int:
    """INSPECT_API_MAX_BATCH: the most images one ``/v1/inspect/batch`` request may hold (default 16)."""
    return int(_number_from_env("INSPECT_API_MAX_BATCH", 16, 1))


def station() -> str | None:
    """INSPECT_STATION: the line station this process inspects for (``core serve --station line-3``),
    recorded with every inspection; None (unset) on a single PC."""
    name = os.environ.get("INSPECT_STATION", "").strip()
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise ConfigError(
            f"station {name!r}: use letters, digits, '.', '-' and '_' (at most 64, starting with a letter or digit)"
        )
    return name or None


# --- Services and files outside the workspace ------------------------------------------------------


def qdrant_url() -> str:
    """QDRANT_URL: the Qdrant server that holds the similar-defect store; "" (unset): the embedded
    store at ``INSPECT_QDRANT_PATH`` (core.similarity.store picks one from this, once)."""
    return os.environ.get("QDRANT_URL", "").strip()


def qdrant_api_key() -> str | None:
    """QDRANT_API_KEY: the key the Qdrant server asks for, or None."""
    return os.environ.get("QDRANT_API_KEY") or None


def backbone_weights() -> str | None:
    """INSPECT_BACKBONE_WEIGHTS: a local weights file for a backbone without packaged weights, or None."""
    return os.environ.get("INSPECT_BACKBONE_WEIGHTS") or None
