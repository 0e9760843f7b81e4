"""The JSON the API answers and accepts, as pydantic models: they are the OpenAPI page (/docs).

Scores and thresholds are on the *normalised* scale (0.5 = the model's calibrated threshold,
0..1), as on the dashboard; ``raw_*`` fields are the model's own scale, for the record. No field
carries a path on the server (thumbnails, dataset files): a client gets ids and labels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Verdict = Literal["GOOD", "DEFECT"]
Feedback = Literal["correct", "false_alarm", "missed_defect"]


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer."""

    error: str = Field(description="one line naming the problem and, where there is one, the fix")


class MapStats(BaseModel):
    """The calibrated anomaly map in three numbers (never stretched per image)."""

    max: float = Field(description="highest map value (normalised; above the threshold means a defect region)")
    mean: float = Field(description="mean map value")
    defect_area: float = Field(description="share of the map at or above the threshold, 0..1")


class RegionOut(BaseModel):
    """One region of the map at or above the threshold, as a box in the image's own pixels."""

    x: int = Field(description="left column, in image pixels")
    y: int = Field(description="top row, in image pixels")
    width: int
    height: int
    peak: float = Field(description="highest normalised map value inside it")


class InspectResult(BaseModel):
    """One image judged: the verdict, its numbers, where it was recorded, and anything that was not."""

    file_name: str
    verdict: Verdict
    score: float = Field(description="normalised image score; >= threshold is DEFECT")
    raw_score: float = Field(description="the model's own score")
    threshold: float = Field(description="normalised threshold used (0.5 = calibrated)")
    raw_threshold: float = Field(description="the same threshold on the raw scale")
    map: MapStats
    regions: list[RegionOut] = Field(
        default_factory=list,
        description="defect regions (map at or above the threshold), highest first, as boxes in image pixels "
        "(a tiled model's map is at the image's full resolution)",
    )
    model: str
    model_version: str = Field(description="registry version folder of the model, e.g. v0003")
    category: str
    latency_ms: float = Field(description="model time per image (the batch's time shared out)")
    inspection_id: int | None = Field(description="id in the inspection history; null when not recorded")
    point_id: str | None = Field(description="point in the similar-defect index (DEFECT uploads), or null")
    similar: str | None = Field(description="link to the similar past cases of this inspection, when it is indexed")
    overlay_png_base64: str | None = Field(None, description="heatmap overlay as base64 PNG when overlay=true")
    notes: list[str] = Field(description="what could not be recorded or indexed (the verdict stands)")
    wrong_category: bool = Field(
        False, description="the image does not look like the category at all: recorded, kept out of the similar-defect gallery"
    )
    station: str | None = Field(None, description="the line station that answered (INSPECT_STATION), null on a single PC")


class BatchItem(BaseModel):
    """One file of a batch: its result, or why it has none."""

    file_name: str
    status: int = Field(description="the HTTP status this file alone would have had (200 or 4xx/503)")
    result: InspectResult | None = None
    error: str | None = None


class BatchResult(BaseModel):
    """Every file of a batch, in the order sent; the model ran once for all readable ones."""

    model: str
    category: str
    model_version: str | None
    threshold: float
    inspected: int = Field(description="files with a result")
    failed: int = Field(description="files with an error")
    items: list[BatchItem]


class CalibrationOut(BaseModel):
    """How the verdict threshold was set (raw model scores) and from which images."""

    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    source: str


class MetricsOut(BaseModel):
    """Test-set metrics from the results file (``python -m core evaluate``); null when not measured."""

    image_auroc: float | None = None
    pixel_auroc: float | None = None
    image_f1: float | None = None
    pixel_f1: float | None = None
    aupro: float | None = None
    false_alarm_rate: float | None = None
    latency_ms: float | None = None
    n_test: int | None = None


class ModelOut(BaseModel):
    """A trained (model, category) and whether this process has it loaded."""

    model: str
    label: str
    category: str
    version: str | None
    created_at: str
    device: str = Field(description="where it was trained")
    image_size: int | None
    n_train_images: int
    train_time_s: float
    calibration: CalibrationOut
    metrics: MetricsOut | None = Field(description="null until the pair is evaluated")
    loaded: bool


class UnreadableModelOut(BaseModel):
    model: str
    category: str
    problem: str


class ModelsOut(BaseModel):
    models: list[ModelOut]
    unreadable: list[UnreadableModelOut]
    results_problem: str | None = Field(None, description="why the results file could not be read, if so")
    station: str | None = Field(None, description="the line station that answered (INSPECT_STATION), null on a single PC")


class InspectionOut(BaseModel):
    """One row of the inspection history."""

    id: int
    created_at: str | None
    file_name: str
    sha256: str
    category: str
    model: str
    verdict: Verdict
    score: float
    threshold: float
    raw_score: float | None
    feedback: Feedback | None
    comment: str | None
    defect_type: str | None
    point_id: str | None
    similar: str | None
    wrong_category: bool = Field(False, description="judged not to look like its category: kept out of the gallery")
    station: str | None = Field(None, description="the line station that judged it, null on a single PC")


class FeedbackIn(BaseModel):
    """The inspector's judgement of a verdict; ``feedback: null`` clears it."""

    model_config = {"extra": "forbid"}

    feedback: Feedback | None = Field(description="correct, false_alarm, missed_defect, or null")
    comment: str | None = Field(None, max_length=2000)


class SimilarCase(BaseModel):
    """A past case near the query, most similar first."""

    point_id: str
    similarity: float = Field(
        description="similarity to the query: the descriptors' cosine, or, where the gallery has named defect "
        "types to learn from, MIX x the cosine in the learned (LDA) space + (1 - MIX) x the descriptors' cosine "
        "(MIX: core.similarity.label_metric.MIX)"
    )
    label: str = Field(description="good or anomalous")
    defect_type: str
    source: str = Field(description="where it comes from: dataset split/type/file, or an inspected upload")
    score: float | None
    inspection_id: int | None


class SimilarOut(BaseModel):
    inspection_id: int
    model: str
    category: str
    k: int
    cases: list[SimilarCase]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    loadable: list[str] = Field(description="model/category pairs that can be loaded")
    loaded: list[str] = Field(description="model/category@version loaded in this process")
    unreadable: list[str] = Field(description="model/category pairs whose files are unusable")
    similar_store: str = Field(
        "ok", description='"ok", or why the similar-defect store cannot be opened (uploads wait in a queue meanwhile)'
    )
    station: str | None = Field(None, description="the line station this process inspects for")
    database: Literal["sqlite", "postgresql"] = Field(
        "sqlite", description="the history's engine: the workspace's SQLite file, or the plant's PostgreSQL server"
    )
