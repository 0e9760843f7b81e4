"""Bad input on the command line ends with one line naming the problem and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "INSPECT_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def _category(root: Path) -> Path:
    cat = root / "part"
    for i in range(2):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(cat / "train" / "good" / f"{i:03d}.png")
    (cat / "test" / "good").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(cat / "test" / "good" / "000.png")
    return cat


def test_wrong_dataset_root(tmp_path: Path) -> None:
    result = run_cli("train", "--category", "part", "--data-root", str(tmp_path / "missing"), home=tmp_path)
    assert_one_line_error(result, "does not exist")


def test_broken_layout(tmp_path: Path) -> None:
    cat = _category(tmp_path / "data")
    (cat / "test" / "hole").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(cat / "test" / "hole" / "000.png")
    result = run_cli("check", "--category", "part", "--data-root", str(tmp_path / "data"), home=tmp_path)
    assert_one_line_error(result, "has no mask")


def test_unreadable_image(tmp_path: Path) -> None:
    cat = _category(tmp_path / "data")
    (cat / "train" / "good" / "001.png").write_text("this is not a PNG")
    result = run_cli("train", "--category", "part", "--data-root", str(tmp_path / "data"), home=tmp_path)
    assert_one_line_error(result, "unreadable image")


def test_missing_backbone_weights_file(tmp_path: Path) -> None:
    _category(tmp_path / "data")
    result = run_cli(
        "train",
        "--category",
        "part",
        "--data-root",
        str(tmp_path / "data"),
        "--backbone",
        "wide_resnet50_2",
        "--backbone-weights",
        str(tmp_path / "wrn50.pth"),
        home=tmp_path,
    )
    assert_one_line_error(result, "backbone weights file not found")


def test_evaluate_with_nothing_trained(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("evaluate", home=tmp_path), "no trained model")


def test_out_of_range_settings(tmp_path: Path) -> None:
    """Checked before any feature is extracted, and named with the flag to change."""
    _category(tmp_path / "data")
    common = ("train", "--category", "part", "--data-root", str(tmp_path / "data"))
    assert_one_line_error(run_cli(*common, "--model", "efficientad", "--image-size", "128", home=tmp_path), "--image-size >= 256")
    assert_one_line_error(run_cli(*common, "--model", "efficientad", "--steps", "0", home=tmp_path), "--steps >= 1")
    assert_one_line_error(run_cli(*common, "--model", "efficientad", "--lr", "0", home=tmp_path), "0 < --lr < 1")
    ead = (*common, "--model", "efficientad")
    assert_one_line_error(run_cli(*ead, "--time-budget", "0", home=tmp_path), "--time-budget > 0")
    assert_one_line_error(run_cli(*ead, "--time-budget", "soon", home=tmp_path), "--time-budget must be a duration")
    assert_one_line_error(run_cli(*ead, "--model-size", "large", home=tmp_path), "small or medium")
    assert_one_line_error(run_cli("autotrain", "--time-budget", "0m", home=tmp_path), "--time-budget > 0")
    assert_one_line_error(run_cli(*common, "--coreset-ratio", "0", home=tmp_path), "--coreset-ratio must be in (0, 1]")
    assert_one_line_error(run_cli(*common, "--image-size", "32", home=tmp_path), "--image-size >= 64")


# --- Dataset faults that used to pass `check` and fail after the work was done -----------------


def _with_defect(root: Path) -> Path:
    cat = _category(root)
    for sub in ("test/hole", "ground_truth/hole"):
        (cat / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(cat / "test" / "hole" / "000.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(cat / "ground_truth" / "hole" / "000_mask.png")
    return cat


def test_check_passes_a_sound_category(tmp_path: Path) -> None:
    _with_defect(tmp_path / "data")
    result = run_cli("check", "--category", "part", "--data-root", str(tmp_path / "data"), home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "layout OK" in result.stdout


def test_check_finds_broken_entries(tmp_path: Path) -> None:
    """A broken link, a folder named *.png, a mask that is not an image or has another size."""
    data = tmp_path / "data"
    cat = _with_defect(data)
    check = ("check", "--category", "part", "--data-root", str(data))

    link = cat / "train" / "good" / "002.png"
    link.symlink_to(tmp_path / "gone.png")
    assert_one_line_error(run_cli(*check, home=tmp_path), "broken link")
    link.unlink()

    (cat / "train" / "good" / "003.png").mkdir()
    assert_one_line_error(run_cli(*check, home=tmp_path), "is a folder inside")
    (cat / "train" / "good" / "003.png").rmdir()

    mask = cat / "ground_truth" / "hole" / "000_mask.png"
    mask.write_text("not a mask")
    assert_one_line_error(run_cli(*check, home=tmp_path), "unreadable image")

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    assert_one_line_error(run_cli(*check, home=tmp_path), "16x16 px but its image")


# --- Settings and names that used to end in tracebacks -----------------------------------------


def test_bad_layers_image_size_and_weights_file(tmp_path: Path) -> None:
    _category(tmp_path / "data")
    common = ("train", "--category", "part", "--data-root", str(tmp_path / "data"))
    assert_one_line_error(run_cli(*common, "--layers", "blocks.9", home=tmp_path), "no such layer in tf_efficientnet_lite0")
    assert_one_line_error(run_cli(*common, "--image-size", "100000", home=tmp_path), "--image-size must be <= 1024")
    corrupt = tmp_path / "weights.pth"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # starts like a zip, is not one
    assert_one_line_error(
        run_cli(*common, "--backbone-weights", str(corrupt), home=tmp_path), "is not a readable PyTorch weights file"
    )


def test_category_names_cannot_leave_their_folders(tmp_path: Path) -> None:
    """`--category ../data/part` names a real folder, but outside the dataset and models roots."""
    data = tmp_path / "root" / "data"
    _category(data)
    home = tmp_path / "root" / "home"
    for name in ("../data/part", "a/b", "..", ".hidden", "/abs"):
        result = run_cli("train", "--category", name, "--data-root", str(tmp_path / "root" / "home"), home=home)
        assert_one_line_error(result, "invalid category name")
    assert not (home / "models").exists() or not any((home / "models").rglob("*"))


def test_train_seed_is_used_and_recorded(tmp_path: Path, tiny_data_root: Path) -> None:
    """``--seed`` picks another calibration draw (a robustness run) and the model's metadata keeps it."""
    from core import registry
    from tests.conftest import TINY_CATEGORY, TINY_SIZE

    args = ("train", "--category", TINY_CATEGORY, "--data-root", str(tiny_data_root), "--image-size", str(TINY_SIZE))
    thresholds = {}
    for seed in (0, 3):
        home = tmp_path / f"seed{seed}"
        result = run_cli(*args, "--coreset-ratio", "0.1", "--seed", str(seed), home=home)
        assert result.returncode == 0, result.stderr
        meta = registry.load_meta("patchcore", TINY_CATEGORY, home / "models")
        assert meta.extra["seed"] == seed
        thresholds[seed] = meta.extra["anomalib_f1_thresholds"]["image"]
    assert thresholds[0] != thresholds[3]  # another seed, another synthetic calibration split
