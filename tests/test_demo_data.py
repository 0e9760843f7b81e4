"""Tests for the synthetic MVTec-AD-layout demo dataset (core/demo_data.py).

All generations are tiny (a handful of 128 px images) so the whole file runs in a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.data.demo import (
    DEFECT_TYPES,
    MARKER_NAME,
    MAX_DEFECT_FRACTION,
    MIN_DEFECT_FRACTION,
    generate_demo_dataset,
    render_sample,
)
from core.errors import DatasetError
from core.settings import DEMO_CATEGORIES

SMALL = dict(n_train=3, n_test_good=2, n_per_defect=2, size=128, seed=0, progress=False)


def _pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **SMALL)


def test_defect_types_cover_demo_categories() -> None:
    assert set(DEFECT_TYPES) == set(DEMO_CATEGORIES)
    assert DEFECT_TYPES["tile"] == ("crack", "glue_strip", "gray_stroke", "oil", "rough")
    assert DEFECT_TYPES["leather"] == ("color", "cut", "fold", "glue", "poke")
    assert DEFECT_TYPES["grid"] == ("bent", "broken", "glue", "metal_contamination", "thread")


def test_layout_and_counts(small_root: Path) -> None:
    assert (small_root / MARKER_NAME).is_file()
    assert sorted(p.name for p in small_root.iterdir() if p.is_dir()) == sorted(DEMO_CATEGORIES)
    for cat in DEMO_CATEGORIES:
        c = small_root / cat
        assert sorted(p.name for p in c.iterdir()) == ["ground_truth", "test", "train"]
        assert [p.name for p in (c / "train").iterdir()] == ["good"]
        assert _pngs(c / "train" / "good") == ["000.png", "001.png", "002.png"]
        test_dirs = sorted(p.name for p in (c / "test").iterdir())
        assert test_dirs == sorted(("good", *DEFECT_TYPES[cat]))
        assert _pngs(c / "test" / "good") == ["000.png", "001.png"]
        # good images have no masks: ground_truth holds exactly the defect folders
        assert sorted(p.name for p in (c / "ground_truth").iterdir()) == sorted(DEFECT_TYPES[cat])
        for d in DEFECT_TYPES[cat]:
            assert _pngs(c / "test" / d) == ["000.png", "001.png"]
            assert _pngs(c / "ground_truth" / d) == ["000_mask.png", "001_mask.png"]


def test_image_modes_sizes_and_masks(small_root: Path) -> None:
    for cat in DEMO_CATEGORIES:
        want_mode = "L" if cat == "grid" else "RGB"
        for img_path in (small_root / cat).glob("t*/*/*.png"):  # train/ and test/
            with Image.open(img_path) as im:
                assert im.format == "PNG"
                assert im.mode == want_mode, img_path
                assert im.size == (128, 128)
        for d in DEFECT_TYPES[cat]:
            for img_path in sorted((small_root / cat / "test" / d).iterdir()):
                mask_path = small_root / cat / "ground_truth" / d / f"{img_path.stem}_mask.png"
                with Image.open(mask_path) as m:
                    assert m.mode == "L"
                    assert m.size == (128, 128)
                    arr = np.asarray(m)
                assert set(np.unique(arr).tolist()) == {0, 255}, mask_path
                frac = np.count_nonzero(arr) / arr.size
                assert MIN_DEFECT_FRACTION <= frac <= MAX_DEFECT_FRACTION, (mask_path, frac)


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_mask_is_exactly_the_changed_pixels(category: str) -> None:
    for defect in DEFECT_TYPES[category]:
        for seed in (1, 2):
            clean, bad, mask = render_sample(category, defect, seed, size=128)
            assert bad is not None and mask is not None
            assert bad.shape == clean.shape and bad.dtype == clean.dtype == np.uint8
            assert mask.shape == clean.shape[:2] and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) == {0, 255}
            diff = np.abs(bad.astype(np.int16) - clean.astype(np.int16))
            if diff.ndim == 3:
                diff = diff.max(axis=-1)
            inside = mask == 255
            # differs only inside the mask, and at every masked pixel
            assert not diff[~inside].any(), (category, defect, seed)
            assert (diff[inside] > 0).all(), (category, defect, seed)
            # visible: a clear mean change inside the defect
            assert diff[inside].mean() >= 8, (category, defect, seed, diff[inside].mean())
            frac = inside.mean()
            assert MIN_DEFECT_FRACTION <= frac <= MAX_DEFECT_FRACTION, (category, defect, frac)
            # the clean image does not depend on which defect (if any) is painted on it
            clean_only, none_bad, none_mask = render_sample(category, None, seed, size=128)
            assert none_bad is None and none_mask is None
            assert np.array_equal(clean_only, clean)


def test_shapes_per_category() -> None:
    assert render_sample("grid", None, 0, size=96)[0].shape == (96, 96)
    assert render_sample("tile", None, 0, size=96)[0].shape == (96, 96, 3)
    assert render_sample("leather", None, 0, size=96)[0].shape == (96, 96, 3)


def test_good_images_vary() -> None:
    for cat in DEMO_CATEGORIES:
        a = render_sample(cat, None, 10, size=96)[0]
        b = render_sample(cat, None, 11, size=96)[0]
        assert not np.array_equal(a, b)
        assert a.std() > 5  # a texture, not a flat fill


def test_defects_vary_in_position() -> None:
    centres = set()
    for seed in range(4):
        mask = render_sample("tile", "oil", seed, size=128)[2]
        ys, xs = np.nonzero(mask)
        centres.add((int(ys.mean()) // 8, int(xs.mean()) // 8))
    assert len(centres) > 1


def test_deterministic_and_seed_dependent(small_root: Path, tmp_path: Path) -> None:
    again = generate_demo_dataset(tmp_path / "again", **SMALL)
    assert _all_files(again) == _all_files(small_root)
    assert (again / MARKER_NAME).read_bytes() == (small_root / MARKER_NAME).read_bytes()

    other = generate_demo_dataset(tmp_path / "other", ["tile"], **{**SMALL, "seed": 1})
    a = _all_files(small_root)
    b = _all_files(other)
    name = "tile/train/good/000.png"
    assert a[name] != b[name]


def test_file_seeds_do_not_depend_on_order_or_counts(small_root: Path, tmp_path: Path) -> None:
    # One category alone, with fewer images, reproduces the files both runs share.
    part = generate_demo_dataset(tmp_path / "part", ["grid"], **{**SMALL, "n_train": 2, "n_per_defect": 1})
    full = _all_files(small_root)
    for name, data in _all_files(part).items():
        assert full[name] == data, name
    # test/good/000 and train/good/000 come from different seeds
    assert full["grid/test/good/000.png"] != full["grid/train/good/000.png"]


def test_rerun_is_idempotent(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "d", ["leather"], **SMALL)
    files = sorted(root.rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in files}
    generate_demo_dataset(root, ["leather"], **SMALL)
    assert {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*.png"))} == before


def test_changed_parameters_regenerate_the_category(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "d", ["grid"], **SMALL)
    generate_demo_dataset(root, ["grid"], **{**SMALL, "n_train": 2, "n_per_defect": 1})
    assert _pngs(root / "grid" / "train" / "good") == ["000.png", "001.png"]
    assert _pngs(root / "grid" / "ground_truth" / "bent") == ["000_mask.png"]
    # an interrupted category (files missing) is also redone
    (root / "grid" / "train" / "good" / "001.png").unlink()
    generate_demo_dataset(root, ["grid"], **{**SMALL, "n_train": 2, "n_per_defect": 1})
    assert _pngs(root / "grid" / "train" / "good") == ["000.png", "001.png"]


def test_refuses_to_overwrite_foreign_data(tmp_path: Path) -> None:
    foreign = tmp_path / "real" / "tile" / "train" / "good"
    foreign.mkdir(parents=True)
    (foreign / "000.png").write_bytes(b"not ours")
    with pytest.raises(DatasetError):
        generate_demo_dataset(tmp_path / "real", ["tile"], **SMALL)
    assert (foreign / "000.png").read_bytes() == b"not ours"


def test_rejects_unknown_names() -> None:
    with pytest.raises(DatasetError):
        render_sample("carpet", None, 0)
    with pytest.raises(DatasetError):
        render_sample("tile", "bent", 0)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "demo-data",
            "--out",
            str(out),
            "--categories",
            "tile",
            "--n-train",
            "2",
            "--n-test-good",
            "1",
            "--n-per-defect",
            "1",
            "--size",
            "96",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out.resolve()) in text
    assert "train/good 2" in text
    assert _pngs(out / "tile" / "train" / "good") == ["000.png", "001.png"]
    with Image.open(out / "tile" / "train" / "good" / "000.png") as im:
        assert im.size == (96, 96)


def test_cli_default_out_follows_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("INSPECT_HOME", str(tmp_path / "ws"))
    rc = main(
        ["demo-data", "--categories", "grid", "--n-train", "1", "--n-test-good", "0", "--n-per-defect", "0", "--size", "64"]
    )
    assert rc == 0
    assert _pngs(tmp_path / "ws" / "demo_data" / "grid" / "train" / "good") == ["000.png"]


def test_hires_category_has_defects_of_a_few_pixels_with_exact_masks(tmp_path: Path) -> None:
    """The high-resolution category: defects 6-20 px long at any size, mask = changed pixels."""
    from core.data.demo import HIRES_CATEGORY, HIRES_DEFECT_TYPES, generate_hires_dataset, render_hires_sample

    for defect in HIRES_DEFECT_TYPES:
        for seed in range(3):
            clean, bad, mask = render_hires_sample(defect, seed, size=512)
            ys, xs = np.nonzero(mask)
            assert 6 <= max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 20 + 4, (defect, seed)  # + line width, edge
            assert np.array_equal(mask > 0, bad != clean)
    root = generate_hires_dataset(tmp_path, n_train=2, n_test_good=1, n_per_defect=1, size=128, progress=False)
    masks = sorted((root / HIRES_CATEGORY / "ground_truth").rglob("*_mask.png"))
    assert len(masks) == len(HIRES_DEFECT_TYPES)
    assert Image.open(masks[0]).size == Image.open(root / HIRES_CATEGORY / "test" / "good" / "000.png").size == (128, 128)
