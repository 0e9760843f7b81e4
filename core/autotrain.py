"""EfficientAD out of the box: train the demo categories in the background, one at a time.

``scripts/run.sh`` prepares PatchCore (``python -m core setup``), then starts this queue as a
background job (``python -m core autotrain --background``) and the app; the setup never waits for
it. The queue (:func:`run_queue`, the ``autotrain`` command) takes the categories in order and, for
each one without a current EfficientAD model, trains it (stopped by validation or its time budget,
:mod:`core.models.efficientad.early_stop`) and evaluates it, so its bars appear on the Compare page
as each lands. It is cheap to start again:

* **one at a time** -- one queue job per workspace (:func:`core.jobs.start_job` returns the running
  one), and the queue trains one category after the other;
* **low priority** -- the job runs under ``nice`` (:data:`NICE`), so inspections come first;
* **resumable** -- a category already trained (same data) is skipped, and an interrupted training
  resumes from its last validation checkpoint (:mod:`core.models.efficientad.runs`). If the
  queue's process dies (machine restarted), :func:`resume_if_interrupted` (called by the Compare
  page) starts it again; a queue cancelled from the dashboard stays cancelled.

The queue's state (``<workspace>/efficientad_queue.json``) says what each category is doing;
:func:`queue_view` joins it with the live progress file of the running training for the page.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import jobs
from core.auth import COMMAND_LINE
from core.errors import InspectError, ModelNotTrainedError
from core.files import write_atomically
from core.settings import DEMO_CATEGORIES, get_settings

log = logging.getLogger(__name__)

MODEL = "efficientad"
KIND = "autotrain"
#: Time budget per category: the three demo categories within an hour on 2 CPU cores, with
#: their evaluations (training usually stops earlier, on the validation plateau).
DEFAULT_BUDGET_S = 15 * 60
#: Niceness of the background job (0 normal, 19 lowest): inspections in the app come first.
NICE = 10
QUEUED, TRAINING, EVALUATING, DONE, FAILED = "queued", "training", "evaluating", "done", "failed"
_UNFINISHED = (QUEUED, TRAINING, EVALUATING)


def state_path() -> Path:
    return get_settings().workspace / "efficientad_queue.json"


def read_state() -> dict[str, Any] | None:
    try:
        return json.loads(state_path().read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_state(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(state, indent=2).encode())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def needs_training(category: str, root: Path) -> bool:
    """True unless an EfficientAD of ``category`` trained on these very files is in the registry."""
    from core import registry
    from core.data.layout import file_list_hash

    try:
        meta = registry.load_meta(MODEL, category)
    except ModelNotTrainedError:
        return True
    return meta.data_root != str(root) or meta.data_hash != file_list_hash(root, category)


def needs_evaluation(category: str) -> bool:
    from core.evaluation.results import entry_key, load_results

    return entry_key(MODEL, category) not in load_results().get("models", {})


def queue_categories(root: Path, categories: Iterable[str] | None = None) -> list[str]:
    """The categories to queue: those given, else the demo categories present under ``root``."""
    wanted = list(categories) if categories else list(DEMO_CATEGORIES)
    return [c for c in wanted if (root / c / "train" / "good").is_dir()]


def _train(category: str, root: Path, budget_s: float) -> None:
    from core.training import train

    train(MODEL, category, data_root=root, config={"time_budget": budget_s})


def _evaluate(category: str) -> None:
    from core.evaluation.evaluate import evaluate_run

    run = evaluate_run([MODEL], [category])
    if run.failed:
        raise InspectError("; ".join(run.failed.values()))


def _wait_for_other_training(category: str, poll_s: float = 30.0) -> None:
    """One EfficientAD training at a time: wait while one of ``category`` started elsewhere (the
    Inspect page's button) runs; the registry then usually has it and the queue skips it."""
    while (job := jobs.active_job("train", MODEL, category)) is not None:
        log.info(f"[autotrain] waiting for the running training of '{category}' (job {job.id})")
        time.sleep(poll_s)


def run_queue(
    categories: Iterable[str] | None = None,
    *,
    data_root: str | Path | None = None,
    time_budget_s: float = DEFAULT_BUDGET_S,
    train_fn: Callable[[str, Path, float], None] = _train,
    evaluate_fn: Callable[[str], None] = _evaluate,
) -> dict[str, Any]:
    """Train and evaluate EfficientAD for each category that lacks it, one after the other.

    A category that fails is recorded with its message and the queue goes on with the next.
    ``train_fn`` and ``evaluate_fn`` are replaceable for tests. Returns the final state.
    """
    from core.data.layout import resolve_data_root

    root = resolve_data_root(data_root)
    names = queue_categories(root, categories)
    state: dict[str, Any] = {
        "data_root": str(root),
        "time_budget_s": time_budget_s,
        "pid": os.getpid(),
        "started_at": _now(),
        "finished_at": None,
        "categories": {c: {"status": QUEUED} for c in names},
    }
    _write_state(state)
    log.info(f"[autotrain] {len(names)} categories in {root}, at priority nice {os.nice(0)}: {', '.join(names)}")
    for category in names:
        entry = state["categories"][category]
        try:
            _wait_for_other_training(category)
            trained_now = needs_training(category, root)
            if trained_now:
                entry.update(status=TRAINING, started_at=_now())
                _write_state(state)
                log.info(f"[autotrain] training EfficientAD on '{category}' (time budget {time_budget_s / 60:.0f} min)")
                start = time.monotonic()
                train_fn(category, root, time_budget_s)
                entry["train_s"] = round(time.monotonic() - start, 1)
            if trained_now or needs_evaluation(category):
                entry.update(status=EVALUATING)
                _write_state(state)
                log.info(f"[autotrain] evaluating EfficientAD on '{category}'")
                evaluate_fn(category)
            entry.update(status=DONE, finished_at=_now())
        except InspectError as exc:
            entry.update(status=FAILED, message=str(exc), finished_at=_now())
            log.info(f"[autotrain] {category}: error: {exc}")
        _write_state(state)
    state["finished_at"] = _now()
    _write_state(state)
    return state


def start_background(
    categories: Iterable[str] | None = None, *, time_budget_s: float = DEFAULT_BUDGET_S, data_root: str | None = None
) -> jobs.Job:
    """Start the queue as a low-priority background job, or return the one already running."""
    args = ["--time-budget", f"{time_budget_s:g}"]
    if categories:
        args += ["--category", *categories]
    if data_root:
        args += ["--data-root", str(data_root)]
    # Started by `run.sh`/`autotrain --background` (an engineer's command line) or resumed after a
    # restart as that same queue: it trains EfficientAD on the demo categories and nothing else.
    return jobs.start_job(
        KIND, actor=COMMAND_LINE, title="EfficientAD for the demo categories (background)", extra_args=args, nice=NICE
    )


def resume_if_interrupted() -> jobs.Job | None:
    """Start the queue again when its last run died with categories unfinished (not when cancelled)."""
    state = read_state()
    if not state:
        return None
    unfinished = [c for c, e in state.get("categories", {}).items() if e.get("status") in _UNFINISHED]
    if not unfinished:
        return None
    latest = jobs.latest_job(KIND)
    if latest is not None and (latest.status == jobs.RUNNING or latest.status == jobs.CANCELLED):
        return latest if latest.status == jobs.RUNNING else None
    return start_background(unfinished, time_budget_s=float(state.get("time_budget_s") or DEFAULT_BUDGET_S))


@dataclass
class QueueRow:
    """One category of the queue as the Compare page shows it."""

    category: str
    status: str
    message: str = ""
    fraction: float | None = None  # of the time budget spent (training), None otherwise
    remaining_s: float | None = None  # at most this long until the training stops
    step: int | None = None
    val_auroc: float | None = None


def queue_view() -> tuple[list[QueueRow], jobs.Job | None]:
    """(one row per queued category, the queue's job) for the Compare page; ([], None) if never started."""
    from core.models.efficientad.runs import read_progress

    state = read_state()
    if not state:
        return [], None
    job = jobs.latest_job(KIND)
    alive = job is not None and job.status == jobs.RUNNING
    budget = float(state.get("time_budget_s") or DEFAULT_BUDGET_S)
    rows = []
    for category, entry in state.get("categories", {}).items():
        status = entry.get("status", QUEUED)
        if status in _UNFINISHED and not alive:
            status = "interrupted" if job is None or job.status != jobs.CANCELLED else "cancelled"
        row = QueueRow(category, status, entry.get("message", ""))
        if status == TRAINING:
            progress = read_progress(category) or {}
            elapsed = float(progress.get("elapsed_s") or 0.0)
            limit = float(progress.get("time_budget_s") or budget)
            row.fraction = min(1.0, elapsed / limit) if limit else None
            row.remaining_s = max(0.0, limit - elapsed)
            row.step = progress.get("step")
            curve = progress.get("curve") or []
            row.val_auroc = curve[-1].get("image_auroc") if curve else None
        elif status == QUEUED:
            row.remaining_s = budget
        rows.append(row)
    return rows, job
