"""Every problem the API meets answers ``{"error": "<one line>"}`` with a fitting HTTP status.

Line-side clients branch on the status (retry on 503, fix the request on 4xx) and show or log the
one line; they should never have to parse FastAPI's nested validation format or get an HTML page.
A bug (anything that is not an :class:`~core.errors.InspectError`) is still a 500, in the same
format, with its traceback in the server log only.
"""

from __future__ import annotations

import logging
import os
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.errors import (
    AuthError,
    BusyError,
    ConfigError,
    DatasetError,
    ImageError,
    InspectError,
    ModelNotTrainedError,
    ModelUnreadableError,
    ResultsFileError,
    StoreError,
    WeightsMissingError,
)
from core.settings import api_max_batch, max_upload_bytes

log = logging.getLogger("inspect.api")

#: How long a client should wait before retrying a 503 (a busy decoder frees up within seconds).
RETRY_AFTER_S = 5


class NotFoundError(InspectError):
    """An unknown inspection id, category, model name or endpoint."""


class BadValueError(InspectError):
    """A request value out of range or of the wrong kind (threshold, k, feedback...)."""


class TooLargeError(ImageError):
    """An upload larger than INSPECT_MAX_UPLOAD_MB (or a batch with too many images)."""


class UnauthorizedError(InspectError):
    """No API key, or a key that is not valid."""


class ForbiddenError(InspectError):
    """The caller is known but may not do this (or the API may not be open on this address)."""


#: The first matching class decides the status, so subclasses come before their bases.
STATUS_BY_ERROR: tuple[tuple[type[InspectError], int], ...] = (
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (TooLargeError, 413),
    (BusyError, 503),
    (ImageError, 422),
    (ModelUnreadableError, 409),
    (ModelNotTrainedError, 404),
    (BadValueError, 422),
    (DatasetError, 422),
    # The server's own state or settings, not the request: try again later or ask an engineer.
    (StoreError, 503),
    (AuthError, 503),
    (ConfigError, 503),
    (ResultsFileError, 503),
    (WeightsMissingError, 503),
)


def status_for(exc: InspectError) -> int:
    """The HTTP status of an :class:`InspectError` (400 for one not listed)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


#: An absolute path in a message: a slash after a space, a quote or the start, up to a space or quote.
_PATH = re.compile(r"(?<![^\s'\"`(])/[^\s'\"`,;:()]+")
SERVER_PATH = "[server path]"


def without_server_paths(message: str) -> str:
    """``message`` with every absolute path on this server's file system replaced.

    The core's messages name files for the engineer at the console; a line-side client, or a caller
    without a key, must not learn the server's layout from them. A path counts as the server's when
    its first folder exists here (``/srv/...``, ``/home/...``); an API path such as ``/v1/x`` does
    not, so it stays.
    """

    def hide(match: re.Match[str]) -> str:
        path = match.group(0).rstrip(".")
        top = "/" + path.strip("/").split("/")[0]  # a path whose first folder exists here is the server's
        if os.path.isdir(top):
            return SERVER_PATH + match.group(0)[len(path) :]
        return match.group(0)

    return _PATH.sub(hide, message)


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error format, with Retry-After on 503 and the Bearer challenge on 401; no server paths."""
    headers = dict(headers or {})
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": without_server_paths(message)}, status_code=status, headers=headers)


def too_large_message() -> str:
    return f"the upload is larger than {max_upload_bytes() / 1e6:g} MB per image (INSPECT_MAX_UPLOAD_MB)"


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: ``threshold: Input should be a valid number; ...``."""
    parts = []
    for problem in exc.errors():
        loc = [str(p) for p in problem.get("loc", ()) if p not in ("body", "query", "path", "form")]
        where = ".".join(loc)
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg", "invalid")))
    return "; ".join(parts) or "the request is not valid"


def too_many_files_message() -> str:
    return f"a batch holds at most {api_max_batch()} images (INSPECT_API_MAX_BATCH)"


def _is_too_many_files(exc: HTTPException) -> bool:
    """Starlette's multipart parser stops at its ``max_files`` (one more than the batch limit)."""
    return exc.status_code == 400 and "Maximum number of files" in str(exc.detail)


def _http_message(request: Request, exc: HTTPException) -> str:
    if exc.status_code == 413:
        return too_large_message()
    if _is_too_many_files(exc):
        return too_many_files_message()
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"no such endpoint: {request.method} {request.url.path}"
    if exc.status_code == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return str(exc.detail)


async def _on_inspect_error(_request: Request, exc: InspectError) -> JSONResponse:
    return error_response(str(exc), status_for(exc))


async def _on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(validation_message(exc), 422)


async def _on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
    status = 413 if _is_too_many_files(exc) else exc.status_code
    return error_response(_http_message(request, exc), status, headers=exc.headers)  # 405 keeps its Allow


async def _on_bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(f"internal error ({type(exc).__name__}); the server log has the details", 500)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the endpoints can raise to the ``{"error": ...}`` format."""
    app.add_exception_handler(InspectError, _on_inspect_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_bug)
