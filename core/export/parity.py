"""The parity check: an exported model must answer as the torch model it came from.

Run right after every export, on the category's test images, before the file is kept. users of
anomalib report exported models that disagree with their checkpoint (anomalib issues 2303, 2672,
3726: a missing normalisation, a stale threshold, a different resize); comparing the two on real
images catches all of those, whatever the cause.

The criteria are the parity rule of :mod:`core.inference.parity` (one rule for every precision,
with the precision's score bound): AUROC within 0.002, every score within the bound, and a verdict
may differ only for an image whose torch score lies within the bound of the threshold. The report
names every such image. The raw-score and map differences are recorded for the reader, not judged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data.image_io import load_image
from core.inference.parity import ParityVerdict, judge

if TYPE_CHECKING:
    from core.data.layout import CategoryImage
    from core.inference.detector import Detector


@dataclass
class ParityReport:
    """How the exported model compared with the torch model on the same images."""

    rule: ParityVerdict  # the candidate run in batches
    max_raw_score_diff: float
    max_map_diff: float  # normalised anomaly maps
    #: the candidate run one image at a time (the runtime compiles a static batch-1 graph for that)
    single: ParityVerdict | None = None

    @property
    def passed(self) -> bool:
        return self.rule.accepted and (self.single is None or self.single.accepted)

    @property
    def precision(self) -> str:
        return self.rule.precision

    @property
    def max_score_diff(self) -> float:
        return self.rule.max_score_diff

    def problem(self) -> str | None:
        single = self.single.problem() if self.single is not None else None
        return self.rule.problem() or (f"one image at a time: {single}" if single else None)

    def summary(self) -> str:
        if self.single is None:
            return self.rule.summary()
        return f"{self.rule.summary()}; one image at a time: max score difference {self.single.max_score_diff:.2e}"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's record: the rule's figures, the differing images by name, and ``passed``."""
        rule = asdict(self.rule)
        return {
            **rule,
            "auroc_delta": self.rule.auroc_delta,
            "max_raw_score_diff": self.max_raw_score_diff,
            "max_map_diff": self.max_map_diff,
            "single": asdict(self.single) if self.single is not None else None,
            "passed": self.passed,
        }


def check_parity(
    reference: Detector, candidate: Detector, images: list[CategoryImage], *, precision: str = "fp32", batch_size: int = 8
) -> ParityReport:
    """Run both detectors on ``images`` (same decoded pixels, same batches) and apply the parity rule,
    to the candidate's batches and to the candidate one image at a time (both must pass)."""
    ref_scores, cand_scores, ref_raw, cand_raw, map_diff, names, labels = [], [], [], [], 0.0, [], []
    single_scores, single_raw = [], []
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
        for image in decoded:
            one = candidate.predict(image)
            single_scores.append(one.score)
            single_raw.append(one.raw_score)
    rule = judge(
        names,
        ref_scores,
        cand_scores,
        labels,
        precision=precision,
        reference_auroc_scores=ref_raw,
        candidate_auroc_scores=cand_raw,
    )
    single = judge(
        names,
        ref_scores,
        single_scores,
        labels,
        precision=precision,
        reference_auroc_scores=ref_raw,
        candidate_auroc_scores=single_raw,
    )
    raw_diff = float(np.abs(np.array(ref_raw) - np.array(cand_raw)).max()) if names else 0.0
    return ParityReport(rule=rule, max_raw_score_diff=raw_diff, max_map_diff=map_diff, single=single)
