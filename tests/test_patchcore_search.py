"""The fast nearest-neighbour search gives anomalib's neighbours and distances, and the same scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from core.models.patchcore.search import FastPatchcoreModel, nearest_neighbours


def _bank_and_queries(seed: int = 0, n_bank: int = 3000, n_query: int = 700, dims: int = 152):
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(n_bank, dims, generator=g) * 2 + 0.5
    queries = torch.randn(n_query, dims, generator=g) * 2 + 0.5
    queries[:5] = bank[:5]  # exact matches: distance 0, where clamping matters
    return bank, queries


@pytest.mark.parametrize("k", [1, 9])
def test_same_neighbours_and_distances_as_anomalib(k: int) -> None:
    bank, queries = _bank_and_queries()
    reference = PatchcoreModel.euclidean_dist(queries, bank)
    ref_values, ref_index = reference.topk(k, dim=1, largest=False)
    values, index = nearest_neighbours(queries, bank, bank.pow(2).sum(1), k, chunk=128)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-3)
    # exact matches: ~0, up to the expansion's cancellation error (anomalib's has the same)
    assert float(values[:5, 0].max()) < 0.05


def test_model_search_matches_anomalibs_method() -> None:
    """FastPatchcoreModel.nearest_neighbors returns what anomalib's does (shapes included)."""
    bank, queries = _bank_and_queries(seed=1, n_bank=2000, n_query=1500)  # over anomalib's 1,024 chunk
    model = PatchcoreModel(layers=["blocks.2"], backbone="tf_efficientnet_lite0", pre_trained=False)
    model.memory_bank = bank
    expected = [model.nearest_neighbors(queries, k) for k in (1, 9)]
    model.__class__ = FastPatchcoreModel
    for k, (ref_values, ref_index) in zip((1, 9), expected, strict=True):
        values, index = model.nearest_neighbors(queries, k)
        assert values.shape == ref_values.shape and torch.equal(index, ref_index)
        torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-3)
    model.memory_bank = bank * 2  # a new bank (a reload, a grown bank): norms are recomputed
    values, index = model.nearest_neighbors(queries * 2, 1)
    assert torch.equal(index, expected[0][1])
    torch.testing.assert_close(values, 2 * expected[0][0], rtol=1e-5, atol=2e-3)


def test_a_new_bank_at_the_old_banks_address_gets_its_own_norms() -> None:
    """A bank with the old one's address, shape and version is still a new bank.

    The bank update's leave-one-out frees one bank and builds the next of the same shape, which the
    allocator places at the same address; an address-keyed cache then searched with the old
    bank's norms. A transposed view reproduces that collision without relying on the allocator.
    """
    g = torch.Generator().manual_seed(2)
    square = torch.randn(152, 152, generator=g)
    queries = torch.randn(300, 152, generator=g)
    model = PatchcoreModel(layers=["blocks.2"], backbone="tf_efficientnet_lite0", pre_trained=False)
    model.__class__ = FastPatchcoreModel
    model.memory_bank = square
    model.nearest_neighbors(queries, 1)
    other = square.t()  # same address, shape and version, other rows
    assert other.data_ptr() == square.data_ptr() and other.shape == square.shape
    model.memory_bank = other
    values, index = model.nearest_neighbors(queries, 1)
    ref_values, ref_index = PatchcoreModel.euclidean_dist(queries, other.contiguous()).min(dim=1)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(values, ref_values, rtol=1e-5, atol=1e-3)
    other.mul_(3)  # changed in place: the version counter moves, the norms follow
    values, _ = model.nearest_neighbors(queries, 1)
    torch.testing.assert_close(
        values, PatchcoreModel.euclidean_dist(queries, other.contiguous()).min(dim=1)[0], rtol=1e-5, atol=1e-3
    )


def test_trained_model_scores_the_test_set_as_anomalib_does(app_env: Path, tiny_data_root: Path) -> None:
    from core.data.image_io import load_image
    from core.inference.detector import load_detector
    from tests.conftest import TINY_CATEGORY

    detector = load_detector("patchcore", TINY_CATEGORY, device="cpu")
    assert type(detector.module.model) is FastPatchcoreModel
    images = [load_image(p) for p in sorted((tiny_data_root / TINY_CATEGORY / "test").glob("*/*.png"))]
    fast = [detector.predict(image) for image in images]
    detector.module.model.__class__ = PatchcoreModel  # anomalib's own search
    try:
        reference = [detector.predict(image) for image in images]
    finally:
        detector.module.model.__class__ = FastPatchcoreModel
    for f, r in zip(fast, reference, strict=True):
        assert f.raw_score == pytest.approx(r.raw_score, rel=1e-4)
        assert f.verdict() == r.verdict()
        torch.testing.assert_close(torch.from_numpy(f.anomaly_map), torch.from_numpy(r.anomaly_map), rtol=1e-4, atol=1e-4)


def test_separable_blur_gives_anomalibs_map() -> None:
    """The map's Gaussian blur as two 1-D passes equals anomalib's 2-D convolution (float rounding)."""
    from anomalib.models.components.filters.blur import GaussianBlur2d
    from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator

    from core.models.patchcore.blur import SeparableGaussianBlur2d

    blur = AnomalyMapGenerator().blur
    maps = torch.rand(3, 1, 64, 80, generator=torch.Generator().manual_seed(1)) * 5
    reference = blur(maps)
    blur.__class__ = SeparableGaussianBlur2d
    assert blur.factors() is not None
    torch.testing.assert_close(blur(maps), reference, rtol=1e-5, atol=1e-5)
    # a kernel that is not a product of two 1-D kernels falls back to the 2-D convolution
    odd = GaussianBlur2d(sigma=(2.0, 2.0), channels=1)
    odd.kernel = odd.kernel.clone()
    odd.kernel[0, 0, 0, 0] += 0.05
    expected = odd(maps)
    odd.__class__ = SeparableGaussianBlur2d
    assert odd.factors() is None
    assert torch.equal(odd(maps), expected)


def test_frozen_backbone_gives_the_eager_features_and_scores(tiny_patchcore) -> None:
    """A CPU Detector runs PatchCore's frozen backbone; scores equal the eager module's (issue 12)."""
    import numpy as np
    from conftest import TINY_CATEGORY

    from core.inference.accelerate import is_frozen
    from core.inference.detector import load_detector

    frozen = load_detector("patchcore", TINY_CATEGORY, device="cpu")
    eager = load_detector("patchcore", TINY_CATEGORY, device="cpu", accelerate=False)
    assert is_frozen(frozen.module) and not is_frozen(eager.module)
    # what a new version saves is anomalib's state dict, key for key and value for value
    frozen_state, eager_state = frozen.module.state_dict(), eager.module.state_dict()
    assert list(frozen_state) == list(eager_state)
    assert all(torch.equal(frozen_state[k], eager_state[k]) for k in eager_state)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (96, 112, 3), dtype=np.uint8) for _ in range(3)]
    for got, want in zip(
        frozen.predict_batch(images, with_features=True), eager.predict_batch(images, with_features=True), strict=True
    ):
        assert abs(got.raw_score - want.raw_score) <= 1e-3 * max(1.0, abs(want.raw_score))
        assert got.verdict() == want.verdict()
        torch.testing.assert_close(got.patch_features, want.patch_features, rtol=1e-3, atol=1e-3)
