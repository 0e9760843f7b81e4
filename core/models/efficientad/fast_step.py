"""A cheaper EfficientAD training step on the CPU: the same losses as anomalib's, less work per step.

anomalib's ``EfficientAdModel.forward`` in training mode (``compute_student_teacher_distance`` then
``compute_losses``) runs, per step, the frozen teacher twice (training image, augmented image), the
student three times (training image, penalty image, augmented image) and the autoencoder once.
:func:`efficientad_losses` computes exactly those three losses, with three savings that
``benchmarks/bench_efficientad.py`` measures against anomalib's own step in one run:

* **teacher cache** -- the training images are not augmented (Inspect's datamodule has no train
  augmentations; the pre-processor only resizes), so the frozen teacher's output on a training
  image is the same at every epoch: :class:`TeacherCache` keeps it per image path, and the
  teacher runs once per step (on the augmented image) instead of twice after the first epoch;
* **one student pass** -- the student has no batch normalisation, so its three inputs go through
  it as one batch of three: the same outputs and gradients, and better-filled matrix products;
* **bf16 autocast and channels-last** -- the convolutions run in bfloat16 (oneDNN uses AVX512-BF16
  where the CPU has it) on NHWC tensors; the losses (quantile, means) are computed in float32.

Deliberate departure from anomalib: this re-states ``compute_losses`` instead of calling it, since
anomalib's function takes no precomputed teacher output. It draws the augmentation from anomalib's
own ``choose_random_aug_image`` at the same point of the random stream, so with the same seed the
losses equal anomalib's (``tests/test_efficientad_fast.py`` checks it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel, reduce_tensor_elems

#: Default memory cap of the teacher cache. An EfficientAD-S teacher output at 256 px is 384 x 56 x 56
#: values: 4.8 MB in float32, 2.4 MB in bfloat16; real MVTec bottle's 167 training images fit in 0.4 GB.
TEACHER_CACHE_MAX_BYTES = 1_500_000_000


class TeacherCache:
    """The frozen teacher's raw output per training image (path), up to ``max_bytes``.

    Raw, not normalised: anomalib's channel mean/std are applied at use, so the cache never holds
    a value computed with other statistics. Images beyond the cap are simply not cached.
    """

    def __init__(self, max_bytes: int = TEACHER_CACHE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._store: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def teacher_output(self, model: EfficientAdModel, image: torch.Tensor, keys: Sequence[str] | None) -> torch.Tensor:
        """The teacher's raw output on ``image`` (batch of 1 here), from the cache when it holds it."""
        key = keys[0] if keys and len(keys) == 1 else None
        cached = self._store.get(key) if key is not None else None
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        out = model.teacher(image)
        if key is not None and self.bytes + out.numel() * out.element_size() <= self.max_bytes:
            self._store[key] = out.detach()
            self.bytes += out.numel() * out.element_size()
        return out


def autocast_context(precision: str, device: torch.device | str = "cpu") -> AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``precision == "bf16"``, else nothing (float32)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC weights for the convolutions (oneDNN's preferred layout); numerically the same model."""
    return model.to(memory_format=torch.channels_last)


def efficientad_losses(
    model: EfficientAdModel,
    image: torch.Tensor,
    penalty: torch.Tensor,
    *,
    teacher_cache: TeacherCache | None = None,
    keys: Sequence[str] | None = None,
    fused_student: bool = True,
    precision: str = "fp32",
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_st, loss_ae, loss_stae) of one training step, as anomalib's ``compute_losses``.

    ``teacher_cache``: where the teacher's raw output on ``image`` (named by ``keys``, its path) is
    kept from one epoch to the next; None runs the teacher on ``image`` every step, as anomalib does.
    """
    channels = model.teacher_out_channels
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    image = image.contiguous(memory_format=fmt)
    penalty = penalty.contiguous(memory_format=fmt)
    with autocast_context(precision, image.device):
        with torch.no_grad():
            raw = model.teacher(image) if teacher_cache is None else teacher_cache.teacher_output(model, image, keys)
            teacher_output = model._normalize_teacher(raw.float())  # noqa: SLF001 - anomalib's own normalisation
        # Same point of the random stream as anomalib's compute_losses (after the teacher pass).
        aug_img = model.choose_random_aug_image(image).contiguous(memory_format=fmt)
        if fused_student:
            student_all = model.student(torch.cat([image, penalty, aug_img]))
            student_output, student_penalty, student_aug = student_all[0:1], student_all[1:2], student_all[2:3]
        else:
            student_output = model.student(image)
            student_penalty = student_aug = None
        # Student loss: hardest 0.1% of the student-teacher distances plus the penalty term.
        distance_st = torch.pow(teacher_output - student_output[:, :channels].float(), 2)
        distance_st = reduce_tensor_elems(distance_st)
        d_hard = torch.quantile(distance_st, 0.999)
        loss_hard = torch.mean(distance_st[distance_st >= d_hard])
        if student_penalty is None:
            student_penalty = model.student(penalty)
        loss_penalty = torch.mean(student_penalty[:, :channels].float() ** 2)
        loss_st = loss_hard + loss_penalty
        # Autoencoder and student-autoencoder losses on the augmented image.
        ae_output_aug = model.ae(aug_img, image.shape[-2:]).float()
        with torch.no_grad():
            teacher_output_aug = model.teacher(aug_img).float()
            if model.is_set(model.mean_std):
                teacher_output_aug = (teacher_output_aug - model.mean_std["mean"]) / model.mean_std["std"]
        if student_aug is None:
            student_aug = model.student(aug_img)
        student_output_ae_aug = student_aug[:, channels:].float()
        loss_ae = torch.mean(torch.pow(teacher_output_aug - ae_output_aug, 2))
        loss_stae = torch.mean(torch.pow(ae_output_aug - student_output_ae_aug, 2))
    return loss_st, loss_ae, loss_stae


class Prefetcher:
    """Yields the items of an iterable, read one ahead in a daemon thread, endlessly (restarting it).

    Used for the penalty images: decoding and resizing a photograph (PIL releases the GIL) then
    overlaps the training step instead of preceding it.
    """

    def __init__(self, make_iterable: Any, depth: int = 2) -> None:
        self._make = make_iterable
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._fill, name="efficientad-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while True:
            try:
                for item in self._make():
                    self._queue.put(item)
            except Exception as exc:  # noqa: BLE001 - handed to the training thread, raised there
                self._queue.put(exc)
                return

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item
