"""Background jobs: long commands (train, evaluate, index) run outside the app's process.

The dashboard must never freeze while a model trains, so the pages start ``python -m core ...``
as a separate process and only *read* its state. Each job is two files under
``<workspace>/jobs/``:

* ``<id>.json`` -- the job record: what runs, its pid, ``status`` (``running``, ``succeeded``,
  ``failed``, ``cancelled``), the exit code and the times;
* ``<id>.log`` -- everything the command printed (stdout and stderr together), tqdm bars included.

The command is started through a small supervisor, ``python -m core.jobs _run <record>``, which
waits for it and writes the exit status into the record. So the record is right even when the app
that started the job has been restarted meanwhile, and any app process (or a terminal) can follow
it. The supervisor and the command run in their own session (process group): cancelling a job
stops both, and stopping the app does not stop the job.

With a server database (``INSPECT_DATABASE_URL``) every record is also shared as a row of its
``jobs`` table (:mod:`core.db.job_records`), with the machine it runs on, so the dashboard lists the
jobs of every machine; a job is followed and cancelled on the machine that runs it.

Progress is read from the log: :func:`progress_of` finds the last tqdm line (``Selecting
coreset:  45%|####  | 115/256``) and returns its fraction and text, which the page shows as a
progress bar refreshed by ``st.fragment(run_every=...)``.

Nothing here imports Streamlit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.auth import Actor, require_engineer
from core.errors import InspectError
from core.settings import REPO_ROOT, get_settings

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"
#: Job kinds the app starts, and the ``python -m core`` sub-command of each.
KINDS = {"train": "train", "evaluate": "evaluate", "index": "index", "autotrain": "autotrain"}
#: How much of the end of the log is read for progress and error lines.
_TAIL_BYTES = 16_384

# Popen handles of supervisors this process started: polled so they never linger as zombies.
_CHILDREN: dict[str, subprocess.Popen] = {}


@dataclass
class Job:
    """One background command and its state (the JSON record, as a dataclass)."""

    id: str
    kind: str
    title: str
    args: list[str]
    log_path: str
    model: str | None = None
    category: str | None = None
    status: str = RUNNING
    pid: int | None = None  # the supervisor's pid (= the process group id)
    child_pid: int | None = None  # the command's pid, written by the supervisor
    returncode: int | None = None
    started_at: str = ""
    finished_at: str | None = None
    message: str | None = None  # a one-line reason when the job failed or was cancelled
    extra: dict[str, Any] = field(default_factory=dict)
    started_by: str = ""  # who started it (core.auth.Actor's name): jobs change what everyone uses
    host: str = ""  # the machine whose process runs it ("": a record written before hosts were kept)

    @property
    def here(self) -> bool:
        """Whether this machine runs it (its process can be checked and signalled from here)."""
        return self.host in ("", socket.gethostname())

    @property
    def done(self) -> bool:
        return self.status != RUNNING

    @property
    def command_line(self) -> str:
        return "python -m core " + " ".join(self.args)

    @property
    def record_path(self) -> Path:
        return Path(self.log_path).with_suffix(".json")

    def elapsed_s(self) -> float:
        start = _parse_time(self.started_at)
        end = _parse_time(self.finished_at) if self.finished_at else time.time()
        return max(0.0, end - start) if start else 0.0


@dataclass
class Progress:
    """What the log says about progress: ``fraction`` in [0, 1] (None: unknown) and a line."""

    fraction: float | None
    text: str


def jobs_dir() -> Path:
    return get_settings().workspace / "jobs"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _write(job: Job) -> None:
    path = job.record_path
    text = json.dumps(asdict(job), indent=2)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    _share(job, text)


def _share(job: Job, text: str) -> None:
    """Mirror the record into the server database, when there is one (never fails the job)."""
    from core.db.engine import configured_server

    try:
        engine = configured_server()
    except InspectError:
        return  # a wrong URL is reported where the stores are opened, not by every job
    if engine is not None:
        from core.db import job_records

        job_records.save(engine, job.id, job.host or socket.gethostname(), job.status, job.started_at, text)


def _parse(text: str) -> Job | None:
    try:
        return Job(**json.loads(text))
    except (json.JSONDecodeError, TypeError):
        return None


def _read(path: Path) -> Job | None:
    try:
        return _parse(path.read_text())
    except OSError:
        return None


def command_args(
    kind: str, model: str | None = None, category: str | None = None, extra_args: list[str] | None = None
) -> list[str]:
    """The ``python -m core`` arguments of a job kind for one (model, category)."""
    if kind not in KINDS:
        raise InspectError(f"unknown job kind {kind!r}; expected one of {sorted(KINDS)}")
    args = [KINDS[kind]]
    if model:
        args += ["--model", model]
    if category:
        args += ["--category", category]
    return args + list(extra_args or [])


def start_job(
    kind: str,
    *,
    actor: Actor,
    model: str | None = None,
    category: str | None = None,
    title: str | None = None,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    nice: int | None = None,
) -> Job:
    """Start ``python -m core <kind> ...`` in the background and return its record.

    ``nice``: run the command at this lower priority (``os.nice``), so that the app stays
    responsive beside a long job (the EfficientAD queue, core.autotrain).

    When the same job (kind, model, category) is already running, that job is returned instead of
    starting a second one (two trainings of one model would overwrite each other's checkpoint).
    Engineers only (:func:`core.auth.require_engineer`): a job trains, evaluates, indexes or changes models.
    """
    who = require_engineer(actor, f"starting a {kind} job")
    running = active_job(kind, model, category)
    if running is not None:
        return running
    folder = jobs_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InspectError(f"cannot create the jobs folder {folder}: {exc}") from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    job_id = f"{stamp}-{kind}-{uuid.uuid4().hex[:6]}"
    args = command_args(kind, model, category, extra_args)
    job = Job(
        id=job_id,
        kind=kind,
        title=title or " ".join(x for x in (kind, model, category) if x),
        args=args,
        log_path=str(folder / f"{job_id}.log"),
        model=model,
        category=category,
        started_at=_now(),
        extra={"nice": nice} if nice else {},
        started_by=who,
        host=socket.gethostname(),
    )
    _write(job)
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env.setdefault("TQDM_MININTERVAL", "0.5")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.jobs", "_run", str(job.record_path)],
            cwd=str(REPO_ROOT),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: cancel stops the command too
        )
    except OSError as exc:
        job.status, job.message, job.finished_at = FAILED, f"could not start: {exc}", _now()
        _write(job)
        raise InspectError(f"could not start `{job.command_line}`: {exc}") from None
    _CHILDREN[job.id] = proc
    job.pid = proc.pid
    # The supervisor rewrites the record with the command's pid; merge rather than overwrite it.
    current = _read(job.record_path)
    if current is None:
        _write(job)
        return job
    if current.pid is None:  # the supervisor has not written yet
        current.pid = proc.pid
        _write(current)
    return current


def _reap() -> None:
    for job_id, proc in list(_CHILDREN.items()):
        if proc.poll() is not None:
            _CHILDREN.pop(job_id, None)


def _alive(pid: int | None) -> bool:
    """True when ``pid`` is a live supervisor process (not a zombie, not a reused pid)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                return False
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            # Empty while the kernel is still setting up a just-started process (Popen returns
            # once exec has begun, before argv is readable): alive, not a reused pid.
            return not cmdline.strip() or b"core.jobs" in cmdline
        except OSError:
            return False
    return True


def load_job(job_id_or_path: str | Path) -> Job | None:
    """The job's current record, checking that a 'running' job really still runs."""
    _reap()
    path = Path(job_id_or_path)
    if path.suffix != ".json":
        path = jobs_dir() / f"{job_id_or_path}.json"
    job = _read(path)
    if job is None:
        return None
    if job.status == RUNNING and job.pid and not _alive(job.pid):
        # The supervisor is gone without writing an end status (killed, machine restarted).
        time.sleep(0.05)  # it may be writing its record right now
        again = _read(path)
        if again is not None and again.status != RUNNING:
            return again
        job.status, job.finished_at = FAILED, job.finished_at or _now()
        job.message = job.message or "the job's process ended without reporting a result (killed?)"
        _write(job)
    return job


def list_jobs(limit: int | None = 20) -> list[Job]:
    """Jobs of this workspace (with a server database: of every machine), newest first."""
    from core.db.engine import configured_server

    engine = configured_server()
    if engine is not None:
        from core.db import job_records

        shared = [j for _, text in job_records.recent(engine, limit) if (j := _parse(text)) is not None]
        # this machine's jobs from their record files: their processes can be checked from here
        return [(load_job(j.record_path) or j) if j.here and j.record_path.is_file() else j for j in shared]
    folder = jobs_dir()
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("*.json"), reverse=True)
    jobs = [j for j in (load_job(p) for p in paths[: limit or None]) if j is not None]
    return jobs


def active_job(kind: str | None = None, model: str | None = None, category: str | None = None) -> Job | None:
    """The newest running job matching the arguments (``None`` matches anything)."""
    for job in list_jobs(limit=50):
        if job.status != RUNNING:
            continue
        if kind is not None and job.kind != kind:
            continue
        if model is not None and job.model != model:
            continue
        if category is not None and job.category != category:
            continue
        return job
    return None


def latest_job(kind: str, model: str | None = None, category: str | None = None) -> Job | None:
    """The newest job (any status) of this kind for (model, category)."""
    for job in list_jobs(limit=50):
        if job.kind == kind and job.model == model and job.category == category:
            return job
    return None


def cancel_job(job_id: str, *, actor: Actor) -> Job | None:
    """Stop a running job (SIGTERM to its process group) and mark it cancelled. Engineers only."""
    who = require_engineer(actor, "cancelling a job")
    job = load_job(job_id)
    if job is None:
        job = next((j for j in list_jobs(limit=200) if j.id == job_id), None)
    if job is None or job.status != RUNNING:
        return job
    if not job.here:
        raise InspectError(f"job {job.id} runs on {job.host}: cancel it there")
    if job.pid and _alive(job.pid):
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    job.status, job.finished_at, job.message = CANCELLED, _now(), f"cancelled by {who}"
    _write(job)
    _reap()
    return job


def read_log_tail(job: Job, n_bytes: int = _TAIL_BYTES) -> str:
    """The end of the job's log (empty when there is none yet)."""
    path = Path(job.log_path)
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - n_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


_PERCENT = re.compile(r"(\d{1,3})%\|")
_COUNT = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def progress_of(log_text: str) -> Progress:
    """The last tqdm progress line in ``log_text``: its fraction and its text.

    tqdm rewrites its line with carriage returns, so the log is split on both ``\\r`` and ``\\n``.
    Lines without a bar are skipped; with no bar at all the fraction is None and the text is the
    last non-empty line (e.g. "Loading model").
    """
    lines = [_ANSI.sub("", part).strip() for part in re.split(r"[\r\n]+", log_text)]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        count = _COUNT.search(line)
        if count and int(count.group(2)) > 0:
            return Progress(min(1.0, int(count.group(1)) / int(count.group(2))), _shorten(line))
        percent = _PERCENT.search(line)
        if percent:
            return Progress(min(1.0, int(percent.group(1)) / 100), _shorten(line))
    return Progress(None, _shorten(lines[-1]) if lines else "")


def _shorten(line: str, width: int = 160) -> str:
    # Drop tqdm's bar glyphs: "Selecting coreset:  45%|####  | 115/256 [...]" -> readable text.
    line = re.sub(r"\|[^|]*\|", "|", line, count=1)
    return line if len(line) <= width else line[: width - 1] + "…"


def error_line(job: Job) -> str:
    """The most telling line of a failed job's log: its ``error: ...`` line, else the last line."""
    text = read_log_tail(job)
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":", 1)[0]:
            return line
    return lines[-1] if lines else (job.message or "")


# --------------------------------------------------------------------------------------------
# The supervisor (runs in the background process)
# --------------------------------------------------------------------------------------------


def _supervise(record: Path) -> int:
    job = _read(record)
    if job is None:
        return 2
    log = Path(job.log_path)
    if job.extra.get("nice"):
        try:
            os.nice(int(job.extra["nice"]))  # the command inherits it
        except OSError:
            pass
    with log.open("ab", buffering=0) as out:
        out.write(f"$ {job.command_line}\n".encode())
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "core", *job.args],
                cwd=str(REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            job.status, job.returncode, job.finished_at = FAILED, None, _now()
            job.message = f"could not start: {exc}"
            _write(job)
            return 1

        stopped: list[int] = []

        def forward(signum: int, _frame: Any) -> None:
            stopped.append(signum)
            child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        current = _read(record) or job  # merge: cancel_job may have written meanwhile
        current.pid, current.child_pid = os.getpid(), child.pid
        _write(current)
        rc = child.wait()
    current = _read(record) or job
    current.returncode = rc
    current.finished_at = current.finished_at if current.status == CANCELLED else _now()
    if current.status == CANCELLED or stopped:
        current.status = CANCELLED
        current.message = current.message or "stopped by a signal"
    elif rc == 0:
        current.status = SUCCEEDED
    else:
        current.status = FAILED
        current.message = current.message or f"exited with status {rc}"
    _write(current)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "_run":
        return _supervise(Path(argv[1]))
    print("usage: python -m core.jobs _run <job record> (started by the dashboard)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
