"""anomalib's Gaussian blur of the anomaly map, computed as two 1-D passes.

PatchCore's map is smoothed with a 33 x 33 Gaussian (sigma 4). anomalib convolves with the full
2-D kernel, which torch runs on the CPU through its slow im2col path: 10.7 ms of a 42 ms
prediction on bottle (2 cores). A Gaussian is the outer product of two 1-D kernels, so a
vertical then a horizontal 33-tap pass over the same reflect-padded map gives the same values to
float rounding (``tests/test_patchcore_search.py``) at a fraction of the work. Deliberate
departure from anomalib: its answer, computed faster; the kernel buffer (and so every checkpoint)
stays anomalib's.

The export records the two passes too (anomalib's export records the 2-D kernel): the factors are
computed before tracing (:meth:`SeparableGaussianBlur2d.factors`, called by
:class:`core.export.graph.ExportGraph`), because checking that a kernel is separable reads its
values, which a traced graph cannot do; under tracing the forward only uses them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from anomalib.models.components.filters.blur import GaussianBlur2d

from core.models.patchcore.search import same_tensor, tensor_key


class SeparableGaussianBlur2d(GaussianBlur2d):
    """:class:`GaussianBlur2d` whose forward runs the kernel's two 1-D factors in turn."""

    _factors: tuple[torch.Tensor, torch.Tensor] | None = None
    _factors_key: tuple | None = None

    def factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(C x 1 x H x 1, C x 1 x 1 x W) 1-D kernels whose product is the 2-D kernel; None if it is not separable."""
        kernel = self.kernel
        if not same_tensor(self._factors_key, kernel):  # the kernel itself, not its address (see search.py)
            plane = kernel[0, 0].double()
            total = plane.sum()
            vertical, horizontal = plane.sum(dim=1) / total, plane.sum(dim=0)
            separable = torch.allclose(torch.outer(vertical, horizontal), plane, rtol=0, atol=1e-7 * float(plane.abs().max()))
            same = all(torch.equal(kernel[c], kernel[0]) for c in range(kernel.shape[0]))
            factors = (
                (
                    vertical.to(kernel.dtype).view(1, 1, -1, 1).expand(kernel.shape[0], -1, -1, -1).contiguous(),
                    horizontal.to(kernel.dtype).view(1, 1, 1, -1).expand(kernel.shape[0], -1, -1, -1).contiguous(),
                )
                if separable and same
                else None
            )
            # Non-persistent buffers: an export records them as the graph's weights (a plain tensor
            # attribute is not traced as one), and the state dict stays anomalib's.
            self.register_buffer("_factor_rows", None if factors is None else factors[0], persistent=False)
            self.register_buffer("_factor_cols", None if factors is None else factors[1], persistent=False)
            self._factors = factors
            self._factors_key = tensor_key(kernel)
        return self._factors

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.padding != "same":
            factors = None
        elif _tracing():  # no data-dependent check inside a graph: the factors computed before the export, if any
            rows, cols = getattr(self, "_factor_rows", None), getattr(self, "_factor_cols", None)
            factors = None if rows is None or cols is None else (rows, cols)
        else:
            factors = self.factors()
        if factors is None:
            return super().forward(input_tensor)
        padded = F.pad(input_tensor, self.padding_shape, mode=self.border_type)
        rows = F.conv2d(padded, factors[0].to(padded.dtype), groups=self.channels)
        return F.conv2d(rows, factors[1].to(padded.dtype), groups=self.channels)


def _tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
