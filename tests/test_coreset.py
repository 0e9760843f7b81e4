"""Tests for core.models.patchcore.coreset: same selection as anomalib's KCenterGreedy, the k-center property, validation.

anomalib's projection draws from torch's and numpy's global generators (scikit-learn's
``sample_without_replacement`` with ``random_state=None`` uses numpy's), so every comparison seeds both.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from anomalib.models.components.sampling import KCenterGreedy

import core.models.patchcore.coreset as coreset
from core.models.patchcore.coreset import coreset_size, greedy_coreset_indices, subsample_memory_bank


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # anomalib's loop is hundreds of tiny ops per test; with 2 OpenMP threads on a shared 2-core
    # machine each op can wait on a descheduled thread. One thread keeps these tests fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _anomalib_indices(embedding: torch.Tensor, ratio: float, seed: int) -> list[int]:
    _seed(seed)
    return KCenterGreedy(embedding=embedding, sampling_ratio=ratio).select_coreset_idxs()


def _our_indices(embedding: torch.Tensor, ratio: float, seed: int, **kw: object) -> list[int]:
    _seed(seed)
    return greedy_coreset_indices(embedding, ratio, progress=False, **kw).tolist()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def random_embedding() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return torch.randn(3000, 64, generator=gen, dtype=torch.float32)


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.3])
def test_same_indices_as_anomalib_widening_projection(random_embedding: torch.Tensor, ratio: float) -> None:
    # 3,000 rows -> 197 projected components > 64 input dims: exercises the Gram-matrix path.
    expected = _anomalib_indices(random_embedding, ratio, seed=7)
    got = _our_indices(random_embedding, ratio, seed=7)
    assert len(got) == len(expected) == int(3000 * ratio)
    assert got == expected


def test_same_indices_as_anomalib_narrowing_projection() -> None:
    # 512 input dims -> 197 components: exercises the projected-matrix path.
    x = torch.randn(3000, 512, generator=torch.Generator().manual_seed(5))
    assert _our_indices(x, 0.05, seed=3) == _anomalib_indices(x, 0.05, seed=3)


def test_same_indices_as_anomalib_clustered_data() -> None:
    # Clustered, non-negative (post-ReLU-like) data with large norms relative to within-cluster
    # distances: the case where the norm expansion loses the most precision. Choosing the argmax of
    # expanded distances directly (no exact updates) reordered near-ties here, around selection 90.
    gen = torch.Generator().manual_seed(11)
    centres = torch.rand(20, 96, generator=gen) * 10
    x = (centres[torch.randint(0, 20, (2500,), generator=gen)] + 0.3 * torch.rand(2500, 96, generator=gen)).relu()
    assert _our_indices(x, 0.1, seed=0) == _anomalib_indices(x, 0.1, seed=0)


@pytest.mark.parametrize("batch", [1, 3, 1000])
def test_same_indices_whatever_the_screen_batch(
    random_embedding: torch.Tensor, batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # batch 1: a pass per centre; 3: frequent cache misses; 1000: few passes, many unused screens.
    monkeypatch.setattr(coreset, "_SCREEN_BATCH", batch)
    assert _our_indices(random_embedding, 0.1, seed=7) == _anomalib_indices(random_embedding, 0.1, seed=7)


def test_offset_and_duplicate_rows_match_anomalib() -> None:
    gen = torch.Generator().manual_seed(13)
    offset = (50 + 0.1 * torch.randn(2000, 80, generator=gen)).relu()  # far from the origin
    assert _our_indices(offset, 0.1, seed=2) == _anomalib_indices(offset, 0.1, seed=2)
    ints = torch.randint(0, 3, (2000, 40), generator=gen).float()  # many exact ties and duplicates
    assert _our_indices(ints, 0.1, seed=4) == _anomalib_indices(ints, 0.1, seed=4)


@pytest.mark.parametrize("kind", ["clustered", "offset"])
@pytest.mark.parametrize("project", [True, False])
def test_screen_error_is_within_bound(kind: str, project: bool) -> None:
    """The assumption behind exactness: the screen and anomalib are both within tol of float64."""
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    gen = torch.Generator().manual_seed(17)
    if kind == "clustered":
        centres = torch.rand(20, 96, generator=gen) * 10
        x = centres[torch.randint(0, 20, (4000,), generator=gen)] + 0.3 * torch.rand(4000, 96, generator=gen)
    else:
        x = (50 + 0.1 * torch.randn(4000, 96, generator=gen)).relu()
    proj = SparseRandomProjection(eps=0.9).fit(x).sparse_random_matrix if project else None
    features = x @ proj.T if proj is not None else x
    space = coreset._Space(features, x, proj)
    exact64 = x.double() @ proj.double().T if proj is not None else x.double()
    index = torch.randint(0, 4000, (16,), generator=gen)
    width = space.matrix.shape[1]
    rows, queries = torch.empty(16, width), torch.empty(16, width)
    space.screen_queries(index, rows, queries)
    screens = queries @ space.matrix.T
    for b, c in enumerate(index.tolist()):
        truth = (exact64 - exact64[c]).pow(2).sum(dim=1)
        anomalib_sq = torch.linalg.norm(features - features[c], dim=1).double() ** 2
        assert float((screens[b].double() - truth).abs().max()) < space.tol / 2
        assert float((anomalib_sq - truth).abs().max()) < space.tol / 2


@pytest.mark.parametrize("count", [1, 5, 17, 300])
def test_exact_distances_are_anomalibs_bits(count: int) -> None:
    gen = torch.Generator().manual_seed(19)
    features = torch.rand(3000, 197, generator=gen) * 10
    centre = features[11:12]
    full = torch.linalg.norm(features - centre, ord=2, dim=1, keepdim=True).squeeze(1)  # anomalib's line
    space = coreset._Space(features, features, None)
    index = torch.randperm(3000, generator=gen)[:count]
    out = torch.empty(count)
    space.exact_distances(index, centre, torch.empty(count, 197), out)
    assert torch.equal(out, full[index])


def test_thread_count_is_restored(random_embedding: torch.Tensor) -> None:
    torch.set_num_threads(2)
    try:
        greedy_coreset_indices(random_embedding, 0.01, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_non_2d_embedding_flattened_without_projection_like_anomalib() -> None:
    x = torch.randn(400, 4, 8, generator=torch.Generator().manual_seed(2))
    assert _our_indices(x, 0.1, seed=1) == _anomalib_indices(x, 0.1, seed=1)


def test_half_precision_input_is_accepted() -> None:
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(4)).half()
    idx = greedy_coreset_indices(x, 0.1, progress=False)
    assert idx.dtype == torch.long and idx.shape == (50,)


def test_k_center_property_brute_force() -> None:
    """Every selected point is the farthest (float64 brute force) from those selected before it."""
    x = torch.randn(120, 5, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(0)
    idx = greedy_coreset_indices(x, 0.25, project=False, progress=False).tolist()
    assert len(idx) == 30
    assert len(set(idx)) == len(idx)
    x64 = x.double()
    for i in range(1, len(idx)):
        dist_to_set = torch.cdist(x64, x64[idx[:i]]).min(dim=1).values
        assert idx[i] == int(dist_to_set.argmax())


def test_result_is_cpu_long_in_selection_order(random_embedding: torch.Tensor) -> None:
    idx = greedy_coreset_indices(random_embedding, 0.01, progress=False)
    assert idx.dtype == torch.long and idx.device.type == "cpu" and idx.shape == (30,)
    assert int(idx.min()) >= 0 and int(idx.max()) < 3000


def test_ratio_one_selects_every_row_once() -> None:
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(6))
    idx = greedy_coreset_indices(x, 1.0, progress=False)
    assert sorted(idx.tolist()) == list(range(50))


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_ratio_out_of_range_raises(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"sampling_ratio must be in \(0, 1\]"):
        greedy_coreset_indices(torch.randn(100, 4), ratio, progress=False)


def test_ratio_that_keeps_no_point_raises() -> None:
    with pytest.raises(ValueError, match="keeps no point"):
        greedy_coreset_indices(torch.randn(100, 4), 0.005, progress=False)
    assert coreset_size(100, 0.01) == 1


def test_non_numeric_ratio_raises() -> None:
    with pytest.raises(ValueError, match="must be a number"):
        coreset_size(100, "0.1")  # type: ignore[arg-type]


class _FakePatchcore(torch.nn.Module):
    """The two attributes subsample_memory_bank touches, as PatchcoreModel declares them."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("memory_bank", torch.empty(0))
        self.embedding_store: list[torch.Tensor] = []


def test_subsample_memory_bank_sets_bank_and_empties_store() -> None:
    model = _FakePatchcore()
    gen = torch.Generator().manual_seed(8)
    chunks = [torch.randn(600, 48, generator=gen), torch.randn(400, 48, generator=gen)]
    model.embedding_store.extend(chunks)
    _seed(21)
    subsample_memory_bank(model, 0.1, progress=False)
    assert model.embedding_store == []
    assert model.memory_bank.shape == (100, 48)
    assert "memory_bank" in dict(model.named_buffers())  # still a buffer, so it is saved in state_dict

    # Same rows, in the same order, as anomalib's subsample_embedding (original, unprojected rows).
    stacked = torch.vstack(chunks)
    expected = stacked[_anomalib_indices(stacked, 0.1, seed=21)]
    assert torch.equal(model.memory_bank, expected)


def test_subsample_memory_bank_keeps_store_on_bad_ratio() -> None:
    model = _FakePatchcore()
    model.embedding_store.append(torch.randn(10, 4))
    with pytest.raises(ValueError):
        subsample_memory_bank(model, 0.01, progress=False)
    assert len(model.embedding_store) == 1


def test_subsample_memory_bank_empty_store_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        subsample_memory_bank(_FakePatchcore(), 0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_matches_cpu(random_embedding: torch.Tensor) -> None:
    # The embedding stays on the CPU, so anomalib (and our starting draw) use the CPU generator;
    # only the loop runs on the GPU.
    assert _our_indices(random_embedding, 0.1, seed=7, device="cuda") == _anomalib_indices(random_embedding, 0.1, seed=7)
