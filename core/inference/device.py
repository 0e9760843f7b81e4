"""Pick where models run: the GPU when torch sees one, else the CPU."""

from __future__ import annotations

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
