"""Where does an EfficientAD image score come from? AUROC of other reductions of the same maps.

anomalib's EfficientAD scores an image by the maximum of ``0.5 * map_st + 0.5 * map_ae`` (the
student-teacher and the student-autoencoder maps, each normalised by quantiles of good images).
This script scores the category's test set with that rule and with others built from the same two
maps (each map alone; the mean of the top 100 / 1,000 pixels; the mean), and prints image AUROC
overall and per defect type, and the detection / false-alarm rates at the highest held-out good
(the calibration split's goods, never the test set).

It is a diagnosis, not a model selection: reading test AUROC to pick a reduction would be tuning
on the test set. Its results: docs/benchmarks.md, "EfficientAD: where the image score is lost".

    INSPECT_HOME=/tmp/tile60 python benchmarks/diagnose_efficientad_score.py --category tile
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from core.data.image_io import load_image
from core.data.layout import defect_type_of
from core.inference.detector import Detector, to_tensor
from core.learning.profile import reference_images
from core.learning.versions import load_detector

TOP_K = (100, 1000)


def maps_of(detector: Detector, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The normalised student-teacher and student-autoencoder maps of one image (anomalib's own)."""
    image = detector.module.pre_processor(to_tensor(load_image(Path(path).read_bytes(), path)).to(detector.device))
    with torch.no_grad():
        map_st, map_ae = detector.module.model.get_maps(image, normalize=True)
    return map_st[0, 0].float().numpy(), map_ae[0, 0].float().numpy()


def reductions(map_st: np.ndarray, map_ae: np.ndarray) -> dict[str, float]:
    """Image scores from the two maps; ``combined max`` is anomalib's."""
    out: dict[str, float] = {}
    for name, values in (("combined", 0.5 * map_st + 0.5 * map_ae), ("st", map_st), ("ae", map_ae)):
        flat = np.sort(values.ravel())[::-1]
        out[f"{name} max"] = float(flat[0])
        for k in TOP_K:
            out[f"{name} top{k} mean"] = float(flat[:k].mean())
        out[f"{name} mean"] = float(flat.mean())
    return out


def main() -> None:
    from sklearn.metrics import roc_auc_score

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    detector = load_detector("efficientad", args.category, device=args.device)
    goods, test = reference_images(detector.meta.data_root, args.category)
    held = [reductions(*maps_of(detector, p)) for p in goods]
    scored = [reductions(*maps_of(detector, p)) for p, _ in test]
    labels = np.array([label for _, label in test])
    types = np.array([defect_type_of(p) for p, _ in test])
    print(f"efficientad/{args.category}: {len(test)} test images ({int(labels.sum())} defective), {len(goods)} held-out goods")
    for key in scored[0]:
        s = np.array([r[key] for r in scored])
        cut = max(r[key] for r in held)
        per_type = {
            t: round(
                float(
                    roc_auc_score(
                        np.r_[np.zeros((labels == 0).sum()), np.ones((types == t).sum())], np.r_[s[labels == 0], s[types == t]]
                    )
                ),
                3,
            )
            for t in sorted(set(types[labels == 1]))
        }
        print(
            f"{key:<20} image AUROC {roc_auc_score(labels, s):.3f} | at the highest held-out good: detection "
            f"{(s[labels == 1] > cut).mean():.2f}, false alarms {(s[labels == 0] > cut).mean():.2f} | {per_type}"
        )


if __name__ == "__main__":
    main()
