"""Inspect: a dashboard for quality inspectors over anomalib's PatchCore and EfficientAD.

This file is the frame and the router only: page setup, the login gate, the shared sidebar
(dataset, workspace, device, running jobs, sign-out) and ``st.navigation`` over the pages in
``pages/``. Each page is widgets and layout; the logic is in ``core/`` (who may sign in and what a
role may do: ``core/auth.py``).

Run: ``streamlit run app.py`` (settings in ``.streamlit/config.toml``).
"""

from __future__ import annotations

import time

import streamlit as st

from core import auth
from core.errors import InspectError
from core.settings import ASSETS_DIR, get_settings
from pages import _common as ui

#: Pause after a wrong password: a guesser gets a few tries per second, not hundreds.
FAILED_LOGIN_DELAY_S = 1.0
CREATE_USER_COMMAND = "python -m core users add NAME --role engineer"


def signed_in() -> bool:
    """Set this session's user and role; False while it must still sign in.

    The role is re-read from the users file on every run, so removing a user or changing a role
    takes effect at the user's next click, not at their next login.
    """
    if not auth.login_required(st.get_option("server.address")):
        # Bound to this computer, no users, no INSPECT_REQUIRE_LOGIN: the single-PC setup.
        st.session_state[ui.USER_KEY] = None
        st.session_state[ui.ROLE_KEY] = auth.ENGINEER
        return True
    user = st.session_state.get(ui.USER_KEY)
    role = auth.role_of(user) if user else None
    if role is None:
        st.session_state.pop(ui.USER_KEY, None)
        st.session_state.pop(ui.ROLE_KEY, None)
        return False
    st.session_state[ui.ROLE_KEY] = role
    return True


def sign_in_page() -> None:
    """The only page a signed-out session gets: the login form, or how to create the first user."""
    st.title("Sign in to Inspect")
    if not auth.has_users():
        st.error(
            "This Inspect server needs a login, but no user exists yet. On the server, create one with "
            f"`{CREATE_USER_COMMAND}` (or `--role inspector`), then reload this page."
        )
        return
    with st.form("login", clear_on_submit=True):
        name = st.text_input("User name", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in", key="login_submit")
    if not submitted:
        return
    role = auth.verify_password(name, password)
    if role is None:
        time.sleep(FAILED_LOGIN_DELAY_S)
        st.error("Wrong user name or password.")
        return
    st.session_state.clear()  # nothing from before the login carries over
    st.session_state[ui.USER_KEY] = name.strip()
    st.session_state[ui.ROLE_KEY] = role
    st.rerun()


def sign_out() -> None:
    """Forget everything this browser session holds (inspections, images, the user)."""
    st.session_state.clear()


def frame() -> None:
    """Page setup, logo and the app's CSS: the same on every page."""
    st.set_page_config(page_title="Inspect", page_icon=str(ASSETS_DIR / "icon.svg"), layout="wide")
    st.logo(str(ASSETS_DIR / "logo.svg"), size="large", icon_image=str(ASSETS_DIR / "icon.svg"))
    ui.inject_css()


def admitted() -> bool:
    """Whether this session may see the app; otherwise the sign-in page (or why nobody can) is shown."""
    try:
        allowed = signed_in()
    except InspectError as exc:  # e.g. a damaged users file: refuse everyone, say why
        st.error(str(exc))
        return False
    if not allowed:
        # Navigation with the sign-in page only: whatever url was asked for, no page of the app runs,
        # and st.navigation switches off Streamlit's legacy pages/ mode for this session too.
        st.navigation([st.Page(sign_in_page, title="Sign in", icon=":material/login:")], position="hidden").run()
    return allowed


def app_pages() -> list[st.Page]:
    """The app's pages, each at its url path (named differently from its file: see ui.ensure_app_frame)."""
    return [
        st.Page("pages/inspection.py", title="Inspect", icon=":material/center_focus_strong:", url_path="inspect", default=True),
        st.Page("pages/inspection_history.py", title="History", icon=":material/history:", url_path="history"),
        st.Page("pages/model_comparison.py", title="Compare models", icon=":material/bar_chart:", url_path="compare"),
        st.Page("pages/similar_defects.py", title="Similar defects", icon=":material/image_search:", url_path="similar"),
    ]


def sidebar() -> None:
    """Dataset, workspace and device; the signed-in user and sign-out; running background jobs."""
    settings = get_settings()
    with st.sidebar:
        st.caption(f"**Data** `{settings.data_root}`  \n**Workspace** `{settings.workspace}`  \n**Device** {ui.device_summary()}")
        user = st.session_state.get(ui.USER_KEY)
        if user:
            st.caption(f"Signed in as **{user}** ({st.session_state[ui.ROLE_KEY]})")
            st.button("Sign out", key="logout", icon=":material/logout:", on_click=sign_out)
    ui.sidebar_jobs()


def render() -> None:
    frame()
    if not admitted():
        return
    page = st.navigation(app_pages())
    sidebar()
    page.run()


render()
