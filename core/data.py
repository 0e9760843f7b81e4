"""Datasets in the MVTec AD layout: find them, check them, and hand them to anomalib.

Layout (MVTec AD's, which anomalib's ``MVTecAD`` datamodule reads)::

    ROOT/CATEGORY/train/good/*.png
    ROOT/CATEGORY/test/good/*.png
    ROOT/CATEGORY/test/DEFECT/*.png
    ROOT/CATEGORY/ground_truth/DEFECT/*_mask.png

anomalib silently skips what it does not expect (a JPEG, a defect image without a mask shows up
as a confusing error deep in a dataloader), so :func:`check_layout` walks the tree first and
names the problem in one line before any training starts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.errors import DatasetError
from core.settings import get_settings

IMAGE_SUFFIX = ".png"
#: Fraction of train/good held out for calibration (never used to build the model).
CALIBRATION_FRACTION = 0.2
CALIBRATION_SEED = 42


def resolve_data_root(root: str | Path | None = None) -> Path:
    """The dataset root: the argument, else ``INSPECT_DATA_ROOT``, else the generated demo data."""
    return Path(root).expanduser().resolve() if root else get_settings().data_root


def list_categories(root: str | Path | None = None) -> list[str]:
    """Categories under ``root``: sub-folders that have ``train/good``."""
    base = resolve_data_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "train" / "good").is_dir())


@dataclass
class LayoutReport:
    """What :func:`check_layout` found; ``counts`` maps 'split/type' to a number of images."""

    root: Path
    category: str
    counts: Counter = field(default_factory=Counter)
    defect_types: list[str] = field(default_factory=list)
    image_size: tuple[int, int] | None = None
    modes: set[str] = field(default_factory=set)

    @property
    def n_train(self) -> int:
        return self.counts["train/good"]

    @property
    def n_test(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("test/"))


def _check_image(path: Path, report: LayoutReport) -> None:
    try:
        with Image.open(path) as img:
            img.verify()  # catches truncated and corrupt files without a full decode
        with Image.open(path) as img:
            report.modes.add(img.mode)
            report.image_size = report.image_size or img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"unreadable image {path}: {exc}") from exc


def _pngs(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    others = [p for p in files if p.suffix.lower() != IMAGE_SUFFIX]
    if others:
        raise DatasetError(
            f"{others[0]} is not a PNG: the MVTec AD layout is PNG only ({len(others)} such file(s) in {folder})"
        )
    return files


def check_layout(root: str | Path | None, category: str, *, verify_images: bool = True) -> LayoutReport:
    """Check one category's layout and return its counts, or raise :class:`DatasetError`."""
    base = resolve_data_root(root)
    if not base.is_dir():
        raise DatasetError(f"dataset root {base} does not exist (set --data-root or INSPECT_DATA_ROOT)")
    cat = base / category
    if not cat.is_dir():
        found = ", ".join(list_categories(base)) or "none"
        raise DatasetError(f"category '{category}' not found in {base} (categories found: {found})")
    report = LayoutReport(root=base, category=category)
    train_good = cat / "train" / "good"
    if not train_good.is_dir():
        raise DatasetError(f"{train_good} is missing: training needs the good images there")
    train_files = _pngs(train_good)
    if not train_files:
        raise DatasetError(f"{train_good} is empty: training needs good images")
    report.counts["train/good"] = len(train_files)
    test_dir = cat / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir} is missing: evaluation needs test/good and test/<defect> folders")
    test_files: list[Path] = []
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        files = _pngs(sub)
        if not files:
            raise DatasetError(f"{sub} is an empty folder")
        report.counts[f"test/{sub.name}"] = len(files)
        test_files += files
        if sub.name == "good":
            continue
        report.defect_types.append(sub.name)
        mask_dir = cat / "ground_truth" / sub.name
        for image in files:
            mask = mask_dir / f"{image.stem}_mask{IMAGE_SUFFIX}"
            if not mask.is_file():
                raise DatasetError(f"defect image {image} has no mask (expected {mask})")
    if not test_files:
        raise DatasetError(f"{test_dir} holds no image folders")
    if verify_images:
        for path in train_files + test_files:
            _check_image(path, report)
    return report


def file_list_hash(root: str | Path | None, category: str) -> str:
    """A short hash of the category's file names and sizes: metadata records what was trained on."""
    cat = resolve_data_root(root) / category
    digest = hashlib.sha256()
    for path in sorted(cat.rglob(f"*{IMAGE_SUFFIX}")):
        digest.update(f"{path.relative_to(cat)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def defect_type_of(image_path: str | Path) -> str:
    """MVTec stores the defect type as the parent folder name ('good' for normal images)."""
    return Path(image_path).parent.name


def make_datamodule(
    root: str | Path | None,
    category: str,
    *,
    train_batch_size: int = 8,
    eval_batch_size: int = 8,
    num_workers: int = 0,
    calibration: bool = True,
):
    """anomalib's ``MVTecAD`` datamodule, with calibration kept off the test set.

    anomalib's default validation split is ``same_as_test``: the thresholds and normalisation
    would be fitted on the very images the metrics are reported on, which flatters F1. Inspect
    uses anomalib's ``synthetic`` split instead: 20% of ``train/good`` is held out of the memory
    bank / training, and half of those get Perlin-noise synthetic defects (with masks). The
    thresholds are fitted on that set, so no test image influences them. ``calibration=False``
    (evaluation) skips making that split.
    """
    from anomalib.data import MVTecAD

    from core.anomalib_io import use_inspect_loader

    use_inspect_loader()  # anomalib's own reader turns 16-bit PNGs white (see core.anomalib_io)
    base = resolve_data_root(root)
    datamodule = MVTecAD(
        root=base,
        category=category,
        train_batch_size=train_batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
        val_split_mode="synthetic" if calibration else "none",
        val_split_ratio=CALIBRATION_FRACTION,
        seed=CALIBRATION_SEED,
    )
    return datamodule
