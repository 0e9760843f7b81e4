"""What this CPU can do at best: matrix-product throughput per precision and the least time a model
can take per image at it (its multiply-adds divided by that throughput).

Speed targets are only worth chasing when they are above this floor. The script measures the
throughput of a large matrix product (2048 x 2048 x 2048, torch's CPU kernels) in fp32 and bf16,
counts one image's multiply-adds of a trained model (convolutions and linear layers by forward
hooks; for PatchCore also the nearest-neighbour search, patches x memory bank x dimension), and
prints the floor ``2 x MACs / throughput`` beside it. Real layers (small channels, depthwise
convolutions, memory traffic) run below the large-product throughput, so a measured time at or
near the floor is as fast as that precision gets on this machine.

    INSPECT_HOME=/tmp/bench_final python benchmarks/cpu_floor.py --model patchcore --category bottle
"""

from __future__ import annotations

import argparse
import time

import torch

SIZE = 2048


def gemm_gflops(dtype: torch.dtype, repeats: int = 10) -> float:
    """Throughput of a SIZE^3 matrix product in GFLOP/s (2 FLOPs per multiply-add)."""
    a, b = torch.randn(SIZE, SIZE).to(dtype), torch.randn(SIZE, SIZE).to(dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * SIZE**3 * repeats / (time.perf_counter() - started) / 1e9


def count_macs(module: torch.nn.Module, image: torch.Tensor) -> float:
    """Multiply-adds of one forward pass through the convolutions and linear layers of ``module``."""
    total = [0.0]

    def conv(layer: torch.nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        total[0] += float(output.numel()) * per_output

    def linear(layer: torch.nn.Linear, _inputs, output: torch.Tensor) -> None:
        total[0] += float(output.numel()) * layer.in_features

    hooks = []
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d):
            hooks.append(layer.register_forward_hook(conv))
        elif isinstance(layer, torch.nn.Linear):
            hooks.append(layer.register_forward_hook(linear))
    try:
        with torch.no_grad():
            module(image)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def model_macs(model: str, category: str) -> dict[str, float]:
    """Multiply-adds of one image, per stage, for a trained model of the workspace."""
    from core.learning.versions import load_detector

    detector = load_detector(model, category, device="cpu")
    inner = detector.module.model
    size = int(detector.meta.config.get("image_size", 256))
    image = torch.rand(1, 3, size, size)
    if model == "patchcore":
        backbone = count_macs(inner.feature_extractor, image)
        with torch.no_grad():
            features = inner.feature_extractor(image)
            embedding = inner.generate_embedding({k: inner.feature_pooler(v) for k, v in features.items()})
        patches = embedding.shape[-2] * embedding.shape[-1]
        bank, dim = inner.memory_bank.shape
        return {"backbone": backbone, f"search ({patches} patches x {bank} x {dim})": float(patches * bank * dim)}
    return {
        "teacher": count_macs(inner.teacher, image),
        "student": count_macs(inner.student, image),
        "autoencoder": count_macs(inner.ae.encoder, image) + _decoder_macs(inner, image),
    }


def _decoder_macs(inner: torch.nn.Module, image: torch.Tensor) -> float:
    with torch.no_grad():
        code = inner.ae.encoder(image)
    return count_macs(_DecoderCall(inner.ae.decoder, image.shape[-2:]), code)


class _DecoderCall(torch.nn.Module):
    """anomalib's decoder needs the image size beside its input; hooks need a one-argument call."""

    def __init__(self, decoder: torch.nn.Module, size: torch.Size) -> None:
        super().__init__()
        self.decoder, self.size = decoder, size

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code, self.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["patchcore", "efficientad"], required=True)
    parser.add_argument("--category", required=True)
    args = parser.parse_args()

    peaks = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, value in peaks.items():
        print(f"  {SIZE}^3 matrix product, {name}: {value:.0f} GFLOP/s")
    stages = model_macs(args.model, args.category)
    total = sum(stages.values())
    print(f"{args.model}/{args.category}: multiply-adds per image and the floor at each throughput")
    for name, macs in {**stages, "total": total}.items():
        floors = ", ".join(f"{name_p} {2 * macs / (value * 1e9) * 1000:.1f} ms" for name_p, value in peaks.items())
        print(f"  {name:<40} {macs / 1e9:7.2f} GMAC  -> {floors}")


if __name__ == "__main__":
    main()
