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

Training uses batch size 1 (anomalib requires it). On the CPU each step is anomalib's losses
computed with less work (:mod:`core.models.efficientad.fast_step`: bf16 autocast, channels-last,
the frozen teacher's outputs cached, one student pass, penalty images read ahead). Training stops
by measurement (:mod:`core.models.efficientad.early_stop`): every ``val_every`` steps the synthetic
validation split (training images only) is scored and training ends when its AUROC and loss
plateau, at the time budget, or at ``steps``. It resumes from its last validation when started
again (:mod:`core.models.efficientad.runs`). Lightning's progress bar counts steps over the whole
run, and anomalib's validation (map-normalisation quantiles, thresholds on the calibration split)
runs once, when training stops.

Tiled (``--tile`` / ``--stride``, :mod:`core.models.tiling`): the pre-processor leaves the image at
full resolution, and the tiles become the training samples. Each step still trains on one image
at ``image_size`` (anomalib's batch size 1), here one tile drawn at random from the step's
full-resolution image (:meth:`OfflineEfficientAd.training_tile`): a step holds one decoded image
and one tile whatever the frame size, and over the epochs every tile of every image is drawn. The
teacher's channel statistics are taken over every tile of every training image; validation,
anomalib's map-normalisation quantiles, the thresholds and inference all use the tiled rule (the
image score is the highest tile score, the maps are stitched at full resolution).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.models import EfficientAd
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar

from core.data.image_io import sha256_of
from core.errors import ConfigError
from core.models.efficientad.durations import parse_duration
from core.models.efficientad.early_stop import ValidationStopper
from core.models.efficientad.fast_step import Prefetcher, TeacherCache, efficientad_losses, to_channels_last
from core.models.efficientad.teacher import read_teacher_state, teacher_weights_path
from core.models.patchcore.model import check_image_size
from core.models.tiling import TiledForward, check_tiling, crop_tiles, grid, make_tiled, micro_batches
from core.settings import get_settings

#: The paper's training length (one image per step), the default on a GPU and the cap on a CPU.
PAPER_STEPS = 70_000
#: Default time budget without a GPU: training stops at the validation plateau or after this long.
CPU_DEFAULT_TIME_BUDGET_S = 60 * 60
#: Default steps between two validations (CPU, GPU): about a minute of CPU training each.
DEFAULT_VAL_EVERY = (100, 1_000)
#: Default evaluations without improvement of validation AUROC and loss before training stops.
DEFAULT_PATIENCE = 5
PRECISIONS = ("auto", "bf16", "fp32")
MIN_IMAGE_SIZE = 256  # anomalib's autoencoder: 5 stride-2 convolutions, then an 8x8 kernel


@dataclass
class EfficientAdConfig:
    """Everything that defines an EfficientAD model; stored in the model's metadata."""

    model_size: str = "small"
    steps: int | None = None  # the most steps; None: PAPER_STEPS (training usually stops earlier)
    image_size: int = 256
    lr: float = 1e-4  # anomalib's default
    weight_decay: float = 1e-5  # anomalib's default
    teacher_weights: str | None = None  # None: assets/teacher/pdn_<model_size>.pth
    teacher_sha256: str | None = None  # recorded at training time: which teacher this model used
    time_budget: float | str | None = None  # seconds, or "45m", "1.5h", "90s"; None: 60 min on a CPU
    val_every: int | None = None  # steps between validations; None: DEFAULT_VAL_EVERY
    patience: int = DEFAULT_PATIENCE  # validations without improvement before stopping; 0: never
    precision: str = "auto"  # "auto": bf16 autocast on a CPU that supports it, else fp32
    fast_step: bool = True  # teacher cache, one student pass, channels-last, read-ahead (fast_step.py)
    #: Tiled inspection (:mod:`core.models.tiling`): tile side and step in image pixels; None: the
    #: whole image resized to ``image_size``. Stored resolved (stride defaults to the tile), and
    #: left out of the stored config while None, so untiled configs stay as they were.
    tile: int | None = None
    stride: int | None = None

    def __post_init__(self) -> None:
        check_tiling(self.tile, self.stride)
        if self.tile is not None and self.stride is None:
            self.stride = self.tile
        if self.model_size not in ("small", "medium"):
            raise ConfigError(f"unknown EfficientAD model size '{self.model_size}': small or medium")
        check_image_size(
            self.image_size, MIN_IMAGE_SIZE, "EfficientAD's autoencoder halves the image five times, then applies an 8x8 kernel"
        )
        if not 0 < self.lr < 1:
            raise ConfigError(f"EfficientAD needs 0 < --lr < 1 (got {self.lr}); the paper's is 1e-4")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"EfficientAD needs --steps >= 1 (got {self.steps})")
        if self.time_budget is not None:
            self.time_budget = parse_duration(self.time_budget)
        if self.val_every is not None and self.val_every < 1:
            raise ConfigError(f"EfficientAD needs --val-every >= 1 (got {self.val_every})")
        if self.patience < 0:
            raise ConfigError(f"EfficientAD needs --patience >= 0 (got {self.patience}); 0 never stops on a plateau")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown EfficientAD precision '{self.precision}': {', '.join(PRECISIONS)}")

    def teacher_path(self) -> Path:
        return Path(self.teacher_weights).expanduser() if self.teacher_weights else teacher_weights_path(self.model_size)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.tile is None:  # untiled: stored configs of earlier versions stay the same
            for key in ("tile", "stride"):
                data.pop(key)
        return data


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a CPU with native bfloat16 (AVX512-BF16/AMX), else ``fp32``.

    Asked of :func:`core.inference.device.native_bf16`, the one place Inspect decides it (torch's
    own check also answers yes on AVX-512 CPUs that only emulate bf16, where it is slower).
    """
    from core.inference.device import native_bf16

    if precision != "auto":
        return precision
    if torch.device(device).type == "cpu" and native_bf16():
        return "bf16"
    return "fp32"


class TiledEfficientAdModel(TiledForward, EfficientAdModel):
    """anomalib's EfficientAD torch model judging full-resolution images tile by tile.

    Inference: each tile through anomalib's own forward (maps normalised by its quantiles), the
    image score the highest tile score, the map stitched at full resolution. :meth:`get_maps`
    (validation: the quantiles, the validation loss) stitches the two raw maps the same way, so the
    quantiles are fitted on the maps inference normalises. Training mode takes the batch as is:
    a training step's batch is already one tile (:meth:`OfflineEfficientAd.training_tile`). No
    state of its own: the state dict is anomalib's.
    """

    def forward(  # type: ignore[override]
        self, batch: torch.Tensor, batch_imagenet: torch.Tensor | None = None, normalize: bool = True
    ) -> Any:
        untiled = super().forward
        if self.training:
            return untiled(batch, batch_imagenet, normalize)
        return self.tiled_inference(batch, lambda tiles: untiled(tiles, normalize=normalize))

    def get_maps(self, batch: torch.Tensor, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(student-teacher, autoencoder) maps, B x 1 x H x W each, stitched from the tiles' maps.

        A C x H x W image (anomalib's quantile pass hands images one by one) gives 1 x 1 x H x W, as
        anomalib's own ``get_maps`` does.
        """
        untiled = super().get_maps

        def both(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            map_st, map_ae = untiled(tiles, normalize)
            return map_st.new_zeros(map_st.shape[0]), torch.cat([map_st, map_ae], dim=1)

        images = batch if batch.dim() == 4 else batch.unsqueeze(0)
        maps = torch.stack([self.run_tiles(image, both).anomaly_map for image in images])  # type: ignore[union-attr]
        return maps[:, :1], maps[:, 1:]


class OfflineEfficientAd(EfficientAd):
    """anomalib's EfficientAd whose two download steps read local files instead."""

    def __init__(self, config: EfficientAdConfig) -> None:
        size = (config.image_size, config.image_size)
        super().__init__(
            imagenet_dir=get_settings().cache_dir / "penalty",  # filled by prepare_imagenette_data
            model_size=config.model_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            # tiled: the full-resolution image is left as it is; each tile is resized on its own
            pre_processor=EfficientAd.configure_pre_processor(size) if config.tile is None else PreProcessor(transform=None),
            evaluator=False,  # core.evaluation.evaluate computes the metrics itself, on the test set only
            visualizer=False,
        )
        self.inspect_config = config
        self.teacher_sha256: str | None = None
        if config.tile is not None:
            make_tiled(self.model, TiledEfficientAdModel, config.tile, config.stride, config.image_size)

    @property
    def tiled(self) -> bool:
        return self.inspect_config.tile is not None

    def training_tile(self, batch: Any) -> SimpleNamespace:
        """A tiled model's training sample: one tile, drawn at random, of the step's full-resolution image.

        Resized to ``image_size`` as at inference. Named by its image and position, so the teacher
        cache keeps each tile's output apart.
        """
        tile, stride, size = self.model.tiling
        image = batch.image[0]
        boxes = grid(image.shape[-2], image.shape[-1], tile, stride)
        box = boxes[int(torch.randint(len(boxes), (1,)))]
        return SimpleNamespace(image=crop_tiles(image, [box], size), image_path=[f"{batch.image_path[0]}@{box.top},{box.left}"])

    def _tile_batches(self, dataloader: Any) -> Iterator[SimpleNamespace]:
        """Every tile of every image of ``dataloader``, a few at a time, as batches with an ``image``."""
        tile, stride, size = self.model.tiling
        for batch in dataloader:
            for image in batch.image:
                image = image.to(self.device)
                for boxes in micro_batches(grid(image.shape[-2], image.shape[-1], tile, stride)):
                    yield SimpleNamespace(image=crop_tiles(image, boxes, size))

    def teacher_channel_mean_std(self, dataloader: Any) -> dict[str, torch.Tensor]:
        # tiled: anomalib's statistics, over the tiles the teacher sees in training and inference
        return super().teacher_channel_mean_std(self._tile_batches(dataloader) if self.tiled else dataloader)

    def __getstate__(self) -> dict:
        # as anomalib drops its penalty iterator: a thread and a cache of tensors are not model state
        state = super().__getstate__()
        state.pop("_penalties", None)
        state.pop("teacher_cache", None)
        return state

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """anomalib loads checkpoints with ``weights_only``: allow the config a resumed run carries."""
        return (*super().checkpoint_safe_globals(), EfficientAdConfig)

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
        if self.tiled:  # anomalib passes the first training image's size: a tiled model's is the full frame's
            image_size = (self.inspect_config.image_size, self.inspect_config.image_size)
        super().prepare_imagenette_data(image_size)
        self._penalties = Prefetcher(lambda: self.imagenet_loader) if self.inspect_config.fast_step else None

    def on_train_start(self) -> None:
        super().on_train_start()  # anomalib: checks, teacher, penalty images, teacher statistics
        self.step_precision = resolve_precision(self.inspect_config.precision, self.device)
        self.teacher_cache = TeacherCache() if self.inspect_config.fast_step else None
        if self.inspect_config.fast_step and self.device.type == "cpu":
            to_channels_last(self.model)

    def training_step(self, batch: Any, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """anomalib's training step, with the losses of :func:`~core.models.efficientad.fast_step.efficientad_losses`.

        Departure from anomalib (same losses, less work; see fast_step.py): anomalib's
        ``training_step`` calls ``self.model(batch, batch_imagenet)``, which cannot take a cached
        teacher output or a fused student pass. With ``fast_step=False`` and fp32, anomalib's runs.
        """
        if self.tiled:
            batch = self.training_tile(batch)
        precision = getattr(self, "step_precision", "fp32")
        if not self.inspect_config.fast_step and precision == "fp32":
            return super().training_step(batch, *args, **kwargs)
        penalties = getattr(self, "_penalties", None)
        penalty = (next(penalties) if penalties is not None else next(self._imagenet_batches()))[0].to(self.device)
        loss_st, loss_ae, loss_stae = efficientad_losses(
            self.model,
            batch.image,
            penalty,
            teacher_cache=getattr(self, "teacher_cache", None),
            keys=batch.image_path,
            fused_student=self.inspect_config.fast_step,
            precision=precision,
            channels_last=self.inspect_config.fast_step and self.device.type == "cpu",
        )
        loss = loss_st + loss_ae + loss_stae
        self.log("train_st", loss_st.item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_ae", loss_ae.item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_stae", loss_stae.item(), on_epoch=True, prog_bar=True, logger=True)
        self.log("train_loss", loss.item(), on_epoch=True, prog_bar=True, logger=True)
        return {"loss": loss}

    def _imagenet_batches(self) -> Any:
        """anomalib's endless penalty iterator (restarted when exhausted), as in its training_step."""
        while True:
            try:
                yield next(self.imagenet_iterator)
            except StopIteration:
                self.imagenet_iterator = iter(self.imagenet_loader)


def build_efficientad(config: EfficientAdConfig, *, load_weights: bool = True) -> OfflineEfficientAd:
    """An EfficientAD ready to train (``load_weights``: teacher loaded now) or to receive a state dict."""
    module = OfflineEfficientAd(config)
    if load_weights:
        module.load_teacher()  # fail before any data is read if the teacher is missing
    return module


def _expected_total(trainer: Any, done: int) -> int:
    """The steps this run will likely reach: the cap, or with a time budget the steps at the
    current pace when the budget ends (so a job panel's fraction and ETA follow the budget)."""
    stopper = next((cb for cb in trainer.callbacks if isinstance(cb, ValidationStopper)), None)
    if stopper is None or stopper.time_budget_s is None or done == 0:
        return trainer.max_steps
    pace = stopper.time_budget_s / max(stopper.elapsed_s(), 1e-6)
    return int(min(trainer.max_steps, max(done + 1, round(done * pace))))


class _StepTQDMBar(TQDMProgressBar):
    """Lightning's tqdm bar counting optimisation steps over the whole run, not batches per epoch.

    It is reset when the first epoch starts, after the teacher-statistics pass (which has its own
    bar), and Lightning's tqdm bars use no smoothing, so the ETA is the mean step time so far times
    the steps left. With a time budget its total is the steps expected when the budget ends
    (re-estimated at every step), not the 70,000-step cap, so the fraction shown is of the budget.
    """

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        if not getattr(self, "_step_bar_started", False):
            bar.reset(total=trainer.max_steps)
            bar.initial = 0
            self._step_bar_started = True
        bar.set_description(f"Training steps (epoch {trainer.current_epoch})")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = trainer.global_step
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.total = _expected_total(trainer, n)
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
    """The step cap: the paper's schedule (a CPU stops far earlier, by measurement or its time budget)."""
    return PAPER_STEPS


def default_time_budget_s(steps_given: bool) -> float | None:
    """60 min on a CPU unless ``--steps`` was given; none on a GPU (the paper's schedule fits there)."""
    return None if torch.cuda.is_available() or steps_given else float(CPU_DEFAULT_TIME_BUDGET_S)


def training_plan_note(category: str) -> str:
    """What a default EfficientAD training costs here, for the page that offers to start one."""
    steps = default_steps()
    if torch.cuda.is_available():
        return f"EfficientAD trains for at most {steps:,} steps on this machine's GPU (the paper's schedule)."
    return (
        f"No GPU here: EfficientAD trains for at most {CPU_DEFAULT_TIME_BUDGET_S // 60} min on the CPU, stopping "
        f"earlier when its validation AUROC and loss stop improving (and after at most {steps:,} steps, the "
        f"paper's schedule). For another budget or a step limit, run `python -m core train --model efficientad "
        f"--category {category} --time-budget 30m` (or `--steps N`); the progress bar shows the steps and each "
        "validation prints its AUROC."
    )


def prepare_training(module: OfflineEfficientAd, config: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """(batch size 1, step cap, Engine/Trainer arguments) for :func:`core.training.train`.

    Fills ``config`` in place with what the run will use (steps, time budget in seconds, validation
    interval, teacher hash), so the stored metadata says how the model was trained. The
    :class:`~core.models.efficientad.early_stop.ValidationStopper` in the callbacks scores the
    validation split, stops the run and records the curve.
    """
    cfg = EfficientAdConfig(**config)
    steps = int(cfg.steps or default_steps())
    budget = cfg.time_budget if cfg.time_budget is not None else default_time_budget_s(cfg.steps is not None)
    val_every = cfg.val_every or DEFAULT_VAL_EVERY[1 if torch.cuda.is_available() else 0]
    config.update(steps=steps, time_budget=budget, val_every=val_every)
    if module.teacher_sha256 is None:
        module.load_teacher()
    config["teacher_sha256"] = module.teacher_sha256
    stopper = ValidationStopper(every=val_every, patience=cfg.patience, time_budget_s=budget)
    engine_kwargs = {
        "max_steps": steps,
        "max_epochs": -1,  # stop on steps only, however many epochs that takes
        # anomalib's validation (quantiles, thresholds) once, when training stops: at the step cap,
        # or earlier when the ValidationStopper sets trainer.should_stop (Lightning then validates)
        "check_val_every_n_epoch": None,
        "val_check_interval": steps,
        "callbacks": [StepProgress(), stopper],
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
