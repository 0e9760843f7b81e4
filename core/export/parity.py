"""The parity check: an exported model must answer as the torch model it came from.

Run right after every export, on the category's test images, before the file is kept. users of
anomalib report exported models that disagree with their checkpoint (anomalib issues 2303, 2672,
3726: a missing normalisation, a stale threshold, a different resize); comparing the two on real
images catches all of those, whatever the cause.

Criteria: at full precision (fp32) every normalised score within :data:`SCORE_TOLERANCE` of the
torch model's and every verdict identical; at a lower precision (bf16, int8) verdicts identical and
the image AUROC within :data:`AUROC_TOLERANCE` (scores move by more than 1e-3 there by design).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data.image_io import load_image
from core.inference.verdict import CALIBRATED_THRESHOLD

if TYPE_CHECKING:
    from core.data.layout import CategoryImage
    from core.inference.detector import Detector

SCORE_TOLERANCE = 1e-3
AUROC_TOLERANCE = 0.002
FULL_PRECISIONS = ("fp32",)


@dataclass
class ParityReport:
    """How the exported model compared with the torch model on the same images."""

    precision: str
    n_images: int
    max_score_diff: float  # normalised scores (0.5 = calibrated threshold)
    worst_image: str
    max_raw_score_diff: float
    max_map_diff: float  # normalised anomaly maps
    verdict_mismatches: list[str] = field(default_factory=list)
    auroc_torch: float | None = None
    auroc_export: float | None = None
    passed: bool = False

    def problem(self) -> str | None:
        """The difference that fails the check, in one line (None when it passes)."""
        if self.verdict_mismatches:
            first = self.verdict_mismatches[0]
            return f"{len(self.verdict_mismatches)} of {self.n_images} verdicts differ (first: {first})"
        if self.precision in FULL_PRECISIONS and self.max_score_diff > SCORE_TOLERANCE:
            return f"max score difference {self.max_score_diff:.2e} > {SCORE_TOLERANCE:g} (on {self.worst_image})"
        if (
            self.precision not in FULL_PRECISIONS
            and self.auroc_torch is not None
            and self.auroc_export is not None
            and abs(self.auroc_torch - self.auroc_export) > AUROC_TOLERANCE
        ):
            return f"image AUROC {self.auroc_export:.4f} vs torch {self.auroc_torch:.4f} (allowed ±{AUROC_TOLERANCE:g})"
        return None

    def summary(self) -> str:
        auroc = (
            f", image AUROC {self.auroc_export:.4f} (torch {self.auroc_torch:.4f})"
            if self.auroc_torch is not None and self.auroc_export is not None
            else ""
        )
        agree = self.n_images - len(self.verdict_mismatches)
        return (
            f"{self.n_images} test images: max score difference {self.max_score_diff:.2e}, "
            f"verdicts {agree}/{self.n_images} identical{auroc}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if labels.min() == labels.max():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def check_parity(
    reference: Detector, candidate: Detector, images: list[CategoryImage], *, precision: str = "fp32", batch_size: int = 8
) -> ParityReport:
    """Run both detectors on ``images`` (same decoded pixels, same batches) and compare."""
    ref_scores, cand_scores, ref_raw, cand_raw, map_diff, names, labels = [], [], [], [], 0.0, [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        decoded = [load_image(item.path) for item in chunk]
        for ref, cand, item in zip(reference.predict_batch(decoded), candidate.predict_batch(decoded), chunk, strict=True):
            ref_scores.append(ref.score)
            cand_scores.append(cand.score)
            ref_raw.append(ref.raw_score)
            cand_raw.append(cand.raw_score)
            map_diff = max(map_diff, float(np.abs(ref.anomaly_map - cand.anomaly_map).max()))
            names.append(f"{item.defect_type}/{item.path.name}")
            labels.append(item.label != "good")
    ref_s, cand_s = np.array(ref_scores), np.array(cand_scores)
    diff = np.abs(ref_s - cand_s)
    worst = int(diff.argmax()) if len(diff) else 0
    mismatches = [
        f"{names[i]}: torch {ref_s[i]:.4f}, export {cand_s[i]:.4f}"
        for i in range(len(names))
        if (ref_s[i] >= CALIBRATED_THRESHOLD) != (cand_s[i] >= CALIBRATED_THRESHOLD)
    ]
    label_arr = np.array(labels, dtype=int)
    report = ParityReport(
        precision=precision,
        n_images=len(names),
        max_score_diff=float(diff.max()) if len(diff) else 0.0,
        worst_image=names[worst] if names else "",
        max_raw_score_diff=float(np.abs(np.array(ref_raw) - np.array(cand_raw)).max()) if names else 0.0,
        max_map_diff=map_diff,
        verdict_mismatches=mismatches,
        auroc_torch=_auroc(label_arr, np.array(ref_raw)) if names else None,
        auroc_export=_auroc(label_arr, np.array(cand_raw)) if names else None,
    )
    report.passed = report.n_images > 0 and report.problem() is None
    return report
