"""Who may call the API: Bearer keys, roles, and where an open API may listen.

The rule is the dashboard's login rule applied to machines:

* a key is configured (``INSPECT_API_KEY``, or any key made with ``python -m core users add-key``):
  every call but the health checks (and the documentation pages) needs
  ``Authorization: Bearer <key>``; the shared key acts as an engineer, a stored key with its role;
* no key at all: the API is open, which is only allowed on a loopback address. ``python -m core
  serve`` refuses to start beyond it (:func:`check_bind`); the one-process server, whose dashboard
  has its own login, keeps serving the dashboard and answers 403 to API calls until a key exists.

The check runs as ASGI middleware (:mod:`core.api.middleware`), before a request body is read:
an unauthorised client cannot make the server spool a 50 MB upload first. Keys are compared in constant time (digests of equal
length through ``hmac.compare_digest``; stored keys by :func:`core.auth.role_for_api_key`).
"""

from __future__ import annotations

import hashlib
import hmac

from core import auth
from core.api.errors import ForbiddenError, UnauthorizedError
from core.settings import api_key

#: Paths answered without a key: health checks for load balancers, and the API's documentation.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
ADD_KEY_COMMAND = "python -m core users add-key NAME --role inspector"


def keys_configured() -> bool:
    """Whether any API key exists (INSPECT_API_KEY or a stored one): then every call needs one."""
    return api_key() is not None or bool(auth.list_api_keys())


def check_bind(host: str) -> None:
    """Refuse to serve an open API beyond this computer (one line, like the dashboard's rule)."""
    if not auth.is_loopback(host) and not keys_configured():
        raise ForbiddenError(
            f"refusing to serve the API on {host or 'all interfaces'} with no API key: create one with "
            f"`{ADD_KEY_COMMAND}` or set INSPECT_API_KEY, or bind to 127.0.0.1"
        )


def bearer_token(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _same_key(given: str, expected: str) -> bool:
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(expected.encode()).digest())


def role_for(authorization: str | None, *, loopback: bool) -> str:
    """The caller's role, or :class:`UnauthorizedError` / :class:`ForbiddenError` saying why not."""
    if not keys_configured():
        if loopback:
            return auth.ENGINEER  # the single-PC setup: nothing to ask
        raise ForbiddenError(
            f"the API is reachable from the network but no API key exists: create one with `{ADD_KEY_COMMAND}` "
            "or set INSPECT_API_KEY"
        )
    token = bearer_token(authorization)
    if token is None:
        raise UnauthorizedError("this API needs a key: send `Authorization: Bearer <key>`")
    shared = api_key()
    if shared is not None and _same_key(token, shared):
        return auth.ENGINEER
    role = auth.role_for_api_key(token)
    if role is None:
        raise UnauthorizedError("the API key is not valid (revoked, mistyped, or from another server)")
    return role
