"""An EfficientAD training in progress, on disk: a resumable checkpoint and a live progress file.

One folder per (category, data, settings) under ``<cache>/efficientad_runs/``:

* ``last.ckpt`` -- Lightning's checkpoint (weights, Adam state, step, the early-stopping state),
  saved at every validation; a training started again with the same settings resumes from it,
  so an app stopped or a machine restarted costs at most one validation interval;
* ``progress.json`` -- step, time spent, time budget, the validation curve so far: what the
  Compare page shows where EfficientAD's bar is still missing.

The folder is removed once the model is saved in the registry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.files import write_atomically
from core.settings import get_settings

#: Config fields that do not change what is trained, so a resume may differ in them.
_NOT_IDENTITY = ("teacher_sha256",)


def runs_dir() -> Path:
    return get_settings().cache_dir / "efficientad_runs"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def for_training(cls, category: str, data_root: str | Path, data_hash: str, config: dict[str, Any]) -> RunFolder:
        identity = {k: v for k, v in sorted(config.items()) if k not in _NOT_IDENTITY}
        key = hashlib.sha256(json.dumps([str(data_root), data_hash, identity], sort_keys=True, default=str).encode())
        return cls(runs_dir() / f"{category}-{key.hexdigest()[:12]}")

    @property
    def checkpoint(self) -> Path:
        return self.path / "last.ckpt"

    @property
    def progress_file(self) -> Path:
        return self.path / "progress.json"

    def resume_from(self) -> Path | None:
        """The checkpoint to resume from, or None for a fresh start."""
        return self.checkpoint if self.checkpoint.is_file() else None

    def write_progress(self, data: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self.progress_file, json.dumps(data).encode())

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def read_progress(category: str) -> dict[str, Any] | None:
    """The newest progress file of a training of ``category`` (any settings), or None."""
    folder = runs_dir()
    if not folder.is_dir():
        return None
    files = sorted(folder.glob(f"{category}-*/progress.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None
