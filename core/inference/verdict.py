"""The verdict rule: one threshold on the calibrated (normalised) score scale, without torch.

anomalib's post-processor normalises scores so that the calibrated threshold lands at 0.5; every
page, command and record compares against :data:`CALIBRATED_THRESHOLD` unless the inspector moves it.
"""

from __future__ import annotations

#: The calibrated threshold on the normalised scale (anomalib's post-processor puts it at 0.5).
CALIBRATED_THRESHOLD = 0.5
VERDICTS: tuple[str, ...] = ("GOOD", "DEFECT")


def verdict(score: float, threshold: float = CALIBRATED_THRESHOLD) -> str:
    """'DEFECT' when the normalised ``score`` reaches ``threshold``, else 'GOOD'."""
    return "DEFECT" if score >= threshold else "GOOD"
