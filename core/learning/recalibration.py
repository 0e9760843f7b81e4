"""Propose a new image threshold from inspectors' reviews, with its before/after, and apply it.

Labels (a review is an inspection with feedback):

* negatives (good parts): "correct" on a GOOD verdict, "false alarm" on any verdict,
  plus the calibration split's held-out good images (the images training calibrated on);
* positives (defective parts): "correct" on a DEFECT verdict, "missed defect" on any verdict.

The rule (:func:`propose`), on raw scores: every cut point between two neighbouring scores is
tried, and the one with the fewest errors (goods at or above it + defects below it) wins; among
equally good cuts, the one in the middle of the widest gap (so the threshold sits as far as the
data allows from both a good and a defect). When no defect lies above the highest good, the
threshold is the highest good score nudged up by one part in 10^6, the rule training uses.

The guard: a threshold that already makes the fewest errors on the labelled scores stays where it
is. The feedback only moves it when it asks to (a false alarm above it, a missed defect below it).
Without the guard, reviews that all agree with the current verdicts pulled the threshold *down* to
just above the highest good: training's threshold (anomalib's F1 cut, floored at the highest
held-out good) sits higher than that, and on real bottle with a brightness shift the lower
threshold cost 25-35% false alarms where the current one had none (README, *Learning from
inspectors*).

Too few reviews (fewer than :data:`MIN_REVIEWS`) and the threshold is not moved: a handful of
parts is not evidence enough to change what every later part is judged by.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.history import InspectionRecord

#: Reviews of a (model, category) needed before the threshold may move.
MIN_REVIEWS = 5
#: Relative nudge above the highest good score (a good part at exactly the threshold is DEFECT).
NUDGE = 1e-6


def label_of(record: InspectionRecord) -> int | None:
    """0 (good), 1 (defect) or None (not reviewed) from a record's verdict and feedback."""
    if record.feedback == "false_alarm":
        return 0
    if record.feedback == "missed_defect":
        return 1
    if record.feedback == "correct":
        return 0 if record.verdict == "GOOD" else 1
    return None


@dataclass(frozen=True)
class Errors:
    """What a threshold does to a set of labelled scores."""

    false_alarms: int  # goods at or above it
    missed: int  # defects below it
    goods: int
    defects: int

    @property
    def false_alarm_rate(self) -> float | None:
        return self.false_alarms / self.goods if self.goods else None

    @property
    def detection_rate(self) -> float | None:
        return (self.defects - self.missed) / self.defects if self.defects else None


def errors_at(threshold: float, negatives: list[float], positives: list[float]) -> Errors:
    return Errors(
        false_alarms=sum(s >= threshold for s in negatives),
        missed=sum(s < threshold for s in positives),
        goods=len(negatives),
        defects=len(positives),
    )


def _above(value: float) -> float:
    return value + abs(value) * NUDGE + 1e-12


def best_threshold(negatives: list[float], positives: list[float], current: float | None = None) -> float:
    """The cut with the fewest errors, in the middle of the widest such gap (see the module docstring).

    ``current``: the threshold in use; returned unchanged when no cut makes fewer errors (the guard).
    """
    if not negatives:
        raise ConfigError("no good-part scores to set a threshold from")
    neg, pos = sorted(negatives), sorted(positives)

    def cost(t: float) -> int:
        return (len(neg) - bisect.bisect_left(neg, t)) + bisect.bisect_left(pos, t)

    best_t = _best_cut(neg, pos, cost)
    if current is not None and cost(current) <= cost(best_t):
        return current
    return best_t


def _best_cut(neg: list[float], pos: list[float], cost: Callable[[float], int]) -> float:
    high = neg[-1]
    if not pos or high < pos[0]:
        # separable: midway between the highest good and the lowest defect; no defect: above the goods
        return (high + pos[0]) / 2 if pos else _above(high)
    values = sorted(set(neg) | set(pos))
    candidates = [(values[0] - 1.0, 0.0)]  # below everything: all DEFECT
    candidates += [((a + b) / 2, b - a) for a, b in zip(values, values[1:], strict=False)]
    candidates.append((_above(values[-1]), 0.0))  # above everything: all GOOD
    best = min(cost(t) for t, _ in candidates)
    return max((c for c in candidates if cost(c[0]) == best), key=lambda c: (c[1], -c[0]))[0]


@dataclass
class Proposal:
    """A proposed threshold (raw score) with its before/after, or why there is none."""

    current: float
    proposed: float | None
    reviews: int
    reviewed_before: Errors
    reviewed_after: Errors | None
    calibration_goods: int
    test_before: Errors | None = None
    test_after: Errors | None = None
    inspection_ids: list[int] = field(default_factory=list)
    refusal: str | None = None  # set when the threshold should not move
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.refusal is None and self.proposed is not None


def propose(
    current: float,
    reviewed: list[tuple[int, int, float]],
    calibration_goods: list[float],
    *,
    test: tuple[list[float], list[int]] | None = None,
    min_reviews: int = MIN_REVIEWS,
) -> Proposal:
    """The proposal from ``reviewed`` = [(inspection id, label 0/1, raw score)] and the calibration goods."""
    neg = [s for _, label, s in reviewed if label == 0]
    pos = [s for _, label, s in reviewed if label == 1]
    out = Proposal(
        current=current,
        proposed=None,
        reviews=len(reviewed),
        reviewed_before=errors_at(current, neg, pos),
        reviewed_after=None,
        calibration_goods=len(calibration_goods),
        inspection_ids=sorted(i for i, _, _ in reviewed),
    )
    if test is not None:
        t_neg = [s for s, label in zip(*test, strict=True) if label == 0]
        t_pos = [s for s, label in zip(*test, strict=True) if label == 1]
        out.test_before = errors_at(current, t_neg, t_pos)
    if len(reviewed) < min_reviews:
        out.refusal = (
            f"too few reviews to move the threshold safely: {len(reviewed)} reviewed inspection(s) of this "
            f"model and category, at least {min_reviews} are needed (mark verdicts as correct / false alarm / "
            "missed defect on the History page)"
        )
        return out
    out.proposed = best_threshold(neg + list(calibration_goods), pos, current)
    out.reviewed_after = errors_at(out.proposed, neg, pos)
    if test is not None:
        out.test_after = errors_at(out.proposed, t_neg, t_pos)
    if out.proposed == current:
        out.notes.append(
            "the current threshold already makes the fewest errors on the reviewed inspections and the "
            "calibration goods: it stays where it is"
        )
    elif not pos:
        out.notes.append("no reviewed defect: the threshold only moves to clear the confirmed goods")
    return out
