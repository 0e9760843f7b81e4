"""The parity rule: when a faster path (an export, bf16, int8) may answer instead of the fp32 model.

Written once, used by the export's parity check (:mod:`core.export.parity`), by the choice of a
version's runtime and by the tests. A candidate path is accepted on a set of labelled images when

1. its image AUROC is within :data:`AUROC_TOLERANCE` of the fp32 model's;
2. every normalised score is within the precision's bound (:data:`SCORE_BOUNDS`) of the fp32 score;
3. every verdict that differs belongs to an image whose fp32 score lies within that same bound of
   the threshold: an image that close is a coin flip at either precision, and refusing a path for it
   would refuse any path whose scores move at all.

Why: the earlier rule refused bf16 on bottle for one image (contamination/001: 0.5012 in fp32,
0.4984 in bf16, 0.0012 above the threshold) while anomalib's deployment path runs bf16 by default
and moves scores by up to 1.1e-2. This rule states the bound and names every image whose verdict
differs, with whether its fp32 score was inside the bound, instead of one pass/fail line.

No torch here: scores in, a typed verdict out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.inference.verdict import CALIBRATED_THRESHOLD

#: Largest allowed difference between the candidate's image AUROC and the fp32 model's.
AUROC_TOLERANCE = 0.002
#: Per precision, the largest allowed difference of a normalised score (0.5 = threshold) from the
#: fp32 model's, and the half-width of the band around the threshold where a verdict may differ.
#: fp32 (a re-ordering of float sums) stays at 1e-3; bf16 keeps 8 significant bits, and its
#: measured drift on bottle and the demo categories stays under 0.02 (anomalib's bf16 path: 1.1e-2).
SCORE_BOUNDS: dict[str, float] = {"fp32": 1e-3, "bf16": 0.02, "int8": 0.02}


@dataclass(frozen=True)
class DifferingVerdict:
    """One image judged differently by the fp32 model and the candidate."""

    image: str
    reference: float  # the fp32 model's normalised score
    candidate: float
    #: the fp32 score lies within the bound of the threshold (a coin flip: allowed)
    inside_bound: bool

    def describe(self) -> str:
        where = "inside" if self.inside_bound else "OUTSIDE"
        return f"{self.image}: fp32 {self.reference:.4f}, candidate {self.candidate:.4f} ({where} the bound)"


@dataclass
class ParityVerdict:
    """What the rule found on one set of images, and whether it accepts the candidate."""

    precision: str
    bound: float
    n_images: int
    max_score_diff: float
    worst_image: str
    auroc_reference: float | None
    auroc_candidate: float | None
    differing: list[DifferingVerdict] = field(default_factory=list)
    threshold: float = CALIBRATED_THRESHOLD

    @property
    def auroc_delta(self) -> float | None:
        if self.auroc_reference is None or self.auroc_candidate is None:
            return None
        return self.auroc_candidate - self.auroc_reference

    @property
    def accepted(self) -> bool:
        return self.n_images > 0 and self.problem() is None

    def problem(self) -> str | None:
        """The first breach of the rule, in one line (None when the candidate is accepted)."""
        if self.n_images == 0:
            return "no images to compare"
        outside = [d for d in self.differing if not d.inside_bound]
        if outside:
            return f"{len(outside)} of {self.n_images} verdicts differ outside the ±{self.bound:g} band (first: {outside[0].describe()})"
        if self.max_score_diff > self.bound:
            return f"max score difference {self.max_score_diff:.2e} > {self.bound:g} (on {self.worst_image})"
        delta = self.auroc_delta
        if delta is not None and abs(delta) > AUROC_TOLERANCE:
            return f"image AUROC {self.auroc_candidate:.4f} vs fp32 {self.auroc_reference:.4f} (allowed ±{AUROC_TOLERANCE:g})"
        return None

    def summary(self) -> str:
        auroc = (
            f", image AUROC {self.auroc_candidate:.4f} (fp32 {self.auroc_reference:.4f})" if self.auroc_delta is not None else ""
        )
        agree = self.n_images - len(self.differing)
        named = "".join(f"; differs: {d.describe()}" for d in self.differing)
        return (
            f"{self.n_images} test images: max score difference {self.max_score_diff:.2e} (bound {self.bound:g}), "
            f"verdicts {agree}/{self.n_images} identical{auroc}{named}"
        )


def score_bound(precision: str) -> float:
    try:
        return SCORE_BOUNDS[precision]
    except KeyError:
        raise ValueError(f"no parity bound for precision {precision!r}: one of {', '.join(SCORE_BOUNDS)}") from None


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Image AUROC, or None when the images are all of one label (no ranking to judge)."""
    labels = np.asarray(labels, dtype=int)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


def judge(
    names: list[str],
    reference: np.ndarray | list[float],
    candidate: np.ndarray | list[float],
    labels: np.ndarray | list[bool],
    *,
    precision: str,
    threshold: float = CALIBRATED_THRESHOLD,
    reference_auroc_scores: np.ndarray | list[float] | None = None,
    candidate_auroc_scores: np.ndarray | list[float] | None = None,
) -> ParityVerdict:
    """Apply the rule to normalised scores of the same images (``labels``: True = defective).

    The AUROCs are computed on ``*_auroc_scores`` when given (raw scores: the normalised ones are
    clamped to [0, 1], which can tie images), else on the normalised scores.
    """
    ref = np.asarray(reference, dtype=float)
    cand = np.asarray(candidate, dtype=float)
    if not (len(names) == ref.size == cand.size == len(labels)):
        raise ValueError("names, scores and labels must describe the same images")
    bound = score_bound(precision)
    diff = np.abs(ref - cand)
    worst = int(diff.argmax()) if diff.size else 0
    differing = [
        DifferingVerdict(names[i], float(ref[i]), float(cand[i]), bool(abs(ref[i] - threshold) <= bound))
        for i in range(ref.size)
        if (ref[i] >= threshold) != (cand[i] >= threshold)
    ]
    ref_auc = ref if reference_auroc_scores is None else np.asarray(reference_auroc_scores, dtype=float)
    cand_auc = cand if candidate_auroc_scores is None else np.asarray(candidate_auroc_scores, dtype=float)
    return ParityVerdict(
        precision=precision,
        bound=bound,
        n_images=int(ref.size),
        max_score_diff=float(diff.max()) if diff.size else 0.0,
        worst_image=names[worst] if names else "",
        auroc_reference=image_auroc(np.asarray(labels), ref_auc),
        auroc_candidate=image_auroc(np.asarray(labels), cand_auc),
        differing=differing,
        threshold=threshold,
    )
