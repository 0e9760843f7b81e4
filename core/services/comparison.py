"""The Compare page's numbers: results tables, evaluated and missing pairs, published reference figures."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.evaluation.results import ResultsStatus, load_results_checked, results_path, split_key
from core.models import MODEL_NAMES, get_spec, model_label

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "METRIC_COLUMNS",
    "evaluated_categories",
    "finite_number",
    "model_input",
    "load_results",
    "model_entries",
    "per_defect_table",
    "published_figures",
    "published_rows",
    "results_file",
    "results_table",
    "retrieval_table",
    "unevaluated",
    "validation_curves",
    "background_queue",
    "resume_background_queue",
]

#: Results-file field -> column title, in table order.
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


def load_results() -> ResultsStatus:
    """The results file's content, or an empty one with the problem that made it unusable."""
    return load_results_checked()


def results_file() -> Path:
    """Where the results file is (``python -m core evaluate`` writes it)."""
    return results_path()


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, not a number, NaN, infinite)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def model_entries(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(model, category, entry) of every evaluated pair, by results key; the entry's own names win."""
    out = []
    for key, entry in sorted(results.get("models", {}).items()):
        model, category = split_key(key)
        out.append((entry.get("model", model), entry.get("category", category), entry))
    return out


#: Published figures, only where we have the category and a citable number. Shown as labelled
#: markers ("published figure"), never mixed into our own measurements.
def published_figures() -> dict[tuple[str, str], Mapping[str, Any]]:
    """(model, category) -> published reference figure, from each model's spec."""
    return {(name, category): ref for name in MODEL_NAMES for category, ref in get_spec(name).published.items()}


def published_rows(categories: Iterable[str]) -> list[dict[str, Any]]:
    """The published figures of ``categories`` as table rows (model label, category, figures, source)."""
    shown = set(categories)
    return [
        {"model": model_label(m), "category": c, **dict(ref.items())} for (m, c), ref in published_figures().items() if c in shown
    ]


def model_input(config: dict[str, Any]) -> str:
    """What the network saw of an image: the whole image resized, or tiles (``train --tile``)."""
    size = config.get("image_size") or 256
    if config.get("tile"):
        return f"tiles {config['tile']} px, stride {config.get('stride') or config['tile']}, at {size} px"
    return f"whole image at {size} px"


def _training_columns(entry: dict[str, Any]) -> dict[str, Any]:
    training = entry.get("training") or {}
    return {
        # beside the latency: a tiled model's latency is a full-resolution test image, tile by tile
        "input": model_input(training.get("config") or {}),
        "test images": entry.get("n_test"),
        "eval device": entry.get("eval_device"),
        "backbone": training.get("backbone") or (training.get("config") or {}).get("backbone"),
        "train device": training.get("device"),
        "steps": training.get("steps") if training.get("steps") is not None else "one pass",
        "train time (s)": finite_number(training.get("train_time_s")),
        "train images": training.get("n_train_images"),
        "threshold source": entry.get("threshold_source") or "",
    }


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    """One row per evaluated (model, category): every metric and how the model was trained."""
    import pandas as pd

    rows = []
    for model, category, entry in model_entries(results):
        row: dict[str, Any] = {"model": model_label(model), "category": category}
        for field, label in METRIC_COLUMNS.items():
            row[label] = finite_number(entry.get(field))
            if field == "latency_ms":  # which runtime measured it (entries from before exports: torch)
                row["latency runtime"] = entry.get("latency_runtime") or "torch"
        row.update(_training_columns(entry))
        rows.append(row)
    return pd.DataFrame(rows)


def per_defect_table(results: dict[str, Any]) -> pd.DataFrame:
    """Per defect type: number of test images, image AUROC against good, detection rate."""
    import pandas as pd

    rows = []
    for model, category, entry in model_entries(results):
        for dtype, stats in sorted((entry.get("per_defect_type") or {}).items()):
            rows.append(
                {
                    "model": model_label(model),
                    "category": category,
                    "defect type": dtype,
                    "images": stats.get("n"),
                    "image AUROC": finite_number(stats.get("image_auroc")),
                    "detection rate": finite_number(stats.get("detection_rate")),
                }
            )
    return pd.DataFrame(rows)


def retrieval_table(results: dict[str, Any]) -> pd.DataFrame:
    """The similar-defect retrieval section (precision@k per descriptor), flattened."""
    import pandas as pd

    rows = []
    for key, entry in sorted((results.get("retrieval") or {}).items()):
        model, category = split_key(key)
        flat = pd.json_normalize(entry, sep=" / ").to_dict(orient="records")[0] if isinstance(entry, dict) else {}
        rows.append({"model": model_label(model), "category": category, **flat})
    return pd.DataFrame(rows)


def evaluated_categories(results: dict[str, Any]) -> list[str]:
    """Every category with at least one evaluated model, A-Z."""
    return sorted({category for _, category, _ in model_entries(results)})


def unevaluated(results: dict[str, Any], trained: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The trained (model, category) pairs the results file has no entry for, sorted."""
    return sorted(set(trained) - {split_key(k) for k in results["models"]})


def validation_curves(trained: Mapping[tuple[str, str], Any]) -> dict[str, list[dict[str, Any]]]:
    """Name -> validation curve (step, elapsed_s, image_auroc, loss) of every model that has one.

    Stored curves come from the trained models' metadata (``extra["validation_curve"]``, EfficientAD);
    a training in progress adds its curve so far, named "... (training)".
    """
    from core.autotrain import queue_view
    from core.models.efficientad.runs import read_progress

    curves = {}
    for (model, category), meta in sorted(trained.items()):
        curve = (getattr(meta, "extra", None) or {}).get("validation_curve")
        if curve:
            curves[f"{model_label(model)}/{category}"] = list(curve)
    rows, _ = queue_view()
    for row in rows:
        if row.status == "training":
            progress = read_progress(row.category) or {}
            if progress.get("curve"):
                curves[f"{model_label('efficientad')}/{row.category} (training)"] = list(progress["curve"])
    return curves


def background_queue() -> tuple[list[Any], Any]:
    """(rows, job) of the EfficientAD background queue (core.autotrain)."""
    from core.autotrain import queue_view

    return queue_view()


def resume_background_queue() -> Any:
    """Start the EfficientAD queue again if its process died with categories unfinished."""
    from core.autotrain import resume_if_interrupted

    return resume_if_interrupted()
