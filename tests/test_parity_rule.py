"""The parity rule on synthetic scores: what it accepts, what it refuses, and the images it names."""

from __future__ import annotations

import pytest

from core.inference.parity import AUROC_TOLERANCE, SCORE_BOUNDS, judge

NAMES = ["good/000.png", "good/001.png", "crack/000.png", "crack/001.png"]
LABELS = [False, False, True, True]
FP32 = [0.10, 0.30, 0.505, 0.90]


def test_identical_scores_are_accepted_at_every_precision() -> None:
    for precision in SCORE_BOUNDS:
        verdict = judge(NAMES, FP32, FP32, LABELS, precision=precision)
        assert verdict.accepted and verdict.problem() is None and verdict.differing == []
        assert verdict.max_score_diff == 0 and verdict.auroc_delta == 0


def test_a_flip_inside_the_bound_is_accepted_and_named() -> None:
    """crack/000 sits 0.005 above the threshold: bf16 may move it under (a coin flip at either precision)."""
    bf16 = [0.11, 0.29, 0.495, 0.91]
    verdict = judge(NAMES, FP32, bf16, LABELS, precision="bf16")
    assert verdict.accepted, verdict.problem()
    assert [(d.image, d.inside_bound) for d in verdict.differing] == [("crack/000.png", True)]
    assert "crack/000.png: fp32 0.5050, candidate 0.4950 (inside the bound)" in verdict.summary()


def test_a_flip_outside_the_bound_is_refused_and_named() -> None:
    """good/001 is 0.2 below the threshold in fp32: a candidate that calls it defective is wrong, not unlucky."""
    moved = [0.10, 0.51, 0.505, 0.90]
    verdict = judge(NAMES, FP32, moved, LABELS, precision="bf16")
    assert not verdict.accepted
    assert verdict.differing[0].image == "good/001.png" and not verdict.differing[0].inside_bound
    assert verdict.problem().startswith("1 of 4 verdicts differ outside the ±0.02 band (first: good/001.png")


def test_the_same_flip_is_refused_at_fp32_whose_bound_is_tighter() -> None:
    bf16 = [0.10, 0.30, 0.495, 0.90]
    assert judge(NAMES, FP32, bf16, LABELS, precision="bf16").accepted
    fp32 = judge(NAMES, FP32, bf16, LABELS, precision="fp32")
    assert not fp32.accepted and not fp32.differing[0].inside_bound


def test_a_score_beyond_the_bound_is_refused_even_without_a_flip() -> None:
    drifted = [0.10, 0.30, 0.505, 0.95]
    verdict = judge(NAMES, FP32, drifted, LABELS, precision="bf16")
    assert verdict.differing == [] and not verdict.accepted
    assert verdict.problem() == "max score difference 5.00e-02 > 0.02 (on crack/001.png)"


def test_an_auroc_loss_is_refused() -> None:
    """Scores within the bound can still re-order a good and a defective image: AUROC judges that."""
    names = [f"good/{i}" for i in range(50)] + [f"bad/{i}" for i in range(50)]
    labels = [False] * 50 + [True] * 50
    ref = [0.30 + 0.001 * i for i in range(50)] + [0.345 + 0.001 * i for i in range(50)]  # overlap of 5 pairs
    cand = ref[:50] + [s - 0.01 for s in ref[50:]]
    verdict = judge(names, ref, cand, labels, precision="bf16")
    assert verdict.max_score_diff <= 0.02 and verdict.differing == []
    assert abs(verdict.auroc_delta) > AUROC_TOLERANCE and not verdict.accepted
    assert "image AUROC" in verdict.problem()


def test_auroc_is_taken_on_the_raw_scores_when_given() -> None:
    """Normalised scores are clamped to [0, 1] (ties); the raw ones keep the order."""
    clamped = [0.0, 0.0, 1.0, 1.0]
    verdict = judge(
        NAMES,
        clamped,
        clamped,
        LABELS,
        precision="fp32",
        reference_auroc_scores=[1, 2, 3, 4],
        candidate_auroc_scores=[1, 3, 2, 4],
    )
    assert verdict.auroc_reference == 1.0 and verdict.auroc_candidate == 0.75


def test_no_images_is_never_accepted_and_mismatched_inputs_are_an_error() -> None:
    assert not judge([], [], [], [], precision="fp32").accepted
    with pytest.raises(ValueError, match="same images"):
        judge(NAMES, FP32, FP32[:3], LABELS, precision="fp32")
    with pytest.raises(ValueError, match="no parity bound"):
        judge(NAMES, FP32, FP32, LABELS, precision="fp16")
