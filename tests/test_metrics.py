"""Metric values against cases computed by hand."""

from __future__ import annotations

import pytest
import torch

from core.evaluation.evaluate import SplitOutputs, f1_at, image_auroc, metrics_from


def test_auroc_hand_case() -> None:
    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (pos > neg) = 0.9>0.5, 0.9>0.1, 0.4>0.1 → 3 of 4
    scores = torch.tensor([0.9, 0.4, 0.5, 0.1])
    labels = torch.tensor([1, 1, 0, 0])
    assert image_auroc(scores, labels) == pytest.approx(0.75)


def test_f1_at_calibrated_threshold_hand_case() -> None:
    # threshold 0.5 → predictions 1, 0, 1, 0: TP=1, FP=1, FN=1 → F1 = 2/(2+1+1) = 0.5
    scores = torch.tensor([0.9, 0.4, 0.5, 0.1])
    labels = torch.tensor([1, 1, 0, 0])
    assert f1_at(scores, labels) == pytest.approx(0.5)


def test_metrics_from_hand_case() -> None:
    maps = torch.zeros(4, 8, 8)
    masks = torch.zeros(4, 8, 8, dtype=torch.int32)
    masks[0, :2, :2] = 1  # one 4-pixel defect in image 0, found exactly
    maps[0, :2, :2] = 0.9
    masks[1, 4:6, 4:6] = 1  # a defect in image 1 that the map misses
    out = SplitOutputs(
        scores=[torch.tensor([0.9, 0.4, 0.2, 0.1])],
        labels=[torch.tensor([1, 1, 0, 0])],
        maps=[maps],
        masks=[masks],
        defect_types=["crack", "oil", "good", "good"],
        paths=["a", "b", "c", "d"],
    )
    m = metrics_from(out)
    assert m["image_auroc"] == pytest.approx(1.0)
    assert m["image_f1"] == pytest.approx(2 / 3)  # TP=1 (0.9), FN=1 (0.4): 2/(2+0+1)
    assert m["false_alarm_rate"] == pytest.approx(0.0)
    # pixel F1 at 0.5: TP=4, FN=4, FP=0 → 8/12
    assert m["pixel_f1"] == pytest.approx(8 / 12)
    assert m["per_defect_type"]["crack"] == {"n": 1, "image_auroc": pytest.approx(1.0), "detection_rate": 1.0}
    assert m["per_defect_type"]["oil"]["detection_rate"] == 0.0
    assert m["n_test"] == 4 and m["n_test_anomalous"] == 2
    assert m["roc"]["fpr"][0] == 0.0 and m["roc"]["tpr"][-1] == 1.0
    # the map ranks found-defect pixels above all others, but the missed one ties with background
    assert 0.5 < m["pixel_auroc"] < 1.0


def test_threshold_free_metrics_rank_raw_scores_not_clipped_ones() -> None:
    """Normalised scores clip at 1.0: two defects both at 1.0 would tie with a good image at 1.0."""
    out = SplitOutputs(
        scores=[torch.tensor([1.0, 1.0, 1.0, 0.2])],
        raw_scores=[torch.tensor([50.0, 40.0, 30.0, 10.0])],
        labels=[torch.tensor([1, 1, 0, 0])],
        maps=[torch.zeros(4, 4, 4)],
        masks=[torch.zeros(4, 4, 4, dtype=torch.int32)],
        defect_types=["crack", "crack", "good", "good"],
        paths=["a", "b", "c", "d"],
    )
    out.masks[0][0, 0, 0] = 1
    m = metrics_from(out)
    assert m["image_auroc"] == pytest.approx(1.0)  # raw 50, 40 > 30, 10
    assert m["false_alarm_rate"] == pytest.approx(0.5)  # the verdicts still use the calibrated scores
