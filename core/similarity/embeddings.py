"""Per-image descriptors for similar-defect search, from the trained model's own patch features
(PatchCore's memory-bank embedding, EfficientAD's teacher output), so "similar" means similar in
the space the detector judges in:

* ``global``: the mean of the patch features: the whole part, mostly its normal texture;
* ``defect``: the features pooled with weights ``(map - median(map))_+ ** 2`` from the anomaly map,
  minus the global mean: the hot region decides, not what every image of the category shares. A
  flat map has no defect to describe: ``defect`` is then the global one (cosine needs a direction).

Measured on real MVTec bottle (leave-one-out cosine top-5, anomalous queries; p@5 anomalous / same
type): global 0.711 / 0.537, map-weighted 0.921 / 0.667, map-weighted residual (this) 0.956 / 0.673.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def descriptors(patch_features: torch.Tensor, anomaly_map: np.ndarray) -> dict[str, np.ndarray]:
    """``patch_features``: D x h x w; ``anomaly_map``: H x W normalised map of the same image."""
    dims, h, w = patch_features.shape
    flat = patch_features.reshape(dims, -1).float()
    global_vec = flat.mean(dim=1)
    amap = torch.as_tensor(np.asarray(anomaly_map, dtype=np.float32))[None, None]
    weights = F.adaptive_avg_pool2d(amap, (h, w)).reshape(-1)
    weights = (weights - weights.median()).clamp_min(0) ** 2
    if float(weights.sum()) <= 1e-12:
        defect_vec = global_vec
    else:
        defect_vec = (flat * weights).sum(dim=1) / weights.sum() - global_vec
    return {"global": global_vec.numpy().astype(np.float32), "defect": defect_vec.numpy().astype(np.float32)}
