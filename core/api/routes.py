"""The endpoints: health checks at the root, everything else under ``/v1``.

Endpoints are plain (sync) functions: FastAPI runs them in its thread pool, where decoding, the
model and SQLite may block without stalling other requests. Each one checks its input, calls
:mod:`core.api.inspecting` or a :mod:`core.services` module, and answers a model from
:mod:`core.api.schemas` through :mod:`core.api.views`; every problem is an exception that
:mod:`core.api.errors` turns into ``{"error": ...}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, Request, Response, UploadFile
from fastapi.security import HTTPBearer

from core.api import schemas, views
from core.api.detectors import DetectorCache
from core.api.errors import BadValueError, NotFoundError, TooLargeError, error_response, status_for
from core.api.inspecting import check_threshold, decode, detector_for, file_name, inspect_decoded, read_upload
from core.api.metrics import CONTENT_TYPE
from core.errors import ImageError, StoreError
from core.history import History, InspectionRecord
from core.services import comparison, history_view, similar
from core.settings import station

#: Room for the form fields and multipart boundaries around the image bytes.
FORM_OVERHEAD = 64 * 1024
DEFAULT_MODEL = "patchcore"
#: Documents the Bearer scheme on /docs (the check itself is core.api.security's middleware).
BEARER = HTTPBearer(auto_error=False, description="an API key: INSPECT_API_KEY or `python -m core users add-key`")

#: Error answers every /v1 endpoint may give, for the OpenAPI page.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": schemas.ErrorOut, "description": "no or wrong API key"},
    403: {"model": schemas.ErrorOut, "description": "API open beyond this computer with no key configured"},
    404: {"model": schemas.ErrorOut, "description": "unknown inspection, category or model, or model not trained"},
    422: {"model": schemas.ErrorOut, "description": "a value is not valid (not an image, bad threshold...)"},
    503: {"model": schemas.ErrorOut, "description": "busy decoding, history or store unavailable; retry later"},
}
INSPECT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    409: {"model": schemas.ErrorOut, "description": "the model's files are there but unusable: retrain"},
    413: {"model": schemas.ErrorOut, "description": "upload larger than INSPECT_MAX_UPLOAD_MB"},
}

Category = Annotated[str, Form(description="the part family, e.g. tile", min_length=1)]
ModelName = Annotated[str, Form(description="patchcore or efficientad")]
# The range is documented for clients and checked by core.api.inspecting.check_threshold, whose
# one-line message names the scale (FastAPI's own would not).
Threshold = Annotated[
    float | None,
    Form(description="normalised 0..1 (default 0.5, the calibrated threshold)", json_schema_extra={"minimum": 0, "maximum": 1}),
]
Overlay = Annotated[bool, Form(description="true: add the heatmap overlay as a base64 PNG")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="any unique string per upload (a UUID): a retry with the same key is answered with the inspection "
        "already recorded, never recorded twice",
    ),
]
BatchImages = Annotated[list[UploadFile], File(description="the images (at most INSPECT_API_MAX_BATCH, default 16)")]
#: History ids are SQLite rowids: at most 2**63 - 1 (a larger one would overflow the query, not miss).
MAX_ID = 2**63 - 1
InspectionId = Annotated[int, Path(ge=1, le=MAX_ID, description="id from an inspect answer or the history")]
#: (file name, decoded RGB image, sha256): what core.api.inspecting.decode gives.
Decoded = tuple[str, Any, str]


def _detectors(request: Request) -> DetectorCache:
    return request.app.state.detectors


def _history() -> History:
    history, why = history_view.open_history()
    if history is None:
        raise StoreError(f"the inspection history cannot be opened: {why}")
    return history


def _record(history: History, inspection_id: int) -> InspectionRecord:
    record = history.get(inspection_id)
    if record is None:
        raise NotFoundError(f"there is no inspection {inspection_id}")
    return record


# --------------------------------------------------------------------------------------------
# Health checks (open, no key)
# --------------------------------------------------------------------------------------------


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=schemas.Health, summary="The process is up")
    def healthz() -> schemas.Health:
        return schemas.Health(status="ok")

    @router.get(
        "/readyz",
        response_model=schemas.Ready,
        responses={503: {"model": schemas.ErrorOut, "description": "no model can be loaded, or the history cannot be reached"}},
        summary="Ready for /v1/inspect: a model can be loaded, the history's database answers; the similar-defect store is reported",
    )
    def readyz(request: Request) -> Any:
        """Ready when a model can be loaded and inspections can be recorded. A similar-defect store
        that cannot be opened is reported but does not stop the station: DEFECT uploads wait in a
        queue and are indexed when it is back, so nothing is lost."""
        from core import registry

        metas, problems = registry.list_trained_with_problems()
        loaded = _detectors(request).loaded()
        if not metas and not loaded:
            why = f"; unusable: {', '.join(f'{m}/{c}' for m, c in problems)}" if problems else ""
            return error_response(f"no trained model can be loaded: train one with `python -m core train ...`{why}", 503)
        history, history_problem = history_view.open_history()
        if history is not None:
            history_problem = history.problem()  # a server that went away since it was opened
        if history_problem is not None:
            return error_response(f"inspections cannot be recorded: {history_problem}", 503)
        return schemas.Ready(
            status="ready",
            loadable=[f"{m.model}/{m.category}" for m in metas],
            loaded=loaded,
            unreadable=[f"{m}/{c}" for m, c in sorted(problems)],
            similar_store=similar.store_problem() or "ok",
            station=station(),
            database="postgresql" if history.server else "sqlite",
        )

    return router


def metrics_router() -> APIRouter:
    """``GET /metrics``: Prometheus text, behind the API key when one is configured (a scraper sends
    it as a Bearer token); not in the OpenAPI document, which describes the JSON API."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        body = request.app.state.metrics.render(waiting=similar.waiting_uploads())
        return Response(body, media_type=CONTENT_TYPE)

    return router


# --------------------------------------------------------------------------------------------
# /v1
# --------------------------------------------------------------------------------------------


def body_limits(max_upload: int, max_batch: int) -> dict[str, int]:
    """The most bytes each upload route's body may have (core.api.middleware enforces them)."""
    return {"/v1/inspect": max_upload + FORM_OVERHEAD, "/v1/inspect/batch": max_batch * max_upload + FORM_OVERHEAD}


def part_limits(max_upload: int) -> dict[str, int]:
    """The most bytes one file of a batch may have while it arrives (its part headers included)."""
    return {"/v1/inspect/batch": max_upload + FORM_OVERHEAD}


def _inspect_route(router: APIRouter) -> None:
    @router.post(
        "/inspect",
        response_model=schemas.InspectResult,
        responses=INSPECT_ERRORS,
        summary="Judge one image: verdict, scores, map statistics; recorded and (DEFECT) indexed",
    )
    def inspect_one(
        request: Request,
        image: Annotated[UploadFile, File(description="PNG, JPEG, BMP or TIFF")],
        category: Category,
        model: ModelName = DEFAULT_MODEL,
        threshold: Threshold = None,
        overlay: Overlay = False,
        idempotency_key: IdempotencyKey = None,
    ) -> schemas.InspectResult:
        level = check_threshold(threshold)
        detector = detector_for(_detectors(request), model, category)
        decoded = decode(read_upload(image.filename, image.file))
        result = inspect_decoded(detector, [decoded], threshold=level, request_keys=[idempotency_key])[0]
        request.app.state.metrics.judged([result], detector)
        return views.inspect_result(result, detector, overlay=overlay, root_path=request.scope.get("root_path", ""))


def _decode_batch(files: list[UploadFile], max_batch: int) -> tuple[list[schemas.BatchItem | None], list[Decoded]]:
    """Per file, in order: an error item, or None with its image in the decoded list (read with the
    per-file limit; a file that is not an image, truncated, too large or met while busy fails alone)."""
    if not files:
        raise BadValueError("send at least one file as `images`")
    if len(files) > max_batch:
        raise TooLargeError(f"a batch holds at most {max_batch} images (INSPECT_API_MAX_BATCH), not {len(files)}")
    items: list[schemas.BatchItem | None] = []
    decoded: list[Decoded] = []
    for file in files:
        try:
            decoded.append(decode(read_upload(file.filename, file.file)))
            items.append(None)
        except ImageError as exc:
            items.append(schemas.BatchItem(file_name=file_name(file.filename), status=status_for(exc), error=str(exc)))
    return items, decoded


def _batch_route(router: APIRouter, max_batch: int) -> None:
    @router.post(
        "/inspect/batch",
        response_model=schemas.BatchResult,
        responses=INSPECT_ERRORS,
        form_limits={"max_files": max_batch + 1},
        summary="Judge several images in ONE forward pass; a result or an error per file",
    )
    def inspect_batch(
        request: Request,
        images: BatchImages,
        category: Category,
        model: ModelName = DEFAULT_MODEL,
        threshold: Threshold = None,
        overlay: Overlay = False,
        idempotency_key: IdempotencyKey = None,
    ) -> schemas.BatchResult:
        level = check_threshold(threshold)
        detector = detector_for(_detectors(request), model, category)
        items, decoded = _decode_batch(images, max_batch)
        # Per file, the request's key and the file's place in the request: a retry sends the same files.
        keys = [f"{idempotency_key}#{i}" if idempotency_key else None for i, item in enumerate(items) if item is None]
        judged = inspect_decoded(detector, decoded, threshold=level, request_keys=keys) if decoded else []
        request.app.state.metrics.judged(judged, detector)
        results = iter(judged)
        root = request.scope.get("root_path", "")
        for i, item in enumerate(items):
            if item is None:  # the next result belongs to this file
                result = next(results)
                out = views.inspect_result(result, detector, overlay=overlay, root_path=root)
                items[i] = schemas.BatchItem(file_name=result.file_name, status=200, result=out)
        return schemas.BatchResult(
            model=detector.meta.model,
            category=detector.meta.category,
            model_version=detector.version,
            threshold=level,
            inspected=len(decoded),
            failed=len(items) - len(decoded),
            items=[item for item in items if item is not None],
        )


def _models_route(router: APIRouter) -> None:
    @router.get("/models", response_model=schemas.ModelsOut, responses=ERRORS, summary="Trained models, calibration, metrics")
    def list_models(request: Request) -> schemas.ModelsOut:
        from core import registry

        metas, problems = registry.list_trained_with_problems()
        status = comparison.load_results()
        entries = {(m, c): e for m, c, e in comparison.model_entries(status.data)}
        cache = _detectors(request)
        models = []
        for meta in metas:
            files = registry.find_files(meta.model, meta.category)
            version = files.version if files else None
            loaded = cache.is_loaded(meta.model, meta.category)
            models.append(views.model_out(meta, version, entries.get((meta.model, meta.category)), loaded))
        unreadable = [schemas.UnreadableModelOut(model=m, category=c, problem=p) for (m, c), p in sorted(problems.items())]
        return schemas.ModelsOut(models=models, unreadable=unreadable, results_problem=status.problem, station=station())


def _inspection_routes(router: APIRouter) -> None:
    @router.get("/inspections/{inspection_id}", response_model=schemas.InspectionOut, responses=ERRORS, summary="One history row")
    def get_inspection(request: Request, inspection_id: InspectionId) -> schemas.InspectionOut:
        record = _record(_history(), inspection_id)
        return views.inspection_out(record, request.scope.get("root_path", ""))

    @router.post(
        "/inspections/{inspection_id}/feedback",
        response_model=schemas.InspectionOut,
        responses=ERRORS,
        summary="Record the inspector's feedback (null clears it) and comment",
    )
    def give_feedback(request: Request, inspection_id: InspectionId, body: schemas.FeedbackIn) -> schemas.InspectionOut:
        history = _history()
        _record(history, inspection_id)
        history.set_feedback(inspection_id, body.feedback, body.comment)
        return views.inspection_out(_record(history, inspection_id), request.scope.get("root_path", ""))


def _similar_route(router: APIRouter) -> None:
    @router.get(
        "/similar/{inspection_id}",
        response_model=schemas.SimilarOut,
        responses=ERRORS,
        summary="The k past cases most similar to an indexed inspection (a DEFECT upload)",
    )
    def similar_to(
        inspection_id: InspectionId, k: Annotated[int, Query(ge=1, le=50, description="how many cases")] = 5
    ) -> schemas.SimilarOut:
        record = _record(_history(), inspection_id)
        if not record.point_id:
            raise NotFoundError(
                f"inspection {inspection_id} is not in the similar-defect index: only uploads judged DEFECT are "
                f"indexed, once the index is built (`{similar.index_command(record.model, record.category)}`)"
            )
        try:
            query = similar.similar_cases(record.model, record.category, record=record, k=k)
        except LookupError:
            raise NotFoundError(
                f"inspection {inspection_id}'s point is gone from the similar-defect index; rebuild it with "
                f"`{similar.index_command(record.model, record.category)}`"
            ) from None
        hits = query.hits if query is not None else []
        return schemas.SimilarOut(
            inspection_id=inspection_id,
            model=record.model,
            category=record.category,
            k=k,
            cases=[views.similar_case(hit) for hit in hits],
        )


def v1_router(*, max_batch: int) -> APIRouter:
    """Every /v1 endpoint; the batch size limit is fixed when the app is built."""
    router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(BEARER)])
    _inspect_route(router)
    _batch_route(router, max_batch)
    _models_route(router)
    _inspection_routes(router)
    _similar_route(router)
    return router
