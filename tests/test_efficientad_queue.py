"""The EfficientAD background queue: one category at a time, resumed, at low priority, never twice.

Trainings here are stand-ins (no EfficientAD is trained): the queue's order, its state file, the
Compare page's view of it and the background job around it are what is tested.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import inspect_home_at

from core import autotrain as background
from core import jobs
from core.errors import InspectError
from core.models.efficientad.runs import RunFolder


@pytest.fixture
def home(tmp_path: Path):
    (tmp_path / "home").mkdir()
    with inspect_home_at(tmp_path / "home") as path:
        yield path


def _categories(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name / "train" / "good").mkdir(parents=True)
    return root


def test_queue_trains_one_category_at_a_time_and_goes_on_after_a_failure(home: Path, monkeypatch) -> None:
    root = _categories(home / "data", ["tile", "leather", "grid"])
    monkeypatch.setattr(background, "needs_training", lambda category, root: category != "grid")
    monkeypatch.setattr(background, "needs_evaluation", lambda category: True)
    calls: list[tuple[str, str]] = []

    def train(category: str, root: Path, budget: float) -> None:
        statuses = {c: e["status"] for c, e in background.read_state()["categories"].items()}
        assert [c for c, s in statuses.items() if s == background.TRAINING] == [category]  # one at a time
        assert budget == 60.0
        calls.append(("train", category))
        if category == "leather":
            raise InspectError("leather is broken")

    state = background.run_queue(
        data_root=root, time_budget_s=60.0, train_fn=train, evaluate_fn=lambda c: calls.append(("evaluate", c))
    )
    # demo order; grid was already trained (only evaluated); leather failed and the queue went on
    assert calls == [("train", "tile"), ("evaluate", "tile"), ("train", "leather"), ("evaluate", "grid")]
    statuses = {c: e["status"] for c, e in state["categories"].items()}
    assert statuses == {"tile": "done", "leather": "failed", "grid": "done"}
    assert "leather is broken" in state["categories"]["leather"]["message"]
    assert state["finished_at"]


def test_categories_without_data_are_not_queued(home: Path) -> None:
    root = _categories(home / "data", ["grid"])
    assert background.queue_categories(root) == ["grid"]
    assert background.queue_categories(root, ["tile", "grid"]) == ["grid"]


def _fake_job(status: str) -> jobs.Job:
    return jobs.Job(id="x", kind=background.KIND, title="q", args=[], log_path="/nonexistent/x.log", status=status)


def test_queue_view_shows_progress_and_time_left(home: Path, monkeypatch) -> None:
    state = {
        "time_budget_s": 900.0,
        "categories": {"tile": {"status": "done"}, "leather": {"status": "training"}, "grid": {"status": "queued"}},
    }
    (home / "efficientad_queue.json").write_text(json.dumps(state))
    run = RunFolder.for_training("leather", "/d", "h", {"steps": 1})
    curve = [{"step": 100, "elapsed_s": 60.0, "image_auroc": 0.91, "loss": 0.5}]
    run.write_progress({"status": "training", "step": 120, "elapsed_s": 300.0, "time_budget_s": 900.0, "curve": curve})
    monkeypatch.setattr(background.jobs, "latest_job", lambda kind: _fake_job(jobs.RUNNING))
    rows, job = background.queue_view()
    by = {r.category: r for r in rows}
    assert job.status == jobs.RUNNING
    assert by["leather"].status == "training" and by["leather"].step == 120 and by["leather"].val_auroc == 0.91
    assert by["leather"].remaining_s == pytest.approx(600.0) and by["leather"].fraction == pytest.approx(1 / 3)
    assert by["grid"].status == "queued" and by["grid"].remaining_s == 900.0
    # the same state without a live job: the unfinished ones are interrupted
    monkeypatch.setattr(background.jobs, "latest_job", lambda kind: _fake_job(jobs.FAILED))
    rows, _ = background.queue_view()
    assert [r.status for r in rows] == ["done", "interrupted", "interrupted"]


def test_resume_restarts_an_interrupted_queue_but_not_a_cancelled_one(home: Path, monkeypatch) -> None:
    started: list[tuple] = []
    monkeypatch.setattr(background, "start_background", lambda cats, **kw: started.append((cats, kw)) or "job")
    assert background.resume_if_interrupted() is None  # never started: nothing to resume
    state = {"time_budget_s": 600.0, "categories": {"tile": {"status": "done"}, "grid": {"status": "training"}}}
    (home / "efficientad_queue.json").write_text(json.dumps(state))
    monkeypatch.setattr(background.jobs, "latest_job", lambda kind: _fake_job(jobs.CANCELLED))
    assert background.resume_if_interrupted() is None and not started
    monkeypatch.setattr(background.jobs, "latest_job", lambda kind: _fake_job(jobs.FAILED))  # killed
    assert background.resume_if_interrupted() == "job"
    assert started == [(["grid"], {"time_budget_s": 600.0})]


def test_background_job_runs_once_at_low_priority(home: Path) -> None:
    """Started twice while running: one job. Nothing to train here, so it ends quickly."""
    (home / "empty").mkdir()
    first = background.start_background(time_budget_s=60.0, data_root=str(home / "empty"))
    second = background.start_background(time_budget_s=60.0, data_root=str(home / "empty"))
    assert second.id == first.id
    assert first.extra.get("nice") == background.NICE
    assert first.args[:3] == ["autotrain", "--time-budget", "60"]
    deadline = time.time() + 120
    job = jobs.load_job(first.id)
    while job is not None and not job.done and time.time() < deadline:
        time.sleep(0.5)
        job = jobs.load_job(first.id)
    assert job is not None and job.done, "the queue job did not end"
    log = Path(job.log_path).read_text()
    assert job.status == jobs.SUCCEEDED, log
    assert "$ python -m core autotrain" in log and f"at priority nice {background.NICE}" in log
