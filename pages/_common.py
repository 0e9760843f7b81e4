"""Streamlit glue shared by the pages: caches, the job panel, small display helpers.

This is the page edge: ``st.cache_resource`` / ``st.cache_data`` and widgets live here; the logic
they call is in ``core/``. The leading underscore marks this file as a helper, not a page
(``app.py`` lists the pages explicitly with ``st.navigation``).

How pages (this file and ``app.py`` included) reach ``core/``: what they show comes from
``core.services`` only (``from core.services import catalog, inspection, ...``), never from
``core.registry``, ``core.history``, ``core.similarity``... directly (``TYPE_CHECKING`` imports
for type hints aside). Four cross-cutting modules
are imported directly, as they are the same for every caller: ``core.jobs`` (background jobs),
``core.auth`` (who may do what), ``core.errors`` (the exceptions to catch) and ``core.settings``
(where things are).

Each page is a few functions, each drawing one part of the page, and one entry point
``render()`` called at the bottom of the file (Streamlit runs the file).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import streamlit as st

from core import jobs
from core.errors import InspectError
from core.services import catalog, history_view, inspection

if TYPE_CHECKING:
    from collections.abc import Callable

    from core.auth import Actor
    from core.history import History
    from core.inference.detector import Detector

JOB_REFRESH_S = 2.0


def ensure_app_frame() -> None:
    """Make sure this page runs inside ``app.py``'s frame (sidebar, navigation).

    Streamlit still knows its legacy multipage mode: with a folder named ``pages/`` next to the
    main script, a *fresh* server runs ``pages/<file>.py`` on its own when asked for
    ``/<file>``, without ``app.py`` (only ``st.navigation``, called in ``app.py``, switches that
    mode off). The page files are therefore named differently from their url paths
    (``pages/model_comparison.py`` is served at ``/compare``), so every real url goes through
    ``app.py``; and should a page still be started on its own (someone typing
    ``/model_comparison``), this switches the legacy mode off and reruns through ``app.py``. A
    no-op in every normal run.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - a Streamlit without the legacy mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


# --------------------------------------------------------------------------------------------
# Cached resources
# --------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=6, show_spinner="Loading the model (first use in this process)…")
def _load_detector(model: str, category: str, checkpoint: str, mtime: float, runtime_mtime: float) -> Detector:
    # The key names the checkpoint's version folder, its mtime and its runtime choice's: retraining
    # (a new version) or choosing a runtime loads the model anew.
    detector = inspection.load_detector(model, category)
    inspection.warm_up(detector)  # the first call pays one-off set-up; the inspector's first verdict should not
    return detector


def get_detector(model: str, category: str) -> Detector:
    """The trained detector, loaded on first use and cached per process."""
    return _load_detector(*catalog.detector_cache_key(model, category))


@st.cache_resource(show_spinner=False)
def device_summary() -> str:
    return catalog.device_summary()


def open_history() -> tuple[History | None, str | None]:
    """``(history, None)``, or ``(None, why)`` when it cannot be opened (damaged, locked...).

    For pages that say it in their own words and place (the Inspect page, beside the verdict).
    """
    return history_view.open_history()


def get_history() -> History | None:
    """The inspection history, or None after showing why it cannot be opened."""
    history, problem = open_history()
    if problem is not None:
        st.error(f"The inspection history cannot be opened: {problem}")
    return history


@st.cache_data(max_entries=256, show_spinner=False)
def thumbnail_uri(path: str | None, mtime: float) -> str | None:
    return history_view.thumbnail_data_uri(path)


# --------------------------------------------------------------------------------------------
# Display helpers
# --------------------------------------------------------------------------------------------

# Characters that start Markdown (or Streamlit's extensions: $ for LaTeX, :color[...]) anywhere in
# a line. "." and "-" are not here: they only matter at the start of a line (see plain_text).
_MD_SPECIAL = re.compile(r"([\\`*\[\]()!<>#|~$&])")
# "_" emphasises only at a word edge, so "new_part.png" stays readable in the raw value.
_MD_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
_MD_LINE_START = re.compile(r"^(\s*)([-+]|\d{1,9}[.)](?=\s))")


def plain_text(text: Any) -> str:
    """``text`` escaped so that a Markdown-rendering widget shows it exactly as typed.

    For anything a user or a dataset provides (file names, comments, defect types) that goes into
    st.markdown, st.caption, an st.image caption, st.error... Without it a file name such as
    ``![i](http://host/x.png)`` makes every browser that shows the page fetch that URL, and
    ``[click](http://...)`` becomes a link. Line breaks become spaces: a name is one line.
    """
    s = re.sub(r"[\r\n]+", " ", str(text))
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = _MD_UNDERSCORE.sub(r"\\_", s)
    # A list marker ("- x", "+ x", "1. x") or a rule ("---") only counts at the start of a line.
    return _MD_LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], s)


def plain_names(message: str, *names: str) -> str:
    """``message`` (our own Markdown) with each user-provided ``name`` in it shown as text."""
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        message = message.replace(name, plain_text(name))
    return message


def verdict_badge(verdict: str, container: Any = st) -> None:
    """The verdict in large coloured letters (GOOD green, DEFECT red)."""
    cls = "defect" if verdict == "DEFECT" else "good"
    container.markdown(f'<div class="inspect-verdict inspect-{cls}">{verdict}</div>', unsafe_allow_html=True)


CSS = """
<style>
.inspect-verdict {font-size: 2.4rem; font-weight: 800; letter-spacing: .06em; padding: .2rem 1rem;
  border-radius: .5rem; display: inline-block; margin: .2rem 0 .6rem 0;}
.inspect-good {background: #e6f4ea; color: #137333; border: 2px solid #137333;}
.inspect-defect {background: #fce8e6; color: #b3261e; border: 2px solid #b3261e;}
.inspect-muted {color: #5f6b7a; font-size: .85rem;}
</style>
"""


def inject_css() -> None:
    st.html(CSS)


# --------------------------------------------------------------------------------------------
# Background jobs
# --------------------------------------------------------------------------------------------


#: session_state keys set by app.py's login gate: the signed-in user (None when no login is
#: needed) and the role, re-read from core.auth on every run.
USER_KEY = "auth_user"
ROLE_KEY = "auth_role"


def may_start_jobs() -> bool:
    """Whether this session's role may start or cancel background jobs (engineers only).

    A session without a role (a page run outside app.py's gate) gets the least: no jobs.
    """
    from core.auth import can_start_jobs

    return can_start_jobs(st.session_state.get(ROLE_KEY))


def may_change_models() -> bool:
    """Whether this session's role may change a model (engineers only): the page hides those controls.

    The services check again (:func:`core.auth.require_engineer`), so a control a page forgets to
    hide still changes nothing.
    """
    from core.auth import can_change_models

    return can_change_models(st.session_state.get(ROLE_KEY))


def actor() -> Actor:
    """This session as the services see it: the signed-in user (or this PC's user) and the role."""
    from core.auth import Actor

    return Actor(st.session_state.get(USER_KEY) or "local user (no login)", st.session_state.get(ROLE_KEY))


def start_job_button(
    label: str,
    kind: str,
    *,
    model: str | None,
    category: str | None,
    key: str,
    help: str | None = None,
    before: Callable[[], object] | None = None,
) -> None:
    """A button that starts ``python -m core <kind>`` in the background.

    ``before`` (optional) runs first, e.g. to release the embedded similarity store the job needs.
    Inspectors see a note instead of the button: jobs cost hours of compute and change what
    everyone sees (models, results, the index), so they are an engineer's decision.
    """
    if not may_start_jobs():
        st.caption(f":material/lock: *{label}* is for engineers; ask one, or sign in as an engineer.")
        return
    if st.button(label, key=key, help=help, icon=":material/play_arrow:"):
        try:
            if before is not None:
                before()
            job = jobs.start_job(kind, actor=actor(), model=model, category=category)
        except InspectError as exc:
            st.error(str(exc))
            return
        st.session_state[f"job:{kind}:{model}:{category}"] = job.id
        st.rerun()


def _render_job(job: jobs.Job) -> None:
    prog = jobs.progress_of(jobs.read_log_tail(job))
    elapsed = f"{job.elapsed_s():.0f} s"
    if job.status == jobs.RUNNING:
        st.progress(prog.fraction if prog.fraction is not None else 0.0, text=f"**{job.title}** — running for {elapsed}")
        if prog.text:
            st.caption(prog.text)
        if may_start_jobs() and st.button("Cancel", key=f"cancel:{job.id}", icon=":material/stop:"):
            try:
                jobs.cancel_job(job.id, actor=actor())
            except InspectError as exc:
                st.error(str(exc))
                return
            st.rerun(scope="app")
    elif job.status == jobs.SUCCEEDED:
        st.success(f"{job.title}: finished in {elapsed}.")
    elif job.status == jobs.CANCELLED:
        st.warning(f"{job.title}: cancelled after {elapsed}.")
    else:
        st.error(f"{job.title}: failed — {jobs.error_line(job)}")
    with st.expander("Log", expanded=False):
        st.code(jobs.read_log_tail(job, 4000)[-4000:] or "(no output yet)", language=None)


@st.fragment(run_every=JOB_REFRESH_S)
def _job_live(job_id: str) -> None:
    job = jobs.load_job(job_id)
    if job is None:
        return
    _render_job(job)
    if job.done:
        # Refresh the whole page once: a finished training makes the model appear, etc.
        st.rerun(scope="app")


def job_panel(kind: str, model: str | None, category: str | None) -> jobs.Job | None:
    """The newest job of this kind for (model, category), live while it runs; returns it."""
    job = jobs.active_job(kind, model, category) or jobs.latest_job(kind, model, category)
    if job is None:
        return None
    with st.container(border=True):
        if job.status == jobs.RUNNING:
            _job_live(job.id)
        else:
            _render_job(job)
    return job


@st.fragment(run_every=JOB_REFRESH_S)
def _sidebar_jobs_live() -> None:
    running = [j for j in jobs.list_jobs(limit=20) if j.status == jobs.RUNNING]
    if not running:
        st.rerun(scope="app")
    for job in running:
        prog = jobs.progress_of(jobs.read_log_tail(job))
        st.progress(prog.fraction or 0.0, text=f"{job.title} ({job.elapsed_s():.0f} s)")


def sidebar_jobs() -> None:
    """Running background jobs in the sidebar (refreshed every few seconds while any runs)."""
    if jobs.active_job() is None:
        return
    st.sidebar.markdown("**Background jobs**")
    with st.sidebar:
        _sidebar_jobs_live()
