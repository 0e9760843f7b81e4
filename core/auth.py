"""Who may use Inspect: local users with hashed passwords, API keys, and two roles.

On one PC the users live in one local file, ``<workspace>/users.json``
(:attr:`core.settings.Settings.users_file`); in a plant, whose stations and dashboard share a
server database (``INSPECT_DATABASE_URL``), they are rows of its ``users`` and ``api_keys`` tables
(:mod:`core.db.accounts`), so a key made once works at every station. Either is managed with
``python -m core users ...``. The decisions, in one place:

* **Passwords** are never stored: each user has a random 16-byte salt and the ``hashlib.scrypt``
  hash of the password with it (N=2^14, r=8, p=1: ~16 MB and tens of milliseconds per try, so a
  stolen file is slow to attack). The parameters are stored per user, so they can be raised later
  without invalidating old entries. Hashes are compared with ``hmac.compare_digest``, and an
  unknown user name costs the same scrypt as a known one, so timing does not reveal which names
  exist.
* **API keys** (for a later REST API) are 32 random bytes shown once; only their SHA-256 is
  stored. A key is random, not chosen by a person, so a fast hash is enough: there is nothing to
  guess. Lookup compares against every stored hash in constant time.
* **The file** is written atomically (a temporary file in the same folder, then ``os.replace``)
  with mode 0600, under an exclusive lock, so two ``users add`` commands cannot lose each other's
  change and a reader never sees half a file. A damaged file is an :class:`AuthError` (the app
  then refuses everyone rather than letting everyone in).
* **Roles**: *inspector* inspects, gives feedback and browses history, comparison and similar
  defects; *engineer* may also change a model (train, recalibrate, apply a threshold, grow a memory
  bank, restore a version, choose an export's runtime) and start or cancel background jobs. Every
  service that does so takes an :class:`Actor` and calls :func:`require_engineer` itself, so a page
  that forgets to hide a button still cannot change a model; the actor's name is recorded with the
  change. The command line acts as :data:`COMMAND_LINE`, an engineer: whoever has a shell on the
  server can write the models folder anyway.
* **When a login is needed** (:func:`login_required`): whenever the app is reachable beyond this
  computer (Streamlit bound to anything but a loopback address), when ``INSPECT_REQUIRE_LOGIN=1``,
  or when any user exists. Only a loopback-bound app with no users asks for nothing: the
  single-PC setup.

No Streamlit here: the app (``app.py``) and the command line (``core/__main__.py``) both call this.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import settings
from core.errors import AuthError, PermissionDeniedError
from core.files import write_atomically

INSPECTOR = "inspector"
ENGINEER = "engineer"
ROLES: tuple[str, ...] = (INSPECTOR, ENGINEER)

#: Smallest accepted password length.
MIN_PASSWORD_LENGTH = 8
#: scrypt cost parameters for new passwords (stored with each hash).
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 2**14, 8, 1, 32
SALT_BYTES = 16
#: API keys start with this, so a leaked one is recognisable in logs and secret scanners.
API_KEY_PREFIX = "insp_"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# A fixed salt for the decoy hash computed when a user name is unknown (see verify_password).
_DECOY_SALT = b"inspect-no-such-user"


@dataclass(frozen=True)
class Entry:
    """A user or API key as listed (never with its hash)."""

    name: str
    role: str
    created: str


@dataclass(frozen=True)
class Actor:
    """Who asks for an action: the name recorded with a change, the role that the check reads."""

    name: str
    role: str | None


#: The command line and what an engineer started from it (jobs, the background queue's resume).
COMMAND_LINE = Actor("command line", ENGINEER)


# --------------------------------------------------------------------------------------------
# Roles and when to ask
# --------------------------------------------------------------------------------------------


def can_start_jobs(role: str | None) -> bool:
    """Whether ``role`` may start (or cancel) background jobs: engineers only."""
    return role == ENGINEER


def can_change_models(role: str | None) -> bool:
    """Whether ``role`` may change a model everyone uses (a new version, a threshold): engineers only."""
    return role == ENGINEER


def require_engineer(actor: Actor | None, action: str) -> str:
    """The actor's name when it may change models; else :class:`PermissionDeniedError` naming ``action``."""
    if actor is None or not can_change_models(actor.role):
        who = f"{actor.name} is signed in as {actor.role or 'no role'}" if actor else "nobody is signed in"
        raise PermissionDeniedError(f"{action} changes what every inspection uses: it is an engineer's action ({who})")
    return actor.name


def is_loopback(address: str | None) -> bool:
    """Whether a server bound to ``address`` is reachable from this computer only.

    No address (Streamlit's default when nothing is configured) means *all* interfaces.
    """
    address = (address or "").strip().strip("[]")
    if not address:
        return False
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name: it may resolve to a network interface
        return False


def login_required(server_address: str | None) -> bool:
    """Whether the app must ask for a login (see the module docstring)."""
    return settings.require_login() or not is_loopback(server_address) or has_users()


# --------------------------------------------------------------------------------------------
# The users file
# --------------------------------------------------------------------------------------------


def users_path() -> Path | str:
    """Where the users are kept: the users file, or the server database (its URL, password hidden)."""
    from core.db import engine as db

    url = settings.get_settings().database_url
    return db.shown(url) if db.is_server(url) else settings.get_settings().users_file


#: How long a station reuses the users it read from a server database (every API request asks).
SERVER_READ_TTL_S = 5.0
# engine URL -> (monotonic time read, document): the last users read from each server database
_LAST_READ: dict[str, tuple[float, dict[str, Any]]] = {}


def _load() -> dict[str, Any]:
    """The users and API keys, from the server database or the users file.

    A server's answer is reused for a few seconds, and while the server cannot be reached a station
    goes on with the users it read last (logged), so that its line keeps inspecting; a station that
    never reached it refuses everyone.
    """
    from core.db.engine import configured_server

    engine = configured_server()
    if engine is None:
        return _read(settings.get_settings().users_file)
    from core.db import accounts

    key = engine.url.render_as_string(hide_password=False)
    last = _LAST_READ.get(key)
    if last is not None and time.monotonic() - last[0] < SERVER_READ_TTL_S:
        return last[1]
    try:
        data = accounts.read(engine)
    except AuthError as exc:
        if last is None:
            raise
        logging.getLogger(__name__).warning("%s; going on with the users read %.0f s ago", exc, time.monotonic() - last[0])
        return last[1]
    _LAST_READ[key] = (time.monotonic(), data)
    return data


def _empty() -> dict[str, Any]:
    return {"users": {}, "api_keys": {}}


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _empty()
    except OSError as exc:
        raise AuthError(f"the users file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
        if not isinstance(data.get("users"), dict) or not isinstance(data.get("api_keys"), dict):
            raise ValueError("missing sections")
    except (ValueError, AttributeError):
        raise AuthError(
            f"the users file {path} is damaged; restore it from a backup or delete it and add the users again"
        ) from None
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``data``, readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"), sync=True, private=True)


@contextmanager
def _editing() -> Iterator[dict[str, Any]]:
    """Read-modify-write of the users under an exclusive lock; written when the block ends."""
    from core.db.engine import configured_server

    engine = configured_server()
    if engine is not None:
        from core.db import accounts

        with accounts.editing(engine) as data:
            yield data
        _LAST_READ.clear()  # this process sees its own change at once
        return
    path = settings.get_settings().users_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no concurrent CLI edits to guard there
            fcntl = None
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        data = _read(path)
        yield data
        _write(path, data)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_name(name: str, what: str) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise AuthError(f"{what} name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', '-' or '@'")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError(f"role {role!r} is unknown: use {' or '.join(ROLES)}")
    return role


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=128 * 1024 * 1024)


def hash_password(password: str) -> dict[str, Any]:
    """A fresh salt and the scrypt hash of ``password``, with the parameters used."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
    return {"salt": salt.hex(), "hash": digest.hex(), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}


def password_matches(password: str, record: dict[str, Any]) -> bool:
    """Whether ``password`` hashes to ``record``'s hash (constant-time comparison)."""
    expected = bytes.fromhex(record["hash"])
    digest = _scrypt(password, bytes.fromhex(record["salt"]), int(record["n"]), int(record["r"]), int(record["p"]), len(expected))
    return hmac.compare_digest(digest, expected)


def add_user(name: str, password: str, role: str, *, replace: bool = False) -> Entry:
    """Add a user (or, with ``replace``, set an existing user's password and role)."""
    name = _check_name(name, "user")
    _check_role(role)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    record = {"role": role, "created": _now(), **hash_password(password)}
    with _editing() as data:
        if name in data["users"] and not replace:
            raise AuthError(f"user {name!r} already exists; use --replace to set a new password or role")
        data["users"][name] = record
    return Entry(name, role, record["created"])


def _remove(section: str, name: str, what: str) -> None:
    """Remove entry ``name`` of ``section`` ("users", "api_keys"); AuthError when there is none."""
    with _editing() as data:
        if data[section].pop(name.strip(), None) is None:
            raise AuthError(f"there is no {what} {name.strip()!r}")


def _entries(section: str) -> list[Entry]:
    """The entries of ``section`` ("users", "api_keys"), by name."""
    return [Entry(n, e.get("role", "?"), e.get("created", "")) for n, e in sorted(_load()[section].items())]


def remove_user(name: str) -> None:
    _remove("users", name, "user")


def list_users() -> list[Entry]:
    return _entries("users")


def has_users() -> bool:
    """Whether at least one login user exists (API keys alone do not count)."""
    return bool(_load()["users"])


def role_of(name: str) -> str | None:
    """The current role of user ``name`` (None once removed): re-read on every page run."""
    user = _load()["users"].get(name)
    return user.get("role") if user else None


def verify_password(name: str, password: str) -> str | None:
    """The role of ``name`` when ``password`` is right, else None (wrong name or password alike)."""
    user = _load()["users"].get(name.strip())
    if user is None:
        # Spend the same scrypt as for a real user: the answer time must not tell names apart.
        _scrypt(password, _DECOY_SALT, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
        return None
    try:
        ok = password_matches(password, user)
    except (KeyError, ValueError, TypeError):
        return None  # a hand-edited entry without a valid hash lets nobody in
    return user.get("role") if ok else None


# --------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def add_api_key(name: str, role: str) -> str:
    """Create an API key named ``name`` with ``role``; returns the key, which is not stored."""
    name = _check_name(name, "API key")
    _check_role(role)
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    with _editing() as data:
        if name in data["api_keys"]:
            raise AuthError(f"API key {name!r} already exists; remove it first with `python -m core users remove-key {name}`")
        data["api_keys"][name] = {"role": role, "created": _now(), "sha256": _key_hash(key)}
    return key


def remove_api_key(name: str) -> None:
    _remove("api_keys", name, "API key")


def list_api_keys() -> list[Entry]:
    return _entries("api_keys")


def role_for_api_key(key: str) -> str | None:
    """The role of API key ``key``, or None. Every stored hash is compared, in constant time."""
    if not key:
        return None
    digest = _key_hash(key).encode()
    found: str | None = None
    for entry in _load()["api_keys"].values():
        if hmac.compare_digest(digest, str(entry.get("sha256", "")).encode()) and found is None:
            found = entry.get("role")
    return found
