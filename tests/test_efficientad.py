"""EfficientAD offline: configuration, a 3-step training with the network cut off, inference, evaluation.

The module trains in its own workspace (not the session's), so the PatchCore tests that count the
registry's models are unaffected. While it trains, ``socket.connect`` raises: any download attempt
(anomalib's teacher zip, imagenette, a hub) fails the test instead of hanging or passing silently.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import inspect_home_at

from core.data.image_io import sha256_of
from core.errors import ConfigError, WeightsMissingError
from core.models.efficientad.model import (
    CPU_DEFAULT_TIME_BUDGET_S,
    PAPER_STEPS,
    EfficientAdConfig,
    OfflineEfficientAd,
    build_efficientad,
    prepare_training,
    teacher_patch_features,
)
from core.models.efficientad.teacher import teacher_weights_path

CATEGORY = "tile"
SIZE = 256  # EfficientAD's smallest size: its autoencoder ends with an 8x8 kernel at stride 32
STEPS = 3


class NetworkAttempt(AssertionError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkAttempt(f"network access attempted: connect{args[1:] if len(args) > 1 else args}")


@pytest.fixture(scope="module")
def ead_home(tmp_path_factory: pytest.TempPathFactory):
    """A private INSPECT_HOME for this module, restored afterwards."""
    with inspect_home_at(tmp_path_factory.mktemp("ead_home")) as home:
        yield home


@pytest.fixture(scope="module")
def no_network():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket.socket, "connect_ex", _refuse)
        yield


@pytest.fixture(scope="module")
def ead_data(ead_home: Path) -> Path:
    from core.data.demo import generate_demo_dataset

    return generate_demo_dataset(
        ead_home / "data", [CATEGORY], n_train=10, n_test_good=3, n_per_defect=1, size=SIZE, progress=False
    )


@pytest.fixture(scope="module")
def trained(ead_home: Path, ead_data: Path, no_network):
    from core.training import train

    return train("efficientad", CATEGORY, data_root=ead_data, config={"steps": STEPS}, device="cpu", progress=False)


def test_network_guard_works(no_network) -> None:
    with pytest.raises(NetworkAttempt):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: no DNS lookup before connect


def test_config_defaults_and_validation() -> None:
    config = EfficientAdConfig()
    assert (config.model_size, config.image_size, config.lr) == ("small", 256, 1e-4)
    assert config.teacher_path() == teacher_weights_path("small")
    assert EfficientAdConfig(**config.to_dict()) == config
    with pytest.raises(ConfigError, match="256"):
        EfficientAdConfig(image_size=128)
    with pytest.raises(ConfigError, match="small or medium"):
        EfficientAdConfig(model_size="large")


def test_missing_teacher_raises_with_the_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError, match="python -m core distill-teacher"):
        build_efficientad(EfficientAdConfig(teacher_weights=str(tmp_path / "missing.pth")), load_weights=True)
    # without weights (a checkpoint follows) nothing is read
    assert isinstance(
        build_efficientad(EfficientAdConfig(teacher_weights=str(tmp_path / "missing.pth")), load_weights=False),
        OfflineEfficientAd,
    )


def test_pre_processor_has_no_normalisation() -> None:
    """The PDN normalises inside forward, as in distillation; anomalib refuses a Normalize here."""
    from anomalib.data.transforms.utils import extract_transforms_by_type
    from torchvision.transforms.v2 import Normalize

    module = build_efficientad(EfficientAdConfig(), load_weights=False)
    assert not extract_transforms_by_type(module.pre_processor.transform, Normalize)
    out = module.pre_processor.transform(torch.rand(1, 3, 300, 200))
    assert out.shape[-2:] == (256, 256)


def test_prepare_training_counts_steps() -> None:
    module = build_efficientad(EfficientAdConfig(), load_weights=True)
    config: dict = {}
    batch_size, steps, kwargs = prepare_training(module, config)
    assert (batch_size, steps) == (1, PAPER_STEPS)  # a cap: training stops by validation or time budget
    assert kwargs["max_steps"] == steps and kwargs["max_epochs"] == -1 and kwargs["val_check_interval"] == steps
    assert config["steps"] == steps and config["teacher_sha256"] == sha256_of(teacher_weights_path("small"))
    budget = None if torch.cuda.is_available() else CPU_DEFAULT_TIME_BUDGET_S
    assert config["time_budget"] == budget and config["val_every"] >= 1
    # --steps alone on a CPU: no time budget, the validation plateau or the steps stop it
    config = {"steps": 50}
    prepare_training(module, config)
    assert config["time_budget"] is None and config["steps"] == 50


def test_training_offline_records_steps_and_teacher(trained, ead_home: Path) -> None:
    assert trained.model == "efficientad" and trained.steps == STEPS
    assert trained.config["steps"] == STEPS
    assert trained.config["teacher_sha256"] == sha256_of(teacher_weights_path("small"))
    cal = trained.calibration
    assert all(np.isfinite([cal.image_threshold, cal.pixel_threshold, cal.image_min, cal.image_max]))
    # the penalty images came from the local folder, and nothing was downloaded next to it
    penalty = ead_home / "cache" / "penalty" / "natural"
    assert len(list(penalty.glob("*.png"))) == 300
    assert not (Path.cwd() / "datasets" / "imagenette").exists()  # anomalib's default download folder
    assert not list(ead_home.rglob("*.ckpt"))  # no Lightning checkpoint beside the registry's


def test_checkpoint_has_teacher_statistics_and_quantiles(trained) -> None:
    from core import registry

    state = registry.load_state("efficientad", CATEGORY)
    assert float(state["model.mean_std.std"].abs().sum()) > 0  # computed by anomalib at fit start
    assert all(float(state[f"model.quantiles.{q}"]) != 0 for q in ("qa_st", "qb_st", "qa_ae", "qb_ae"))


def test_inference_maps_and_scores(trained, ead_data: Path) -> None:
    from core.data.image_io import load_image
    from core.inference.detector import load_detector

    detector = load_detector("efficientad", CATEGORY, device="cpu")
    test_dir = ead_data / CATEGORY / "test"
    for path in [
        next((test_dir / "good").glob("*.png")),
        next(p for p in sorted(test_dir.glob("*/*.png")) if p.parent.name != "good"),
    ]:
        prediction = detector.predict(load_image(path))
        assert prediction.anomaly_map.shape == (SIZE, SIZE)
        assert np.isfinite(prediction.anomaly_map).all()
        assert prediction.anomaly_map.min() >= 0.0 and prediction.anomaly_map.max() <= 1.0
        assert np.isfinite(prediction.raw_score) and 0.0 <= prediction.score <= 1.0
    features = detector.predict(load_image(path), with_features=True).patch_features
    assert features.shape == (384, 56, 56) and torch.isfinite(features).all()
    # the same numbers as the module-level helper used by the similarity search
    processed = detector.module.pre_processor(torch.rand(1, 3, SIZE, SIZE))
    assert teacher_patch_features(detector.module, processed).shape == (1, 384, 56, 56)


def test_evaluate_writes_an_efficientad_entry(trained, no_network) -> None:
    from core.evaluation.evaluate import evaluate

    entries = evaluate(["efficientad"], [CATEGORY], device="cpu", progress=False)
    entry = entries[f"efficientad/{CATEGORY}"]
    assert entry["model"] == "efficientad" and entry["training"]["steps"] == STEPS
    for key in ("image_auroc", "pixel_auroc", "aupro", "latency_ms"):
        assert np.isfinite(entry[key]), key
