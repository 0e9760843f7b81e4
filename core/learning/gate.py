"""Which images may teach a model: the version in use judges each one before it enters a memory bank.

A bank update adds an image's patches to what the model calls normal. One photo of another part
(a grid image offered to tile) teaches it that the other texture is normal: the refreshed threshold
rises to cover it and real defects fall under it. So every image that would teach a model is first
scored by the version in use, and one that does not look like the category at all is refused by
name, with the reason, before anything is computed or written.

The rule is the one behind the Inspect page's "Wrong category?" flag
(:func:`core.learning.drift.looks_foreign`): judged DEFECT *and* most of the map over the pixel
threshold. A real defect is local and a drifted good part (brighter, another tint) moves the score
without lighting up the whole map, so neither is refused; a DEFECT verdict alone is no reason either,
since a confirmed false alarm is exactly what a bank update is for. The refusal is measured both ways
by ``benchmarks/bench_gate.py`` (figures in ``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.learning.drift import foreign_margin, looks_foreign

if TYPE_CHECKING:
    from core.inference.detector import Detector

#: Images scored per forward pass.
BATCH = 8


@dataclass(frozen=True)
class Screened:
    """One offered image as the version in use sees it."""

    name: str
    raw_score: float
    defect_area: float  # share of the calibrated map at or over the pixel threshold
    margin: float  # calibration spreads past the image threshold
    foreign: bool

    @property
    def reason(self) -> str:
        return f"{self.defect_area:.0%} of its map over the threshold, {self.margin:.0f} calibration spreads past it"


def screen(detector: Detector, named: list[tuple[str, np.ndarray]]) -> list[Screened]:
    """Score each ``(name, RGB image)`` with ``detector`` and say which do not look like its category."""
    cal = detector.meta.calibration
    out: list[Screened] = []
    for start in range(0, len(named), BATCH):
        chunk = named[start : start + BATCH]
        for (name, _), pred in zip(chunk, detector.predict_batch([im for _, im in chunk]), strict=True):
            area = pred.defect_area()
            out.append(
                Screened(
                    name, pred.raw_score, area, foreign_margin(pred.raw_score, cal), looks_foreign(pred.raw_score, area, cal)
                )
            )
    return out


def refusal(screened: list[Screened], category: str) -> str | None:
    """The one-line refusal naming every foreign image, or None when all may teach the model."""
    foreign = [s for s in screened if s.foreign]
    if not foreign:
        return None
    shown = "; ".join(f"{Path(s.name).name} ({s.reason})" for s in foreign[:5])
    more = f"; and {len(foreign) - 5} more" if len(foreign) > 5 else ""
    return (
        f"{len(foreign)} of {len(screened)} image(s) do not look like {category} and were not added: {shown}{more}. "
        "Nothing was written; remove them, or confirm that they are good parts of this category (--force)"
    )
