"""Real photos: PatchCore on MVTec AD bottle (runs only where ../shared holds it)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def bottle_home(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_HOME", str(tmp_path))
    return tmp_path


def test_patchcore_on_real_bottle(shared_bottle, bottle_home) -> None:
    from core.evaluation.evaluate import evaluate_one
    from core.training import train

    # 1% coreset keeps the test short; the README's 10% figures come from the CLI run it lists
    train("patchcore", "bottle", data_root=shared_bottle, config={"coreset_ratio": 0.01}, progress=False)
    entry = evaluate_one("patchcore", "bottle", progress=False)
    assert entry["n_test"] == 83 and entry["n_test_anomalous"] == 63
    assert entry["image_auroc"] >= 0.995
    assert entry["pixel_auroc"] >= 0.97
    assert set(entry["per_defect_type"]) == {"broken_large", "broken_small", "contamination"}
    assert os.environ["INSPECT_HOME"] == str(bottle_home)
