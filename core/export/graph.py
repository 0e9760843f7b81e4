"""The torch graph that is exported: anomalib's whole pipeline plus the raw outputs Inspect keeps.

anomalib's ``AnomalibModule.forward`` (pre-processor, model, post-processor) is what its
``to_onnx`` / ``to_openvino`` export, so the calibration (the post-processor's thresholds and
min/max) is inside the file. Three deliberate departures, all made by wrapping the module rather
than rewriting the export (anomalib's ``ExportMixin`` still does all of it):

* the map's Gaussian blur as two 1-D passes (:mod:`core.models.patchcore.blur`; anomalib's
  export records the 33 x 33 2-D kernel: 10.7 ms in torch, 1.1 ms as two passes);
* the post-processor's normalisation with its branches chosen when the graph is traced
  (:class:`Normalisation`): the calibration is a constant of the file, so the graph keeps only
  ``clamp((x - threshold) / range + 0.5, 0, 1)``; anomalib's ``_normalize`` records both
  branches of its degenerate-range and missing-statistics cases as full-map ``Select``/``Less``/
  ``Greater`` ops, 16% of a demo category's per-op time in fp32 (``benchmarks/profile_export.py``);
* extra outputs: the raw score and raw anomaly map (the history, the evaluation's threshold-free
  metrics and the score slider need them; the post-processor clamps the normalised ones to
  [0, 1], so they cannot be recovered afterwards) and the patch descriptors of the same forward
  pass (similar-defect search), so the exported model serves every call the torch one does;
* PatchCore's nearest-neighbour search as one distance matrix per batch: both Inspect's fast
  search and anomalib's own loop over query chunks in Python, and the tracer unrolls such a loop
  for the example's batch size: the export then accepts that batch size only (anomalib's own export
  of a 256 px PatchCore comes out with a fixed batch of 2 for this reason). The search exported is
  anomalib's un-chunked branch (one distance matrix, then ``min``/``topk``: same answers) for every
  size; the runtime bounds its memory by running large batches in slices
  (:data:`core.inference.runtime.MICRO_BATCH`). The minimum is taken before the square root, as in
  Inspect's fast search (:class:`WholeSearchPatchcore`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from anomalib.models.components.base.export_mixin import ExportMixin
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from lightning.pytorch import LightningModule

from core.inference.outputs import ModelOutputs
from core.models import get_spec
from core.models.patchcore.blur import SeparableGaussianBlur2d


class ExportGraph(ExportMixin, LightningModule):
    """A trained anomalib module as one exportable forward: [0, 1] RGB batch -> :class:`~core.inference.outputs.ModelOutputs`.

    Inherits anomalib's ``to_onnx`` / ``to_openvino`` unchanged (they need a LightningModule whose
    forward returns a NamedTuple: its field names become the output names).
    """

    def __init__(self, module: Any, model_name: str) -> None:
        super().__init__()
        self.inner = module
        self._spec = get_spec(model_name)
        blur = getattr(getattr(getattr(module, "model", None), "anomaly_map_generator", None), "blur", None)
        if isinstance(blur, SeparableGaussianBlur2d):
            blur.factors()  # PatchCore's map blur: exported as two 1-D passes (computed here, outside the trace)
        post = module.post_processor
        self._image_norm = Normalisation.of(post.image_min, post.image_max, post.image_threshold)
        self._pixel_norm = Normalisation.of(post.pixel_min, post.pixel_max, post.pixel_threshold)

    def forward(self, images: torch.Tensor) -> ModelOutputs:  # type: ignore[override]
        inner = self.inner
        processed = inner.pre_processor(images)
        captured: list[Any] = []
        target = self._spec.capture_target(inner)
        hook = target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            raw = inner.model(processed)
        finally:
            hook.remove()
        features = self._spec.features_from_capture(inner, captured[0])
        raw_map = raw.anomaly_map if raw.anomaly_map.dim() == 4 else raw.anomaly_map.unsqueeze(1)
        return ModelOutputs(
            pred_score=self._image_norm(raw.pred_score),
            anomaly_map=self._pixel_norm(raw.anomaly_map),
            raw_score=raw.pred_score.reshape(-1),
            raw_anomaly_map=raw_map,
            features=features,
        )


@dataclass(frozen=True)
class Normalisation:
    """anomalib's ``PostProcessor._normalize`` for one set of calibration statistics, decided once.

    The statistics are constants of the exported file, so the cases anomalib's code tests per
    element (no statistics, a zero range, no threshold) are decided here in Python, before the
    trace, and the graph records only the branch that applies. The same numbers as anomalib's
    (``tests/test_export.py`` checks every case).
    """

    threshold: float | None  # None: no statistics, the values pass through
    value_range: float = 1.0

    @classmethod
    def of(cls, low: torch.Tensor, high: torch.Tensor, threshold: torch.Tensor) -> Normalisation:
        if bool(torch.isnan(low)) or bool(torch.isnan(high)):
            return cls(None)
        # float32 arithmetic on the statistics, as anomalib's
        middle = (high + low) / 2 if bool(torch.isnan(threshold)) else threshold
        return cls(float(middle), float(high - low))

    def __call__(self, preds: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            return preds
        if self.value_range == 0:
            return torch.where(preds > self.threshold, 1.0, torch.where(preds < self.threshold, 0.0, 0.5))
        return ((preds - self.threshold) / self.value_range + 0.5).clamp(min=0, max=1)


class WholeSearchPatchcore(PatchcoreModel):
    """anomalib's ``PatchcoreModel`` searching all queries in one distance matrix, for any number of them.

    anomalib's distance expansion ``|q|^2 - 2 q.m + |m|^2`` ranks the bank, as in Inspect's fast
    search (:mod:`core.models.patchcore.search`): the minimum (or top-k) is taken on
    ``|m|^2 - 2 q.m`` (one matrix product plus a constant row, which OpenVINO folds and fuses).
    Two departures, both for reduced precision: queries and bank are centred on the bank's mean
    first, and the winners' distances are computed from the differences ``|q - m|`` (a gather of
    k rows per query), not from the expansion, whose cancellation grows with the norms. In fp32:
    the same neighbours, distances equal to float rounding (``tests/test_export.py``); in bf16 the
    ranking may pick a near-tie, whose distance is then nearly the same. The parity rule judges
    the result either way.
    """

    def nearest_neighbors(self, embedding: torch.Tensor, n_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
        bank = self.memory_bank
        # Centred on the bank's mean (distances do not change under a shift; the mean and the
        # centred bank are constants the export folds): the expansion then cancels far less, which
        # is what keeps a bf16 run of this graph near the fp32 scores.
        mean = bank.mean(dim=0)
        centred_bank, queries = bank - mean, embedding - mean
        if n_neighbors == 1:
            index = _blocked_argmin(queries, centred_bank)
            # the winner's distance from the difference itself, not the expansion: no cancellation
            return (queries - centred_bank[index]).pow(2).sum(dim=1).sqrt(), index
        partial = torch.addmm(centred_bank.pow(2).sum(dim=1).unsqueeze(0), queries, centred_bank.t(), beta=1, alpha=-2)
        index = partial.topk(k=n_neighbors, largest=False, dim=1).indices
        return (queries.unsqueeze(1) - centred_bank[index]).pow(2).sum(dim=2).sqrt(), index


#: Squared norm given to the padding rows of :func:`_blocked_argmin`: never anyone's nearest.
_PAD_NORM = 1e30


def _blocked_argmin(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Index of each query's nearest bank row (first on ties, as ``argmin``), in two small arg-mins.

    Why: OpenVINO runs an arg-min over a row of the Q x N distance matrix as a TopK, and TopK on
    1,024 x 4,300 took 24 ms of a 55 ms bf16 inference on bottle (per-op profile, 2 busy cores),
    more than the matrix product itself. Here the N columns are cut into g blocks of w (N padded
    to g x w with rows that are never nearest): a ReduceMin (one fast pass) gives each block's
    minimum, an arg-min over the g block minima picks the block, and an arg-min over that block's
    w columns the row: TopK over g + w values per query instead of N.
    """
    n = bank.shape[0]
    blocks = max(1, math.isqrt(n))
    width = -(-n // blocks)
    pad = blocks * width - n
    bank_sq = torch.nn.functional.pad(bank.pow(2).sum(dim=1), (0, pad), value=_PAD_NORM)
    padded = torch.nn.functional.pad(bank, (0, 0, 0, pad))
    partial = torch.addmm(bank_sq.unsqueeze(0), queries, padded.t(), beta=1, alpha=-2).view(-1, blocks, width)
    block = partial.amin(dim=2).argmin(dim=1)
    rows = torch.gather(partial, 1, block.view(-1, 1, 1).expand(-1, 1, width)).squeeze(1)
    return block * width + rows.argmin(dim=1)


def export_class(model_class: type) -> type:
    """The class to trace for a torch model of ``model_class``: anomalib's (PatchCore: un-chunked).

    A tiled PatchCore (:class:`core.models.patchcore.model.TiledPatchcoreModel`) is traced as this
    untiled class too: the file judges one tile at the model's input size, and the runtime's
    caller tiles around it.
    """
    if issubclass(model_class, PatchcoreModel):
        return WholeSearchPatchcore
    return next((c for c in model_class.__mro__ if c.__module__.startswith("anomalib.")), model_class)


@contextmanager
def anomalib_classes(module: Any) -> Iterator[None]:
    """Within the block, the inner torch model runs anomalib's code (:func:`export_class`).

    Inspect's speed-ups (e.g. PatchCore's fast search) subclass anomalib's torch model and add no
    state, so swapping the class changes the code path only, never the weights or answers.
    """
    inner = module.model
    original = type(inner)
    inner.__class__ = export_class(original)
    try:
        yield
    finally:
        inner.__class__ = original
