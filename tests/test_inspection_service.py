"""The one inspection path: one forward pass per batch serves verdicts and similarity descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_CATEGORY


@pytest.fixture
def detector(app_env: Path):
    from core.inference.detector import load_detector

    return load_detector("patchcore", TINY_CATEGORY, device="cpu")


def _test_images(root: Path, n_defect: int = 2) -> list[Path]:
    test_dir = root / TINY_CATEGORY / "test"
    defects = sorted(p for p in test_dir.glob("*/*.png") if p.parent.name != "good")[:n_defect]
    return [*sorted((test_dir / "good").glob("*.png"))[:1], *defects]


def _backbone_images(detector) -> list[int]:
    """How many images the backbone has run on (a CPU batch runs in micro-batches: count images, not calls)."""
    seen = [0]
    detector.module.model.feature_extractor.register_forward_hook(
        lambda _m, args, _o: seen.__setitem__(0, seen[0] + args[0].shape[0])
    )
    return seen


def test_features_from_the_prediction_pass_equal_a_separate_pass(detector, tiny_data_root: Path) -> None:
    from core.data.image_io import load_image
    from core.inference.detector import to_tensor
    from core.models import get_spec

    image = load_image(_test_images(tiny_data_root)[1])
    prediction = detector.predict(image, with_features=True)
    processed = detector.module.pre_processor(to_tensor(image))
    with torch.inference_mode():
        separate = get_spec("patchcore").patch_features(detector.module, processed)[0]
    assert prediction.patch_features is not None
    torch.testing.assert_close(prediction.patch_features, separate.float())
    assert detector.predict(image).patch_features is None  # only on request


def test_a_batch_scores_like_images_one_at_a_time(detector, tiny_data_root: Path) -> None:
    from core.data.image_io import load_image

    images = [load_image(p) for p in _test_images(tiny_data_root, n_defect=3)]
    batch = detector.predict_batch(images)
    single = [detector.predict(image) for image in images]
    assert [round(p.score, 5) for p in batch] == [round(p.score, 5) for p in single]
    for b, s in zip(batch, single, strict=True):
        np.testing.assert_allclose(b.anomaly_map, s.anomaly_map, atol=1e-5)


def test_cpu_micro_batches_give_the_whole_batchs_outputs(detector, tiny_data_root: Path, monkeypatch) -> None:
    from core.data.image_io import load_image
    from core.inference import detector as detector_module
    from core.inference.detector import to_tensor

    tensors = [to_tensor(load_image(p)) for p in _test_images(tiny_data_root, n_defect=3)]
    monkeypatch.setattr(detector_module, "CPU_MICRO_BATCH", 64)
    whole = detector.run_batch(tensors, with_features=True)
    for step in (1, 3):
        monkeypatch.setattr(detector_module, "CPU_MICRO_BATCH", step)
        seen = _backbone_images(detector)
        parts = detector.run_batch(tensors, with_features=True)
        assert seen[0] == len(tensors)
        for got, ref in zip(parts[:2], whole[:2], strict=True):
            torch.testing.assert_close(got.pred_score, ref.pred_score, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got.anomaly_map, ref.anomaly_map, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(parts[2], whole[2], atol=1e-4, rtol=1e-4)


def test_inspect_images_runs_the_backbone_once_and_indexes_defects(detector, app_index, tiny_data_root: Path) -> None:
    """Three images, one of them good: each through the backbone once, three history rows, the DEFECTs indexed."""
    from core.data.image_io import load_image, sha256_of
    from core.history import History
    from core.services import inspection

    paths = _test_images(tiny_data_root)
    items = [(p.name, load_image(p), sha256_of(p.read_bytes() + b"service-test")) for p in paths]
    history = History()
    seen = _backbone_images(detector)
    results = inspection.inspect_images(detector, items, history=history)
    assert seen[0] == 3
    assert [r.inspection_id is not None for r in results] == [True] * 3
    assert all(r.model_version.startswith("v") for r in results)
    for result in results:
        record = history.get(result.inspection_id)
        assert record.verdict == result.judgement.verdict and record.sha256 == result.sha256
        if result.judgement.verdict == "DEFECT":
            assert result.point_id is not None and str(record.point_id) == result.point_id, result.notes
            assert 0.0 < result.defect_area <= 1.0
    assert any(r.judgement.verdict == "DEFECT" for r in results)


def test_unreadable_bytes_are_an_image_error(detector) -> None:
    from core.errors import ImageError
    from core.services import inspection

    with pytest.raises(ImageError, match="not an image file"):
        inspection.inspect_bytes(detector, b"hello", "note.txt", record=False)


def test_threads_sharing_one_detector_each_get_their_own_features(detector, tiny_data_root: Path) -> None:
    """Pages and API requests share a loaded model: a call's hook must never capture another's pass."""
    import threading

    from core.data.image_io import load_image

    images = [load_image(p) for p in _test_images(tiny_data_root, n_defect=3)]
    expected = [detector.predict(image, with_features=True).patch_features for image in images]
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(images))}

    def work(i: int) -> None:
        for _ in range(3):
            got[i].append(detector.predict(images[i], with_features=True).patch_features)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, features in got.items():
        assert len(features) == 3
        for f in features:
            torch.testing.assert_close(f, expected[i])
