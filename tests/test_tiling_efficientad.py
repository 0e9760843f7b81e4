"""Tiled EfficientAD (core/models/tiling.py, core/models/efficientad/model.py): config, the tiled rule,
tile = image against the untiled model, and a short tiled training from the command line.

EfficientAD's smallest input is 256 px, so the small frames' tiles (96 px) are enlarged to it: a few
256 px forward passes per image keep each test to seconds.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import inspect_home_at

from tests.test_cli import run_cli

CATEGORY = "tile"
FRAME = 160  # px: with --tile 96 --stride 64, a 2 x 2 grid of overlapping tiles
TILE, STRIDE = 96, 64
STEPS = 3
pytestmark = pytest.mark.filterwarnings("ignore")


def _untiled_with_statistics():
    """An untiled EfficientAD (distilled teacher, random student) with set channel statistics and
    map quantiles, as after training, so the normalised maps are those inference computes."""
    from core.models import build_model

    torch.manual_seed(0)
    module = build_model("efficientad", {}, load_weights=True)
    inner = module.model
    inner.mean_std["mean"].data.normal_(0, 0.1)
    inner.mean_std["std"].data.uniform_(0.5, 2.0)
    for key, value in (("qa_st", 0.1), ("qb_st", 0.5), ("qa_ae", 0.05), ("qb_ae", 0.4)):
        inner.quantiles[key].data.fill_(value)
    return module.eval()


def _tiled_from(state: dict, **config):
    from core.models import build_model

    module = build_model("efficientad", config, load_weights=False)
    module.load_state_dict(state)
    return module.eval()


# --- config --------------------------------------------------------------------------------------


def test_tiled_config_round_trips_through_the_stored_metadata() -> None:
    from core.models import get_spec
    from core.models.efficientad.model import TiledEfficientAdModel

    spec = get_spec("efficientad")
    stored = spec.full_config({"tile": 512, "stride": 448})
    assert (stored["tile"], stored["stride"], stored["image_size"]) == (512, 448, 256)
    assert spec.full_config({"tile": 512})["stride"] == 512  # stored resolved, as PatchCore's
    assert spec.full_config(json.loads(json.dumps(stored))) == stored
    module = spec.build_from(stored, load_weights=False)
    assert isinstance(module.model, TiledEfficientAdModel) and module.model.tiling == (512, 448, 256)
    frame = torch.rand(1, 3, 300, 200)
    assert module.pre_processor(frame).shape == frame.shape  # not resized before tiling
    untiled = spec.full_config({})
    assert "tile" not in untiled and "stride" not in untiled  # untiled configs are unchanged
    assert spec.build_from(untiled, load_weights=False).pre_processor(frame).shape[-2:] == (256, 256)


@pytest.mark.parametrize(
    "config",
    [{"tile": 32}, {"tile": 256, "stride": 300}, {"tile": 256, "stride": 0}, {"stride": 128}, {"tile": 256.5}],
)
def test_bad_tile_and_stride_give_patchcores_one_line_errors(config: dict) -> None:
    from core.errors import ConfigError
    from core.models import get_spec

    messages = []
    for model in ("patchcore", "efficientad"):
        with pytest.raises(ConfigError) as caught:
            get_spec(model).full_config(config)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "\n" not in messages[1]
    assert "--tile" in messages[1] or "--stride" in messages[1]


# --- the tiled rule ------------------------------------------------------------------------------


def test_tile_equal_to_image_gives_the_untiled_scores_and_maps() -> None:
    untiled = _untiled_with_statistics()
    tiled = _tiled_from(untiled.state_dict(), tile=256)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    images[1, :, 100:130, 40:90] = 1.0
    with torch.no_grad():
        for image in images.split(1):
            a = untiled.model(untiled.pre_processor(image))
            b = tiled.model(tiled.pre_processor(image))
            assert a.pred_score.shape == b.pred_score.shape
            assert torch.equal(a.pred_score, b.pred_score)
            assert torch.equal(a.anomaly_map, b.anomaly_map)
            for x, y in zip(untiled.model.get_maps(image), tiled.model.get_maps(image), strict=True):
                assert torch.equal(x, y)  # the raw maps the quantiles are fitted on


def test_training_sample_is_one_tile_and_teacher_statistics_cover_every_tile() -> None:
    from core.models.tiling import grid

    untiled = _untiled_with_statistics()
    module = _tiled_from(untiled.state_dict(), tile=TILE, stride=STRIDE)
    frames = torch.rand(2, 3, FRAME, FRAME + 40)
    boxes = grid(FRAME, FRAME + 40, TILE, STRIDE)
    seen = set()
    for _ in range(40):
        sample = module.training_tile(SimpleNamespace(image=frames[:1], image_path=["a.png"]))
        assert sample.image.shape == (1, 3, 256, 256)
        seen.add(sample.image_path[0])
    # named by image and position (the teacher cache keeps tiles apart); draws reach every tile
    assert seen == {f"a.png@{b.top},{b.left}" for b in boxes}
    # anomalib's own step (fast_step off) gets that tile through the torch model's training mode
    losses = module.model.train()(batch=sample.image, batch_imagenet=torch.rand(1, 3, 256, 256))
    assert len(losses) == 3 and all(torch.isfinite(loss) for loss in losses)
    module.model.eval()
    batches = list(module._tile_batches([SimpleNamespace(image=frames)]))
    assert sum(b.image.shape[0] for b in batches) == 2 * len(boxes)
    assert all(b.image.shape[1:] == (3, 256, 256) for b in batches)


# --- a short tiled training, from the command line -------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """``python -m core train --model efficientad --tile 96 --stride 64`` on 160 px frames, 3 steps."""
    from core.data.demo import generate_demo_dataset

    home = tmp_path_factory.mktemp("ead_tiled_home")
    with inspect_home_at(home):
        root = generate_demo_dataset(
            home / "data", [CATEGORY], n_train=6, n_test_good=1, n_per_defect=1, size=FRAME, progress=False
        )
        args = ("--model", "efficientad", "--category", CATEGORY, "--data-root", str(root), "--device", "cpu")
        flags = ("--tile", str(TILE), "--stride", str(STRIDE), "--steps", str(STEPS))
        result = run_cli("train", *args, *flags, home=home)
        assert result.returncode == 0, result.stderr[-3000:]
        yield SimpleNamespace(home=home, root=root, stdout=result.stdout)


def test_cli_trains_a_tiled_efficientad_and_records_the_tiling(trained) -> None:
    from core import registry

    assert "trained efficientad on tile" in trained.stdout
    with inspect_home_at(trained.home):
        meta = json.loads(registry.current_files("efficientad", CATEGORY).meta_file.read_text())
    config = meta["config"]
    assert (config["tile"], config["stride"], config["image_size"]) == (TILE, STRIDE, 256)
    assert meta["steps"] == STEPS
    cal = meta["calibration"]
    assert np.isfinite([cal["image_threshold"], cal["pixel_threshold"], cal["image_max"]]).all()


def test_tiled_prediction_is_full_size_and_scored_by_its_highest_tile(trained) -> None:
    from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

    from core.data.image_io import load_image
    from core.inference.detector import load_detector, to_tensor
    from core.models.tiling import crop_tiles, grid

    with inspect_home_at(trained.home):
        detector = load_detector("efficientad", CATEGORY, device="cpu")
        assert detector.tiled
        path = next(p for p in sorted((trained.root / CATEGORY / "test").glob("*/*.png")) if p.parent.name != "good")
        image = load_image(path)
        told: list[tuple[int, int, int]] = []
        [prediction] = detector.predict_batch([image], with_features=True, progress=lambda *a: told.append(a))
    assert prediction.anomaly_map.shape == (FRAME, FRAME)  # the frame's pixels, not 256 px
    assert told[-1] == (0, 4, 4)  # 2 x 2 tiles
    # by hand: anomalib's untiled forward on each tile, resized to image_size
    frame = to_tensor(image)[0]
    boxes = grid(FRAME, FRAME, TILE, STRIDE)
    with torch.no_grad():
        scores = [
            float(EfficientAdModel.forward(detector.module.model, crop_tiles(frame, [box], 256)).pred_score) for box in boxes
        ]
    best = int(np.argmax(scores))
    assert prediction.raw_score == pytest.approx(scores[best], rel=1e-4, abs=1e-6)
    assert prediction.feature_box == boxes[best]
    assert prediction.score == pytest.approx(detector.raw_to_normalised(scores[best]), rel=1e-4, abs=1e-6)
    # the best tile's teacher descriptors, and the part of the map they describe
    assert prediction.patch_features is not None and prediction.patch_features.shape[0] == 384
    assert prediction.feature_map().shape == (TILE, TILE)


def test_a_tiled_efficientad_exports_and_answers_as_torch(trained) -> None:
    """The per-tile graph exported, tiled in Python around OpenVINO: the parity check compares it with
    the torch tiled path on the full frames (scores, raw scores and full-size maps within 1e-3)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxscript")
    from core.export.exporter import export_model
    from core.inference.detector import load_detector

    with inspect_home_at(trained.home):
        result = export_model("efficientad", CATEGORY, precision="fp32", max_images=3)
        fast = load_detector("efficientad", CATEGORY, device="cpu", runtime="openvino")
    report = result.parity
    assert report.passed and report.rule.n_images == 3 and fast.tiled and fast.runtime == "openvino"
    assert report.max_score_diff <= 1e-3 and report.max_raw_score_diff <= 1e-3 and report.max_map_diff <= 1e-3


def test_tiled_penalty_images_are_at_the_tile_input_size(trained) -> None:
    from core.models.efficientad.model import EfficientAdConfig, build_efficientad

    with inspect_home_at(trained.home):
        module = build_efficientad(EfficientAdConfig(tile=TILE, stride=STRIDE, fast_step=False), load_weights=False)
        module.prepare_imagenette_data((FRAME, FRAME + 40))  # what anomalib passes: the first frame's size
        penalty = next(iter(module.imagenet_loader))[0]
    assert penalty.shape[-2:] == (256, 256)
