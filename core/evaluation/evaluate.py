"""Evaluate trained models on their category's test set and write the results file.

Metrics are anomalib's (``anomalib.metrics``), computed on ``test/`` only; the thresholds come
from the calibration split (see :func:`core.data.layout.make_datamodule`), never from the test images:

* image AUROC / pixel AUROC: threshold-free ranking quality of scores and heatmap pixels;
* image F1 / pixel F1: at the calibrated threshold, i.e. what the inspector's verdict gets;
* AUPRO: area under the per-region-overlap curve up to 30% false positive rate, which weighs
  every defect region equally, small ones too;
* per defect type: image AUROC of that type against the good images, and the detection rate
  (share of its images judged DEFECT at the calibrated threshold);
* latency: mean wall time of one single-image call (pre-processing, model, normalisation), warm,
  on the runtime that ran the evaluation (``latency_runtime``: torch, or an OpenVINO export);
* peak memory: the process's peak resident memory on CPU, ``max_memory_allocated`` on GPU.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.metrics import AUPRO, AUROC, F1Score
from torchmetrics.classification import BinaryROC

from core import registry
from core.data.layout import GOOD, check_layout, defect_type_of, make_datamodule
from core.errors import DatasetError, ImageError, ModelUnreadableError
from core.evaluation.results import ModelResult, TrainingInfo, entry_key, write_results
from core.inference.detector import Detector, load_detector
from core.inference.verdict import CALIBRATED_THRESHOLD

LATENCY_IMAGES = 20
ROC_POINTS = 100

log = logging.getLogger(__name__)


@dataclass
class SplitOutputs:
    """Everything collected over the test set, at model resolution."""

    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    maps: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    defect_types: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    raw_scores: list[torch.Tensor] = field(default_factory=list)
    raw_maps: list[torch.Tensor] = field(default_factory=list)

    def cat(self, name: str) -> torch.Tensor:
        return torch.cat(getattr(self, name))

    def ranking(self, name: str) -> torch.Tensor:
        """Values for the threshold-free metrics: the raw ones, rescaled to [0, 1] over the whole set.

        The normalised scores are clipped to [0, 1], and ties at 0 or 1 would understate AUROC and
        AUPRO; raw scores outside [0, 1] would be squashed by torchmetrics' sigmoid into ties. A
        min-max over the whole test set keeps the raw ranking exactly (it is monotone and shared by
        all images, unlike a per-image normalisation). Falls back to the normalised values.
        """
        raw = getattr(self, f"raw_{name}")
        if not raw:
            return self.cat(name)
        values = torch.cat(raw).double()
        low, high = values.min(), values.max()
        return ((values - low) / (high - low)).float() if high > low else torch.zeros_like(values, dtype=torch.float32)


def collect(detector: Detector, datamodule: Any, *, progress: bool = True) -> SplitOutputs:
    """Run the detector over the test dataloader."""
    from tqdm import tqdm

    out = SplitOutputs()
    for batch in tqdm(datamodule.test_dataloader(), desc="Evaluating", unit="batch", disable=not progress):
        raw, normalised, _ = detector.run_batch(batch.image)
        amap = normalised.anomaly_map.float().cpu()
        amap = amap if amap.dim() == 3 else amap.squeeze(1)
        raw_map = raw.anomaly_map.float().cpu()
        out.raw_maps.append(raw_map if raw_map.dim() == 3 else raw_map.squeeze(1))
        out.raw_scores.append(raw.pred_score.reshape(-1).float().cpu())
        mask = batch.gt_mask.float()
        mask = mask if mask.dim() == 3 else mask.squeeze(1)
        if mask.shape[-2:] != amap.shape[-2:]:
            mask = F.interpolate(mask.unsqueeze(1), size=amap.shape[-2:], mode="nearest").squeeze(1)
        out.scores.append(normalised.pred_score.reshape(-1).float().cpu())
        out.labels.append(batch.gt_label.reshape(-1).int())
        out.maps.append(amap)
        out.masks.append((mask > 0.5).int())
        out.paths += [str(p) for p in batch.image_path]
        out.defect_types += [defect_type_of(p) for p in batch.image_path]
    return out


def _metric(metric: Any, **fields: torch.Tensor) -> float:
    metric.update(SimpleNamespace(**fields))
    return float(metric.compute())


def image_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return _metric(AUROC(fields=["pred_score", "gt_label"]), pred_score=scores, gt_label=labels)


def f1_at(scores: torch.Tensor, labels: torch.Tensor, threshold: float = CALIBRATED_THRESHOLD) -> float:
    """F1 of the verdicts ``score >= threshold`` (anomalib's F1Score on the binary predictions)."""
    preds = (scores >= threshold).int()
    return _metric(F1Score(fields=["pred_label", "gt_label"]), pred_label=preds, gt_label=labels)


def roc_points(scores: torch.Tensor, labels: torch.Tensor, n: int = ROC_POINTS) -> dict[str, list[float]]:
    """The image ROC curve (from the same anomalib metric), thinned to at most ``n`` points for the page."""
    metric = AUROC(fields=["pred_score", "gt_label"])
    metric.update(SimpleNamespace(pred_score=scores, gt_label=labels))
    fpr, tpr, _ = BinaryROC.compute(metric)  # AUROC is a BinaryROC whose compute() returns the area
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(n, len(fpr))).round().astype(int))
    return {"fpr": [round(float(fpr[i]), 4) for i in idx], "tpr": [round(float(tpr[i]), 4) for i in idx]}


def metrics_from(out: SplitOutputs) -> dict[str, Any]:
    """All metrics from collected outputs (separate from running the model, so it is testable)."""
    scores, labels = out.cat("scores"), out.cat("labels")
    maps, masks = out.cat("maps"), out.cat("masks")
    rank_scores, rank_maps = out.ranking("scores"), out.ranking("maps")
    types = np.array(out.defect_types)
    result: dict[str, Any] = {
        "n_test": int(len(labels)),
        "n_test_anomalous": int(labels.sum()),
        "image_auroc": image_auroc(rank_scores, labels),
        "image_f1": f1_at(scores, labels),
        "pixel_auroc": _metric(
            AUROC(fields=["anomaly_map", "gt_mask"]), anomaly_map=rank_maps.flatten(), gt_mask=masks.flatten()
        ),
        "pixel_f1": f1_at(maps.flatten(), masks.flatten()),
        "aupro": _metric(AUPRO(fields=["anomaly_map", "gt_mask"]), anomaly_map=rank_maps, gt_mask=masks),
        "false_alarm_rate": float((scores[labels == 0] >= CALIBRATED_THRESHOLD).float().mean()) if (labels == 0).any() else None,
        "roc": roc_points(rank_scores, labels),
    }
    good = torch.from_numpy(types == GOOD)
    per_type = {}
    for defect in sorted(set(out.defect_types) - {GOOD}):
        sel = torch.from_numpy(types == defect)
        subset = good | sel
        per_type[defect] = {
            "n": int(sel.sum()),
            "image_auroc": image_auroc(rank_scores[subset], labels[subset]) if good.any() else None,
            "detection_rate": float((scores[sel] >= CALIBRATED_THRESHOLD).float().mean()),
        }
    result["per_defect_type"] = per_type
    return result


def measure_latency(detector: Detector, paths: list[str], n: int = LATENCY_IMAGES) -> float:
    """Mean warm single-image latency in ms (reading and decoding the file excluded)."""
    from core.data.image_io import load_image

    images = [load_image(Path(p)) for p in paths[:n]]
    detector.predict(images[0])  # warm-up: first call allocates
    times = [detector.predict(image).latency_ms for image in images]
    return float(np.mean(times))


def peak_memory_mb(detector: Detector) -> float:
    if detector.device.type == "cuda":
        return torch.cuda.max_memory_allocated(detector.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def evaluate_one(
    model: str, category: str, *, device: str | None = None, progress: bool = True, runtime: str | None = None
) -> dict[str, Any]:
    """Evaluate one trained (model, category) and return its results entry.

    ``runtime`` None: the version's own choice (what the app runs); the entry records which ran.
    """
    detector = load_detector(model, category, device=device, runtime=runtime)
    meta = detector.meta
    check_layout(meta.data_root, category, verify_images=False)
    datamodule = make_datamodule(meta.data_root, category, calibration=False)
    datamodule.setup()
    if detector.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(detector.device)
    started = time.perf_counter()
    out = collect(detector, datamodule, progress=progress)
    eval_time = time.perf_counter() - started
    result = ModelResult(
        **metrics_from(out),
        model=model,
        category=category,
        latency_ms=measure_latency(detector, out.paths),
        latency_runtime=detector.runtime,
        eval_time_s=round(eval_time, 1),
        peak_memory_mb=round(peak_memory_mb(detector), 1),
        eval_device=str(detector.device),
        threshold_source=meta.calibration.source,
        training=TrainingInfo(
            backbone=meta.config.get("backbone"),
            device=meta.device,
            steps=meta.steps,
            train_time_s=meta.train_time_s,
            n_train_images=meta.n_train_images,
            config=meta.config,
            data_root=meta.data_root,
            data_hash=meta.data_hash,
            created_at=meta.created_at,
        ),
    )
    return result.to_dict()


@dataclass
class EvaluationRun:
    """What one ``evaluate`` call did: the entries written, what it could not evaluate, the file notice."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: "model/category" -> one-line error: a model it could not load, or a dataset it could not read
    failed: dict[str, str] = field(default_factory=dict)
    notice: str | None = None  # the results file had to be started afresh (its old copy kept aside)


def _wanted(model: str, category: str, models: list[str] | None, categories: list[str] | None) -> bool:
    return (not models or model in models) and (not categories or category in categories)


def evaluate_run(
    models: list[str] | None = None,
    categories: list[str] | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
    runtime: str | None = None,
) -> EvaluationRun:
    """Evaluate every trained (model, category) matching the filters and write them to the results file.

    A model that cannot be loaded (bad metadata, a checkpoint that does not fit it) or whose test
    set cannot be read (a broken category) is reported in ``failed`` and the others are still
    evaluated and written: one broken model or category must not throw away the work on the rest.
    """
    metas, problems = registry.list_trained_with_problems()
    run = EvaluationRun(failed={entry_key(m, c): msg for (m, c), msg in problems.items() if _wanted(m, c, models, categories)})
    for meta in metas:
        if not _wanted(meta.model, meta.category, models, categories):
            continue
        key = entry_key(meta.model, meta.category)
        try:
            run.entries[key] = evaluate_one(meta.model, meta.category, device=device, progress=progress, runtime=runtime)
        except ModelUnreadableError as exc:  # the checkpoint does not fit its metadata: seen only on load
            run.failed[key] = str(exc)
        except (DatasetError, ImageError) as exc:  # the category's test set is broken
            run.failed[key] = f"{key} not evaluated: {exc}"
    if run.entries:
        run.notice = write_results("models", run.entries).notice
    return run


def evaluate(
    models: list[str] | None = None,
    categories: list[str] | None = None,
    *,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_run`'s entries; its problems are logged (the CLI prints them itself)."""
    run = evaluate_run(models, categories, device=device, progress=progress)
    for message in [run.notice, *run.failed.values()]:
        if message:
            log.warning("%s", message)
    return run.entries


def format_table(entries: dict[str, dict[str, Any]]) -> str:
    """The printed table: one row per (model, category)."""
    header = f"{'model/category':<24}{'img AUROC':>10}{'px AUROC':>10}{'img F1':>8}{'px F1':>8}{'AUPRO':>8}{'ms/img':>8}{'peak MB':>9}  runtime"
    rows = [header, "-" * len(header)]
    for key, e in sorted(entries.items()):
        rows.append(
            f"{key:<24}{e['image_auroc']:>10.3f}{e['pixel_auroc']:>10.3f}{e['image_f1']:>8.3f}"
            f"{e['pixel_f1']:>8.3f}{e['aupro']:>8.3f}{e['latency_ms']:>8.1f}{e['peak_memory_mb']:>9.0f}"
            f"  {e.get('latency_runtime') or 'torch'}"
        )
    return "\n".join(rows)
