"""What one batch through a whole model gives: the exported graph's outputs and the runtime's result.

One definition for both sides of an export, so the file's outputs and what the OpenVINO runtime
reads back cannot drift apart: :class:`core.export.graph.ExportGraph` returns it (its field order
is the output order, and the names, in the ONNX / OpenVINO file) and
:class:`core.inference.runtime.OpenVINOEngine` builds it from those names.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ModelOutputs(NamedTuple):
    """anomalib's normalised score and map, and Inspect's raw extras.

    Scores are B, maps Bx1xHxW; ``features`` (the patch descriptors of the same forward pass) is
    None when the runtime was not asked for them. anomalib's ``pred_label`` and ``pred_mask`` are
    not outputs: nothing in Inspect reads them (every verdict is taken from the score at the
    inspector's threshold, every contour from the map), and each output is computed and copied out
    on every call.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor
    raw_score: torch.Tensor
    raw_anomaly_map: torch.Tensor
    features: torch.Tensor | None
