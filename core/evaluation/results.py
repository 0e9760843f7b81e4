"""The one results file the dashboard reads (JSON).

Layout::

    {"version": 1,
     "models": {"patchcore/tile": {...metrics, training info...}, ...},
     "retrieval": {"patchcore/tile": {...precision@5 per descriptor...}, ...}}

A 'models' entry is a :class:`ModelResult` written with :meth:`ModelResult.to_dict`.

Commands update their own entries and keep everyone else's; the file is replaced atomically so
the app never reads half of it.

A corrupt file (not JSON, not an object, sections of the wrong shape) must not throw away the work
of a command that ran for minutes, nor take a page down. Writers keep the corrupt file aside,
byte for byte, as ``results.json.corrupt-<UTC time>`` and write a fresh one with their entries,
saying so in one line; readers get the empty skeleton and a one-line warning to show.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import ResultsFileError
from core.files import write_atomically
from core.settings import get_settings

VERSION = 1
SECTIONS = ("models", "retrieval")
#: Fields of a model entry that the Compare page reads as objects.
ENTRY_OBJECTS = ("roc", "per_defect_type", "training")

log = logging.getLogger(__name__)


def _known_and_extra(cls: type, data: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` split into the fields of dataclass ``cls`` and the rest (kept as ``extra``)."""
    names = {f.name for f in fields(cls)} - {"extra"}
    data = data if isinstance(data, dict) else {}
    return {k: v for k, v in data.items() if k in names}, {k: v for k, v in data.items() if k not in names}


def _as_dict(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass with an ``extra`` dict, in their order, then ``extra``."""
    known = {f.name: getattr(obj, f.name) for f in fields(obj) if f.name != "extra"}
    return {**known, **{k: v for k, v in obj.extra.items() if k not in known}}


@dataclass
class TrainingInfo:
    """How the evaluated model was trained (from its metadata), as a 'models' entry records it."""

    backbone: str | None = None
    device: str | None = None
    steps: int | None = None
    train_time_s: float | None = None
    n_train_images: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    data_hash: str | None = None
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainingInfo:
        known, extra = _known_and_extra(cls, data)
        return cls(**known, extra=extra)


@dataclass
class ModelResult:
    """One 'models' entry: the test-set metrics of a (model, category) and how it was trained.

    ``per_defect_type`` maps a defect type to ``{"n", "image_auroc", "detection_rate"}``; ``roc``
    is ``{"fpr": [...], "tpr": [...]}``. Entries written by older versions may lack fields:
    :meth:`from_dict` gives them their defaults, and keeps fields it does not know in ``extra``.
    """

    n_test: int = 0
    n_test_anomalous: int = 0
    image_auroc: float | None = None
    image_f1: float | None = None
    pixel_auroc: float | None = None
    pixel_f1: float | None = None
    aupro: float | None = None
    false_alarm_rate: float | None = None
    roc: dict[str, list[float]] = field(default_factory=dict)
    per_defect_type: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str = ""
    category: str = ""
    latency_ms: float | None = None
    #: which runtime measured ``latency_ms``: "torch" or "openvino" (None in older entries: torch)
    latency_runtime: str | None = None
    eval_time_s: float | None = None
    peak_memory_mb: float | None = None
    eval_device: str | None = None
    threshold_source: str | None = None
    training: TrainingInfo = field(default_factory=TrainingInfo)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The entry as the results file stores it."""
        entry = {**_as_dict(self), "training": self.training.to_dict()}
        if entry.get("latency_runtime") is None:  # entries from before runtimes existed are written back unchanged
            entry.pop("latency_runtime", None)
        return entry

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ModelResult:
        known, extra = _known_and_extra(cls, data)
        known["training"] = TrainingInfo.from_dict(known.get("training"))
        return cls(**known, extra=extra)


@dataclass
class ResultsStatus:
    """What a reader got: the data (the empty skeleton when the file is unusable) and why, if so."""

    data: dict[str, Any]
    reason: str | None = None  # why the file is unusable, e.g. "not JSON: Expecting value at line 1"
    raw: bytes | None = None  # the unusable file's bytes, for keeping them aside
    name: str = "results.json"

    @property
    def problem(self) -> str | None:
        """One line a page can show, or None when the file was fine (or absent)."""
        return f"{self.name} is unreadable ({self.reason})" if self.reason else None


@dataclass
class ResultsWrite:
    """Where a writer wrote, and the one-line notice when it had to start a fresh file."""

    path: Path
    notice: str | None = None


def results_path(path: str | Path | None = None) -> Path:
    return Path(path) if path else get_settings().results_file


def empty_results() -> dict[str, Any]:
    return {"version": VERSION, "models": {}, "retrieval": {}}


def shape_problem(data: Any) -> str | None:
    """Why ``data`` is not a results document the app can use, or None when it is."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    for section in SECTIONS:
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            return f"'{section}' is {type(entries).__name__}, not an object"
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                return f"'{section}/{key}' is {type(entry).__name__}, not an object"
    for key, entry in data.get("models", {}).items():
        for name in ENTRY_OBJECTS:
            if entry.get(name) is not None and not isinstance(entry[name], dict):
                return f"'models/{key}/{name}' is {type(entry[name]).__name__}, not an object"
    return None


def load_results_checked(path: str | Path | None = None) -> ResultsStatus:
    """The results and, when the file is unusable, a one-line problem instead of an exception."""
    file = results_path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return ResultsStatus(empty_results())
    except OSError as exc:  # e.g. a folder in its place, no permission: nothing to keep aside
        return ResultsStatus(empty_results(), f"cannot be read: {exc.strerror or exc}", None, file.name)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = f"not JSON: {exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        return ResultsStatus(empty_results(), reason, raw, file.name)
    problem = shape_problem(data)
    if problem:
        return ResultsStatus(empty_results(), problem, raw, file.name)
    for section in SECTIONS:
        data.setdefault(section, {})
    return ResultsStatus(data)


def load_results(path: str | Path | None = None) -> dict[str, Any]:
    """The results, or an empty skeleton when nothing has been evaluated yet or the file is unusable."""
    status = load_results_checked(path)
    if status.problem:
        log.warning("%s; showing no results until `python -m core evaluate` writes a fresh file", status.problem)
    return status.data


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def keep_aside(file: Path, raw: bytes) -> Path:
    """Copy the unusable bytes to ``<file>.corrupt-<UTC time>`` (a new name, never overwriting)."""
    stamp = _utc_stamp()
    for n in range(1000):
        aside = file.with_name(f"{file.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))
        try:
            with open(aside, "xb") as fh:  # "x": fails rather than overwrite an earlier copy
                fh.write(raw)
            return aside
        except FileExistsError:
            continue
    raise OSError(f"no free name to keep {file} aside")


def write_results(section: str, entries: dict[str, Any], path: str | Path | None = None) -> ResultsWrite:
    """Merge ``entries`` into ``section`` ('models' or 'retrieval') and write the file.

    An unusable file is kept aside first and a fresh one written; the returned notice says so.
    """
    file = results_path(path)
    status = load_results_checked(file)
    notice = None
    if status.reason and status.raw is not None:
        aside = keep_aside(file, status.raw)
        notice = f"{file.name} was unreadable ({status.reason}); kept it as {aside} and wrote a fresh one"
    elif status.reason:  # cannot read it, so cannot keep it aside: do not replace it blindly
        raise ResultsFileError(f"{status.problem}: fix or move {file}, then run the command again")
    data = status.data
    data.setdefault(section, {}).update(entries)
    file.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(file, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))
    return ResultsWrite(file, notice)


def update_results(section: str, entries: dict[str, Any], path: str | Path | None = None) -> ResultsWrite:
    """:func:`write_results`, logging the notice (callers that print it themselves use write_results)."""
    written = write_results(section, entries, path)
    if written.notice:
        log.warning("%s", written.notice)
    return written


def entry_key(model: str, category: str) -> str:
    """The key of a (model, category) entry: 'patchcore/tile'."""
    return f"{model}/{category}"


def split_key(key: str) -> tuple[str, str]:
    """(model, category) of an entry key; the inverse of :func:`entry_key`."""
    model, _, category = key.partition("/")
    return model, category
