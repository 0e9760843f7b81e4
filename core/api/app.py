"""The FastAPI app factory: :func:`create_api`.

A factory, not a module-level app, so that each server (``python -m core serve``, the
one-process ``server.py``, a test) builds one with the settings and the model cache it needs.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from core import auth
from core.api import security
from core.api.detectors import DetectorCache, Loader
from core.api.errors import install_error_handlers
from core.api.metrics import ApiMetrics, ResponseCounter
from core.api.middleware import ApiKeyMiddleware, UploadLimitMiddleware
from core.api.routes import body_limits, health_router, metrics_router, part_limits, v1_router
from core.settings import api_max_batch, max_upload_bytes, station

DESCRIPTION = """\
Inspect for line-side clients: post an image, get GOOD/DEFECT with the scores, the anomaly map's
statistics and the ids of its history row and similar-defect point.

Scores and thresholds are normalised: **0.5 is the model's calibrated threshold**. Every error is
`{"error": "<one line>"}` with a 4xx (your request) or 503 (try again later) status. With an API key
configured, send `Authorization: Bearer <key>` on every call but `/healthz` and `/readyz`.
"""


def create_api(*, host: str = "127.0.0.1", load: Loader | None = None) -> FastAPI:
    """The API as served on ``host`` (an open API answers 403 beyond loopback, see core.api.security).

    ``load``: a (model, category) -> Detector function with its own cache (the dashboard's, in the
    one-process server) so that pages and API share loaded models; default: the API's own LRU.
    """
    max_batch = api_max_batch()
    station()  # a bad INSPECT_STATION is one line at start, not a failure at the first inspection
    app = FastAPI(title="Inspect API", version="1", description=DESCRIPTION)
    app.state.detectors = DetectorCache(load=load)
    app.state.metrics = ApiMetrics()
    if station():  # a line station reports what it has loaded, for the dashboard
        from core.stations import Heartbeat

        beat = Heartbeat(station(), app.state.detectors.loaded).start()
        app.state.detectors.on_load = beat.poke
    install_error_handlers(app)
    # The last added runs first: the key is checked before the size, both before the body is read.
    app.add_middleware(
        UploadLimitMiddleware, limits=body_limits(max_upload_bytes(), max_batch), part_limits=part_limits(max_upload_bytes())
    )
    app.add_middleware(ApiKeyMiddleware, loopback=auth.is_loopback(host))
    app.add_middleware(ResponseCounter, metrics=app.state.metrics)  # outermost: every answer counts
    app.include_router(health_router())
    app.include_router(metrics_router())
    app.include_router(v1_router(max_batch=max_batch))
    app.openapi = lambda: openapi_as_configured(app, loopback=auth.is_loopback(host))
    return app


def openapi_as_configured(app: FastAPI, *, loopback: bool) -> dict[str, Any]:
    """The OpenAPI document with the security that is configured now.

    With a key configured every /v1 call needs ``Authorization: Bearer``; with none (a loopback
    server, the single-PC set-up) nothing is asked, and the document must not say otherwise, or a
    client generated from it sends a header the server ignores and a contract test expects 401s
    that never come. Keys can be added while the server runs, so the document is shaped per call.
    (Beyond loopback with no key, every call is refused with 403 until one exists: that stays.)
    """
    if app.openapi_schema is None:
        app.openapi_schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema = copy.deepcopy(app.openapi_schema)
    if not security.keys_configured():
        schema.get("components", {}).pop("securitySchemes", None)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.pop("security", None)
                for status in ("401",) if not loopback else ("401", "403"):
                    operation.get("responses", {}).pop(status, None)
    return schema
