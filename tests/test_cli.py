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
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300)


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
        "train", "--category", "part", "--data-root", str(tmp_path / "data"),
        "--backbone", "wide_resnet50_2", "--backbone-weights", str(tmp_path / "wrn50.pth"), home=tmp_path,
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
    assert_one_line_error(run_cli(*common, "--coreset-ratio", "0", home=tmp_path), "--coreset-ratio must be in (0, 1]")
    assert_one_line_error(run_cli(*common, "--image-size", "32", home=tmp_path), "--image-size >= 64")
