"""A tiled PatchCore on the OpenVINO runtime, and its memory bank grown with full-resolution goods.

One small tiled model (256 px frames, 128 px tiles 96 px apart: 3 x 3 tiles, each seen at 64 px)
is trained once for the module in a private workspace.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import inspect_home_at

from core.auth import COMMAND_LINE as ENGINEER

TILED_CONFIG = {"image_size": 64, "tile": 128, "stride": 96, "coreset_ratio": 0.1}
FRAME = 256


@pytest.fixture(scope="module")
def tiled_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(workspace, data root) with the tiled model trained on the high-resolution demo category."""
    from core.data.demo import HIRES_CATEGORY, generate_hires_dataset
    from core.training import train

    home = tmp_path_factory.mktemp("tiled_home")
    with inspect_home_at(home):
        root = generate_hires_dataset(home / "data", n_train=5, n_test_good=3, n_per_defect=1, size=FRAME, progress=False)
        train("patchcore", HIRES_CATEGORY, data_root=root, config=dict(TILED_CONFIG), progress=False)
    return home, root


@pytest.fixture
def in_tiled_home(tiled_home: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    home, root = tiled_home
    for name in ("INSPECT_MODELS_DIR", "INSPECT_HISTORY_DB", "INSPECT_CACHE", "INSPECT_DATA_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INSPECT_HOME", str(home))
    return home, root


def _test_images(root: Path) -> list[np.ndarray]:
    from core.data.demo import HIRES_CATEGORY
    from core.data.image_io import load_image
    from core.data.layout import category_images

    return [load_image(item.path) for item in category_images(root, HIRES_CATEGORY, splits=("test",))]


# --- export ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiled_export(tiled_home: tuple[Path, Path]) -> Path:
    """The tiled model exported through the command line, with ``--use``; its version folder."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from core import registry
    from core.cli import main
    from core.data.demo import HIRES_CATEGORY

    home, _ = tiled_home
    with inspect_home_at(home):
        assert main(["export", "--model", "patchcore", "--category", HIRES_CATEGORY, "--precision", "fp32", "--use"]) == 0
        return registry.current_files("patchcore", HIRES_CATEGORY).folder


def test_tiled_export_passes_parity_and_records_its_tiling(tiled_export: Path) -> None:
    manifest = json.loads((tiled_export / "export" / "openvino" / "export.json").read_text())
    assert manifest["tiling"] == {"tile": TILED_CONFIG["tile"], "stride": TILED_CONFIG["stride"]}
    parity = manifest["parity"]
    assert parity["passed"] and parity["n_images"] > 0 and parity["differing"] == []
    assert parity["max_score_diff"] <= parity["bound"] == 1e-3


def test_tiled_export_answers_as_the_torch_tiled_path(tiled_export: Path, in_tiled_home) -> None:
    """Full-resolution scores, maps and descriptors on OpenVINO equal the torch tiled detector's."""
    from core.data.demo import HIRES_CATEGORY
    from core.inference.detector import load_detector
    from core.inference.parity import score_bound
    from core.services import inspection

    _, root = in_tiled_home
    ref = load_detector("patchcore", HIRES_CATEGORY, runtime="torch", device="cpu", accelerate=False)
    ov = load_detector("patchcore", HIRES_CATEGORY, runtime="openvino")
    assert ov.tiled and ov.runtime == "openvino"
    assert inspection.load_detector("patchcore", HIRES_CATEGORY).runtime == "openvino"  # --use chose it
    images = _test_images(root)
    told: list[tuple[int, int, int]] = []
    got = ov.predict_batch(images, with_features=True, progress=lambda *a: told.append(a))
    want = ref.predict_batch(images, with_features=True)
    assert told[-1] == (len(images) - 1, 9, 9)  # 3 x 3 tiles per frame, counted on this runtime too
    bound = score_bound("fp32")
    for image, g, w in zip(images, got, want, strict=True):
        assert g.anomaly_map.shape == w.anomaly_map.shape == image.shape[:2]  # the frame's pixels
        assert abs(g.score - w.score) <= bound and g.verdict() == w.verdict()
        assert abs(g.raw_score - w.raw_score) <= bound * max(1.0, abs(w.raw_score))
        assert float(np.abs(g.anomaly_map - w.anomaly_map).max()) <= bound
        assert g.feature_box == w.feature_box
        assert g.patch_features is not None and w.patch_features is not None
        assert torch.allclose(g.patch_features, w.patch_features, atol=1e-3, rtol=1e-3)
    # a defect frame still scores above the good ones on the export
    labels = [item.label != "good" for item in _items(root)]
    assert max(p.raw_score for p, bad in zip(got, labels, strict=True) if not bad) < max(p.raw_score for p in got)


def _items(root: Path) -> list:
    from core.data.demo import HIRES_CATEGORY
    from core.data.layout import category_images

    return category_images(root, HIRES_CATEGORY, splits=("test",))


def test_tile_equal_to_image_export_answers_as_the_untiled_export(tiny_patchcore, tmp_path: Path) -> None:
    """One tile covering the whole image: the tiled export's scores and maps are the untiled export's."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from conftest import TINY_CATEGORY, TINY_SIZE

    from core.export.exporter import _write_file
    from core.inference.detector import Detector, load_detector
    from core.inference.runtime import OpenVINOEngine
    from core.models import build_model

    untiled = load_detector("patchcore", TINY_CATEGORY, device="cpu", accelerate=False)
    meta = dataclasses.replace(untiled.meta, config={**untiled.meta.config, "tile": TINY_SIZE, "stride": TINY_SIZE})
    module = build_model("patchcore", meta.config, load_weights=False)
    module.load_state_dict(untiled.module.state_dict())
    # one file: a tiled model exports anomalib's untiled per-tile graph, so both runtimes load it;
    # what differs is the Detector's tiling around it
    path = _write_file(untiled.module, "patchcore", "openvino", tmp_path, TINY_SIZE)
    plain, tiled = (
        Detector(det_module, det_meta, torch.device("cpu"), engine=OpenVINOEngine(path, image_size=TINY_SIZE))
        for det_module, det_meta in ((untiled.module, untiled.meta), (module, meta))
    )
    assert tiled.tiled and not plain.tiled
    from core.data.image_io import load_image
    from core.data.layout import category_images

    images = [load_image(item.path) for item in category_images(None, TINY_CATEGORY, splits=("test",))[:4]]
    for a, b in zip(plain.predict_batch(images), tiled.predict_batch(images), strict=True):
        assert b.raw_score == pytest.approx(a.raw_score, rel=1e-6, abs=1e-6)
        assert b.score == pytest.approx(a.score, abs=1e-6)
        assert b.anomaly_map.shape == a.anomaly_map.shape
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= 1e-5


# --- memory-bank update ------------------------------------------------------------------------


def _tiled_detector():
    from core.data.demo import HIRES_CATEGORY
    from core.inference.detector import load_detector

    return load_detector("patchcore", HIRES_CATEGORY, runtime="torch")


def _good_frame(root: Path, index: int = 0) -> np.ndarray:
    from core.data.demo import HIRES_CATEGORY
    from core.data.image_io import load_image

    paths = sorted((root / HIRES_CATEGORY / "test" / "good").glob("*.png"))
    return load_image(paths[index])


def _marked(image: np.ndarray, top: int, left: int) -> np.ndarray:
    """The frame with a striped mark of 24 px: a pattern the model never saw."""
    out = image.copy()
    stripes = np.zeros((24, 24, 3), np.uint8)
    stripes[::4] = 255
    out[top : top + 24, left : left + 24] = stripes
    return out


def test_tiled_embedding_counts_every_tiles_patches_and_scores_as_the_detector(in_tiled_home) -> None:
    from core.inference.detector import to_tensor
    from core.learning import bank_update
    from core.models.tiling import grid

    _, root = in_tiled_home
    det = _tiled_detector()
    frames = [_good_frame(root, 0), _marked(_good_frame(root, 1), 150, 40)]
    emb = bank_update.embed(det, frames)
    tiles = len(grid(FRAME, FRAME, TILED_CONFIG["tile"], TILED_CONFIG["stride"]))
    patches = (TILED_CONFIG["image_size"] // 8) ** 2  # PatchCore's stride-8 layer at 64 px
    assert tiles == 9 and emb.counts() == [tiles * patches] * 2 and emb.flat().shape[0] == 2 * tiles * patches
    scores, maps = bank_update.score(det, emb)
    raw, _, _ = det.run_batch([to_tensor(f) for f in frames])
    assert scores == pytest.approx(raw.pred_score.tolist(), rel=1e-5)
    for j, amap in enumerate(maps):
        assert amap.shape == (1, FRAME, FRAME)
        assert torch.allclose(amap, raw.anomaly_map[j].float(), rtol=1e-4, atol=1e-5)
    one_scores, _ = bank_update.score(det, emb.image(1))
    assert one_scores == pytest.approx(scores[1:], rel=1e-6)


def test_a_tiled_bank_grows_by_a_goods_tiles_and_learns_its_mark(in_tiled_home) -> None:
    """Adding a good frame adds its tiles' patches; a mark it shows then scores lower elsewhere too."""
    from core.learning import bank_update

    _, root = in_tiled_home
    det = _tiled_detector()
    suspect = _marked(_good_frame(root, 0), 40, 170)  # the mark in the top-right tile
    newly_good = _marked(_good_frame(root, 1), 180, 30)  # the same mark, confirmed good, bottom-left
    before, before_maps = bank_update.score(det, bank_update.embed(det, [suspect]))
    growth = bank_update.grow(det, [newly_good], coreset_ratio=1.0)  # ratio 1: every patch joins
    n_new = bank_update.embed(det, [newly_good]).flat().shape[0]
    assert n_new == 9 * 64
    assert growth.bank.shape[0] == growth.n_old + n_new and torch.equal(growth.source, torch.zeros(n_new, dtype=torch.long))
    assert torch.equal(growth.bank[: growth.n_old], det.module.model.memory_bank.cpu())  # old rows first, unchanged
    after, after_maps = bank_update.score(det, bank_update.embed(det, [suspect]), growth.bank)
    assert after[0] < before[0]
    region = (slice(None), slice(40, 64), slice(170, 194))
    assert float(after_maps[0][region].mean()) < float(before_maps[0][region].mean())

    held = bank_update.embed(det, [_good_frame(root, 2)])
    refresh = bank_update.refreshed_calibration(det, growth, held, det.meta.calibration, "test")
    assert len(refresh.held_out_goods) == 1 and len(refresh.new_goods) == 1
    # the new frame is scored without its own patches (leave-one-out), so not as if it vouched for itself
    own = bank_update.score(det, bank_update.embed(det, [newly_good]), growth.bank)[0][0]
    assert refresh.new_goods[0] > own
    assert refresh.calibration.image_threshold == max(refresh.held_out_goods + refresh.new_goods)


def test_a_tiled_bank_update_publishes_a_version(in_tiled_home, tmp_path: Path) -> None:
    from PIL import Image

    from core.data.demo import HIRES_CATEGORY
    from core.errors import ConfigError
    from core.services import feedback_loop

    _, root = in_tiled_home
    folder = tmp_path / "confirmed"
    folder.mkdir()
    Image.fromarray(_marked(_good_frame(root, 1), 180, 30)).save(folder / "marked.png")
    old = _tiled_detector()
    done = feedback_loop.update_bank(HIRES_CATEGORY, images=str(folder), actor=ENGINEER, force=True)
    new = _tiled_detector()
    assert new.tiled and new.version == done.version != old.version
    assert new.module.model.memory_bank.shape[0] == done.n_old + done.n_added > done.n_old
    assert any("tiled model" in note for note in done.notes)
    with pytest.raises(ConfigError, match="--images DIR") as caught:  # history thumbnails are not camera frames
        feedback_loop.update_bank(HIRES_CATEGORY, from_history=True, actor=ENGINEER)
    assert "\n" not in str(caught.value)
