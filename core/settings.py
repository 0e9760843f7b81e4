"""Where Inspect reads and writes its files, in one place.

Every generated artefact (demo data, checkpoints, results, the Qdrant store, the inspection
history) lives under one *workspace* folder, ``var/`` in the repository by default, so that a
clean checkout is a clean state and ``.gitignore`` needs one line. Each location can be moved with
an environment variable, which is how a factory points the app at its own dataset or disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"

#: The demo categories the generator writes; modelled on MVTec AD's tile, leather and grid.
DEMO_CATEGORIES: tuple[str, ...] = ("tile", "leather", "grid")


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
    def demo_data_root(self) -> Path:
        return self.workspace / "demo_data"


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
