"""16-bit images go through the same loader in training, evaluation and inspection.

anomalib's own ``read_image`` turns a 16-bit grayscale PNG into an all-white image, so a model
trained on a Mono16 camera's dataset learned nothing while the Inspect page judged every upload
DEFECT. These tests prove the dataset path now reads what the page reads.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_SIZE, inspect_home_at


def _to_16bit(src: Path, dst: Path) -> None:
    """Write ``src`` (8-bit grayscale PNG) as a 16-bit PNG holding the same values x 257."""
    with Image.open(src) as img:
        gray = np.asarray(img.convert("L"), dtype=np.uint16)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(gray * 257).save(dst)  # uint16 array -> mode I;16


def _sixteen_bit_copy(category: Path, out: Path) -> None:
    """Every image of ``category`` as 16-bit; the masks stay as they are (binary 8-bit)."""
    for path in sorted(category.rglob("*.png")):
        rel = path.relative_to(category)
        if rel.parts[0] == "ground_truth":
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / rel)
        else:
            _to_16bit(path, out / rel)


@pytest.fixture(scope="module")
def grid_pair(tiny_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with the tiny grayscale 'grid' twice: ``grid8`` (original) and ``grid16``."""
    root = tmp_path_factory.mktemp("sixteen_bit_data")
    shutil.copytree(tiny_data_root / "grid", root / "grid8")
    _sixteen_bit_copy(tiny_data_root / "grid", root / "grid16")
    return root


def test_copy_is_really_16_bit_and_anomalib_alone_reads_it_white(grid_pair: Path) -> None:
    """The fixture is what a Mono16 camera writes, and anomalib's reader alone gets it wrong."""
    first = sorted((grid_pair / "grid16" / "train" / "good").glob("*.png"))[0]
    with Image.open(first) as img:
        assert img.mode.startswith("I;16")
        assert int(np.asarray(img).max()) > 4095  # uses the full 16-bit range
        white = np.asarray(img.convert("RGB"))  # what anomalib's read_image does
    assert white.min() == 255


def test_anomalib_dataset_reader_matches_the_page_loader(grid_pair: Path) -> None:
    from anomalib.data.datasets.base import image as base_image

    from core.data.anomalib_io import use_inspect_loader
    from core.data.image_io import load_image

    use_inspect_loader()
    name = sorted((grid_pair / "grid8" / "train" / "good").glob("*.png"))[0].name
    as_8 = base_image.read_image(grid_pair / "grid8" / "train" / "good" / name, as_tensor=True)
    as_16 = base_image.read_image(grid_pair / "grid16" / "train" / "good" / name, as_tensor=True)
    page = load_image(grid_pair / "grid16" / "train" / "good" / name)
    assert as_16.shape == as_8.shape == (3, TINY_SIZE, TINY_SIZE)
    assert float((as_16 - as_8).abs().max()) == 0.0
    assert np.array_equal((as_16.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), page)


def test_no_anomalib_module_keeps_its_own_reader() -> None:
    """An anomalib upgrade that binds read_image somewhere new must fail here, not go white."""
    import sys

    from anomalib.data import MVTecAD  # noqa: F401 - what make_datamodule imports first
    from anomalib.data.utils import image as anomalib_image

    from core.data import anomalib_io

    anomalib_io.use_inspect_loader()
    originals = {anomalib_image.read_image, anomalib_image.read_mask}
    offenders = [
        f"{name}.{attr}"
        for name, module in list(sys.modules.items())
        if name.startswith("anomalib.") and name != "anomalib.data.utils.image" and module is not None
        for attr in ("read_image", "read_mask")
        if getattr(module, attr, None) in originals
    ]
    assert offenders == []
    for required in anomalib_io.REQUIRED:
        assert sys.modules[required].read_image is anomalib_io.read_image
    assert sys.modules["anomalib.data.datasets.base.image"].read_mask is anomalib_io.read_mask


def test_sixteen_bit_category_scores_like_its_8_bit_original(grid_pair: Path, tmp_path: Path) -> None:
    """Train and evaluate PatchCore on both copies: same calibration, same AUROC, same scores."""
    from core.evaluation.evaluate import evaluate_one
    from core.training import train

    config = {"coreset_ratio": 0.1, "image_size": TINY_SIZE}
    with inspect_home_at(tmp_path):
        meta8 = train("patchcore", "grid8", data_root=grid_pair, config=config, progress=False)
        meta16 = train("patchcore", "grid16", data_root=grid_pair, config=config, progress=False)
        e8 = evaluate_one("patchcore", "grid8", progress=False)
        e16 = evaluate_one("patchcore", "grid16", progress=False)
    assert meta16.calibration.image_threshold == pytest.approx(meta8.calibration.image_threshold, rel=1e-4)
    assert e8["image_auroc"] > 0.7  # the 8-bit model does learn the grid
    assert e16["image_auroc"] == pytest.approx(e8["image_auroc"], abs=1e-6)
    assert e16["pixel_auroc"] == pytest.approx(e8["pixel_auroc"], abs=1e-4)
    assert e16["image_f1"] == pytest.approx(e8["image_f1"], abs=1e-6)
