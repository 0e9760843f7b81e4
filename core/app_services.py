"""The logic behind the dashboard's pages, without Streamlit.

Pages are widgets and layout only; what they show is computed here, so it can be tested without a
browser and reused from the command line. Nothing in this module imports Streamlit, and heavy
libraries (torch, anomalib, plotly, qdrant) are imported inside the functions that need them, so a
page that only lists the history never pays for them.

Contents:

* models and data: which (model, category) pairs are trained, test images of a category,
  checkpoint modification times (part of the model cache key);
* inspection: :func:`predict` (the one place the app runs a model, with a call counter that tests
  read to prove a threshold change does not re-run it), :func:`judge` (verdict, normalised and
  raw thresholds at any slider position), :func:`record_inspection` (history + thumbnail);
* comparison: tables and Plotly figures from the results file, with published reference figures;
* similar cases: display rows for gallery entries and search hits.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import registry
from core.data.image_io import SUPPORTED_EXTENSIONS
from core.data.layout import list_categories, resolve_data_root
from core.evaluation.results import split_key
from core.history import FEEDBACK_LABELS
from core.inference.verdict import CALIBRATED_THRESHOLD
from core.models import MODEL_NAMES, get_spec, model_label
from core.settings import get_settings

#: The calibrated threshold on the normalised scale (0.5: see core.inference.verdict).
CALIBRATED = CALIBRATED_THRESHOLD
#: File types the upload widget offers: exactly those the loader reads.
IMAGE_TYPES: tuple[str, ...] = tuple(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS)

#: Model runs per (model, category) in this process: the test hook that proves a threshold change
#: re-judges a stored Prediction instead of running the model again.
PREDICT_CALLS: Counter = Counter()
_PREDICT_LOCK = threading.Lock()


def training_note(model: str, category: str) -> str | None:
    """What training ``model`` costs on this machine, where that matters (EfficientAD's steps)."""
    return get_spec(model).training_note(category)


# --------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------


def trained_models() -> dict[tuple[str, str], registry.ModelMeta]:
    """Every usable trained (model, category) pair with its metadata."""
    return {(m.model, m.category): m for m in registry.list_trained()}


def unreadable_models() -> dict[tuple[str, str], str]:
    """(model, category) pairs whose files are there but unusable, with the one-line error to show."""
    return registry.list_trained_with_problems()[1]


def available_categories() -> list[str]:
    """Categories the inspector can pick: those in the dataset root and those with a model (even a broken one)."""
    cats = set(list_categories(resolve_data_root()))
    metas, problems = registry.list_trained_with_problems()
    cats.update(m.category for m in metas)
    cats.update(category for _, category in problems)
    return sorted(cats)


def checkpoint_mtime(model: str, category: str) -> float:
    """The current checkpoint's modification time (0.0 when missing): retraining changes the cache key."""
    path = registry.checkpoint_path(model, category)
    try:
        return path.stat().st_mtime if path else 0.0
    except OSError:
        return 0.0


def detector_cache_key(model: str, category: str) -> tuple[str, str, str, float]:
    """(model, category, current checkpoint, its mtime): what a cached detector is valid for.

    The checkpoint path names the models folder and the version (``.../v0003/model.pt``), so a new
    save, which is a new version folder, always gives a new key.
    """
    path = registry.checkpoint_path(model, category)
    return model, category, str(path or get_settings().models_dir), checkpoint_mtime(model, category)


@dataclass(frozen=True)
class TestImage:
    path: Path
    defect_type: str

    @property
    def label(self) -> str:
        return f"{self.defect_type}/{self.path.name}"


def test_images(category: str, root: str | Path | None = None) -> list[TestImage]:
    """The category's test images (``test/<type>/*``), good first, then defect types A-Z."""
    from core.data.image_io import SUPPORTED_EXTENSIONS

    test_dir = resolve_data_root(root) / category / "test"
    if not test_dir.is_dir():
        return []
    out: list[TestImage] = []
    types = sorted((p for p in test_dir.iterdir() if p.is_dir()), key=lambda p: (p.name != "good", p.name))
    for folder in types:
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in SUPPORTED_EXTENSIONS:
                out.append(TestImage(path, folder.name))
    return out


def device_summary() -> str:
    """Where models run in this process, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads)'."""
    from core.inference.device import device_label, pick_device

    return device_label(pick_device())


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------


def predict(detector: Any, image_rgb: np.ndarray):
    """Run ``detector`` on one image and count the call (see :data:`PREDICT_CALLS`)."""
    with _PREDICT_LOCK:
        PREDICT_CALLS[(detector.meta.model, detector.meta.category)] += 1
    return detector.predict(image_rgb)


def warm_up(detector: Any) -> None:
    """Run the model once on a blank image (not counted): first calls pay one-off set-up costs."""
    size = int((detector.meta.config or {}).get("image_size") or 256)
    detector.predict(np.zeros((size, size, 3), dtype=np.uint8))


def inspection_key(sha256: str, model: str, category: str, mtime: float) -> str:
    """Identity of one inspection result: same file, same model version → same key."""
    return f"{model}/{category}/{mtime:.0f}/{sha256}"


@dataclass(frozen=True)
class Judgement:
    """The verdict at one threshold, and the numbers the inspector is shown next to it."""

    verdict: str
    score: float  # normalised, 0.5 = calibrated threshold
    raw_score: float
    threshold: float  # normalised (the slider)
    raw_threshold: float  # the same threshold on the model's raw score scale
    calibrated_raw_threshold: float
    latency_ms: float
    calibration_source: str

    @property
    def is_calibrated(self) -> bool:
        return math.isclose(self.threshold, CALIBRATED, abs_tol=1e-9)


def judge(prediction: Any, detector: Any, threshold: float = CALIBRATED) -> Judgement:
    """Re-judge a stored prediction at ``threshold`` (normalised) without running the model."""
    cal = detector.meta.calibration
    return Judgement(
        verdict=prediction.verdict(threshold),
        score=float(prediction.score),
        raw_score=float(prediction.raw_score),
        threshold=float(threshold),
        raw_threshold=float(detector.normalised_to_raw(threshold)),
        calibrated_raw_threshold=float(cal.image_threshold),
        latency_ms=float(prediction.latency_ms),
        calibration_source=cal.source or "not recorded",
    )


def display_copy(image_rgb: np.ndarray, max_side: int = 1024) -> np.ndarray:
    """A copy no larger than ``max_side`` on its long side, for drawing overlays quickly."""
    h, w = image_rgb.shape[:2]
    if max(h, w) <= max_side:
        return image_rgb
    import cv2

    k = max_side / max(h, w)
    return cv2.resize(image_rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def record_inspection(
    history: Any,
    *,
    file_name: str,
    sha256: str,
    image_rgb: np.ndarray,
    model: str,
    category: str,
    prediction: Any,
    threshold: float = CALIBRATED,
    defect_type: str | None = None,
) -> int:
    """Store one inspection (and its thumbnail) in the history; returns its id."""
    from core.history import InspectionRecord

    thumb = history.save_thumbnail(image_rgb, sha256)
    record = InspectionRecord(
        file_name=file_name,
        sha256=sha256,
        category=category,
        model=model,
        score=float(prediction.score),
        threshold=float(threshold),
        verdict=prediction.verdict(threshold),
        raw_score=float(prediction.raw_score),
        thumbnail_path=str(thumb),
        defect_type=defect_type,
    )
    return history.add(record)


def file_stem(name: str) -> str:
    stem = Path(name).stem or "image"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80]


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


def history_rows(records: list[Any]) -> list[dict[str, Any]]:
    """Table rows for the history page (newest first, as given)."""
    rows = []
    for rec in records:
        rows.append(
            {
                "id": rec.id,
                "time (UTC)": (rec.created_at or "")[:19].replace("T", " "),
                "file": rec.file_name,
                "category": rec.category,
                "model": model_label(rec.model),
                "verdict": rec.verdict,
                "score": rec.score,
                "threshold": rec.threshold,
                "raw score": rec.raw_score,
                "feedback": FEEDBACK_LABELS.get(rec.feedback or "", "—"),
                "comment": rec.comment or "",
                "thumbnail_path": rec.thumbnail_path,
            }
        )
    return rows


def thumbnail_data_uri(path: str | None, size: int = 96) -> str | None:
    """A small JPEG data URI of a thumbnail file (for a table's image column), or None."""
    if not path or not os.path.isfile(path):
        return None
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
    except OSError:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------------------------
# Compare
# --------------------------------------------------------------------------------------------


#: Published figures, only where we have the category and a citable number. Shown as labelled
#: markers ("published figure"), never mixed into our own measurements.
def published_figures() -> dict[tuple[str, str], Any]:
    """(model, category) -> published reference figure, from each model's spec."""
    return {(name, category): ref for name in MODEL_NAMES for category, ref in get_spec(name).published.items()}


METRIC_COLUMNS: dict[str, str] = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "image_f1": "image F1",
    "pixel_f1": "pixel F1",
    "aupro": "AUPRO",
    "false_alarm_rate": "false alarm rate",
    "latency_ms": "latency (ms)",
    "peak_memory_mb": "peak memory (MB)",
}


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def results_table(results: dict[str, Any]):
    """One row per evaluated (model, category): every metric and how the model was trained."""
    import pandas as pd

    rows = []
    for key, entry in sorted(results.get("models", {}).items()):
        model, category = split_key(key)
        model = entry.get("model", model)
        category = entry.get("category", category)
        training = entry.get("training") or {}
        row: dict[str, Any] = {"model": model_label(model), "category": category}
        for field, label in METRIC_COLUMNS.items():
            row[label] = _num(entry.get(field))
        row.update(
            {
                "test images": entry.get("n_test"),
                "eval device": entry.get("eval_device"),
                "backbone": training.get("backbone") or (training.get("config") or {}).get("backbone"),
                "train device": training.get("device"),
                "steps": training.get("steps") if training.get("steps") is not None else "one pass",
                "train time (s)": _num(training.get("train_time_s")),
                "train images": training.get("n_train_images"),
                "threshold source": entry.get("threshold_source") or "",
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def per_defect_table(results: dict[str, Any]):
    """Per defect type: number of test images, image AUROC against good, detection rate."""
    import pandas as pd

    rows = []
    for key, entry in sorted(results.get("models", {}).items()):
        model, category = split_key(key)
        for dtype, stats in sorted((entry.get("per_defect_type") or {}).items()):
            rows.append(
                {
                    "model": model_label(entry.get("model", model)),
                    "category": entry.get("category", category),
                    "defect type": dtype,
                    "images": stats.get("n"),
                    "image AUROC": _num(stats.get("image_auroc")),
                    "detection rate": _num(stats.get("detection_rate")),
                }
            )
    return pd.DataFrame(rows)


def retrieval_table(results: dict[str, Any]):
    """The similar-defect retrieval section (precision@k per descriptor), flattened."""
    import pandas as pd

    rows = []
    for key, entry in sorted((results.get("retrieval") or {}).items()):
        model, category = split_key(key)
        flat = pd.json_normalize(entry, sep=" / ").to_dict(orient="records")[0] if isinstance(entry, dict) else {}
        rows.append({"model": model_label(model), "category": category, **flat})
    return pd.DataFrame(rows)


def _color(model: str) -> str:
    return {"PatchCore": "#1f77b4", "EfficientAD": "#ff7f0e"}.get(model, "#7f7f7f")


def auroc_bar_figure(results: dict[str, Any]):
    """Grouped bars of image and pixel AUROC per category and model, with each model's average.

    Published reference figures (where we have them) are drawn as black diamonds named
    "published figure" in the legend and hover text.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = results_table(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Image AUROC", "Pixel AUROC"), horizontal_spacing=0.08)
    if table.empty:
        return fig
    categories = sorted(table["category"].unique())
    x_labels = [*categories, "average"]
    models = [model_label(m) for m in MODEL_NAMES if model_label(m) in set(table["model"])]
    models += [m for m in sorted(table["model"].unique()) if m not in models]
    lows = []
    for col, metric in enumerate(("image AUROC", "pixel AUROC"), start=1):
        for model in models:
            sub = table[table["model"] == model].set_index("category")[metric]
            ys = [sub.get(c) if c in sub.index else None for c in categories]
            valid = [v for v in ys if v is not None and not (isinstance(v, float) and math.isnan(v))]
            ys.append(float(np.mean(valid)) if valid else None)
            lows += valid
            fig.add_trace(
                go.Bar(
                    name=model,
                    x=x_labels,
                    y=ys,
                    marker_color=_color(model),
                    offsetgroup=model,
                    legendgroup=model,
                    showlegend=col == 1,
                    text=[f"{v:.3f}" if v is not None else "" for v in ys],
                    textposition="inside",
                    insidetextanchor="end",
                    textfont={"color": "white"},
                    hovertemplate=f"{model}<br>%{{x}}: %{{y:.3f}}<extra>{metric}</extra>",
                ),
                row=1,
                col=col,
            )
        field = "image_auroc" if metric == "image AUROC" else "pixel_auroc"
        shown_legend = False
        for model in models:
            refs = [
                (category, ref)
                for (m, category), ref in published_figures().items()
                if model_label(m) == model and category in categories and field in ref
            ]
            if not refs:
                continue
            fig.add_trace(
                go.Scatter(
                    name="published figure",
                    x=[c for c, _ in refs],
                    y=[ref[field] for _, ref in refs],
                    mode="markers",
                    marker={"symbol": "diamond", "size": 11, "color": "black", "line": {"color": "white", "width": 1}},
                    # Same offset group as the model's bars: the diamond sits on the bar it refers to.
                    offsetgroup=model,
                    legendgroup="published",
                    showlegend=col == 1 and not shown_legend,
                    hovertext=[f"published figure: {model} {ref[field]:.3f}<br>{ref['source']}" for _, ref in refs],
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
            shown_legend = True
    low = min(lows) if lows else 0.5
    y0 = max(0.0, min(0.5, math.floor(low * 10) / 10))
    fig.update_yaxes(range=[y0, 1.06])
    fig.update_layout(
        barmode="group", scattermode="group", height=420, margin={"t": 40, "b": 20, "l": 20, "r": 20}, legend_title_text=""
    )
    return fig


def roc_figure(results: dict[str, Any], category: str):
    """ROC curves (image level) of every model evaluated on ``category``."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, entry in sorted(results.get("models", {}).items()):
        model, cat = split_key(key)
        if entry.get("category", cat) != category:
            continue
        roc = entry.get("roc") or {}
        fpr, tpr = roc.get("fpr") or [], roc.get("tpr") or []
        if not fpr or len(fpr) != len(tpr):
            continue
        name = model_label(entry.get("model", model))
        auroc = _num(entry.get("image_auroc"))
        fig.add_trace(
            go.Scatter(
                x=fpr,
                y=tpr,
                mode="lines",
                name=f"{name} (AUROC {auroc:.3f})" if auroc is not None else name,
                line={"color": _color(name), "width": 2, "shape": "hv"},
            )
        )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"color": "#aaaaaa", "dash": "dot"}))
    fig.update_layout(
        xaxis_title="false positive rate (good parts flagged)",
        yaxis_title="true positive rate (defects caught)",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1.02]},
        height=420,
        margin={"t": 30, "b": 20, "l": 20, "r": 20},
    )
    return fig


def evaluated_categories(results: dict[str, Any]) -> list[str]:
    cats = set()
    for key, entry in results.get("models", {}).items():
        cats.add(entry.get("category", split_key(key)[1]))
    return sorted(cats)


# --------------------------------------------------------------------------------------------
# Similar cases
# --------------------------------------------------------------------------------------------


def similarity_service():
    """The similarity service module, or None when it is not installed in this checkout."""
    try:
        from core.similarity import indexing
    except ImportError:
        return None
    return indexing


INDEX_COMMAND = "python -m core index"


def case_caption(payload: dict[str, Any], similarity: float | None = None) -> str:
    """One line under a thumbnail: similarity, label, defect type, source."""
    parts = []
    if similarity is not None:
        parts.append(f"similarity {similarity:.3f}")
    label = payload.get("label")
    dtype = payload.get("defect_type")
    if label:
        parts.append(str(label))
    if dtype and dtype != label:
        parts.append(str(dtype))
    score = _num(payload.get("score"))
    if score is not None:
        parts.append(f"score {score:.2f}")
    return " · ".join(parts)


def case_source(payload: dict[str, Any]) -> str:
    """Where a case comes from: the test set file, or an inspected upload."""
    path = str(payload.get("image_path") or "")
    if payload.get("split") == "inspection" or payload.get("inspection_id"):
        iid = payload.get("inspection_id")
        return f"inspected upload #{iid}" if iid else "inspected upload"
    return "/".join(Path(path).parts[-3:]) if path else "unknown"


def load_case_image(payload: dict[str, Any]) -> np.ndarray | None:
    """The stored image of a case (None when its file is gone)."""
    from core.data.image_io import load_image
    from core.errors import ImageError

    path = payload.get("image_path")
    if not path:
        return None
    try:
        return load_image(Path(path))
    except ImageError:
        return None


def index_inspection(
    detector: Any,
    image_rgb: np.ndarray,
    prediction: Any,
    *,
    sha256: str,
    inspection_id: int | None,
    history: Any = None,
) -> tuple[str | None, str | None]:
    """Add an upload judged DEFECT to the similar-defect index; returns (point id, note).

    The stored picture is the history's thumbnail of the upload (the original bytes are not kept),
    so the gallery can show it later. An upload that is byte-identical to an image already indexed
    from the dataset keeps that point (its label and defect type are ground truth). When the store
    cannot take it now (another process holds it, it was emptied...) the upload is queued and
    indexed automatically later; the note says so. Inspection goes on either way.
    """
    from core.errors import InspectError

    service = similarity_service()
    if service is None or history is None or not inspection_id:
        return None, None
    try:
        thumb = history.save_thumbnail(image_rgb, sha256)
        outcome = service.index_upload(
            detector,
            image_rgb,
            prediction,
            sha256=sha256,
            inspection_id=inspection_id,
            file_name=str(thumb),
            history_db=str(history.path),
        )
        if outcome.point_id is not None:
            history.set_point_id(inspection_id, outcome.point_id)
    except InspectError as exc:
        return None, f"Not added to the similar-defect index: {exc}"
    return outcome.point_id, outcome.note


def index_problem(model: str, category: str) -> str | None:
    """One line when the (model, category) index holds fewer points than its last index run wrote
    (emptied or damaged store) or that run did not finish; None when healthy or unknown."""
    from core.errors import InspectError

    service = similarity_service()
    if service is None:
        return None
    try:
        return service.index_health(model, category)
    except InspectError:
        return None  # the store cannot be opened: the page already shows that error


def stored_case(model: str, category: str, point_id: str) -> dict[str, Any] | None:
    """The stored payload (with ``id``) of one indexed point, or None."""
    from core.errors import InspectError

    service = similarity_service()
    if service is None:
        return None
    try:
        with service.open_store() as store:
            found = store.get(model, category, [point_id])
    except (InspectError, ValueError):
        return None
    return {"id": found[0].id, **found[0].payload} if found else None


@dataclass
class SimilarQuery:
    """A query on the Similar page and its hits. ``entry``: the in-session inspection, if any."""

    payload: dict[str, Any]
    hits: list[Any]
    entry: dict[str, Any] | None = None


def similar_cases(
    model: str,
    category: str,
    *,
    point: dict[str, Any] | None = None,
    entry: dict[str, Any] | None = None,
    record: Any = None,
    get_detector: Any = None,
    k: int = 5,
    only_defects: bool = False,
) -> SimilarQuery | None:
    """The ``k`` past cases most similar to one query, whichever form the query takes.

    * ``point``: a gallery item (a stored payload with its ``id``);
    * ``entry``: an inspection of this browser session (image and prediction in memory): searched
      by its point when it was indexed, else by its image (``get_detector()`` gives the model);
    * ``record``: a history record from another session (a shared link), searched by its point.

    Raises :class:`InspectError` (store problems) or :class:`LookupError` (point gone).
    """
    service = similarity_service()
    if service is None:
        return None
    filters = {"label": "anomalous"} if only_defects else {}
    if point is not None:
        return SimilarQuery(point, service.similar_to_point(model, category, point["id"], k=k, **filters))
    if entry is not None:
        if entry.get("point_id"):
            hits = service.similar_to_point(model, category, entry["point_id"], k=k, **filters)
            stored = stored_case(model, category, entry["point_id"])
        else:
            hits = service.similar_to_image(
                get_detector(), entry["image"], k=k, sha256=entry["sha"], prediction=entry["prediction"], **filters
            )
            stored = None
        payload = stored or {
            "label": "inspected upload",
            "defect_type": entry.get("defect_type") or "unknown",
            "score": entry["prediction"].score,
            "inspection_id": entry.get("history_id"),
        }
        return SimilarQuery(payload, hits, entry)
    if record is not None and record.point_id:
        hits = service.similar_to_point(model, category, str(record.point_id), k=k, **filters)
        payload = {
            "image_path": record.thumbnail_path,
            "label": "inspected upload",
            "defect_type": record.defect_type or "unknown",
            "score": record.score,
            "inspection_id": record.id,
        }
        return SimilarQuery(payload, hits)
    return None


def find_session_inspection(kept: dict[str, Any], sha256: str | None, model: str, category: str) -> dict[str, Any] | None:
    """The inspection of this session with that file hash, model and category, if kept."""
    for entry in kept.values():
        if (
            isinstance(entry, dict)
            and entry.get("sha") == sha256
            and entry.get("model") == model
            and entry.get("category") == category
        ):
            return entry
    return None
