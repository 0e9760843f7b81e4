"""The offline EfficientAD teacher: distillation pieces, a short distillation, and the committed weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data.image_io import sha256_of
from core.errors import ConfigError, WeightsMissingError
from core.models.efficientad.teacher import (
    PDN_RECEPTIVE_FIELD,
    PDN_STRIDE,
    PROVENANCE_FILE,
    CropSampler,
    DistillationTarget,
    _lr_at,
    build_pdn,
    distill_teacher,
    load_teacher,
    read_provenance,
    teacher_weights_path,
)

MAX_TEACHER_BYTES = 15 * 2**20


def test_pdn_small_receptive_field_and_stride() -> None:
    """Perturbing one input pixel changes exactly the outputs whose 33x33 window covers it."""
    pdn = build_pdn("small").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        base = pdn(x)
        y = x.clone()
        y[..., 40, 40] += 1.0
        changed = (pdn(y) - base).abs().sum(dim=1)[0] > 0
    rows = torch.nonzero(changed.any(dim=1)).flatten().tolist()
    # output i covers input pixels PDN_STRIDE*i .. PDN_STRIDE*i + 32
    expected = [i for i in range(base.shape[-2]) if PDN_STRIDE * i <= 40 <= PDN_STRIDE * i + PDN_RECEPTIVE_FIELD - 1]
    assert rows == expected
    assert base.shape[-2:] == (8, 8)  # (64 - 33) // 4 + 1


def test_crop_sampler_shapes_and_range() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8), rng.integers(0, 256, size=(90, 90, 3), dtype=np.uint8)]
    sampler = CropSampler([images], crop=64, seed=0)
    hi, lo = sampler.sample(3)
    assert hi.shape == (3, 3, 128, 128) and lo.shape == (3, 3, 64, 64)
    assert float(hi.min()) >= 0.0 and float(hi.max()) <= 1.0
    assert torch.allclose(lo, torch.nn.functional.avg_pool2d(hi, 2))


def test_target_is_standardised_and_aligned_to_the_pdn_output() -> None:
    target_net = DistillationTarget()
    assert target_net.in_channels == 40 + 112 and target_net.projection.shape == (384, 152)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 3, 128, 128, generator=gen) for _ in range(2)]
    target_net.fit_stats(batches)
    out_hw = tuple(build_pdn("small")(torch.zeros(1, 3, 64, 64)).shape[-2:])
    target = target_net(torch.cat(batches), out_hw)
    assert target.shape == (4, 384, *out_hw) and torch.isfinite(target).all()
    # standardised on these very batches (before the bilinear sampling): roughly unit scale
    assert 0.3 < float(target.std()) < 2.0


def test_short_distillation_writes_a_loadable_teacher(tmp_path: Path) -> None:
    from core.data.demo import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "tiny", ["tile"], n_train=3, n_test_good=0, n_per_defect=0, size=64, progress=False)
    out = tmp_path / "teacher"
    path = distill_teacher(
        "small", steps=2, device="cpu", out=out, progress=False, batch_size=2, crop=64,
        image_dirs=[data / "tile" / "train" / "good"], use_natural=False, use_demo_textures=False, stat_crops=8,
    )  # fmt: skip
    assert path == out / "pdn_small.pth" and path.stat().st_size < MAX_TEACHER_BYTES
    entry = read_provenance(path)
    assert entry["sha256"] == sha256_of(path)
    assert entry["schedule"]["steps"] == 2 and math.isfinite(entry["final_loss"])
    assert entry["images"]["folders"][0]["count"] == 3
    assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True).values())
    pdn = load_teacher("small", path)
    with torch.no_grad():
        assert torch.isfinite(pdn(torch.rand(1, 3, 64, 64))).all()


def test_time_budget_stops_the_run_and_is_recorded(tmp_path: Path) -> None:
    from core.data.demo import generate_demo_dataset

    data = generate_demo_dataset(tmp_path / "tiny", ["tile"], n_train=2, n_test_good=0, n_per_defect=0, size=64, progress=False)
    path = distill_teacher(
        "small", steps=1_000_000, device="cpu", out=tmp_path / "t", progress=False, batch_size=1, crop=64,
        image_dirs=[data / "tile" / "train" / "good"], use_natural=False, use_demo_textures=False, stat_crops=1,
        time_budget_s=1.0,
    )  # fmt: skip
    entry = read_provenance(path)
    assert 1 <= entry["steps_done"] < 1_000_000 and entry["time_budget_s"] == 1.0
    assert entry["wall_time_s"] < 30


def test_learning_rate_warms_up_then_decays_to_five_percent() -> None:
    assert _lr_at(0.0, 1.0) == pytest.approx(1e-3)
    assert _lr_at(0.05, 1.0) == pytest.approx(1.0)
    assert _lr_at(0.5, 1.0) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.45 / 0.95)))
    assert _lr_at(1.0, 1.0) == pytest.approx(0.05)
    assert _lr_at(2.0, 1.0) == pytest.approx(0.05)  # a run past its budget stays at the floor


@pytest.mark.parametrize(
    "kwargs",
    [{"crop": 66}, {"crop": 32}, {"steps": 0}, {"batch_size": 0}, {"time_budget_s": 0.0}, {"lr": -1.0}],
)
def test_bad_distillation_settings_are_one_line_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        distill_teacher("small", device="cpu", out=tmp_path, progress=False, use_natural=False, use_demo_textures=False, **kwargs)


def test_unknown_model_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="small or medium"):
        build_pdn("large")


def test_missing_teacher_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError, match="distill-teacher"):
        load_teacher("small", tmp_path / "nope.pth")


# --- the committed teacher --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def committed() -> tuple[Path, dict]:
    path = teacher_weights_path("small")
    assert path.is_file(), f"{path} is missing: run `python -m core distill-teacher` and commit it"
    provenance = json.loads((path.parent / PROVENANCE_FILE).read_text())
    return path, provenance["files"][path.name]


def test_committed_teacher_matches_its_provenance(committed: tuple[Path, dict]) -> None:
    path, entry = committed
    assert sha256_of(path) == entry["sha256"]
    assert path.stat().st_size == entry["bytes"] < MAX_TEACHER_BYTES
    for key in ("command", "date", "device", "schedule", "final_loss", "target", "projection", "images"):
        assert key in entry, key
    assert entry["heldout_mse_after"] < entry["heldout_mse_before"]


def test_committed_teacher_loads_strict_and_describes_patches(committed: tuple[Path, dict]) -> None:
    from core.models.efficientad.penalty_images import natural_images

    path, _ = committed
    state = torch.load(path, map_location="cpu", weights_only=True)
    pdn = build_pdn("small")
    pdn.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    image = dict(natural_images())["skimage.astronaut"]
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
    x = torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear", antialias=True)
    with torch.no_grad():
        out = pdn.eval()(x)
    assert out.shape == (1, 384, 24, 24) and torch.isfinite(out).all()
    # not constant: over positions and over channels
    assert float(out.std(dim=(2, 3)).mean()) > 1e-3 and float(out.mean(dim=(2, 3)).std()) > 1e-3


def test_committed_teacher_records_why_it_replaced_the_previous_one(committed: tuple[Path, dict]) -> None:
    """A teacher is swapped only when the probe and EfficientAD on bottle both improve (issue 14)."""
    _, entry = committed
    check = entry["efficientad_bottle_check"]
    assert check["this_teacher"]["image_auroc"] > check["previous_teacher"]["image_auroc"]
    assert check["this_teacher"]["train_s"] <= 3600 * 1.05  # within the 60-minute CPU budget (+ the last validation)
    assert entry["replaces"]["sha256"] != entry["sha256"]
    assert entry["heldout_mse_after"] < entry["replaces"]["heldout_mse_after"]
