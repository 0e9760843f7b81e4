"""Tiled inspection (core/models/tiling.py): stitching, scores, bad settings, large frames."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_cli import _category, assert_one_line_error, run_cli


def _patchcore(config: dict, bank_from: torch.Tensor | None = None, state: dict | None = None, weights: bool = False):
    """An eval-mode PatchCore with a memory bank (random backbone weights unless ``weights``)."""
    from core.models import build_model

    torch.manual_seed(0)
    module = build_model("patchcore", config, load_weights=weights)
    if state is not None:
        module.load_state_dict(state)
    elif bank_from is not None:  # the bank from these images' patches, as training builds it
        inner = module.model
        inner.train()
        with torch.no_grad():
            inner(module.pre_processor(bank_from))
        inner.memory_bank = torch.vstack(inner.embedding_store)
        inner.embedding_store.clear()
    return module.eval()


def _raw(module, image: torch.Tensor):
    with torch.no_grad():
        return module.model(module.pre_processor(image))


def test_grid_covers_the_image_with_real_pixels_only() -> None:
    from core.models.tiling import grid, origins

    assert origins(200, 64, 64) == [0, 64, 128, 136]  # the last tile moved back to the edge, no padding
    assert origins(50, 64, 32) == [0]  # a side shorter than the tile: one tile, the whole side
    boxes = grid(200, 130, 64, 48)
    seen = np.zeros((200, 130), int)
    for b in boxes:
        assert 0 <= b.top < b.bottom <= 200 and 0 <= b.left < b.right <= 130
        seen[b.top : b.bottom, b.left : b.right] += 1
    assert seen.min() >= 1


def test_stitching_averages_overlaps_as_anomalib_tiler_untile() -> None:
    """On a grid anomalib's Tiler takes without padding, the stitched map is Tiler.untile's."""
    from anomalib.data.utils.tiler import Tiler

    from core.models.tiling import Stitcher, grid

    image = torch.rand(1, 1, 160, 160, generator=torch.Generator().manual_seed(1))
    tiler = Tiler(tile_size=64, stride=48)
    tiles = tiler.tile(image)
    tiles = tiles * torch.arange(1, tiles.shape[0] + 1).view(-1, 1, 1, 1)  # every tile its own values
    expected = tiler.untile(tiles)[0, 0]
    stitcher = Stitcher(160, 160)
    boxes = grid(160, 160, 64, 48)
    assert len(boxes) == tiles.shape[0]
    for box, tile_map in zip(boxes, tiles, strict=True):
        stitcher.add(box, tile_map)
    assert torch.allclose(stitcher.result(), expected, atol=1e-5)


def test_tile_equal_to_image_gives_the_untiled_map_and_score() -> None:
    train = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    untiled = _patchcore({"image_size": 128}, bank_from=train)
    tiled = _patchcore({"image_size": 128, "tile": 128}, state=untiled.state_dict())
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    image[..., 40:60, 70:90] = 1.0
    a, b = _raw(untiled, image), _raw(tiled, image)
    assert torch.equal(a.pred_score, b.pred_score)
    assert torch.equal(a.anomaly_map, b.anomaly_map)


def test_a_defect_straddling_two_tiles_is_found_once() -> None:
    """One region in the stitched map, boxed at the defect's image pixels, whatever the overlap."""
    from core.inference.overlay import defect_regions
    from core.models.tiling import run_tiled

    image = torch.zeros(3, 200, 300)
    image[:, 90:110, 140:165] = 1.0  # across the boundary at x = 150 (and x = 144 with overlap)

    def brightness(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = tiles.mean(dim=1, keepdim=True)
        return maps.amax(dim=(1, 2, 3)), maps

    for stride in (150, 72):
        out = run_tiled(image, brightness, tile=150, stride=stride, image_size=150)
        assert out is not None and float(out.score) == 1.0
        assert out.anomaly_map.shape == (1, 200, 300)
        regions = defect_regions(out.anomaly_map.numpy(), (300, 200), threshold=0.5)
        assert [(r.x, r.y, r.width, r.height) for r in regions] == [(140, 90, 25, 20)], stride


def test_a_real_patchcore_finds_a_straddling_defect_once() -> None:
    """The same through PatchCore: a dark spot on a uniform part, across two tiles, is one region."""
    from core.inference.overlay import defect_regions

    rng = torch.Generator().manual_seed(4)
    good = 0.5 + 0.02 * torch.rand(2, 3, 256, 256, generator=rng)
    module = _patchcore({"image_size": 64, "tile": 64, "stride": 64}, bank_from=good, weights=True)
    image = 0.5 + 0.02 * torch.rand(1, 3, 256, 256, generator=rng)
    image[..., 100:112, 56:72] = 0.0  # across x = 64
    out = _raw(module, image)
    amap = out.anomaly_map[0, 0]
    regions = defect_regions(amap.numpy(), (256, 256), threshold=float(amap.max()) * 0.6)
    assert len(regions) == 1
    r = regions[0]
    assert r.x < 64 < r.x + r.width and r.y <= 112 and r.y + r.height >= 100


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--tile", "32"), "--tile must be between 64 and"),
        (("--tile", "256", "--stride", "300"), "--stride must be between 1 and the tile size 256"),
        (("--tile", "256", "--stride", "0"), "--stride must be between 1"),
        (("--stride", "128"), "--stride 128 needs --tile"),
        (("--model", "efficientad", "--tile", "256", "--stride", "300"), "--stride must be between 1 and the tile size 256"),
    ],
)
def test_bad_tile_and_stride_are_one_line(tmp_path: Path, flags: tuple[str, ...], needle: str) -> None:
    from core.errors import ConfigError
    from core.models import get_spec

    keys = dict(zip(flags[::2], flags[1::2], strict=True))
    model = keys.pop("--model", "patchcore")
    config = {k.lstrip("-"): int(v) for k, v in keys.items()}
    with pytest.raises(ConfigError) as caught:
        get_spec(model).full_config(config)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    if flags[0] == "--tile" and flags[1] == "32":  # and once through the command line, before any image is read
        _category(tmp_path / "data")
        args = ("train", "--category", "part", "--data-root", str(tmp_path / "data"), *flags)
        assert_one_line_error(run_cli(*args, home=tmp_path), needle)


def test_tiled_config_is_stored_resolved() -> None:
    from core.models import get_spec

    stored = get_spec("patchcore").full_config({"tile": 512})
    assert (stored["tile"], stored["stride"]) == (512, 512)
    assert "tile" not in get_spec("efficientad").full_config({})  # untiled configs are unchanged


def _frame_variants(grey: np.ndarray) -> dict[str, bytes]:
    """One grey frame as 16-bit, palette and EXIF-rotated (stored sideways) PNGs, all lossless."""

    def png(img: Image.Image, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG", **kw)
        return buf.getvalue()

    palette = Image.fromarray(grey, mode="P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation 8: the viewer turns it back with a 90-degree rotation
    sideways = Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).transpose(Image.Transpose.ROTATE_270)
    return {
        "16-bit": png(Image.fromarray(grey.astype(np.uint16) * 257)),
        "palette": png(palette),
        "exif-rotated": png(sideways, exif=exif.tobytes()),
    }


def test_16bit_palette_and_exif_rotated_5mp_frames_get_the_same_verdicts() -> None:
    """Decoded by the one loader, a 2448 x 2048 frame judges the same in every storage form."""
    from core.data.image_io import load_image
    from core.inference.detector import to_tensor

    rng = np.random.default_rng(5)
    grey_levels = rng.integers(100, 140, size=(2048 // 16, 2448 // 16), dtype=np.uint8)
    grey = np.kron(grey_levels, np.ones((16, 16), np.uint8))  # few grey levels: palette is lossless
    frame = np.repeat(grey[..., None], 3, axis=2)
    bad = frame.copy()
    bad[1000:1012, 1220:1232] = 20  # a 12 px pit
    # tiles of 1024 px seen at 64 px: 6 small forward passes per frame keep this test short
    config = {"image_size": 64, "tile": 1024, "stride": 1024}
    module = _patchcore(config, bank_from=to_tensor(frame))

    def judged(image: np.ndarray) -> tuple[float, np.ndarray]:
        out = _raw(module, to_tensor(image))
        return float(out.pred_score[0]), out.anomaly_map[0, 0].numpy()

    for name, image in (("good", frame), ("defect", bad)):
        want_score, want_map = judged(image)  # the 8-bit RGB upright copy
        assert want_map.shape == (2048, 2448)
        for form, data in _frame_variants(image[..., 0]).items():
            decoded = load_image(data, f"{name}-{form}.png")
            assert np.array_equal(decoded, image), form
            score, amap = judged(decoded)
            assert score == want_score and np.array_equal(amap, want_map), (name, form)
    assert judged(bad)[0] > 2 * judged(frame)[0]  # the pit is seen at the camera's pixels


def test_tile_equal_to_image_on_real_bottle_gives_the_untiled_scores(shared_bottle: Path) -> None:
    """Real MVTec AD bottle (256 px): tile = image changes no score and no map value."""
    from core.data.image_io import load_image
    from core.inference.detector import to_tensor

    def images(folder: str, n: int) -> torch.Tensor:
        paths = sorted((shared_bottle / "bottle" / folder).glob("*.png"))[:n]
        return torch.cat([to_tensor(load_image(p, p.name)) for p in paths])

    untiled = _patchcore({}, bank_from=images("train/good", 2))
    tiled = _patchcore({"tile": 256}, state=untiled.state_dict())
    for folder in ("test/good", "test/broken_large"):
        for image in images(folder, 3).split(1):  # one at a time, as the detector runs them on a CPU
            a, b = _raw(untiled, image), _raw(tiled, image)
            assert torch.equal(a.pred_score, b.pred_score), folder
            assert torch.equal(a.anomaly_map, b.anomaly_map), folder


def test_tiled_model_end_to_end_train_inspect_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train --tile records the tiling, the detector judges at full resolution with regions in image
    pixels, a zoom at the camera's pixels and tile progress, and evaluate scores the full-size masks."""
    import json

    from core import registry
    from core.data.demo import HIRES_CATEGORY, generate_hires_dataset
    from core.evaluation.evaluate import evaluate_one
    from core.inference.detector import load_detector
    from core.services import inspection
    from core.training import train

    monkeypatch.setenv("INSPECT_HOME", str(tmp_path))
    root = generate_hires_dataset(tmp_path / "data", n_train=5, n_test_good=2, n_per_defect=1, size=256, progress=False)
    config = {"image_size": 64, "tile": 128, "stride": 96, "coreset_ratio": 0.1}  # 3 x 3 tiles
    train("patchcore", HIRES_CATEGORY, data_root=root, config=config, progress=False)
    files = registry.current_files("patchcore", HIRES_CATEGORY)
    stored = json.loads(files.meta_file.read_text())["config"]
    assert (stored["tile"], stored["stride"], stored["image_size"]) == (128, 96, 64)

    detector = load_detector("patchcore", HIRES_CATEGORY)
    assert detector.tiled
    image = np.array(Image.open(root / HIRES_CATEGORY / "test" / "spot" / "000.png").convert("RGB"))
    told: list[tuple[int, int, int]] = []
    [result] = inspection.inspect_images(
        detector, [("spot.png", image, "0" * 64)], record=False, progress=lambda *a: told.append(a)
    )
    assert result.prediction.anomaly_map.shape == (256, 256)  # the image's pixels, not 64 px
    assert told[-1] == (0, 9, 9) and len(told) == 3  # 3 x 3 tiles, MICRO_BATCH (4) at a time
    features, box = result.prediction.patch_features, result.prediction.feature_box
    assert features is not None and features.dim() == 3  # the highest tile's descriptors, and its map part
    assert result.prediction.feature_map().shape == (box.bottom - box.top, box.right - box.left) == (128, 128)
    mask = np.array(Image.open(root / HIRES_CATEGORY / "ground_truth" / "spot" / "000_mask.png")) > 0
    ys, xs = np.nonzero(mask)
    low = inspection.defect_boxes(image, result.prediction, threshold=float(result.prediction.anomaly_map.max()) * 0.9)
    top = low[0]  # the highest region holds the spot
    assert top.x <= xs.mean() <= top.x + top.width and top.y <= ys.mean() <= top.y + top.height
    zoom = inspection.zoom_on_top_region(image, result.prediction, 0.5, threshold=top.peak * 0.99)
    assert zoom is not None and zoom.heatmap.shape[:2] == (zoom.box.height, zoom.box.width)

    entry = evaluate_one("patchcore", HIRES_CATEGORY, progress=False)
    assert entry["n_test"] == 4 and entry["pixel_auroc"] is not None

    # a history-based bank update is refused in one line: the history keeps thumbnails, not frames
    from core.auth import COMMAND_LINE
    from core.errors import ConfigError
    from core.services import feedback_loop

    with pytest.raises(ConfigError) as caught:
        feedback_loop.update_bank(HIRES_CATEGORY, from_history=True, actor=COMMAND_LINE)
    assert "tiled" in str(caught.value) and "\n" not in str(caught.value)
    assert registry.current_files("patchcore", HIRES_CATEGORY).folder == files.folder  # no new version
