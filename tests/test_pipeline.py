"""Training, the registry, inference and evaluation on a tiny generated set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_CATEGORY, TINY_SIZE

from core import registry
from core.errors import ModelNotTrainedError


def test_training_writes_checkpoint_and_metadata(tiny_patchcore, inspect_home) -> None:
    # one version folder holds the pair (see core.registry): models/patchcore/tile/v0001/{model.pt,meta.json}
    folder = registry.current_files("patchcore", TINY_CATEGORY).folder
    assert folder.parent == inspect_home / "models" / "patchcore" / TINY_CATEGORY and folder.name.startswith("v")
    meta = json.loads((folder / "meta.json").read_text())
    assert (folder / "model.pt").stat().st_size > 0
    assert meta["config"]["backbone"] == "efficientnet_lite0"
    assert meta["config"]["layers"] == ["blocks.2", "blocks.4"]
    assert meta["config"]["coreset_ratio"] == 0.1 and meta["config"]["image_size"] == TINY_SIZE
    assert len(meta["data_hash"]) == 16 and meta["train_time_s"] > 0
    cal = meta["calibration"]
    assert all(np.isfinite(cal[k]) for k in ("image_threshold", "pixel_threshold", "image_min", "image_max"))
    assert cal["image_min"] < cal["image_max"] and cal["pixel_min"] < cal["pixel_max"]
    assert "no test image" in cal["source"]
    assert [m.category for m in registry.list_trained()] == [TINY_CATEGORY]
    # the registry holds the model; Lightning's own checkpoint (anomalib's default) is not written
    assert not list(inspect_home.rglob("*.ckpt"))


def test_memory_bank_is_the_coreset(tiny_patchcore) -> None:
    from core.inference.detector import load_detector

    detector = load_detector("patchcore", TINY_CATEGORY)
    bank = detector.module.model.memory_bank
    n_train = tiny_patchcore.n_train_images
    patches = n_train * (TINY_SIZE // 8) ** 2
    assert bank.shape == (int(patches * 0.1), 40 + 112)


def test_inference_on_good_and_defect(tiny_patchcore, tiny_data_root) -> None:
    from core.data.image_io import load_image
    from core.inference.detector import load_detector

    detector = load_detector("patchcore", TINY_CATEGORY)
    test_dir = tiny_data_root / TINY_CATEGORY / "test"
    defect = next(p for p in sorted(test_dir.glob("*/*.png")) if p.parent.name != "good")
    prediction = detector.predict(load_image(defect))
    assert prediction.anomaly_map.shape == (TINY_SIZE, TINY_SIZE)
    assert prediction.anomaly_map.min() >= 0.0 and prediction.anomaly_map.max() <= 1.0
    assert 0.0 <= prediction.score <= 1.0 and np.isfinite(prediction.raw_score)
    assert prediction.verdict(0.0) == "DEFECT" and prediction.verdict(1.01) == "GOOD"
    # the normalisation is the calibrated one, shared by every image: raw ↔ normalised agree
    assert detector.raw_to_normalised(prediction.raw_score) == pytest.approx(prediction.score, abs=1e-5)


def test_evaluation_writes_results(tiny_patchcore) -> None:
    from core.evaluation.evaluate import evaluate, format_table
    from core.evaluation.results import load_results

    entries = evaluate(["patchcore"], [TINY_CATEGORY], progress=False)
    entry = entries[f"patchcore/{TINY_CATEGORY}"]
    for key in ("image_auroc", "pixel_auroc", "image_f1", "pixel_f1", "aupro"):
        assert 0.0 <= entry[key] <= 1.0, key
    assert entry["pixel_auroc"] > 0.7  # even 12 tiny images make the heatmaps informative
    assert set(entry["per_defect_type"]) == {"crack", "glue_strip", "gray_stroke", "oil", "rough"}
    assert entry["latency_ms"] > 0 and entry["peak_memory_mb"] > 0
    assert entry["training"]["backbone"] == "efficientnet_lite0"
    assert load_results()["models"][f"patchcore/{TINY_CATEGORY}"]["n_test"] == entry["n_test"]
    assert format_table(entries).count("\n") == 2  # header, rule, one row


def test_untrained_model_says_how_to_train(inspect_home) -> None:
    with pytest.raises(ModelNotTrainedError, match="python -m core train --model patchcore --category leather"):
        registry.load_meta("patchcore", "leather")


def test_background_training_writes_a_tqdm_step_bar(monkeypatch) -> None:
    """Rich (Lightning's default bar) draws nothing into a job's log file until the end; tqdm does."""
    import sys

    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    from core.training import make_engine

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    callbacks = make_engine(torch.device("cpu"), progress=True)._cache.args["callbacks"]  # noqa: SLF001
    assert any(type(c) is TQDMProgressBar for c in callbacks)
    assert any(isinstance(c, ModelCheckpoint) and c.save_top_k == 0 for c in callbacks)
    quiet = make_engine(torch.device("cpu"), progress=False)._cache.args["callbacks"]  # noqa: SLF001
    assert not any(isinstance(c, TQDMProgressBar) for c in quiet)
