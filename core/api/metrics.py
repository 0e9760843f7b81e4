"""What an operator's Prometheus scrapes from one API process: ``GET /metrics`` (prometheus-client).

Per process, as Prometheus expects (it sums over stations itself): images judged by station, model,
category and verdict; the model time per image as a histogram; answers by HTTP status class, errors
included; and, read at scrape time, the uploads waiting for the similar-defect index. Each app has
its own registry, so two apps in one process (tests, the one-process server) never share counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import station

if TYPE_CHECKING:
    from core.inference.detector import Detector
    from core.services.inspection import Inspected

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Model time per image, seconds: from a GPU's few milliseconds to a large image on two CPU cores.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """The counters of one API app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inspections = Counter(
            "inspect_inspections",
            "Images judged by this process",
            ["station", "model", "category", "verdict"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inspect_inspection_seconds", "Model time per image", ["model"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.responses = Counter("inspect_http_responses", "API answers by status class", ["status"], registry=self.registry)
        self.waiting = Gauge("inspect_index_waiting", "Uploads waiting for the similar-defect index", registry=self.registry)

    def judged(self, results: list[Inspected], detector: Detector) -> None:
        meta, where = detector.meta, station() or ""
        for result in results:
            self.inspections.labels(where, meta.model, meta.category, result.judgement.verdict).inc()
            self.latency.labels(meta.model).observe(result.judgement.latency_ms / 1000.0)

    def render(self, waiting: int) -> bytes:
        """The Prometheus text exposition, with the index queue read now."""
        self.waiting.set(waiting)
        return generate_latest(self.registry)


class ResponseCounter:
    """Count every HTTP answer by status class (2xx, 4xx, 5xx), whoever wrote it: endpoint, error
    handler or the key and size checks that answer before an endpoint runs."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.responses.labels(f"{int(message['status']) // 100}xx").inc()
            await send(message)

        await self.app(scope, receive, counted)
