"""Probe a PDN teacher before spending hours training EfficientAD with it: kNN on its own features.

A teacher is only useful if its 33x33-patch descriptors separate defects from good surface. This
script measures that directly, PatchCore-style and without any training: the teacher's output on
every ``train/good`` image (channel-standardised, a random subset of ``--bank`` patch vectors) is the
memory bank; a test image's score is the largest distance of one of its patches to its nearest
bank vector; the printed figure is the image AUROC of those scores on the category's test set. A
randomly initialised PDN of the same shape is probed the same way as the floor: a distilled teacher
should beat it clearly. This is a diagnostic of the descriptor, not EfficientAD's accuracy (the
student never sees test images either, but it must learn to imitate the teacher first). Example::

    .venv/bin/python benchmarks/probe_teacher.py --category bottle --data-root ../shared/data/mvtec_ad
    .venv/bin/python benchmarks/probe_teacher.py --category tile --teacher /path/to/pdn_small.pth
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from core.data.image_io import load_image
from core.data.layout import check_layout, resolve_data_root
from core.models.efficientad.teacher import build_pdn, load_teacher


def _tensor(path: Path, size: int) -> torch.Tensor:
    """[0, 1] RGB at ``size`` px: what EfficientAD's pre-processor gives the teacher."""
    image = torch.tensor(load_image(path)).permute(2, 0, 1).float().div(255)[None]
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)


@torch.inference_mode()
def probe(pdn: torch.nn.Module, train: list[torch.Tensor], test: list[torch.Tensor], labels: list[int], bank_size: int) -> float:
    pdn.eval()
    device = next(pdn.parameters()).device
    bank = torch.cat([pdn(image.to(device))[0].flatten(1).T for image in train])
    mean, std = bank.mean(0), bank.std(0) + 1e-6
    keep = torch.randperm(len(bank), generator=torch.Generator().manual_seed(0))[:bank_size].to(device)
    bank = ((bank - mean) / std)[keep]
    scores = []
    for image in test:
        patches = (pdn(image.to(device))[0].flatten(1).T - mean) / std
        scores.append(float(torch.cdist(patches, bank).min(1).values.max()))
    return float(roc_auc_score(labels, scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--category", required=True)
    parser.add_argument("--data-root", help="MVTec-layout folder (default: INSPECT_DATA_ROOT or the demo data)")
    parser.add_argument("--teacher", help="teacher weights (default: assets/teacher/pdn_<size>.pth)")
    parser.add_argument("--model-size", default="small", choices=("small", "medium"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--bank", type=int, default=30_000, help="patch vectors kept in the memory bank")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    root = resolve_data_root(args.data_root)
    check_layout(root, args.category, verify_images=False)
    folder = root / args.category
    # decoded and resized once, for both networks (256 px RGB floats: ~0.8 MB an image)
    train = [_tensor(p, args.image_size) for p in sorted((folder / "train" / "good").glob("*.png"))]
    test_paths = sorted((folder / "test").glob("*/*.png"))
    test = [_tensor(p, args.image_size) for p in test_paths]
    labels = [int(p.parent.name != "good") for p in test_paths]
    torch.manual_seed(0)
    candidates = {
        "distilled teacher": load_teacher(args.model_size, args.teacher).float().to(args.device),
        "random-init PDN (floor)": build_pdn(args.model_size).to(args.device),
    }
    print(f"{args.category}: {len(train)} train/good, {len(test)} test images, {args.image_size} px, bank {args.bank:,}")
    for name, pdn in candidates.items():
        start = time.perf_counter()
        auroc = probe(pdn, train, test, labels, args.bank)
        print(f"  {name:<26} kNN image AUROC {auroc:.3f}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
