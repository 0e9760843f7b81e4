"""Distil EfficientAD's teacher, the patch description network (PDN), offline.

EfficientAD's teacher is a small, fast CNN (anomalib's ``SmallPatchDescriptionNetwork`` /
``MediumPatchDescriptionNetwork``) whose every output vector describes one 33x33-pixel patch.
The paper obtains it by *distillation*: the PDN is trained on ImageNet to regress the features of
a large pretrained network (WideResNet-101, PatchCore-style mid-level features projected to 384
channels). anomalib downloads the result. Neither ImageNet nor that download is available here,
so this module repeats the distillation with what is on disk:

* **Target network**: the offline ImageNet EfficientNet-Lite0 (:mod:`core.models.backbones`), the
  backbone PatchCore uses in Inspect. Its target is PatchCore's own patch embedding: the stride-8
  block (``blocks.2``, 40 channels) concatenated with the stride-16 block (``blocks.4``, 112
  channels) upsampled to stride 8, averaged over 3x3 neighbourhoods (PatchCore's local
  aggregation): 152 channels.
* **Projection to 384 channels**: the 152 channels are standardised (mean/std over a sample of
  training crops), multiplied by a fixed Gaussian matrix (seeded, 384 x 152, scaled by
  1/sqrt(152)), and each of the 384 outputs is standardised again. PCA cannot produce 384
  components from 152 channels; a fixed random projection keeps every direction of the embedding
  with about equal weight. (The paper's projection to 384 is a feature-dimension reduction of a
  1536-channel embedding; ours expands, so the 384 targets have rank 152.)
* **Resolution**: as in the paper (backbone at 512 px, PDN at 256 px) the backbone sees each crop
  at twice the PDN's resolution, so its stride-8 grid matches the PDN's stride-4 output grid. The
  target is sampled (bilinear ``grid_sample``) exactly at the centres of the PDN's unpadded
  receptive fields (pixel ``4 i + 16`` of the PDN input for output ``i``).
* **Images**: only local ones, the natural photographs shipped by scikit-image and scikit-learn
  (:func:`core.models.efficientad.penalty_images.natural_images`) and textures from Inspect's demo generator (drawn
  with a seed different from the demo dataset's, so no demo train or test image is among them),
  half of every batch from each group on average, with heavy augmentation: random square regions
  (64 px to the whole image) at random zoom, any rotation, mirror flips, brightness/contrast/saturation jitter and grey-scale.
* **Teacher input**: RGB in [0, 1]; the PDN applies ImageNet normalisation inside its forward
  (anomalib's ``imagenet_norm_batch``), exactly as it does inside EfficientAD, so the teacher sees
  at training time of EfficientAD what it saw here.

The teacher's channel mean/std that EfficientAD divides by are *not* stored: anomalib computes
them on each category's training images at the start of every fit (``teacher_channel_mean_std``).

On a GPU the default schedule is long (60,000 steps, batch 16, 256 px crops); on a CPU it is a
short one (see :data:`CPU_SCHEDULE`) that gives a usable but much weaker teacher. Weights are
saved in float16 to ``assets/teacher/pdn_<size>.pth`` with a ``PROVENANCE.json`` entry.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data.image_io import sha256_of
from core.errors import ConfigError, WeightsMissingError
from core.settings import ASSETS_DIR, get_settings

TEACHER_DIR = ASSETS_DIR / "teacher"
PROVENANCE_FILE = "PROVENANCE.json"
TEACHER_OUT_CHANNELS = 384
TARGET_BACKBONE = "efficientnet_lite0"
TARGET_OUT_INDICES = (2, 3)  # timm features_only indices of blocks.2 (stride 8) and blocks.4 (stride 16)
PROJECTION_SEED = 20240611
TEXTURE_SEED = 7919  # demo textures for distillation: not the demo dataset's seed (0)
PDN_STRIDE = 4  # both PDN sizes: two 2x2 average poolings
PDN_RECEPTIVE_FIELD = 33  # see docs/efficientad.md for the layer-by-layer derivation


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int
    crop: int  # PDN input side in pixels; the backbone sees 2 * crop
    lr: float


#: The paper pretrains its PDN for many thousands of iterations on ImageNet; a GPU can afford that.
GPU_SCHEDULE = Schedule(steps=60_000, batch_size=16, crop=256, lr=1e-4)
#: What fits in ~20 minutes on a 2-core CPU (measured: see docs/efficientad.md).
CPU_SCHEDULE = Schedule(steps=300, batch_size=8, crop=128, lr=1e-3)


def teacher_weights_path(model_size: str = "small") -> Path:
    return TEACHER_DIR / f"pdn_{model_size}.pth"


def build_pdn(model_size: str = "small", out_channels: int = TEACHER_OUT_CHANNELS, padding: bool = False) -> nn.Module:
    """anomalib's patch description network (the EfficientAD teacher's architecture)."""
    from anomalib.models.image.efficient_ad.torch_model import MediumPatchDescriptionNetwork, SmallPatchDescriptionNetwork

    if model_size == "small":
        return SmallPatchDescriptionNetwork(out_channels=out_channels, padding=padding)
    if model_size == "medium":
        return MediumPatchDescriptionNetwork(out_channels=out_channels, padding=padding)
    raise ConfigError(f"unknown EfficientAD model size '{model_size}': small or medium")


def read_teacher_state(path: str | Path, model_size: str = "small") -> dict[str, torch.Tensor]:
    """The teacher's state dict (float32) from ``path``, or :class:`WeightsMissingError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError(
            f"EfficientAD teacher weights not found at {path}: distil them with "
            f"`python -m core distill-teacher --model-size {model_size}` (or pass teacher_weights)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means the same thing to the user
        raise WeightsMissingError(
            f"cannot read EfficientAD teacher weights {path} ({type(exc).__name__}); re-create them with "
            f"`python -m core distill-teacher --model-size {model_size}`"
        ) from exc
    return {k: v.float() for k, v in state.items()}


def load_teacher(model_size: str = "small", path: str | Path | None = None) -> nn.Module:
    """A PDN with the distilled weights loaded (strict), in eval mode."""
    pdn = build_pdn(model_size)
    pdn.load_state_dict(read_teacher_state(path or teacher_weights_path(model_size), model_size), strict=True)
    return pdn.eval()


# --------------------------------------------------------------------------------------------------
# Training images
# --------------------------------------------------------------------------------------------------


def _read_folder_images(folder: Path) -> list[np.ndarray]:
    from core.data.image_io import load_image  # the one loader, as for datasets and uploads

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    return [load_image(path, max_side=None) for path in paths]


def demo_textures(n_per_category: int = 30, size: int = 256) -> list[np.ndarray]:
    """Good textures from the demo generator, drawn with :data:`TEXTURE_SEED` (cached in the workspace)."""
    from core.data.demo import generate_demo_dataset

    root = get_settings().cache_dir / "teacher_textures"
    generate_demo_dataset(
        root, n_train=n_per_category, n_test_good=0, n_per_defect=0, size=size, seed=TEXTURE_SEED, progress=False
    )
    return _read_folder_images(root)


class CropSampler:
    """Random augmented square crops from a few groups of images, as (hi-res, PDN-res) batches.

    Each crop: pick a group (uniformly), an image in it, a square region whose side is
    log-uniform between 64 px (half the short side for smaller images) and the whole short side, a rotation angle in
    [-180, 180) degrees and a mirror flip; sample it at ``2 * crop`` pixels (reflection at the
    borders, so a rotated region never shows black corners), from an image pyramid level that
    keeps bilinear sampling free of aliasing; then jitter brightness, contrast and saturation, or
    make it grey. The PDN's input is the 2x2-averaged copy at ``crop`` pixels.
    """

    def __init__(self, groups: list[list[np.ndarray]], crop: int, seed: int = 0, device: torch.device | str = "cpu") -> None:
        # The pyramids live on ``device``: on a GPU the sampling then runs there too, and the
        # distillation is not held back by per-crop resampling on the host. The random draws stay
        # on a CPU generator, so a seed gives the same crops on every device (up to float rounding).
        self.device = torch.device(device)
        self.groups = [[self._pyramid(img, self.device) for img in group] for group in groups if group]
        if not self.groups:
            raise ValueError("no training images for the teacher")
        self.crop = crop
        self.gen = torch.Generator().manual_seed(seed)

    @staticmethod
    def _pyramid(image: np.ndarray, device: torch.device) -> list[torch.Tensor]:
        level = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).to(device).permute(2, 0, 1).float().div(255.0)
        levels = [level]
        while min(level.shape[-2:]) >= 256:
            level = F.interpolate(level[None], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)[0]
            levels.append(level)
        return levels

    def _rand(self, low: float = 0.0, high: float = 1.0) -> float:
        return float(torch.empty(1).uniform_(low, high, generator=self.gen))

    def _one(self) -> torch.Tensor:
        group = self.groups[int(torch.randint(len(self.groups), (1,), generator=self.gen))]
        levels = group[int(torch.randint(len(group), (1,), generator=self.gen))]
        h, w = levels[0].shape[-2:]
        short = min(h, w)
        side = math.exp(self._rand(math.log(min(64.0, short / 2)), math.log(short)))  # log-uniform region side
        out = 2 * self.crop
        k = 0  # pyramid level: downscale by at most 2x within bilinear sampling
        while k + 1 < len(levels) and side / (2 ** (k + 1)) >= out:
            k += 1
        src = levels[k]
        hk, wk = src.shape[-2:]
        side_k = side / (2**k)
        cx = self._rand(side_k / 2, max(side_k / 2, wk - side_k / 2))
        cy = self._rand(side_k / 2, max(side_k / 2, hk - side_k / 2))
        angle = self._rand(-math.pi, math.pi)
        flip = -1.0 if self._rand() < 0.5 else 1.0
        cos, sin = math.cos(angle), math.sin(angle)
        sx, sy = side_k / wk, side_k / hk
        theta = torch.tensor(
            [[sx * cos * flip, -sx * sin, 2 * cx / wk - 1], [sy * sin * flip, sy * cos, 2 * cy / hk - 1]],
            dtype=torch.float32,
        ).to(self.device)
        grid = F.affine_grid(theta[None], [1, 3, out, out], align_corners=False)
        return F.grid_sample(src[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]

    def _jitter(self, batch: torch.Tensor) -> torch.Tensor:
        n = batch.shape[0]

        def factors(low: float, high: float) -> torch.Tensor:
            return torch.empty(n, 1, 1, 1).uniform_(low, high, generator=self.gen).to(self.device)

        weights = torch.tensor([0.299, 0.587, 0.114], device=self.device).view(1, 3, 1, 1)
        batch = batch * factors(0.6, 1.4)
        mean = (batch * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        batch = (batch - mean) * factors(0.6, 1.4) + mean
        grey = (batch * weights).sum(1, keepdim=True)
        saturation = factors(0.5, 1.5)  # drawn before the grey-scale coin, as before: same crops per seed
        saturation = saturation * (torch.rand(n, 1, 1, 1, generator=self.gen) >= 0.15).to(self.device)  # 15% grey
        return ((batch - grey) * saturation + grey).clamp_(0.0, 1.0)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hi-res batch at 2*crop for the backbone, PDN batch at crop), both RGB in [0, 1]."""
        hi = self._jitter(torch.stack([self._one() for _ in range(batch_size)]))
        return hi, F.avg_pool2d(hi, 2)


# --------------------------------------------------------------------------------------------------
# Distillation target
# --------------------------------------------------------------------------------------------------


class DistillationTarget(nn.Module):
    """EfficientNet-Lite0's PatchCore embedding, standardised and projected to 384 channels."""

    def __init__(self, out_channels: int = TEACHER_OUT_CHANNELS, seed: int = PROJECTION_SEED) -> None:
        super().__init__()
        import timm

        from core.models.backbones import load_pretrained_weights, resolve_backbone

        spec = resolve_backbone(TARGET_BACKBONE)
        self.backbone = timm.create_model(spec.timm_name, pretrained=False, features_only=True, out_indices=TARGET_OUT_INDICES)
        load_pretrained_weights(self.backbone, TARGET_BACKBONE)
        self.backbone.eval()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        in_channels = sum(self.backbone.feature_info.channels())
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(out_channels, in_channels, generator=gen) / math.sqrt(in_channels))
        self.register_buffer("in_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("in_std", torch.ones(1, in_channels, 1, 1))
        self.register_buffer("out_mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("out_std", torch.ones(1, out_channels, 1, 1))
        self.in_channels = in_channels

    @torch.no_grad()
    def embed(self, hi: torch.Tensor) -> torch.Tensor:
        """The 152-channel stride-8 PatchCore embedding of ``hi`` (RGB in [0, 1])."""
        f8, f16 = self.backbone((hi - self.mean) / self.std)
        f16 = F.interpolate(f16, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        return F.avg_pool2d(torch.cat([f8, f16], dim=1), 3, stride=1, padding=1, count_include_pad=False)

    def _project(self, emb: torch.Tensor) -> torch.Tensor:
        emb = (emb - self.in_mean) / self.in_std
        return torch.einsum("oc,bchw->bohw", self.projection, emb)

    @torch.no_grad()
    def fit_stats(self, hi_batches: list[torch.Tensor]) -> None:
        embs = torch.cat([self.embed(b) for b in hi_batches])
        self.in_mean.copy_(embs.mean(dim=(0, 2, 3), keepdim=True))
        self.in_std.copy_(embs.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))
        proj = self._project(embs)
        self.out_mean.copy_(proj.mean(dim=(0, 2, 3), keepdim=True))
        self.out_std.copy_(proj.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    @torch.no_grad()
    def forward(self, hi: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Targets for a PDN output of ``out_size`` on the half-resolution copy of ``hi``."""
        target = (self._project(self.embed(hi)) - self.out_mean) / self.out_std
        # PDN output (i, j) looks at PDN-input pixels 4i .. 4i+32, centred at 4i + 16.5 in continuous
        # coordinates; in the backbone's 2x frame that is 8i + 33, i.e. (8i + 33) / crop - 1 in
        # grid_sample's normalised [-1, 1] coordinates (align_corners=False) with hi of side 2*crop.
        side = hi.shape[-1] / 2
        idx_y = (8 * torch.arange(out_size[0], device=hi.device) + 33) / (hi.shape[-2] / 2) - 1
        idx_x = (8 * torch.arange(out_size[1], device=hi.device) + 33) / side - 1
        gy, gx = torch.meshgrid(idx_y, idx_x, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).expand(hi.shape[0], -1, -1, -1).to(target.dtype)
        return F.grid_sample(target, grid, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------------------


def _lr_at(progress: float, base: float) -> float:
    """Linear warm-up over the first 5% of the run, then cosine decay to 5% of ``base``.

    ``progress`` is the share of the run done, in [0, 1]: steps done / steps, or, under a time
    budget, the larger of that and the share of the budget spent, so a run cut by its budget still
    ends its schedule at the low learning rate instead of being stopped mid-decay.
    """
    progress = min(max(progress, 0.0), 1.0)
    if progress < 0.05:
        return base * max(progress / 0.05, 1e-3)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95)))


@torch.no_grad()
def _heldout_mse(pdn: nn.Module, heldout: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    pdn.eval()
    losses = [F.mse_loss(pdn(lo), target).item() for lo, target in heldout]
    pdn.train()
    return float(np.mean(losses))


def _resolve_schedule(
    dev: torch.device, steps: int | None, batch_size: int | None, crop: int | None, lr: float | None
) -> Schedule:
    """The run's schedule: the given values, the rest from the device's default; the crop validated."""
    default = GPU_SCHEDULE if dev.type == "cuda" else CPU_SCHEDULE
    schedule = Schedule(
        steps=steps if steps is not None else default.steps,
        batch_size=batch_size if batch_size is not None else default.batch_size,
        crop=crop if crop is not None else default.crop,
        lr=lr if lr is not None else default.lr,
    )
    if schedule.crop < 64 or schedule.crop % 4:
        raise ConfigError(f"crop must be a multiple of 4 and at least 64 px, got {schedule.crop}")
    if schedule.steps < 1 or schedule.batch_size < 1 or not schedule.lr > 0:
        raise ConfigError("steps and batch size must be at least 1 and the learning rate positive")
    return schedule


def _weights_path(out: str | Path | None, model_size: str) -> Path:
    """Where the weights go (``out`` is a folder or a ``.pth`` file); creates its folder."""
    out_path = Path(out) if out is not None else TEACHER_DIR
    weights_file = out_path if out_path.suffix == ".pth" else out_path / f"pdn_{model_size}.pth"
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    return weights_file


def _training_images(
    use_natural: bool, use_demo_textures: bool, image_dirs: list[str | Path] | None
) -> tuple[list[list[np.ndarray]], dict[str, Any]]:
    """The image groups the crops are drawn from, and their description for the provenance."""
    from core.models.efficientad.penalty_images import natural_images

    groups: list[list[np.ndarray]] = []
    sources: dict[str, Any] = {}
    if use_natural:
        natural = natural_images()
        groups.append([img for _, img in natural])
        sources["natural"] = [name for name, _ in natural]
    if use_demo_textures:
        textures = demo_textures()
        groups.append(textures)
        sources["demo_textures"] = {"count": len(textures), "seed": TEXTURE_SEED, "generator": "core.data.demo"}
    for folder in image_dirs or []:
        images = _read_folder_images(Path(folder))
        groups.append(images)
        sources.setdefault("folders", []).append({"path": str(folder), "count": len(images)})
    return groups, sources


def _fitted_target(sampler: CropSampler, batch_size: int, stat_crops: int, dev: torch.device) -> tuple[DistillationTarget, int]:
    """The target network with its normalisation fitted on fresh crops, and how many batches that took."""
    target_net = DistillationTarget().to(dev)
    n_stat_batches = max(1, stat_crops // batch_size)
    stat_batches = [sampler.sample(batch_size)[0].to(dev) for _ in range(n_stat_batches)]
    target_net.fit_stats(stat_batches)
    return target_net, n_stat_batches


def _pdn_output_size(pdn: nn.Module, crop: int, dev: torch.device) -> tuple[int, int]:
    """The PDN's output grid for a ``crop`` x ``crop`` input (where the targets are sampled)."""
    with torch.no_grad():
        return tuple(pdn(torch.zeros(1, 3, crop, crop, device=dev)).shape[-2:])  # type: ignore[return-value]


def _heldout_batches(
    groups: list[list[np.ndarray]],
    schedule: Schedule,
    seed: int,
    target_net: DistillationTarget,
    out_hw: tuple[int, int],
    dev: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """4 fixed (PDN input, target) batches from their own sampler (seed + 1), never trained on."""
    heldout_sampler = CropSampler(groups, schedule.crop, seed=seed + 1, device=dev)
    heldout = []
    for _ in range(4):
        hi, lo = heldout_sampler.sample(schedule.batch_size)
        heldout.append((lo.to(dev), target_net(hi.to(dev), out_hw)))
    return heldout


def _train_step(
    pdn: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: CropSampler,
    target_net: DistillationTarget,
    out_hw: tuple[int, int],
    batch_size: int,
    dev: torch.device,
) -> float:
    """One optimisation step on a fresh batch of crops; returns its loss."""
    hi, lo = sampler.sample(batch_size)
    hi, lo = hi.to(dev, non_blocking=True), lo.to(dev, non_blocking=True)
    target = target_net(hi, out_hw)
    loss = F.mse_loss(pdn(lo), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _train(
    pdn: nn.Module,
    sampler: CropSampler,
    target_net: DistillationTarget,
    out_hw: tuple[int, int],
    schedule: Schedule,
    dev: torch.device,
    bar_desc: str,
    progress: bool,
    time_budget_s: float | None = None,
) -> list[float]:
    """Regress the PDN onto the targets for ``schedule.steps`` steps, or until ``time_budget_s``
    seconds have passed; returns every step's loss.

    Raises :class:`RuntimeError` as soon as the loss is not finite (a diverged run is useless).
    """
    from tqdm import tqdm

    optimizer = torch.optim.Adam(pdn.parameters(), lr=schedule.lr, weight_decay=1e-5)
    losses: list[float] = []
    started = time.perf_counter()
    bar = tqdm(range(schedule.steps), desc=bar_desc, unit="step", disable=not progress)
    for step in bar:
        done = step / schedule.steps
        if time_budget_s is not None:
            spent = (time.perf_counter() - started) / time_budget_s
            if spent >= 1.0:
                break
            done = max(done, spent)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(done, schedule.lr)
        losses.append(_train_step(pdn, optimizer, sampler, target_net, out_hw, schedule.batch_size, dev))
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"distillation diverged at step {step} (loss {losses[-1]}); try a lower --lr")
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    return losses


def _save_weights(pdn: nn.Module, weights_file: Path) -> None:
    """Write the PDN's weights in float16, atomically (a temporary file, then a rename)."""
    state = {k: v.detach().to("cpu", torch.float16) for k, v in pdn.state_dict().items()}
    tmp = weights_file.with_name(weights_file.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, weights_file)


@dataclass(frozen=True)
class _Outcome:
    """What one distillation run measured, for its provenance entry."""

    wall_time_s: float
    losses: list[float]
    mse_before: float
    mse_after: float


def _loss_record(outcome: _Outcome, batch_size: int, seed: int) -> dict[str, Any]:
    """The provenance fields on training and held-out loss."""
    losses = outcome.losses
    tail = max(1, min(20, len(losses) // 10)) if losses else 0
    return {
        "first_loss": round(losses[0], 5) if losses else None,
        "final_loss": round(float(np.mean(losses[-tail:])), 5) if losses else None,
        "final_loss_definition": f"mean training loss of the last {tail} steps",
        "heldout_mse_before": round(outcome.mse_before, 5),
        "heldout_mse_after": round(outcome.mse_after, 5),
        "heldout_definition": f"4 fixed batches of {batch_size} augmented crops (sampler seed {seed + 1}), "
        "not used for training; the target has unit variance per channel, so 1 - MSE is the share of variance explained",
    }


def _target_record(stat_crops: int, in_channels: int) -> dict[str, Any]:
    """The provenance fields that describe the distillation target and its projection."""
    return {
        "target": {
            "backbone": f"{TARGET_BACKBONE} (timm tf_efficientnet_lite0, offline ImageNet weights, input mean=std=0.5)",
            "layers": "blocks.2 (stride 8, 40 ch) + blocks.4 (stride 16, 112 ch, bilinearly upsampled to stride 8)",
            "aggregation": "3x3 average pooling (PatchCore's local neighbourhood)",
            "backbone_resolution": "2x the PDN input (crop at 2*crop px; the PDN gets its 2x2 average)",
            "alignment": "bilinear grid_sample at the centres of the PDN's 33x33 receptive fields (PDN input pixel 4i+16)",
            "normalisation": "152 channels standardised, then each of the 384 projected channels standardised "
            "(mean/std over the embeddings of the first sampled batches)",
            "stat_crops": stat_crops,
        },
        "projection": {
            "type": "fixed Gaussian, N(0, 1/152)",
            "shape": [TEACHER_OUT_CHANNELS, in_channels],
            "seed": PROJECTION_SEED,
        },
    }


def _provenance_entry(
    weights_file: Path,
    pdn: nn.Module,
    schedule: Schedule,
    outcome: _Outcome,
    *,
    command: str | None,
    device: str,
    seed: int,
    target: dict[str, Any],
    sources: dict[str, Any],
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """The PROVENANCE.json entry of a freshly written teacher: file, run, losses and method."""
    return {
        "file": weights_file.name,
        "sha256": sha256_of(weights_file),
        "bytes": weights_file.stat().st_size,
        "dtype": "float16",
        "architecture": f"anomalib {type(pdn).__name__} (out_channels={TEACHER_OUT_CHANNELS}, padding=False)",
        "command": command or "core.models.efficientad.teacher.distill_teacher(...)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "wall_time_s": round(outcome.wall_time_s, 1),
        "schedule": asdict(schedule),
        "steps_done": len(outcome.losses),
        "time_budget_s": time_budget_s,
        "optimizer": "Adam (weight_decay 1e-5), linear warm-up 5% then cosine decay to 5% of lr",
        "loss": "MSE between PDN output and target, over channels and positions",
        **_loss_record(outcome, schedule.batch_size, seed),
        "teacher_input": "RGB in [0, 1]; the PDN applies ImageNet mean/std inside forward (anomalib imagenet_norm_batch)",
        **target,
        "channel_mean_std": "not stored: anomalib's EfficientAd computes the teacher's channel mean/std on each "
        "category's training images at the start of fit",
        "images": sources,
        "augmentation": "square regions with side log-uniform in [64 px, short side], sampled at 2*crop px, any rotation, mirror flip, "
        "reflection padding, brightness/contrast x U(0.6, 1.4), saturation x U(0.5, 1.5), 15% grey-scale",
        "seed": seed,
        "versions": {"torch": torch.__version__},
    }


def _write_provenance(weights_file: Path, entry: dict[str, Any]) -> None:
    """Record ``entry`` under the file's name in its folder's PROVENANCE.json, keeping other entries."""
    provenance_file = weights_file.parent / PROVENANCE_FILE
    provenance: dict[str, Any] = {}
    if provenance_file.is_file():
        try:
            provenance = json.loads(provenance_file.read_text())
        except json.JSONDecodeError:
            provenance = {}
    provenance.setdefault("files", {})[weights_file.name] = entry
    provenance_file.write_text(json.dumps(provenance, indent=2) + "\n")


def distill_teacher(
    model_size: str = "small",
    steps: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    *,
    batch_size: int | None = None,
    crop: int | None = None,
    lr: float | None = None,
    image_dirs: list[str | Path] | None = None,
    use_natural: bool = True,
    use_demo_textures: bool = True,
    seed: int = 0,
    stat_crops: int = 128,
    command: str | None = None,
    time_budget_s: float | None = None,
) -> Path:
    """Distil a PDN teacher and save it (float16) with its provenance; returns the weights file.

    ``out``: a folder (the file is ``pdn_<size>.pth`` in it) or a ``.pth`` path; default
    ``assets/teacher/``. ``image_dirs``: extra folders of PNG/JPEG images (a third group).
    Unset schedule values come from :data:`GPU_SCHEDULE` or :data:`CPU_SCHEDULE`. ``stat_crops``:
    how many crops estimate the target's normalisation statistics. ``time_budget_s``: stop after
    that many seconds of training even before ``steps`` (the learning-rate schedule follows
    whichever runs out first).
    """
    from core.inference.device import device_label, pick_device

    dev = pick_device(device)
    schedule = _resolve_schedule(dev, steps, batch_size, crop, lr)
    if time_budget_s is not None and not time_budget_s > 0:
        raise ConfigError(f"time budget must be positive, got {time_budget_s}")
    weights_file = _weights_path(out, model_size)
    if dev.type == "cuda":  # TF32 convolutions and matmuls: ample precision for a regression target
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    # The order below is the order of draws from torch's global generator (the target backbone's
    # and the PDN's initialisation): keep it, or the same seed gives another teacher.
    torch.manual_seed(seed)
    groups, sources = _training_images(use_natural, use_demo_textures, image_dirs)
    sampler = CropSampler(groups, schedule.crop, seed=seed, device=dev)
    target_net, n_stat_batches = _fitted_target(sampler, schedule.batch_size, stat_crops, dev)
    pdn = build_pdn(model_size).to(dev).train()
    out_hw = _pdn_output_size(pdn, schedule.crop, dev)
    heldout = _heldout_batches(groups, schedule, seed, target_net, out_hw, dev)
    mse_before = _heldout_mse(pdn, heldout)

    started = time.perf_counter()
    desc = f"Distilling PDN-{model_size[0].upper()} teacher"
    losses = _train(pdn, sampler, target_net, out_hw, schedule, dev, desc, progress, time_budget_s)
    outcome = _Outcome(time.perf_counter() - started, losses, mse_before, _heldout_mse(pdn, heldout))

    _save_weights(pdn, weights_file)
    target = _target_record(n_stat_batches * schedule.batch_size, target_net.in_channels)
    entry = _provenance_entry(
        weights_file, pdn, schedule, outcome,
        command=command, device=device_label(dev), seed=seed, target=target, sources=sources,
        time_budget_s=time_budget_s,
    )  # fmt: skip
    _write_provenance(weights_file, entry)
    return weights_file


def read_provenance(weights_file: str | Path) -> dict[str, Any]:
    """The PROVENANCE.json entry of ``weights_file`` (empty when there is none)."""
    weights_file = Path(weights_file)
    provenance_file = weights_file.parent / PROVENANCE_FILE
    if not provenance_file.is_file():
        return {}
    return json.loads(provenance_file.read_text()).get("files", {}).get(weights_file.name, {})
