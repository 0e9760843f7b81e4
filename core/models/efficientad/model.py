"""EfficientAD (anomalib's ``EfficientAd``), offline.

anomalib's EfficientAd is used as is (its networks, losses, training step, map normalisation and
post-processing); only the two things it downloads at the start of ``fit`` are replaced, and each
replacement says so in a comment:

* the teacher, a patch description network (PDN) that anomalib downloads already distilled from
  WideResNet-101 on ImageNet, is loaded from ``assets/teacher/pdn_<size>.pth``, which
  :mod:`core.models.efficientad.teacher` distils offline from EfficientNet-Lite0 (``python -m core distill-teacher``);
* the penalty images (anomalib downloads *imagenette*) come from
  :func:`core.models.efficientad.penalty_images.ensure_penalty_dir`, natural photographs shipped by scikit-image and
  scikit-learn.

Pre-processing: resize only, no ``Normalize`` (anomalib refuses one for EfficientAd): the PDN
teacher, the student and the autoencoder apply ImageNet normalisation to their [0, 1] input inside
their own ``forward``. The distilled teacher was trained on [0, 1] crops through the very same
``forward``, so it sees here exactly the kind of input it saw in distillation.

Training uses batch size 1 (anomalib requires it) for ``steps`` optimisation steps; Lightning's
progress bar is made to count steps over the whole run (not batches per epoch) with an ETA from the
mean step time, and validation (which fits the map-normalisation quantiles and the thresholds on
the calibration split) runs exactly once, after the last step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from anomalib.models import EfficientAd
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar

from core.data.image_io import sha256_of
from core.errors import ConfigError
from core.models.efficientad.teacher import read_teacher_state, teacher_weights_path
from core.models.patchcore.model import check_image_size
from core.settings import get_settings

#: The paper's training length (one image per step), the default on a GPU.
PAPER_STEPS = 70_000
#: Default steps without a GPU, chosen from runs on real bottle (README, "EfficientAD"): 150 steps
#: reached image AUROC 0.725, 2,000 steps 0.969. About 43-97 min on 2 cores; still 3% of the paper's.
CPU_DEFAULT_STEPS = 2_000
#: Seconds per EfficientAD-S step at 256 px measured on this project's 2-core CPU: 1.3 on both
#: cores (scripts/bench_efficientad.py, networks only), 2.6-2.9 for whole runs on one core.
CPU_SECONDS_PER_STEP = (1.3, 2.9)
MIN_IMAGE_SIZE = 256  # anomalib's autoencoder: 5 stride-2 convolutions, then an 8x8 kernel


@dataclass
class EfficientAdConfig:
    """Everything that defines an EfficientAD model; stored in the model's metadata."""

    model_size: str = "small"
    steps: int | None = None  # None: PAPER_STEPS on a GPU, CPU_DEFAULT_STEPS on a CPU
    image_size: int = 256
    lr: float = 1e-4  # anomalib's default
    weight_decay: float = 1e-5  # anomalib's default
    teacher_weights: str | None = None  # None: assets/teacher/pdn_<model_size>.pth
    teacher_sha256: str | None = None  # recorded at training time: which teacher this model used

    def __post_init__(self) -> None:
        if self.model_size not in ("small", "medium"):
            raise ConfigError(f"unknown EfficientAD model size '{self.model_size}': small or medium")
        check_image_size(
            self.image_size, MIN_IMAGE_SIZE, "EfficientAD's autoencoder halves the image five times, then applies an 8x8 kernel"
        )
        if not 0 < self.lr < 1:
            raise ConfigError(f"EfficientAD needs 0 < --lr < 1 (got {self.lr}); the paper's is 1e-4")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"EfficientAD needs --steps >= 1 (got {self.steps})")

    def teacher_path(self) -> Path:
        return Path(self.teacher_weights).expanduser() if self.teacher_weights else teacher_weights_path(self.model_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OfflineEfficientAd(EfficientAd):
    """anomalib's EfficientAd whose two download steps read local files instead."""

    def __init__(self, config: EfficientAdConfig) -> None:
        super().__init__(
            imagenet_dir=get_settings().cache_dir / "penalty",  # filled by prepare_imagenette_data
            model_size=config.model_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            pre_processor=EfficientAd.configure_pre_processor((config.image_size, config.image_size)),
            evaluator=False,  # core.evaluation.evaluate computes the metrics itself, on the test set only
            visualizer=False,
        )
        self.inspect_config = config
        self.teacher_sha256: str | None = None

    def load_teacher(self) -> None:
        """Load the distilled teacher (raises WeightsMissingError, naming the command that makes it)."""
        path = self.inspect_config.teacher_path()
        state = read_teacher_state(path, self.inspect_config.model_size)
        self.model.teacher.load_state_dict(state, strict=True)
        self.model.teacher.eval()
        self.teacher_sha256 = sha256_of(path)

    def prepare_pretrained_model(self) -> None:
        # Departure from anomalib: anomalib downloads efficientad_pretrained_weights.zip (its PDN
        # distilled from WideResNet-101 on ImageNet); Inspect loads its offline-distilled teacher.
        self.load_teacher()

    def prepare_imagenette_data(self, image_size: tuple[int, int] | torch.Size) -> None:
        # Departure from anomalib: anomalib downloads imagenette into imagenet_dir when the folder
        # is missing; Inspect points imagenet_dir at a folder of shipped natural images first, so
        # anomalib's own code (same transforms, same loader) finds it and downloads nothing.
        from core.models.efficientad.penalty_images import ensure_penalty_dir

        self.imagenet_dir = ensure_penalty_dir()
        super().prepare_imagenette_data(image_size)


def build_efficientad(config: EfficientAdConfig, *, load_weights: bool = True) -> OfflineEfficientAd:
    """An EfficientAD ready to train (``load_weights``: teacher loaded now) or to receive a state dict."""
    module = OfflineEfficientAd(config)
    if load_weights:
        module.load_teacher()  # fail before any data is read if the teacher is missing
    return module


class _StepTQDMBar(TQDMProgressBar):
    """Lightning's tqdm bar counting optimisation steps over the whole run, not batches per epoch.

    It is reset when the first epoch starts, after the teacher-statistics pass (which has its own
    bar), and Lightning's tqdm bars use no smoothing, so the ETA is the mean step time so far times
    the steps left.
    """

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        if trainer.current_epoch == 0 or bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.initial = 0
        bar.set_description(f"Training steps (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = trainer.global_step
        bar = self.train_progress_bar
        if bar is not None and self._should_update(n, bar.total) and not bar.disable:
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class _StepRichBar(RichProgressBar):
    """Lightning's Rich bar (its default when ``rich`` is installed) counting steps over the run.

    The task is created when the first epoch starts (after the teacher-statistics pass) with
    ``max_steps`` as its total and is never reset between epochs, so Rich's elapsed time and its
    time-remaining estimate (speed over the last 30 s) refer to the whole training.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        return f"Training steps (epoch {current_epoch})"

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.is_disabled or self.progress is None:
            return
        description = self._get_train_description(trainer.current_epoch)
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(trainer.max_steps, description)
        else:
            self.progress.update(self.train_progress_bar_id, description=description, visible=True)
        self.refresh()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None and self.progress is not None:
            self.train_progress_bar_id = self._add_task(trainer.max_steps, self._get_train_description(trainer.current_epoch))
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class StepProgress(Callback):
    """Turns the trainer's standard progress bar (tqdm or Rich) into one that counts steps.

    A callback rather than a progress-bar instance, so that a trainer built with
    ``enable_progress_bar=False`` stays quiet (Lightning rejects a bar callback there). The swap
    happens in ``on_train_start``, after anomalib's ``MaxStepsProgressCallback`` made its own swap
    of the Rich bar (it only fixes the epoch count in the description).
    """

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar) and not isinstance(bar, _StepRichBar):
            bar.__class__ = _StepRichBar
        elif type(bar) is TQDMProgressBar:
            bar.__class__ = _StepTQDMBar


def default_steps() -> int:
    return PAPER_STEPS if torch.cuda.is_available() else CPU_DEFAULT_STEPS


def training_plan_note(category: str) -> str:
    """What a default EfficientAD training costs here, for the page that offers to start one."""
    steps = default_steps()
    if torch.cuda.is_available():
        return f"EfficientAD trains for {steps:,} steps on this machine's GPU (the paper's schedule)."
    low, high = (steps * s / 60 for s in CPU_SECONDS_PER_STEP)
    return (
        f"No GPU here: EfficientAD trains for {steps:,} steps on the CPU, about {low:.0f}-{high:.0f} min "
        f"on 2 cores ({CPU_SECONDS_PER_STEP[0]}-{CPU_SECONDS_PER_STEP[1]} s per step measured), far from the paper's "
        f"{PAPER_STEPS:,}. For more, run `python -m core train --model efficientad --category {category} --steps N` "
        "(the progress bar shows steps and the time left), or train on a GPU."
    )


def prepare_training(module: OfflineEfficientAd, config: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """(batch size 1, steps, Engine/Trainer arguments) for :func:`core.training.train`.

    Fills ``config['steps']`` and ``config['teacher_sha256']`` in place, so the stored metadata
    says how many steps ran and which teacher was used.
    """
    steps = int(config.get("steps") or default_steps())
    config["steps"] = steps
    if module.teacher_sha256 is None:
        module.load_teacher()
    config["teacher_sha256"] = module.teacher_sha256
    engine_kwargs = {
        "max_steps": steps,
        "max_epochs": -1,  # stop on steps only, however many epochs that takes
        # validate once, after the last step: check every `steps` batches counted across epochs
        "check_val_every_n_epoch": None,
        "val_check_interval": steps,
        "callbacks": [StepProgress()],
    }
    return 1, steps, engine_kwargs


def capture_target(module: EfficientAd) -> torch.nn.Module:
    """The PDN teacher: its output is what the descriptors are made of."""
    return module.model.teacher


def features_from_capture(module: EfficientAd, teacher_output: torch.Tensor) -> torch.Tensor:
    """B x 384 x h x w: the teacher's output, channel-normalised with the category's statistics."""
    return module.model._normalize_teacher(teacher_output)  # noqa: SLF001 - anomalib's own normalisation


@torch.no_grad()
def teacher_patch_features(module: EfficientAd, processed: torch.Tensor) -> torch.Tensor:
    """The same descriptors for a pre-processed batch (a teacher pass of its own)."""
    return features_from_capture(module, module.model.teacher(processed))


# The names core.models.spec.ModelSpec looks up in a model's module.
Config = EfficientAdConfig
build = build_efficientad
patch_features = teacher_patch_features
training_note = training_plan_note
