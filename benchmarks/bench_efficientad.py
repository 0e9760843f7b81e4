"""Seconds per EfficientAD training step, before and after each CPU saving, interleaved in one run.

Times one optimisation step at batch 1 (losses, backward, Adam) of anomalib's ``EfficientAdModel``
on random inputs, in several variants that run in turns (round 1: every variant once, round 2: ...),
so that a machine whose load changes during the run slows every variant alike:

* ``anomalib fp32``      -- anomalib's own step (``model(image, penalty)``): the "before";
* ``bf16``               -- the same under ``torch.autocast(bfloat16)``;
* ``bf16+cl``            -- plus channels-last weights and inputs;
* ``bf16+cl+fused``      -- plus one student pass for its three inputs (fast_step.py);
* ``bf16+cl+fused+cache`` -- plus the teacher cache, in its steady state (every training image
  seen once): Inspect's step on a CPU with bf16 (``fast_step=True``, ``precision=auto``);
* ``fp32+fused+cache``   -- Inspect's step where the CPU has no bf16.

The cost does not depend on the weights' values, so this isolates the step from data loading and
the rest of the loop; it also times reading one penalty image (which Inspect reads ahead in a
thread, off the step) and, for reference, one inference in fp32 and bf16. Example::

    .venv/bin/python benchmarks/bench_efficientad.py                      # CPU, torch's threads, 10 rounds
    .venv/bin/python benchmarks/bench_efficientad.py --threads 2 --rounds 20
    .venv/bin/python benchmarks/bench_efficientad.py --variants "anomalib fp32" "bf16+cl+fused+cache"
    .venv/bin/python benchmarks/bench_efficientad.py --device cuda --rounds 50
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel

from core.models.efficientad.fast_step import TeacherCache, efficientad_losses, to_channels_last

#: name -> (precision, channels_last, fused_student, teacher_cache)
VARIANTS: dict[str, tuple[str, bool, bool, bool]] = {
    "anomalib fp32": ("fp32", False, False, False),
    "bf16": ("bf16", False, False, False),
    "bf16+cl": ("bf16", True, False, False),
    "bf16+cl+fused": ("bf16", True, True, False),
    "bf16+cl+fused+cache": ("bf16", True, True, True),
    "fp32+fused+cache": ("fp32", False, True, True),
}
N_TRAIN = 4  # distinct "training images" the cache holds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def native_bf16() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX), from /proc/cpuinfo; None off Linux."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_step(name: str, base: EfficientAdModel, device: torch.device, size: int) -> Callable[[int], None]:
    """One variant: its own copy of the networks and its own Adam, as anomalib configures it."""
    precision, channels_last, fused, cached = VARIANTS[name]
    model = copy.deepcopy(base).to(device)
    if channels_last:
        to_channels_last(model)
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)  # anomalib's optimiser
    images = [torch.rand(1, 3, size, size, device=device) for _ in range(N_TRAIN)]
    penalty = torch.rand(1, 3, size, size, device=device)
    cache = TeacherCache() if cached else None
    anomalib_step = name.startswith("anomalib") or (name == "bf16")
    model.train()

    def step(i: int) -> None:
        optimizer.zero_grad()
        image = images[i % N_TRAIN]
        if anomalib_step:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                losses = model(image, penalty)
        else:
            losses = efficientad_losses(
                model,
                image,
                penalty,
                teacher_cache=cache,
                keys=[f"train-{i % N_TRAIN}"],
                fused_student=fused,
                precision=precision,
                channels_last=channels_last,
            )
        sum(loss.float() for loss in losses).backward()
        optimizer.step()

    return step


def penalty_read_ms(size: int, n: int = 10) -> float | None:
    """Median time to read one penalty image as anomalib's loader does (None if not prepared)."""
    try:
        from torchvision.datasets import ImageFolder
        from torchvision.transforms.v2 import CenterCrop, Compose, RandomGrayscale, Resize, ToTensor

        from core.models.efficientad.penalty_images import ensure_penalty_dir

        transform = Compose([Resize((size * 2, size * 2)), RandomGrayscale(p=0.3), CenterCrop((size, size)), ToTensor()])
        dataset = ImageFolder(ensure_penalty_dir(), transform=transform)
    except Exception as exc:  # noqa: BLE001 - a benchmark extra: report and go on
        print(f"  (penalty images not timed: {exc})")
        return None
    times = []
    for i in range(n):
        start = time.perf_counter()
        dataset[i]
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def inference_ms(base: EfficientAdModel, device: torch.device, size: int, n: int, precision: str) -> float:
    """Median ms of one inference (batch 1, eval mode) in fp32 or under bf16 autocast."""
    model = copy.deepcopy(base).to(device).eval()
    image = torch.rand(1, 3, size, size, device=device)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(n + 2):
            _sync(device)
            start = time.perf_counter()
            model(image)
            _sync(device)
            if i >= 2:  # two warm-up calls
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model-size", default="small", choices=("small", "medium"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per variant, taken in turns")
    parser.add_argument("--warmup", type=int, default=N_TRAIN, help="untimed steps per variant (fills the cache)")
    parser.add_argument("--images", type=int, default=10, help="timed inferences per precision (0: none)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = EfficientAdModel(teacher_out_channels=384, model_size=args.model_size)
    base.mean_std["mean"].data.zero_()  # as after anomalib's teacher-statistics pass
    base.mean_std["std"].data.fill_(1.0)
    steps = {name: make_step(name, base, device, args.image_size) for name in args.variants}
    for step in steps.values():
        for i in range(args.warmup):
            step(i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step(args.warmup + r)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    bf16 = native_bf16() if device.type == "cpu" else None
    print(
        f"EfficientAD-{args.model_size[0].upper()} training step at {args.image_size} px, batch 1, on {where}"
        + (f" (native bf16: {'yes' if bf16 else 'no'})" if bf16 is not None else "")
        + f"; median of {args.rounds} interleaved rounds"
    )
    first = args.variants[0]
    reference = statistics.median(times[first])
    print(f"  {'variant':<22}{'s/step':>9}{'p90':>9}{'speed-up':>10}{'steps/hour':>12}")
    for name, values in times.items():
        median = statistics.median(values)
        p90 = sorted(values)[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"  {name:<22}{median:>9.3f}{p90:>9.3f}{reference / median:>9.2f}x{3600 / median:>12,.0f}")
    print(f"  (speed-up against '{first}')")
    if args.images:
        for precision in ("fp32", "bf16"):
            ms = inference_ms(base, device, args.image_size, args.images, precision)
            print(f"  inference (batch 1, {precision}): median {ms:.1f} ms/image over {args.images}")
    read = penalty_read_ms(args.image_size)
    if read is not None:
        print(f"  reading one penalty image: {read:.1f} ms (Inspect reads it ahead in a thread, off the step)")


if __name__ == "__main__":
    main()
