"""ASGI plumbing that must act before FastAPI reads a request body: the key check, the upload limit.

Both answer in the API's ``{"error": ...}`` format. They are middleware rather than FastAPI
dependencies because FastAPI reads (and spools to disk) a multipart body before it runs any
dependency: a client without a key, or with a 10 GB "image", must be stopped before that.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.api.errors import error_response, status_for, too_large_message
from core.api.security import OPEN_PATHS, role_for
from core.errors import InspectError

#: Request-scope state key where the caller's role is left for the endpoints.
ROLE_STATE = "inspect_role"


def route_path(scope: Scope) -> str:
    """The path inside this app (without the ``/api`` prefix of the one-process server)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class ApiKeyMiddleware:
    """Authorise every HTTP request outside :data:`~core.api.security.OPEN_PATHS` before its body is read."""

    def __init__(self, app: ASGIApp, *, loopback: bool) -> None:
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            role = role_for(Headers(scope=scope).get("authorization"), loopback=self.loopback)
        except InspectError as exc:  # also AuthError: a damaged users file refuses everyone
            await error_response(str(exc), status_for(exc))(scope, receive, send)
            return
        scope.setdefault("state", {})[ROLE_STATE] = role
        await self.app(scope, receive, send)


class PartSizes:
    """Bytes since the last multipart boundary of a body read chunk by chunk.

    Starlette's parser limits the size of form fields but not of files, so a batch of 16 allowed
    bytes-worth could hide one 500 MB "image" that would be spooled whole before the per-file
    check: this watches each part's size while the bytes arrive. A boundary split between two
    chunks is found through the tail kept from the previous one.
    """

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.delimiter = b"--" + boundary
        self.limit = limit
        self.tail = b""
        self.current = 0

    def feed(self, chunk: bytes) -> bool:
        """Account for ``chunk``; False once a part has grown past the limit (any part the chunk holds)."""
        data = self.tail + chunk
        size = self.current - len(self.tail)  # the current part's bytes before data[0] (the tail is counted)
        start = 0
        while (found := data.find(self.delimiter, start)) >= 0:
            if size + found - start > self.limit:
                return False
            size, start = 0, found + len(self.delimiter)
        self.current = size + len(data) - start
        self.tail = data[-(len(self.delimiter) - 1) :]
        return self.current <= self.limit


def boundary_of(headers: Headers) -> bytes | None:
    """The multipart boundary of a request, or None when it is not multipart."""
    kind, _, params = headers.get("content-type", "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    return None


class UploadLimitMiddleware:
    """Refuse a request body larger than its route's limit: at once from Content-Length, else
    while the bytes arrive (chunked uploads), so an oversized upload is never stored whole. On
    routes with a per-file limit (a batch), each multipart part is held to it while it arrives."""

    def __init__(self, app: ASGIApp, *, limits: dict[str, int], part_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.limits = limits  # route path -> most bytes its body may have
        self.part_limits = part_limits or {}  # route path -> most bytes one part (file) may have

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(route_path(scope)) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(too_large_message(), 413)(scope, receive, send)
            return
        seen = 0
        boundary = boundary_of(headers)
        part_limit = self.part_limits.get(route_path(scope))
        parts = PartSizes(boundary, part_limit) if boundary and part_limit else None

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                seen += len(body)
                if seen > limit or (parts is not None and not parts.feed(body)):
                    # An HTTPException passes FastAPI's body parsing unchanged (any other error
                    # would become a vague 400); core.api.errors words it.
                    raise HTTPException(413)
            return message

        await self.app(scope, counted, send)
