"""core.auth and `python -m core users`: hashed passwords, roles, the 0600 users file, API keys."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from core import auth
from core.cli import main
from core.errors import AuthError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace of its own (the users file is INSPECT_HOME/users.json)."""
    monkeypatch.setenv("INSPECT_HOME", str(tmp_path))
    monkeypatch.delenv("INSPECT_REQUIRE_LOGIN", raising=False)
    monkeypatch.delenv("INSPECT_USERS_FILE", raising=False)
    return tmp_path


@pytest.fixture(params=["users file", "postgresql"])
def accounts(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same tests on both places users live: the workspace's users file, a server database."""
    if request.param == "postgresql":
        monkeypatch.setenv("INSPECT_DATABASE_URL", request.getfixturevalue("postgres_url"))
    return home


def _stored(home: Path) -> dict:
    return json.loads((home / "users.json").read_text())


# --- passwords ---------------------------------------------------------------------------------


def test_passwords_are_stored_as_salted_scrypt_hashes(home: Path) -> None:
    auth.add_user("alice", "correct horse", auth.ENGINEER)
    auth.add_user("bob", "correct horse", auth.INSPECTOR)
    text = (home / "users.json").read_text()
    assert "correct horse" not in text
    alice, bob = _stored(home)["users"]["alice"], _stored(home)["users"]["bob"]
    assert alice["salt"] != bob["salt"] and alice["hash"] != bob["hash"]  # per-user salt
    expected = hashlib.scrypt(
        b"correct horse", salt=bytes.fromhex(alice["salt"]), n=alice["n"], r=alice["r"], p=alice["p"], dklen=32
    )
    assert alice["hash"] == expected.hex()


def test_right_password_gives_the_role_and_wrong_ones_nothing(accounts: Path) -> None:
    auth.add_user("alice", "correct horse", auth.ENGINEER)
    auth.add_user("bob", "battery staple", auth.INSPECTOR)
    assert auth.verify_password("alice", "correct horse") == auth.ENGINEER
    assert auth.verify_password(" bob ", "battery staple") == auth.INSPECTOR
    assert auth.verify_password("alice", "battery staple") is None
    assert auth.verify_password("alice", "correct horse ") is None
    assert auth.verify_password("mallory", "correct horse") is None
    assert auth.verify_password("alice", "") is None


def test_users_are_checked_added_replaced_and_removed(accounts: Path) -> None:
    with pytest.raises(AuthError, match="at least 8 characters"):
        auth.add_user("alice", "short", auth.ENGINEER)
    with pytest.raises(AuthError, match="role 'admin' is unknown"):
        auth.add_user("alice", "long enough", "admin")
    with pytest.raises(AuthError, match="not allowed"):
        auth.add_user("../etc", "long enough", auth.ENGINEER)
    auth.add_user("alice", "long enough", auth.INSPECTOR)
    with pytest.raises(AuthError, match="already exists"):
        auth.add_user("alice", "another one", auth.ENGINEER)
    auth.add_user("alice", "another one", auth.ENGINEER, replace=True)
    assert auth.verify_password("alice", "long enough") is None
    assert auth.role_of("alice") == auth.ENGINEER
    assert [(e.name, e.role) for e in auth.list_users()] == [("alice", "engineer")]
    auth.remove_user("alice")
    assert auth.role_of("alice") is None and not auth.has_users()
    with pytest.raises(AuthError, match="there is no user 'alice'"):
        auth.remove_user("alice")


def test_only_engineers_start_jobs() -> None:
    assert auth.can_start_jobs(auth.ENGINEER)
    assert not auth.can_start_jobs(auth.INSPECTOR)
    assert not auth.can_start_jobs(None)
    assert not auth.can_start_jobs("admin")


# --- the file ------------------------------------------------------------------------------------


def test_users_file_is_private_and_written_whole(home: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not make the file readable by others
    try:
        auth.add_user("alice", "correct horse", auth.ENGINEER)
        auth.add_api_key("scanner", auth.INSPECTOR)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((home / "users.json").stat().st_mode) == 0o600
    assert not list(home.glob(".users-*"))  # no temporary file left behind


def test_damaged_users_file_lets_nobody_in(home: Path) -> None:
    (home / "users.json").write_text("{not json")
    with pytest.raises(AuthError, match="is damaged"):
        auth.verify_password("alice", "correct horse")
    with pytest.raises(AuthError, match="is damaged"):
        auth.login_required("127.0.0.1")


# --- API keys ------------------------------------------------------------------------------------


def test_api_keys_are_shown_once_and_looked_up_by_hash(accounts: Path) -> None:
    key = auth.add_api_key("line3", auth.INSPECTOR)
    other = auth.add_api_key("ci", auth.ENGINEER)
    assert key.startswith(auth.API_KEY_PREFIX) and len(key) > 40 and key != other
    assert key not in json.dumps(auth._load())  # noqa: SLF001 - only the key's hash is stored
    assert auth.role_for_api_key(key) == auth.INSPECTOR
    assert auth.role_for_api_key(other) == auth.ENGINEER
    assert auth.role_for_api_key(key[:-1]) is None
    assert auth.role_for_api_key("") is None
    assert not auth.has_users()  # keys are not login users
    with pytest.raises(AuthError, match="already exists"):
        auth.add_api_key("line3", auth.ENGINEER)
    auth.remove_api_key("line3")
    assert auth.role_for_api_key(key) is None
    assert auth.role_for_api_key(other) == auth.ENGINEER


# --- when a login is needed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address,loopback",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.1.1", True),
        ("0.0.0.0", False),
        ("", False),
        (None, False),
        ("192.168.1.20", False),
        ("::", False),
        ("inspect.local", False),
    ],
)
def test_loopback_addresses(address: str | None, loopback: bool) -> None:
    assert auth.is_loopback(address) is loopback


def test_login_required_beyond_loopback_on_request_or_once_users_exist(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not auth.login_required("127.0.0.1")  # the single-PC setup: no users, no login
    assert auth.login_required("0.0.0.0")
    assert auth.login_required(None)  # Streamlit's default binds every interface
    monkeypatch.setenv("INSPECT_REQUIRE_LOGIN", "1")
    assert auth.login_required("127.0.0.1")
    monkeypatch.delenv("INSPECT_REQUIRE_LOGIN")
    auth.add_user("alice", "correct horse", auth.INSPECTOR)
    assert auth.login_required("127.0.0.1")


# --- command line ----------------------------------------------------------------------------------


def test_cli_add_list_remove(accounts: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse\n"))
    assert main(["users", "add", "alice", "--role", "engineer", "--password-stdin"]) == 0
    prompts = iter(["battery staple", "battery staple"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(prompts))
    assert main(["users", "add", "bob", "--role", "inspector"]) == 0
    assert auth.verify_password("alice", "correct horse") == "engineer"
    assert auth.verify_password("bob", "battery staple") == "inspector"
    capsys.readouterr()
    assert main(["users", "list"]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "engineer" in out and "bob" in out and "inspector" in out
    assert "salt" not in out and "hash" not in out
    assert main(["users", "remove", "bob"]) == 0
    assert auth.role_of("bob") is None


def test_cli_errors_are_one_line(home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    prompts = iter(["battery staple", "battery stapel"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(prompts))
    assert main(["users", "add", "bob", "--role", "inspector"]) == 2
    assert capsys.readouterr().err.strip() == "error: the two passwords differ; nothing was changed"
    assert main(["users", "remove", "nobody"]) == 2
    assert capsys.readouterr().err.strip() == "error: there is no user 'nobody'"
    with pytest.raises(SystemExit) as exit_:
        main(["users", "add", "bob", "--role", "admin"])
    assert exit_.value.code == 2
    assert not (home / "users.json").exists() or not auth.has_users()


def test_cli_add_key_prints_the_key_once_on_stdout(home: Path) -> None:
    env = {**os.environ, "INSPECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "core", "users", "add-key", "line3", "--role", "inspector"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith(auth.API_KEY_PREFIX) and "\n" not in key
    assert "not shown again" in result.stderr
    assert auth.role_for_api_key(key) == "inspector"
    listed = subprocess.run(
        [sys.executable, "-m", "core", "users", "list"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert "line3" in listed.stdout and key not in listed.stdout


def test_two_engineers_adding_users_at_once_lose_nothing(accounts: Path) -> None:
    """Two processes (two machines' `users add`) on the same users: both users are kept."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = "import sys\nfrom core import auth\nfor i in range(5):\n    auth.add_api_key(f'{sys.argv[1]}{i}', 'inspector')\n"
    procs = [subprocess.Popen([sys.executable, "-c", script, tag], cwd=REPO, env=env) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(e.name for e in auth.list_api_keys()) == sorted(f"{t}{i}" for t in "ab" for i in range(5))
