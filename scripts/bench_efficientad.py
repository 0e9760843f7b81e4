"""Benchmark EfficientAD's cost per training step and per inferred image, without data or weights.

Times anomalib's ``EfficientAdModel`` itself (the networks, losses and backward pass of one
training step at batch 1, then inference at batch 1), on random inputs: the cost does not depend
on the weights' values, so this isolates what a schedule of N steps costs on a machine from data
loading and from the rest of the training loop. It answers "how many steps fit in an hour here?"
before committing to a run. Example::

    .venv/bin/python scripts/bench_efficientad.py                         # CPU, all threads, fp32
    .venv/bin/python scripts/bench_efficientad.py --threads 1 --model-size medium
    .venv/bin/python scripts/bench_efficientad.py --device cuda --steps 50

``--bf16`` runs the steps under ``torch.autocast(bfloat16)``, only to show what mixed precision
would save: Inspect trains in float32, as anomalib does.
"""

from __future__ import annotations

import argparse
import time

import torch
from anomalib.models.image.efficient_ad.torch_model import EfficientAdModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, n: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model-size", default="small", choices=("small", "medium"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--images", type=int, default=20, help="timed inference images")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (not what Inspect trains with)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = EfficientAdModel(teacher_out_channels=384, model_size=args.model_size).to(device)
    model.mean_std["mean"].data.zero_()  # as after anomalib's teacher-statistics pass
    model.mean_std["std"].data.fill_(1.0)
    params = list(model.student.parameters()) + list(model.ae.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)  # anomalib's optimiser
    image = torch.rand(1, 3, args.image_size, args.image_size, device=device)
    penalty = torch.rand(1, 3, args.image_size, args.image_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step() -> None:
        optimizer.zero_grad()
        with autocast:
            loss_st, loss_ae, loss_stae = model(image, penalty)
        (loss_st + loss_ae + loss_stae).float().backward()
        optimizer.step()

    model.train()
    step_times = timed(train_step, args.steps, 2, device)

    model.eval()

    @torch.inference_mode()
    def infer() -> None:
        with autocast:
            model(image)

    infer_times = timed(infer, args.images, 3, device)
    step_s = sorted(step_times)[len(step_times) // 2]
    infer_ms = 1000 * sorted(infer_times)[len(infer_times) // 2]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"EfficientAD-{args.model_size[0].upper()} at {args.image_size} px on {where}, {'bf16 autocast' if args.bf16 else 'fp32'}"
    )
    print(
        f"  training step (batch 1): median {step_s:.3f} s over {args.steps} -> {3600 / step_s:,.0f} steps/hour, "
        f"70,000 steps in {70_000 * step_s / 3600:.1f} h"
    )
    print(f"  inference (batch 1): median {infer_ms:.1f} ms/image over {args.images}")


if __name__ == "__main__":
    main()
