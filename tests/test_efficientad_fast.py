"""EfficientAD's faster CPU step and its stop by measurement, on tiny data with the network refused.

* the fast step (teacher cache, one student pass) gives anomalib's own losses;
* early stopping: a training that cannot improve stops on the validation plateau, records its
  curve and is calibrated; a time budget stops it too;
* an interrupted training resumes from its last validation checkpoint;
* bad settings end in a ConfigError (one ``error:`` line on the command line, tests/test_cli.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel
from conftest import inspect_home_at

from core.errors import ConfigError
from core.models.efficientad.durations import parse_duration
from core.models.efficientad.early_stop import PlateauRule, ValidationStopper
from core.models.efficientad.fast_step import TeacherCache, efficientad_losses
from core.models.efficientad.model import EfficientAdConfig
from core.models.efficientad.runs import runs_dir

CATEGORY = "tile"
SIZE = 256  # EfficientAD's smallest input
pytestmark = pytest.mark.filterwarnings("ignore")


def _refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args[1:]}")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    with inspect_home_at(tmp_path_factory.mktemp("ead_fast_home")) as path, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket.socket, "connect_ex", _refuse)
        yield path


@pytest.fixture(scope="module")
def data(home: Path) -> Path:
    from core.data.demo import generate_demo_dataset

    return generate_demo_dataset(home / "data", [CATEGORY], n_train=10, n_test_good=2, n_per_defect=1, size=SIZE, progress=False)


def _model() -> EfficientAdModel:
    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384)
    model.mean_std["mean"].data.normal_(0, 0.1)
    model.mean_std["std"].data.uniform_(0.5, 2.0)
    return model.train()


@pytest.mark.parametrize("fused", [False, True])
def test_teacher_cache_gives_anomalibs_loss(fused: bool) -> None:
    """Cached teacher output (second epoch) and one student pass: the same losses as anomalib's step."""
    model = _model()
    image, penalty = torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE)
    cache = TeacherCache()
    efficientad_losses(model, image, penalty, teacher_cache=cache, keys=["a.png"])  # first epoch: fills the cache
    assert (len(cache), cache.misses) == (1, 1)
    torch.manual_seed(7)  # the augmentation's draw
    with torch.no_grad():
        expected = model(batch=image, batch_imagenet=penalty)  # anomalib: teacher run twice, student three times
    torch.manual_seed(7)
    with torch.no_grad():
        got = efficientad_losses(model, image, penalty, teacher_cache=cache, keys=["a.png"], fused_student=fused)
    assert cache.hits == 1
    for a, b in zip(got, expected, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-4)


def test_bf16_channels_last_step_trains() -> None:
    model = _model()
    from core.models.efficientad.fast_step import to_channels_last

    to_channels_last(model)
    losses = efficientad_losses(
        model, torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE), precision="bf16", channels_last=True
    )
    total = sum(losses)
    total.backward()
    assert all(torch.isfinite(loss) and loss.dtype == torch.float32 for loss in losses)
    assert model.student.conv1.weight.grad is not None


def test_plateau_rule() -> None:
    rule = PlateauRule(patience=2)
    assert not rule.update(0.5, 1.0)
    assert not rule.update(0.6, 0.5)  # both improved
    assert not rule.update(0.601, 0.499)  # neither improved enough: 1
    assert rule.update(0.602, 0.498)  # 2
    assert not PlateauRule(patience=0).update(0.5, 1.0)  # 0: never


def test_bad_settings_are_config_errors() -> None:
    assert parse_duration("45m") == 2700 and parse_duration("1.5h") == 5400 and parse_duration("90s") == 90
    assert parse_duration("2700") == 2700
    for bad in ("0", "0m", "-5m", "soon", 0):
        with pytest.raises(ConfigError, match="time-budget"):
            EfficientAdConfig(time_budget=bad)
    with pytest.raises(ConfigError, match="--steps >= 1"):
        EfficientAdConfig(steps=0)
    with pytest.raises(ConfigError, match="small or medium"):
        EfficientAdConfig(model_size="huge")
    with pytest.raises(ConfigError, match="--val-every"):
        EfficientAdConfig(val_every=0)
    with pytest.raises(ConfigError, match="precision"):
        EfficientAdConfig(precision="fp8")


def _train(data: Path, **config):
    from core.training import train

    return train("efficientad", CATEGORY, data_root=data, config=config, device="cpu", progress=False)


def test_stops_on_the_validation_plateau(home: Path, data: Path) -> None:
    """With a learning rate too small to change anything, AUROC and loss plateau: 3 validations."""
    meta = _train(data, steps=40, val_every=2, patience=2, lr=1e-12)
    assert meta.steps == 6
    assert meta.extra["stop_reason"] == "validation plateau"
    curve = meta.extra["validation_curve"]
    assert [p["step"] for p in curve] == [2, 4, 6]
    assert all(np.isfinite(p["loss"]) for p in curve)
    assert meta.extra["teacher_cache"]["misses"] >= 1
    cal = meta.calibration
    assert np.isfinite([cal.image_threshold, cal.pixel_threshold]).all()
    assert not list(runs_dir().glob("*/last.ckpt"))  # the run folder is gone once saved


def test_time_budget_stops_training(home: Path, data: Path) -> None:
    meta = _train(data, steps=40, val_every=100, time_budget=0.001)
    assert meta.steps == 1 and meta.extra["stop_reason"] == "time budget"
    assert meta.config["time_budget"] == 0.001 and len(meta.extra["validation_curve"]) == 1


def test_interrupted_training_resumes(home: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = ValidationStopper.on_train_batch_end

    def dies_at_step_3(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step == 3:
            raise RuntimeError("machine switched off")

    config = {"steps": 4, "val_every": 2, "patience": 0}
    monkeypatch.setattr(ValidationStopper, "on_train_batch_end", dies_at_step_3)
    with pytest.raises(RuntimeError, match="switched off"):
        _train(data, **config)
    assert list(runs_dir().glob("*/last.ckpt"))  # saved at the step-2 validation
    monkeypatch.setattr(ValidationStopper, "on_train_batch_end", original)
    meta = _train(data, **config)
    assert meta.steps == 4
    assert [p["step"] for p in meta.extra["validation_curve"]] == [2, 4]  # step 2 from the first run
    assert not list(runs_dir().glob("*/last.ckpt"))
