"""Stop EfficientAD's training by measurement: validation AUROC and loss plateau, or a time budget.

Every ``every`` steps :class:`ValidationStopper` scores anomalib's synthetic validation split (the
held-out 20% of ``train/good``, half of them given Perlin-noise defects by anomalib; training
images only, never the test set) and records a point of the validation curve:

* **image AUROC** of the synthetic defects against the held-out good images, with EfficientAD's
  own score (anomalib's map normalisation by the 90% / 99.5% quantiles of the good maps);
* **loss**: the mean student-teacher plus student-autoencoder discrepancy on the held-out good
  images (the two maps the anomaly map is made of, before normalisation), which falls while the
  student still learns what normal looks like.

Training stops when neither has improved for ``patience`` evaluations (:class:`PlateauRule`), or
when the time budget is spent. Either way Lightning then runs anomalib's final validation (map
quantiles, thresholds) before ``fit`` returns. At each evaluation the callback also saves a
resumable checkpoint and a ``progress.json`` (:mod:`core.models.efficientad.runs`), which the
Compare page reads while the training runs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from core.models.efficientad.fast_step import autocast_context
from core.models.efficientad.runs import RunFolder

log = logging.getLogger(__name__)

#: An AUROC gain smaller than this is not an improvement (16-40 validation images: 1/64 is one pair).
AUROC_MIN_DELTA = 0.005
#: A loss must fall by at least this fraction of the best so far to count as an improvement.
LOSS_MIN_REL_DELTA = 0.01
#: How often the live progress file is rewritten between evaluations, in seconds.
PROGRESS_EVERY_S = 10.0


@dataclass
class PlateauRule:
    """Plateau = neither AUROC nor loss improved for ``patience`` evaluations (0: never stop here)."""

    patience: int
    best_auroc: float | None = None
    best_loss: float | None = None
    since_auroc: int = 0
    since_loss: int = 0

    def update(self, auroc: float | None, loss: float) -> bool:
        """Take one evaluation; True when training has plateaued."""
        if auroc is not None and (self.best_auroc is None or auroc > self.best_auroc + AUROC_MIN_DELTA):
            self.best_auroc, self.since_auroc = auroc, 0
        else:
            self.since_auroc += 1
        if self.best_loss is None or loss < self.best_loss * (1 - LOSS_MIN_REL_DELTA):
            self.best_loss, self.since_loss = loss, 0
        else:
            self.since_loss += 1
        return self.patience > 0 and min(self.since_auroc, self.since_loss) >= self.patience


@dataclass
class ValidationSet:
    """The synthetic validation split, pre-processed once (it never changes during a fit)."""

    images: list[torch.Tensor] = field(default_factory=list)  # batches, B x 3 x H x W
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @classmethod
    def from_datamodule(cls, module: Any, datamodule: Any) -> ValidationSet:
        images, labels = [], []
        for batch in datamodule.val_dataloader():
            images.append(module.pre_processor(batch.image))  # anomalib's pre-processor: resize (tiled: none)
            labels.append(batch.gt_label.reshape(-1).long())
        return cls(images, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))


def _binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AUROC as anomalib's ``AUROC`` metric computes it (torchmetrics' binary AUROC); None for one class."""
    if labels.unique().numel() < 2:
        return None
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(scores.float(), labels))


@torch.no_grad()
def score_validation(module: Any, data: ValidationSet, precision: str = "fp32") -> tuple[float | None, float]:
    """(image AUROC or None, loss) of ``module`` on the validation set; the module's mode is kept."""
    model = module.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    maps_st, maps_ae = [], []
    try:
        with autocast_context(precision, device):
            for images in data.images:
                map_st, map_ae = model.get_maps(images.to(device), normalize=False)  # anomalib's own maps
                maps_st.append(map_st.float().cpu())
                maps_ae.append(map_ae.float().cpu())
    finally:
        model.train(was_training)
        model.teacher.eval()
    st, ae = torch.cat(maps_st), torch.cat(maps_ae)
    good = data.labels == 0
    loss = float(st[good].mean() + ae[good].mean()) if bool(good.any()) else float(st.mean() + ae.mean())
    if not bool(good.any()):
        return None, loss
    # anomalib's map normalisation (EfficientAdModel.compute_maps with normalize=True), re-stated
    # because its quantiles are fitted only in the final validation: 0.1 * (map - q90) / (q995 - q90).
    qa_st, qb_st = module._get_quantiles_of_maps(list(st[good]))  # noqa: SLF001 - anomalib's quantiles
    qa_ae, qb_ae = module._get_quantiles_of_maps(list(ae[good]))  # noqa: SLF001
    norm_st = 0.1 * (st - qa_st.cpu()) / (qb_st.cpu() - qa_st.cpu())
    norm_ae = 0.1 * (ae - qa_ae.cpu()) / (qb_ae.cpu() - qa_ae.cpu())
    scores = torch.amax(0.5 * norm_st + 0.5 * norm_ae, dim=(-3, -2, -1))
    return _binary_auroc(scores, data.labels), loss


class ValidationStopper(Callback):
    """Scores the validation split every ``every`` steps and stops on a plateau or the time budget.

    Its state (curve, plateau counters, time already spent) is saved in Lightning's checkpoint,
    so a resumed training continues the same curve and the same budget.
    """

    def __init__(
        self,
        *,
        every: int,
        patience: int,
        time_budget_s: float | None,
        precision: str = "fp32",
        run: RunFolder | None = None,
    ) -> None:
        self.every = every
        self.rule = PlateauRule(patience)
        self.time_budget_s = time_budget_s
        self.precision = precision
        self.run = run
        self.curve: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.elapsed_before = 0.0  # seconds spent by earlier (interrupted) runs of this training
        self._t0: float | None = None
        self._data: ValidationSet | None = None
        self._last_progress = 0.0

    def attach_run(self, category: str, data_root: str, data_hash: str, config: dict[str, Any]) -> RunFolder:
        """Checkpoint and report progress in the run folder of this training (see core.training.train)."""
        self.run = RunFolder.for_training(category, data_root, data_hash, config)
        return self.run

    # --- Lightning checkpoint state --------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "curve": self.curve,
            "elapsed_s": self.elapsed_s(),
            "rule": {k: getattr(self.rule, k) for k in ("best_auroc", "best_loss", "since_auroc", "since_loss")},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict.get("curve", []))
        self.elapsed_before = float(state_dict.get("elapsed_s", 0.0))
        for key, value in (state_dict.get("rule") or {}).items():
            setattr(self.rule, key, value)

    # --- timing -----------------------------------------------------------------------------------

    def elapsed_s(self) -> float:
        return self.elapsed_before + (time.monotonic() - self._t0 if self._t0 is not None else 0.0)

    def budget_spent(self) -> bool:
        return self.time_budget_s is not None and self.elapsed_s() >= self.time_budget_s

    # --- hooks ------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.monotonic()
        self._data = ValidationSet.from_datamodule(pl_module, trainer.datamodule)
        self._write_progress(trainer, "training")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        out_of_time = self.budget_spent()
        last = trainer.max_steps > 0 and step >= trainer.max_steps
        if step % self.every == 0 or out_of_time or last:
            self.evaluate(trainer, pl_module, step)
            if out_of_time:
                self.stop_reason = "time budget"
            elif self.rule.patience > 0 and min(self.rule.since_auroc, self.rule.since_loss) >= self.rule.patience:
                self.stop_reason = "validation plateau"
            elif last:
                self.stop_reason = "step limit"
            if self.stop_reason:
                trainer.should_stop = True
            if self.run is not None and not trainer.should_stop:
                self._save_checkpoint(trainer)
            self._write_progress(trainer, "calibrating" if trainer.should_stop else "training")
        elif time.monotonic() - self._last_progress >= PROGRESS_EVERY_S:
            self._write_progress(trainer, "training")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.precision = getattr(pl_module, "step_precision", self.precision)
        cache = getattr(pl_module, "teacher_cache", None)
        self.cache_stats = None if cache is None else {"hits": cache.hits, "misses": cache.misses, "bytes": cache.bytes}

    def evaluate(self, trainer: Any, pl_module: Any, step: int) -> dict[str, Any]:
        if self._data is None:
            self._data = ValidationSet.from_datamodule(pl_module, trainer.datamodule)
        auroc, loss = score_validation(pl_module, self._data, getattr(pl_module, "step_precision", self.precision))
        point = {
            "step": step,
            "elapsed_s": round(self.elapsed_s(), 1),
            "image_auroc": None if auroc is None else round(auroc, 4),
            "loss": round(loss, 6) if math.isfinite(loss) else None,
        }
        self.curve.append(point)
        self.rule.update(auroc, loss if math.isfinite(loss) else math.inf)
        log.info(
            f"\n[validation] step {step}: image AUROC {point['image_auroc']}, loss {point['loss']}, {point['elapsed_s']:.0f} s"
        )
        return point

    def _save_checkpoint(self, trainer: Any) -> None:
        """Lightning's checkpoint, written beside and renamed: a kill mid-write leaves the previous one."""
        target = self.run.checkpoint
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, target)

    def _write_progress(self, trainer: Any, status: str) -> None:
        self._last_progress = time.monotonic()
        if self.run is None:
            return
        elapsed = self.elapsed_s()
        steps = trainer.global_step
        self.run.write_progress(
            {
                "status": status,
                "step": steps,
                "max_steps": trainer.max_steps,
                "elapsed_s": round(elapsed, 1),
                "time_budget_s": self.time_budget_s,
                "s_per_step": round(elapsed / steps, 3) if steps else None,
                "curve": self.curve,
            }
        )

    def record(self) -> dict[str, Any]:
        """What the model's metadata keeps of this training."""
        return {
            "validation_curve": self.curve,
            "stop_reason": self.stop_reason or "step limit",
            "time_budget_s": self.time_budget_s,
            "validation_every": self.every,
            "patience": self.rule.patience,
            "precision": self.precision,
            "teacher_cache": getattr(self, "cache_stats", None),
        }
