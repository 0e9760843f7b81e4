"""Precision@k arithmetic on a hand-computed case (no Qdrant involved)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from core.similarity.retrieval_eval import EvalItem, evaluate_retrieval, precision_at_k

A1 = EvalItem("A1", "anomalous", "crack", "tile")
A2 = EvalItem("A2", "anomalous", "crack", "tile")
A3 = EvalItem("A3", "anomalous", "hole", "tile")
G1 = EvalItem("G1", "good", "good", "tile")
G2 = EvalItem("G2", "good", "good", "tile")
B1 = EvalItem("B1", "anomalous", "bent", "grid")
H1 = EvalItem("H1", "good", "good", "grid")
H2 = EvalItem("H2", "good", "good", "grid")
ITEMS = [A1, A2, A3, G1, G2, B1, H1, H2]

NEIGHBOURS = {
    # defect: A1 -> anomalous 2/2, crack 1/2; A2 -> 1/2, 1/2; A3 -> 1/2, 0; B1 (one neighbour) -> 0, 0
    "defect": {"A1": [A2, A3], "A2": [A1, G1], "A3": [G1, A1], "B1": [H1]},
    # global: A1 -> 0, 0; A2 -> 1, 1/2; A3 (three returned, first two count) -> 1, 0; B1 -> 0, 0
    "global": {"A1": [G1, G2], "A2": [A1, A3], "A3": [A1, A2, G1], "B1": [H1, H2]},
}


def fake_neighbours(item: EvalItem, descriptor: str, k: int):
    return NEIGHBOURS[descriptor][item.id]


def test_precision_at_k_by_hand():
    assert precision_at_k(["a", "b"], [["a", "a", "b"], ["a"]], k=2) == pytest.approx((2 / 2 + 0 / 2) / 2)
    assert precision_at_k(["a", "b"], [["a", "a", "b"], ["a"]], k=3) == pytest.approx((2 / 3 + 0 / 3) / 2)
    # fewer neighbours than k: the missing ones count as misses
    assert precision_at_k(["a"], [["a"]], k=4) == pytest.approx(0.25)
    assert math.isnan(precision_at_k([], [], k=5))
    with pytest.raises(ValueError):
        precision_at_k(["a"], [], k=5)
    with pytest.raises(ValueError):
        precision_at_k(["a"], [["a"]], k=0)


def test_evaluate_retrieval_by_hand():
    result = evaluate_retrieval(ITEMS, fake_neighbours, k=2)
    assert result["k"] == 2 and result["n_items"] == 8 and result["n_queries"] == 4

    defect = result["descriptors"]["defect"]
    assert defect["precision_anomalous"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert defect["precision_same_defect"] == pytest.approx((0.5 + 0.5 + 0 + 0) / 4)
    assert defect["n_queries"] == 4
    assert defect["by_category"]["tile"]["precision_anomalous"] == pytest.approx(2 / 3)
    assert defect["by_category"]["tile"]["precision_same_defect"] == pytest.approx(1 / 3)
    assert defect["by_category"]["grid"] == {
        "precision_anomalous": 0.0,
        "precision_same_defect": 0.0,
        "n_queries": 1,
    }

    global_ = result["descriptors"]["global"]
    assert global_["precision_anomalous"] == pytest.approx((0 + 1 + 1 + 0) / 4)
    assert global_["precision_same_defect"] == pytest.approx((0 + 0.5 + 0 + 0) / 4)

    # random pick among the other images of the category: A1, A2: 2/4 anomalous, 1/4 crack;
    # A3: 2/4 anomalous, 0/4 hole; B1: 0/2, 0/2
    assert result["chance"]["precision_anomalous"] == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4)
    assert result["chance"]["precision_same_defect"] == pytest.approx((0.25 + 0.25 + 0 + 0) / 4)


def test_neighbours_may_be_payload_mappings_or_hits():
    as_dict = {"A1": [{"id": "A2", "label": "anomalous", "defect_type": "crack", "category": "tile"}]}
    hit = SimpleNamespace(id="G1", payload={"label": "good", "defect_type": "good", "category": "tile"})
    as_hit = {"A2": [hit], "A3": [hit]}
    items = [A1, A2, A3, G1]

    def fn(item, descriptor, k):
        return as_dict.get(item.id) or as_hit[item.id]

    result = evaluate_retrieval(items, fn, k=1, descriptors=("defect",))
    entry = result["descriptors"]["defect"]
    assert entry["precision_anomalous"] == pytest.approx(1 / 3)
    assert entry["precision_same_defect"] == pytest.approx(1 / 3)


def test_no_anomalous_queries_gives_none():
    result = evaluate_retrieval([G1, G2], fake_neighbours, k=5)
    assert result["n_queries"] == 0
    assert result["descriptors"]["defect"]["precision_anomalous"] is None
    assert result["chance"]["precision_anomalous"] is None


def test_leave_one_out_is_enforced():
    with pytest.raises(ValueError, match="query itself"):
        evaluate_retrieval([A1, A2], lambda item, d, k: [item], k=1)
    with pytest.raises(ValueError, match="category"):
        evaluate_retrieval([A1, B1], lambda item, d, k: [B1 if item is A1 else A1], k=1)
