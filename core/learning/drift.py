"""Is the line still what the model was calibrated on? Drift over recent inspections, and a
note for one image that looks like no image the model has seen.

Drift (:func:`drift_report`), over the last :data:`RECENT` inspections of a (model, category)
judged by the current version:

* the share over the threshold: calibration put every held-out good below it, so among n good
  parts about 1/(n_cal + 1) should be over it by chance; a line also makes some real defects, so
  :data:`DEFECT_ALLOWANCE` is added. A warning is raised when the count over the threshold is
  too high for that rate by a one-sided binomial test at :data:`ALPHA`;
* the median score of recently confirmed goods (feedback "correct" on GOOD, or "false alarm"):
  with at least :data:`MIN_CONFIRMED` of them, a warning when it is above the 90th percentile of
  the calibration goods' scores (by chance, the median of 5 goods lands there less than 1% of
  the time).

Out of distribution (:func:`looks_foreign`, the Inspect page's note :func:`ood_note` and the gate
on images that teach a model): a real defect is local and a drifted good part moves its score
without lighting up the whole map, so an image judged DEFECT (:data:`OOD_MARGIN`: at or past the
image threshold) with its map over the pixel threshold almost everywhere (:data:`OOD_AREA`) is a
part of another kind. The area does the separating: every other category's test image covers 100%
of the map on each demo model and on real bottle's, while own defects cover at most 51% (bottle),
drifted goods at most 23% (``benchmarks/bench_gate.py``, table in docs/benchmarks.md). How far past
the threshold a foreign image scores depends on the model's calibration spread (1.0 to 2.5 spreads
on bottle, 6 to 24 on the demo models), so no margin beyond the threshold is asked for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import median
from typing import TYPE_CHECKING

from core.inference.verdict import CALIBRATED_THRESHOLD

if TYPE_CHECKING:
    from core.history import InspectionRecord
    from core.registry import Calibration

RECENT = 50
DEFECT_ALLOWANCE = 0.10
ALPHA = 0.01
MIN_INSPECTIONS = 10
MIN_CONFIRMED = 5
GOOD_QUANTILE = 0.9
OOD_AREA = 0.8
OOD_MARGIN = 0.0
HIST_BINS = 20


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def normalised(raw: float, cal: Calibration) -> float:
    """anomalib's normalisation of a raw score (0.5 = threshold), clipped to [0, 1]."""
    span = (cal.image_max - cal.image_min) or 1.0
    return min(1.0, max(0.0, (raw - cal.image_threshold) / span + 0.5))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class DriftReport:
    """Recent scores against the calibration, and the warnings they raise."""

    version: str
    recent_scores: list[float]  # normalised, newest first
    over_threshold: int
    expected_share: float  # of parts over the threshold, calibration + defect allowance
    recent_median: float | None
    calibration_scores: list[float]  # normalised held-out goods (may be empty)
    confirmed_median: float | None
    confirmed_count: int
    calibration_good_q90: float | None
    warnings: list[str] = field(default_factory=list)

    @property
    def share_over(self) -> float | None:
        return self.over_threshold / len(self.recent_scores) if self.recent_scores else None


def drift_report(
    records: list[InspectionRecord],
    cal: Calibration,
    version: str,
    calibration_goods_raw: list[float],
    *,
    recent: int = RECENT,
) -> DriftReport:
    """Drift over ``records`` (newest first, any versions: only ``version``'s are used, or, when
    none carries a version, all of them)."""
    mine = [r for r in records if r.model_version == version] or [r for r in records if r.model_version is None]
    mine = mine[:recent]
    scores = [normalised(r.raw_score, cal) if r.raw_score is not None else r.score for r in mine]
    over = sum(s >= CALIBRATED_THRESHOLD for s in scores)
    cal_norm = [normalised(s, cal) for s in calibration_goods_raw]
    expected = 1.0 / (len(cal_norm) + 1) + DEFECT_ALLOWANCE if cal_norm else DEFECT_ALLOWANCE + 0.05
    confirmed = [
        s
        for r, s in zip(mine, scores, strict=True)
        if r.feedback == "false_alarm" or (r.feedback == "correct" and r.verdict == "GOOD")
    ]
    q90 = quantile(cal_norm, GOOD_QUANTILE) if cal_norm else None
    report = DriftReport(
        version=version,
        recent_scores=scores,
        over_threshold=over,
        expected_share=expected,
        recent_median=median(scores) if scores else None,
        calibration_scores=cal_norm,
        confirmed_median=median(confirmed) if confirmed else None,
        confirmed_count=len(confirmed),
        calibration_good_q90=q90,
    )
    n = len(scores)
    if n >= MIN_INSPECTIONS and binomial_tail(over, n, min(expected, 1.0)) < ALPHA:
        report.warnings.append(
            f"{over} of the last {n} inspections ({over / n:.0%}) are over the threshold; calibration and a "
            f"{DEFECT_ALLOWANCE:.0%} defect allowance predict at most about {expected:.0%}: the parts or the "
            "imaging may have drifted (review some verdicts, then recalibrate or add confirmed goods)"
        )
    if len(confirmed) >= MIN_CONFIRMED and q90 is not None and report.confirmed_median > q90:
        report.warnings.append(
            f"the median score of the last {len(confirmed)} confirmed good parts is {report.confirmed_median:.2f}, "
            f"above the 90th percentile of the calibration goods ({q90:.2f}): good parts now look less like "
            "the ones the model learnt"
        )
    return report


def histogram(report: DriftReport, bins: int = HIST_BINS) -> list[dict[str, float]]:
    """Counts of recent and calibration scores in equal bins over [0, 1] (for the page's chart)."""
    rows = []
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins

        def inside(s: float, lo: float = lo, hi: float = hi, last: bool = i == bins - 1) -> bool:
            return lo <= s < hi or (last and s == hi)

        rows.append(
            {
                "score": round((lo + hi) / 2, 4),
                "recent": sum(inside(s) for s in report.recent_scores),
                "calibration goods": sum(inside(s) for s in report.calibration_scores),
            }
        )
    return rows


def foreign_margin(raw_score: float, cal: Calibration) -> float:
    """How far past the image threshold a raw score lies, in calibration spreads (threshold - lowest good)."""
    spread = cal.image_threshold - cal.image_min
    return (raw_score - cal.image_threshold) / spread if spread > 0 else 0.0


def looks_foreign(raw_score: float, defect_area: float, cal: Calibration) -> bool:
    """Whether an image looks like no image of the model's category: the wrong-category rule.

    Used by the Inspect page's note (:func:`ood_note`) and by the gate on every image that would
    teach a model (:mod:`core.learning.gate`).
    """
    return defect_area >= OOD_AREA and foreign_margin(raw_score, cal) >= OOD_MARGIN


def ood_note(raw_score: float, defect_area: float, cal: Calibration, category: str) -> str | None:
    """The "wrong category?" note for an image unlike anything the model has seen, else None."""
    if not looks_foreign(raw_score, defect_area, cal):
        return None
    margin = foreign_margin(raw_score, cal)
    return (
        f"This does not look like a {category} image: {defect_area:.0%} of it differs from every {category} "
        f"image the model has seen (score {margin:.1f} calibration spreads past the threshold). Wrong category?"
    )
