"""Greedy k-center coreset selection for the PatchCore memory bank, done efficiently.

PatchCore keeps a subset of its training patch embeddings (the "memory bank"), chosen by greedy
k-center: start from a random point, then repeatedly add the point farthest from every point chosen
so far. anomalib's :class:`~anomalib.models.components.sampling.KCenterGreedy` computes
``||f_i - c||`` for all N points on every iteration, through an N x D temporary; on two CPU cores
that is 3-7 iterations/s (under 3 on a busy machine), 50 minutes or more for one MVTec category
(~214,000 patches, 10 % kept = 21,400 iterations).

This module selects the same points, on the same random draws, much faster. Per iteration:

1. **Screen** every point: ``||f_i - c||^2 = ||f_i||^2 + ||c||^2 - 2 f_i . c``, with the squared
   norms precomputed and folded into one contiguous float32 matrix (:class:`_Space`), so a screen is
   a single matrix-vector product, written into preallocated buffers. When anomalib's random
   projection *widens* the features (eps=0.9 and N=214,016 give 303 components, more than e.g. 152
   input channels), the screen runs in the narrower input space through the Gram matrix ``R^T R``.
   Screens are computed ``_SCREEN_BATCH`` at a time, for the points with the largest running minima
   (the likeliest next centres), in one matrix product over the N x D data; a cached screen is used
   when its point is chosen. At MVTec size nearly every centre is found in the batch (random data
   and real bottle features alike), so the N x D data is read once per ~60 centres, not per centre.
2. **Update exactly** only the points the screen flags as possibly closer to the new centre than to
   any earlier one (about N / i of them at iteration i): their distances are computed exactly as
   anomalib computes them (the same float32 features, the same ``||f - c||``; the bits match, see
   :meth:`_Space.exact_distances`) and folded into the running minimum in place.
3. **Pick** the largest running minimum with ``torch.max`` over the whole vector, as anomalib does.

The running minimum therefore holds anomalib's own float32 values, bit for bit, and step 3 makes
anomalib's choice, ties included, provided the screen never misses a point that anomalib would
update. The screen's error bound (``_Space.tol``) covers the rounding of both computations with a
margin (measured: at least 6x, usually 30x); a looser bound would only flag more points.
tests/test_coreset.py checks the bound, the bit-identity of the exact distances, and whole
selections against anomalib's on several kinds of data.

Deliberate departures from anomalib, none of which changes which point is chosen:

* squared distances in the screen (monotone, no square roots over N points);
* centred features in the screen (distances are translation-invariant; the expansion's rounding
  grows with ``||f||^2``, and patch features sit far from the origin relative to their spacing);
* memory: the screen matrix, a batch of screens and anomalib's features stay resident (~450 MB for
  MVTec bottle: 214,016 x (154 + 303 + 64) float32).
"""

from __future__ import annotations

import math

import torch
from anomalib.models.components.dimensionality_reduction import SparseRandomProjection
from tqdm import tqdm

__all__ = ["coreset_size", "greedy_coreset_indices", "prepare", "select", "subsample_memory_bank"]

# Rows per block when preparing matrices and when updating flagged points: bounds the temporaries
# (16,384 x 303 float32 = 20 MB) without adding noticeable per-block overhead.
_BLOCK_ROWS = 16_384
# Screens per pass over the N x D matrix (see _Greedy._screen_pass). On 2 busy cores at N = 214,016 x 152, one
# pass cost ~25 ms for 1 screen, ~80 ms for 32 and ~125 ms for 64, and nearly all of a batch became
# centres (random data: ~31 of 32, ~62 of 64), giving 35, 200 and 255 iterations/s.
_SCREEN_BATCH = 64
# Exact updates of at least this many points run on all threads (see _Threads).
_HEAVY_ROWS = 4_096
# Safety factor on the rounding-error estimate in _Space.tol (see there).
_TOL_FACTOR = 2.0


def coreset_size(n_rows: int, sampling_ratio: float) -> int:
    """Number of rows a coreset of ``sampling_ratio`` keeps out of ``n_rows``, as anomalib counts it.

    anomalib truncates (``int(n * ratio)``); so do we, so both keep the same number of points. Raises
    :class:`ValueError` for a ratio outside (0, 1] or one that keeps no row (naming the smallest
    ratio that would work), because an empty memory bank would only fail much later, at inference.
    """
    if not isinstance(sampling_ratio, (int, float)) or isinstance(sampling_ratio, bool):
        msg = f"sampling_ratio must be a number in (0, 1], got {sampling_ratio!r}"
        raise ValueError(msg)
    if not math.isfinite(sampling_ratio) or not 0.0 < sampling_ratio <= 1.0:
        msg = f"sampling_ratio must be in (0, 1], got {sampling_ratio}"
        raise ValueError(msg)
    if n_rows <= 0:
        msg = "cannot select a coreset from an empty embedding (0 rows)"
        raise ValueError(msg)
    size = int(n_rows * sampling_ratio)
    if size < 1:
        msg = (
            f"sampling_ratio {sampling_ratio} keeps no point out of {n_rows} rows "
            f"({n_rows} x {sampling_ratio} < 1); use a ratio of at least {1.0 / n_rows:.3g}"
        )
        raise ValueError(msg)
    return size


def _mean(matrix: torch.Tensor) -> torch.Tensor:
    """Column means, accumulated in float64 (a float32 sum over 200,000 rows loses digits)."""
    return matrix.mean(dim=0, dtype=torch.float64).to(matrix.dtype)


def _max_sq_norm(matrix: torch.Tensor, shift: torch.Tensor | None = None) -> float:
    """Largest squared row norm of ``matrix - shift``, block by block (no N x D temporary)."""
    best = 0.0
    for start in range(0, matrix.shape[0], _BLOCK_ROWS):
        block = matrix[start : start + _BLOCK_ROWS]
        if shift is not None:
            block = block - shift
        best = max(best, float(block.pow(2).sum(dim=1).max()))
    return best


class _Space:
    """anomalib's features, the screen's matrix and query map, and the screen's error bound.

    ``features`` are anomalib's (``embedding @ R.T``, float32, the same call on the same device), used
    for the exact updates. For the screen, with input rows ``X`` (N x d) and projection ``R``
    (p x d), ``F F[c]^T = X (R^T R) X[c]^T``: if ``p <= d`` the screen streams centred ``F`` (N x p);
    if ``p > d`` it streams centred ``X`` (N x d) with the query ``G X[c]``, ``G = R^T R`` (d x d).
    Either way a pass reads ``N x min(p, d)`` floats.

    The streamed matrix is *augmented*: row i is ``[m_i, ||f_i||^2, 1]``, so that with the query
    ``[-2 q, 1, ||c||^2]`` the product alone yields ``||f_i||^2 - 2 f_i . c + ||c||^2``: no separate
    additions over N per centre (each one an OpenMP region, which on a busy 2-core machine can cost
    as much as a matrix-vector product).
    """

    def __init__(self, features: torch.Tensor, rows: torch.Tensor, projection: torch.Tensor | None) -> None:
        # features: N x p anomalib features; rows: N x d float32 input rows; projection: p x d.
        # All float32, contiguous, on the working device.
        self.features = features
        self.gram: torch.Tensor | None = None
        if projection is not None and projection.shape[0] > rows.shape[1]:
            # Departure (rounding only): screen in the narrower input space with G = R^T R.
            # Centring X centres F too (the mean commutes with the linear map).
            self.gram = (projection.T @ projection).contiguous()
        mean = _mean(rows)
        self._fill_matrix(rows, mean, projection)
        self.tol = self._tolerance(rows, mean, projection)

    def _fill_matrix(self, rows: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor | None) -> None:
        """Write the augmented screen matrix, row i ``[m_i, ||f_i||^2, 1]``, block by block."""
        n_rows, n_features = rows.shape
        project_rows = projection is not None and self.gram is None
        self.width = projection.shape[0] if project_rows else n_features  # type: ignore[union-attr]
        self.matrix = torch.empty((n_rows, self.width + 2), dtype=torch.float32, device=rows.device)
        for start in range(0, n_rows, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, n_rows)
            block = self.matrix[start:stop]
            centred = rows[start:stop] - mean
            if project_rows:
                # Departure (rounding only): projected from centred rows; anomalib projects
                # uncentred rows, whose float32 product carries an error proportional to their
                # (large) norms.
                torch.mm(centred, projection.T, out=block[:, : self.width])  # type: ignore[union-attr]
            else:
                block[:, : self.width] = centred
            if self.gram is not None:
                projected = centred @ projection.T  # type: ignore[union-attr]
            else:
                projected = block[:, : self.width]
            block[:, self.width] = projected.pow(2).sum(dim=1)
            block[:, self.width + 1] = 1.0

    def _tolerance(self, rows: torch.Tensor, mean: torch.Tensor, projection: torch.Tensor | None) -> float:
        """Bound on the rounding error of a squared distance, the screen's or anomalib's, against float64.

        The screen's terms (||f_i||^2, ||c||^2 and 2 m_i . q with |m_i| |q| <= ||R||^2 max|x - mean|^2)
        are float32 sums of ~w terms. anomalib projects *uncentred* rows, so its features carry an
        error ~ eps32 ||R|| |x|, which moves d^2 by ~ 2 d times that. Measured against float64 (30
        centres x 20,000 rows; Gaussian, ReLU, clustered, low-rank, offset and integer data; w =
        64..512) both errors stayed below 0.26 sqrt(w) eps32 times these terms (at most 0.16 tol
        with _TOL_FACTOR = 2: 6x margin; 30x for projected features).
        """
        max_raw_sq = _max_sq_norm(rows)
        max_row_sq = _max_sq_norm(rows, mean)
        proj_norm = 1.0
        if projection is not None:
            proj_norm = float(torch.linalg.matrix_norm(projection.double(), ord=2))
        max_sq = float(self.matrix[:, self.width].max())
        scale = max_sq + proj_norm**2 * max_row_sq
        if projection is not None:
            scale += proj_norm * math.sqrt(max_sq * max_raw_sq)
        width = max(rows.shape[1], self.features.shape[1])
        return _TOL_FACTOR * torch.finfo(torch.float32).eps * math.sqrt(width) * scale

    def screen_queries(self, index: torch.Tensor, rows: torch.Tensor, queries: torch.Tensor) -> None:
        """Fill ``queries`` (B x (w + 2)) for the centres ``index`` (B,), using ``rows`` as scratch.

        Row b becomes ``[-2 q_b, 1, ||c_b||^2]``; allocation-free and without host syncs.
        """
        w = self.width
        torch.index_select(self.matrix, 0, index, out=rows)
        if self.gram is None:
            torch.mul(rows[:, :w], -2.0, out=queries[:, :w])
        else:
            torch.mm(rows[:, :w], self.gram, out=queries[:, :w])
            queries[:, :w].mul_(-2.0)
        queries[:, w + 1 :].copy_(rows[:, w : w + 1])
        queries[:, w : w + 1].fill_(1.0)

    def exact_distances(self, index: torch.Tensor, centre: torch.Tensor, rows_buf: torch.Tensor, out: torch.Tensor) -> None:
        """anomalib's distances from the points ``index`` to ``centre`` (1 x p), into ``out``.

        anomalib computes ``torch.linalg.norm(features - centre, ord=2, dim=1)`` over all N rows;
        the same row-wise difference and norm over a gathered subset give the same bits (checked on
        this platform for subsets of 1..N rows; tests/test_coreset.py compares whole selections).
        """
        m = index.shape[0]
        rows = rows_buf[:m]
        torch.index_select(self.features, 0, index, out=rows)
        torch.sub(rows, centre, out=rows)
        torch.linalg.vector_norm(rows, ord=2, dim=1, out=out[:m])


def greedy_coreset_indices(
    embedding: torch.Tensor,
    sampling_ratio: float,
    *,
    project: bool = True,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Select a coreset by greedy k-center (farthest-point) sampling, as anomalib's KCenterGreedy.

    Args:
        embedding: N x D patch embeddings (float32 for bit-identical results; other float dtypes are
            computed in float32; other shapes are flattened per row and not projected, as anomalib does).
        sampling_ratio: fraction of rows to keep, in (0, 1]; the coreset has ``int(N * ratio)`` rows.
        project: apply anomalib's ``SparseRandomProjection(eps=0.9)`` first, as anomalib does. It
            draws from torch's *and numpy's* global generators (scikit-learn's
            ``sample_without_replacement`` uses numpy's), so seed both to reproduce anomalib's
            selection. ``False`` measures distances on the raw rows (no longer anomalib's selection).
        progress: show a tqdm bar over the selection iterations.
        device: where to run the loop (e.g. ``"cuda"``); default: the embedding's device. The result
            is always on the CPU. On another device than the embedding's, near-ties may resolve
            differently from anomalib's (its float rounding differs from device to device).

    Returns:
        int64 CPU tensor of ``int(N * ratio)`` row indices into ``embedding`` in selection order; the
        first is the random starting point.
    """
    size = coreset_size(embedding.shape[0], sampling_ratio)
    space, first = prepare(embedding, project=project, device=device)
    return select(space, first, size, progress=progress).cpu()


def prepare(
    embedding: torch.Tensor, *, project: bool = True, device: torch.device | str | None = None
) -> tuple[_Space, torch.Tensor]:
    """Projection, starting point and screen matrices for :func:`select`.

    The first half of :func:`greedy_coreset_indices`, apart so it can be timed on its own
    (``benchmarks/bench_coreset.py``).
    """
    n_rows = embedding.shape[0]
    work_device = torch.device(device) if device is not None else embedding.device

    rows = embedding.reshape(n_rows, -1)
    if rows.dtype != torch.float32:
        rows = rows.float()
    projection: torch.Tensor | None = None
    if embedding.ndim == 2 and project:
        # anomalib's own projection, so its random draws are the same ones, in the same order, as in
        # KCenterGreedy.select_coreset_idxs, and anomalib's own transform, on the embedding's
        # device, so the features are the same bits.
        srp = SparseRandomProjection(eps=0.9)
        srp.fit(rows)
        features = srp.transform(rows)
        projection = srp.sparse_random_matrix.to(work_device, torch.float32).contiguous()
    else:
        features = rows  # anomalib skips the projection for non-2-D embeddings

    # The starting point, drawn as anomalib draws it: after the projection, one randint on the
    # embedding's device (where anomalib's features live), whatever device the loop runs on.
    first = torch.randint(high=n_rows, size=(1,), device=embedding.device)

    rows = rows.to(work_device).contiguous()
    features = features.to(work_device).contiguous()
    return _Space(features, rows, projection), first.to(work_device)


class _Threads:
    """One torch thread for the loop's light ops, the caller's count for its heavy ones (CPU only).

    On CPU, every op over N points is an OpenMP region ending in a barrier; on a 2-core machine
    shared with other processes, a barrier waits for a descheduled thread and the loop's small ops
    became 10-100x slower with 2 threads than with 1 (measured with one screen per pass: 9 vs 50
    iterations/s). So the light ops run on one thread and only the heavy ones (the N x D product,
    large exact updates) use the caller's thread count, which :meth:`restore` puts back.
    (torch's thread count is process-wide: torch work on other threads meanwhile gets one thread.)
    """

    def __init__(self, dev: torch.device) -> None:
        self.threads = torch.get_num_threads()
        self.switch = dev.type == "cpu" and self.threads > 1

    def heavy(self) -> None:
        """All of the caller's threads, for an N x D product or a large exact update."""
        if self.switch:
            torch.set_num_threads(self.threads)

    def light(self) -> None:
        """One thread, for the many small ops (each a barrier with more threads)."""
        if self.switch:
            torch.set_num_threads(1)

    def restore(self) -> None:
        """The caller's thread count, unconditionally (on exit, also after an error)."""
        torch.set_num_threads(self.threads)


class _Greedy:
    """The greedy loop's state: anomalib's running minimum, the screen cache and fixed buffers.

    Every buffer is allocated here, once; the loop only writes into them. ``min_dist`` holds
    anomalib's running minimum (its float32 norms, bit for bit) and ``threshold`` the screen's
    bound ``min_dist^2 + slack``: a point whose screened squared distance is not below it cannot get
    closer to the new centre than to an earlier one.
    """

    def __init__(self, space: _Space, first: torch.Tensor, size: int) -> None:
        self.space = space
        dev = space.matrix.device
        n_rows = space.matrix.shape[0]
        self.slack = 2.0 * space.tol  # screen error + anomalib's error, each within tol of float64
        self.selected = torch.empty(size, dtype=torch.long, device=dev)
        self.selected[0] = first[0]
        self.min_dist = torch.full((n_rows,), math.inf, dtype=torch.float32, device=dev)
        self.threshold = torch.full((n_rows,), math.inf, dtype=torch.float32, device=dev)
        self.best_value = torch.empty((), dtype=torch.float32, device=dev)
        self.threads = _Threads(dev)
        self.exact_updates = 0
        self.passes = 0
        self._screen_buffers(min(_SCREEN_BATCH, n_rows))
        self._update_buffers(min(_BLOCK_ROWS, n_rows))

    def _screen_buffers(self, batch: int) -> None:
        """A cache of ``batch`` screens (one per likely next centre) and the flagged-point buffers."""
        dev = self.space.matrix.device
        n_rows, width = self.space.matrix.shape
        self.batch = batch
        self.cached: dict[int, int] = {}  # point index -> row of `screens`
        self.candidates = torch.empty(batch, dtype=torch.long, device=dev)
        self.candidate_vals = torch.empty(batch, dtype=torch.float32, device=dev)
        self.query_rows = torch.empty((batch, width), dtype=torch.float32, device=dev)
        self.queries = torch.empty((batch, width), dtype=torch.float32, device=dev)
        self.screens = torch.empty((batch, n_rows), dtype=torch.float32, device=dev)
        self.flagged = torch.empty(n_rows, dtype=torch.bool, device=dev)
        self.flagged_idx = torch.empty((n_rows, 1), dtype=torch.long, device=dev)  # capacity N; resized within it

    def _update_buffers(self, block: int) -> None:
        """Buffers for the exact updates, ``block`` flagged points at a time."""
        dev = self.space.matrix.device
        n_features = self.space.features.shape[1]
        self.block = block
        self.centre_features = torch.empty((1, n_features), dtype=torch.float32, device=dev)
        self.rows_buf = torch.empty((block, n_features), dtype=torch.float32, device=dev)
        self.exact = torch.empty(block, dtype=torch.float32, device=dev)
        self.current = torch.empty(block, dtype=torch.float32, device=dev)

    def step(self, i: int) -> None:
        """Fold centre ``i - 1`` into the running minimum, then choose centre ``i`` as anomalib does."""
        self.exact_updates += self._add_centre(self.selected[i - 1 : i])
        # 3. anomalib's get_new_idx: torch.max over the running minimum (same values, same ties).
        torch.max(self.min_dist, dim=0, out=(self.best_value, self.selected[i]))

    def _add_centre(self, c: torch.Tensor) -> int:
        """Screen, then update exactly the flagged points for centre ``c`` (a 1-element view); returns their count."""
        # 1. Screen all points (from the cache, or with a new pass that fills it).
        key = int(c)  # host sync
        if key not in self.cached:
            self._screen_pass(key)
        screen = self.screens[self.cached.pop(key)]
        torch.lt(screen, self.threshold, out=self.flagged)
        self.flagged_idx.resize_(0, 1)
        torch.nonzero(self.flagged, out=self.flagged_idx)  # host sync (the number of flagged points)
        # 2. Exact update of the flagged points, as anomalib's update_distances would do it.
        n_flagged = self._update_flagged(c)
        # anomalib zeroes each new centre's minimum (its own distance is 0 already).
        self.min_dist.index_fill_(0, c, 0.0)
        return n_flagged

    def _screen_pass(self, key: int) -> None:
        """One pass over the N x D data: screens for centre ``key`` and the likeliest next centres.

        The batch - 1 others are the points with the next-largest running minima (the farthest
        points move little from one iteration to the next). Cached screens stay valid: they are
        plain distances, independent of the running minimum.
        """
        torch.topk(self.min_dist, self.batch, out=(self.candidate_vals, self.candidates))
        cand = self.candidates.tolist()
        if key not in cand:  # key is the argmax, so only a tie at the top can leave it out
            cand[-1] = key
            self.candidates[-1] = key
        self.space.screen_queries(self.candidates, self.query_rows, self.queries)
        self.threads.heavy()
        torch.mm(self.queries, self.space.matrix.T, out=self.screens)
        self.threads.light()
        self.passes += 1
        self.cached.clear()
        self.cached.update((p, b) for b, p in enumerate(cand))

    def _update_flagged(self, c: torch.Tensor) -> int:
        """Fold the exact distances of the flagged points to centre ``c`` into the running minimum."""
        torch.index_select(self.space.features, 0, c, out=self.centre_features)
        n_flagged = self.flagged_idx.shape[0]
        if n_flagged >= _HEAVY_ROWS:
            self.threads.heavy()
        for start in range(0, n_flagged, self.block):
            self._update_block(self.flagged_idx[start : start + self.block, 0])
        self.threads.light()
        return n_flagged

    def _update_block(self, idx: torch.Tensor) -> None:
        """``min_dist = min(min_dist, exact distance)`` and its screen threshold, for the points ``idx``."""
        m = idx.shape[0]
        current, exact = self.current[:m], self.exact[:m]
        self.space.exact_distances(idx, self.centre_features, self.rows_buf, self.exact)
        torch.index_select(self.min_dist, 0, idx, out=current)
        torch.minimum(current, exact, out=current)
        self.min_dist.index_copy_(0, idx, current)
        torch.mul(current, current, out=exact)
        exact.add_(self.slack)
        self.threshold.index_copy_(0, idx, exact)


def select(space: _Space, first: torch.Tensor, size: int, *, progress: bool, stats: dict[str, int] | None = None) -> torch.Tensor:
    """The greedy loop on :func:`prepare`'s output: ``size`` centres in selection order, starting from ``first``.

    ``stats``, if given, receives ``exact_updates``: how many point distances were computed exactly
    (anomalib computes ``(size - 1) * N``), and ``passes``: how many passes over the N x D matrix.
    """
    loop = _Greedy(space, first, size)
    bar = tqdm(total=size, desc="Selecting coreset", unit="pt", disable=not progress, mininterval=0.5)
    bar.update(1)
    loop.threads.light()
    try:
        for i in range(1, size):
            loop.step(i)
            bar.update(1)
    finally:
        loop.threads.restore()
        bar.close()
    if stats is not None:
        stats["exact_updates"] = loop.exact_updates
        stats["passes"] = loop.passes
    return loop.selected


def subsample_memory_bank(model: torch.nn.Module, sampling_ratio: float, **kw: object) -> None:
    """Drop-in replacement for anomalib's ``PatchcoreModel.subsample_embedding``.

    Stacks ``model.embedding_store``, empties it, selects the coreset with
    :func:`greedy_coreset_indices` (``**kw`` goes to it: ``project``, ``progress``, ``device``) and
    sets ``model.memory_bank`` to the selected rows of the *original* (unprojected) embedding, in
    selection order, as anomalib's ``sample_coreset`` returns them.
    """
    store = model.embedding_store
    if len(store) == 0:
        msg = "Embedding store is empty. Cannot perform coreset selection."
        raise ValueError(msg)
    # Validate before emptying the store, so that a bad ratio does not throw the embeddings away
    # (anomalib empties it first).
    coreset_size(sum(t.shape[0] for t in store), sampling_ratio)
    embedding = torch.vstack(store)
    store.clear()
    indices = greedy_coreset_indices(embedding, sampling_ratio, **kw)  # type: ignore[arg-type]
    model.memory_bank = embedding[indices.to(embedding.device)]
