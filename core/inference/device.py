"""Pick where models run: the GPU when torch sees one, else the CPU."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` ('cpu', 'cuda', 'auto' or None) wins when it is available."""
    if prefer and prefer != "auto":
        if prefer.startswith("cuda") and not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device) -> str:
    """A human label for metadata and the dashboard, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX): the one place Inspect asks.

    OpenVINO's own answer first (its CPU plugin lists ``BF16`` among its optimisation capabilities
    exactly where it would run bf16 by default), else the kernel's CPU flags. Without native bf16,
    bf16 arithmetic is emulated and slower than fp32, so no bf16 path is worth taking.
    """
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - no OpenVINO (optional) or no CPU plugin: read the flags
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
