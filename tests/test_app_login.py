"""The login gate in app.py: who sees what when Inspect is served beyond this computer."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit

from core import auth

pytestmark = pytest.mark.filterwarnings("ignore")

PASSWORDS = {"ina": ("inspector pass", auth.INSPECTOR), "eng": ("engineer pass", auth.ENGINEER)}


@pytest.fixture
def users_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A users file of this test only (the app workspace is shared by the whole session)."""
    path = tmp_path / "users.json"
    monkeypatch.setenv("INSPECT_USERS_FILE", str(path))
    return path


@pytest.fixture
def with_users(users_file: Path, app_env: Path) -> Path:
    for name, (password, role) in PASSWORDS.items():
        auth.add_user(name, password, role)
    return users_file


@pytest.fixture
def on_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if started with `--server.address 0.0.0.0` (the app reads st.get_option)."""
    real = streamlit.get_option
    monkeypatch.setattr(streamlit, "get_option", lambda key: "0.0.0.0" if key == "server.address" else real(key))


def _texts(at) -> str:
    parts = [e.value for kind in (at.markdown, at.caption, at.error, at.info, at.warning, at.title) for e in kind]
    return "\n".join(str(p) for p in parts)


def _sign_in(at, name: str, password: str):
    at.text_input(key="login_user").input(name)
    at.text_input(key="login_password").input(password)
    return at.button(key="login_submit").click().run()


def test_on_the_network_only_the_login_form_shows(app_test, with_users, on_the_network) -> None:
    at = app_test()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Sign in to Inspect"]
    assert {w.key for w in at.text_input} == {"login_user", "login_password"}
    assert len(at.selectbox) == 0 and len(at.radio) == 0  # no page content
    assert "Workspace" not in _texts(at) and len(at.sidebar.button) == 0  # no paths, no sign-out


def test_wrong_password_is_refused(app_test, with_users, on_the_network) -> None:
    at = app_test()
    at.run()
    _sign_in(at, "eng", "inspector pass")
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    assert [t.value for t in at.title] == ["Sign in to Inspect"]
    _sign_in(at, "nobody", "engineer pass")
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    assert "auth_user" not in at.session_state


def test_no_users_yet_shows_how_to_create_one(app_test, users_file, on_the_network) -> None:
    at = app_test()
    at.run()
    assert not at.exception
    assert len(at.text_input) == 0
    assert "python -m core users add NAME --role engineer" in at.error[0].value


def test_require_login_on_localhost_by_setting(app_test, with_users, monkeypatch) -> None:
    monkeypatch.setenv("INSPECT_REQUIRE_LOGIN", "1")
    at = app_test()
    at.run()
    assert [t.value for t in at.title] == ["Sign in to Inspect"]


def test_localhost_without_users_needs_no_login(app_test, users_file) -> None:
    at = app_test()
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Inspect a part"]
    assert at.session_state["auth_role"] == auth.ENGINEER


def test_inspector_sees_no_job_buttons_engineer_does(app_test, with_users, on_the_network) -> None:
    at = app_test()
    at.run()
    _sign_in(at, "ina", "inspector pass")
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Inspect a part"]
    assert "Signed in as **ina** (inspector)" in _texts(at)
    at.selectbox(key="inspect_category").set_value("grid").run()  # no model trained for grid
    assert not any(str(b.key).startswith("train:") for b in at.button)
    assert "is for engineers" in _texts(at)

    at.sidebar.button(key="logout").click().run()
    assert [t.value for t in at.title] == ["Sign in to Inspect"]
    assert "auth_user" not in at.session_state and "inspections" not in at.session_state

    _sign_in(at, "eng", "engineer pass")
    at.selectbox(key="inspect_category").set_value("grid").run()
    assert any(b.key == "train:patchcore:grid" for b in at.button)
    assert "is for engineers" not in _texts(at)


def test_a_removed_user_is_signed_out_at_the_next_click(app_test, with_users, on_the_network) -> None:
    at = app_test()
    at.run()
    _sign_in(at, "ina", "inspector pass")
    assert [t.value for t in at.title] == ["Inspect a part"]
    auth.remove_user("ina")
    at.run()
    assert [t.value for t in at.title] == ["Sign in to Inspect"]


MODEL_CHANGING_BUTTONS = {"learn_propose", "learn_apply", "history_update_bank", "learn_restore"}


def test_an_inspector_finds_no_way_to_change_a_model(
    app_test, with_users, on_the_network, app_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed in as an inspector: no control on any page changes a model; an engineer gets them."""
    import shutil

    from core.learning.versions import derived_meta, load_detector, save_derived

    shutil.copytree(app_home / "models", tmp_path / "models")
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    det = load_detector("patchcore", "tile")
    meta = derived_meta(det, kind="recalibrate", change="threshold x2", inspections=[], who="eng")
    meta.calibration.image_threshold *= 2
    save_derived(det, meta)  # a second version: restore is on offer
    image = sorted((app_home / "demo_data" / "tile" / "test" / "good").glob("*.png"))[0]

    def buttons_on_every_page(at) -> set[str]:
        keys: set[str] = set()
        for page in (  # the History page last: _texts then reads its text
            "pages/inspection.py",
            "pages/model_comparison.py",
            "pages/similar_defects.py",
            "pages/inspection_history.py",
        ):
            at.switch_page(page).run()
            assert not at.exception, [e.value for e in at.exception]
            keys |= {str(b.key) for b in at.button}
        return keys

    at = app_test()
    at.run()
    _sign_in(at, "ina", "inspector pass")
    at.file_uploader(key="inspect_upload").upload(image.name, image.read_bytes(), "image/png")
    at.run()  # one inspection in the history: the History page shows its learning panel
    keys = buttons_on_every_page(at)
    assert "history_save" in keys  # feedback: the inspector's part
    assert not keys & MODEL_CHANGING_BUTTONS, keys
    assert not [k for k in keys if k.split(":")[0] in {"train", "evaluate", "index"} or k.startswith("evaluate")], keys
    assert "are for engineers" in _texts(at)  # the History page says why its learning controls are not there

    at.sidebar.button(key="logout").click().run()
    _sign_in(at, "eng", "engineer pass")
    assert {"learn_propose", "history_update_bank", "learn_restore"} <= buttons_on_every_page(at)
