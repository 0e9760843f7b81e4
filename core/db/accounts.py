"""Users and API keys as rows of a server database (core.auth keeps the rules; this, the rows).

core.auth works on one document, ``{"users": {name: {...}}, "api_keys": {name: {...}}}``, which on
one PC is the file ``users.json``. With a server database the same document is read from, and
written back to, the ``users`` and ``api_keys`` tables, inside one transaction that holds an
exclusive lock on both, so two engineers adding users from two machines never lose a change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, text
from sqlalchemy.exc import DBAPIError

from core.db import migrate
from core.db.engine import reason, shown
from core.db.schema import api_keys, users
from core.errors import AuthError

_USER_FIELDS = ("role", "created", "salt", "hash", "n", "r", "p")
_KEY_FIELDS = ("role", "created", "sha256")


def _document(con: Connection) -> dict[str, Any]:
    return {
        "users": {r.name: {f: getattr(r, f) for f in _USER_FIELDS} for r in con.execute(select(users))},
        "api_keys": {r.name: {f: getattr(r, f) for f in _KEY_FIELDS} for r in con.execute(select(api_keys))},
    }


def read(engine: Engine) -> dict[str, Any]:
    """The users and API keys, as core.auth's document."""
    try:
        migrate.ensure(engine)
        with engine.connect() as con:
            return _document(con)
    except DBAPIError as exc:
        raise AuthError(f"the users in {shown(engine.url)} cannot be read: {reason(exc)}") from None


@contextmanager
def editing(engine: Engine) -> Iterator[dict[str, Any]]:
    """The document to change in place; what changed is written when the block ends, atomically."""
    try:
        migrate.ensure(engine)
        with engine.begin() as con:
            if con.dialect.name == "postgresql":
                con.execute(text("LOCK TABLE users, api_keys IN EXCLUSIVE MODE"))
            before = _document(con)
            after = {"users": dict(before["users"]), "api_keys": dict(before["api_keys"])}
            yield after
            _write(con, before, after)
    except DBAPIError as exc:
        raise AuthError(f"the users in {shown(engine.url)} cannot be changed: {reason(exc)}") from None


def _write(con: Connection, before: dict[str, Any], after: dict[str, Any]) -> None:
    for section, table, names in (("users", users, _USER_FIELDS), ("api_keys", api_keys, _KEY_FIELDS)):
        old, new = before[section], after[section]
        changed = [n for n in old if n not in new or new[n] != old[n]]
        if changed:
            con.execute(delete(table).where(table.c.name.in_(changed)))
        rows = [{"name": n, **{f: e[f] for f in names}} for n, e in new.items() if n not in old or old[n] != e]
        if rows:
            con.execute(insert(table), rows)
