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
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.errors import DatasetError, InspectError
from core.settings import get_settings

IMAGE_SUFFIX = ".png"
#: The dataset's splits, in the order :func:`category_images` lists them.
DATASET_SPLITS: tuple[str, ...] = ("train", "test")
#: The defect type (folder name) of normal images.
GOOD = "good"
#: The label of an image of any other defect type; an image's label is GOOD or ANOMALOUS.
ANOMALOUS = "anomalous"
LABELS: tuple[str, ...] = (GOOD, ANOMALOUS)
#: Fraction of train/good held out for calibration (never used to build the model).
CALIBRATION_FRACTION = 0.2
CALIBRATION_SEED = 42


def validate_category_name(name: str) -> str:
    """``name`` if it is one plain folder name, else :class:`DatasetError`.

    A category names a folder under the dataset root *and* under the models folder: ``../x``,
    ``a/b`` or an absolute path would read or write outside them. Spaces and other printable
    characters are allowed (a factory names its own parts); separators, ``..``, a leading dot and
    control characters are not.
    """
    bad = (
        not isinstance(name, str)
        or not name
        or len(name) > 100
        or name.startswith(".")
        or any(sep in name for sep in ("/", "\\", ".."))
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    )
    if bad:
        raise DatasetError(f"invalid category name {name!r}: use one folder name, without path separators, '..' or a leading dot")
    return name


def resolve_data_root(root: str | Path | None = None) -> Path:
    """The dataset root: the argument, else ``INSPECT_DATA_ROOT``, else the generated demo data."""
    return Path(root).expanduser().resolve() if root else get_settings().data_root


def list_categories(root: str | Path | None = None) -> list[str]:
    """Categories under ``root``: sub-folders that have ``train/good``."""
    base = resolve_data_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "train" / GOOD).is_dir())


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


def _check_image(path: Path, report: LayoutReport) -> tuple[int, int]:
    """Decode ``path`` with the loader training uses; returns its (width, height).

    The same loader as training, evaluation and inspection (:func:`core.data.image_io.load_image`), so
    whatever passes ``check`` is what the model will see: a file it cannot read fails here, in
    one line, instead of minutes into training.
    """
    from core.data.image_io import load_image

    try:
        with Image.open(path) as img:
            report.modes.add(img.mode)
        rgb = load_image(path, str(path), max_side=None)
    except (UnidentifiedImageError, OSError, SyntaxError, InspectError) as exc:
        raise DatasetError(f"unreadable image {path}: {exc}") from None
    size = (int(rgb.shape[1]), int(rgb.shape[0]))
    report.image_size = report.image_size or size
    return size


def is_dataset_image(path: Path, suffixes: tuple[str, ...] = (IMAGE_SUFFIX,)) -> bool:
    """The suffix rule of the layout: a PNG (any case) is an image of the dataset."""
    return path.suffix.lower() in suffixes


def _entries(folder: Path) -> list[Path]:
    """A folder's entries, hidden ones left out, by name."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _leaf_folders(category_dir: Path, split: str) -> list[tuple[str, Path]]:
    """(defect type, folder) of one split: ``train/good``; ``test/good`` then ``test/<type>`` A-Z."""
    if split == "train":
        folder = category_dir / "train" / GOOD
        return [(GOOD, folder)] if folder.is_dir() else []
    split_dir = category_dir / split
    if not split_dir.is_dir():
        return []
    folders = sorted((p for p in split_dir.iterdir() if p.is_dir()), key=lambda p: (p.name != GOOD, p.name))
    return [(p.name, p) for p in folders]


@dataclass(frozen=True)
class CategoryImage:
    """One image of a category: its file, its split (train/test) and its defect type ('good')."""

    path: Path
    split: str
    defect_type: str

    @property
    def label(self) -> str:
        """'good' or 'anomalous', as the similarity store and the metrics call it."""
        return GOOD if self.defect_type == GOOD else ANOMALOUS


def category_images(
    root: str | Path | None,
    category: str,
    splits: tuple[str, ...] = DATASET_SPLITS,
    *,
    suffixes: tuple[str, ...] = (IMAGE_SUFFIX,),
) -> list[CategoryImage]:
    """The category's images, split by split: ``train/good``, then ``test/good`` and the defect
    types A-Z, each folder by file name; hidden files, sub-folders and other suffixes left out.

    A lenient listing (what is there); :func:`check_layout` is the strict check of the same tree.
    """
    category_dir = resolve_data_root(root) / category
    return [
        CategoryImage(path, split, defect_type)
        for split in splits
        for defect_type, folder in _leaf_folders(category_dir, split)
        for path in _entries(folder)
        if path.is_file() and is_dataset_image(path, suffixes)
    ]


def _image_files(folder: Path) -> list[Path]:
    """The images of one leaf folder (``train/good``, ``test/<type>``), or a one-line error.

    anomalib's own scan would pick up a broken link or a sub-folder named ``*.png`` and fail later
    inside a dataloader; here every entry must be a readable PNG file.
    """
    files = []
    for entry in _entries(folder):
        if entry.is_symlink() and not entry.exists():
            raise DatasetError(f"{entry} is a broken link (its target {os.readlink(entry)} does not exist)")
        if entry.is_dir():
            raise DatasetError(f"{entry} is a folder inside {folder}: that folder must hold image files only")
        if not entry.is_file():
            raise DatasetError(f"{entry} is not a regular file")
        files.append(entry)
    others = [p for p in files if not is_dataset_image(p)]
    if others:
        raise DatasetError(f"{others[0]} is not a PNG: the MVTec AD layout is PNG only ({len(others)} such file(s) in {folder})")
    return files


def _mask_of(image: Path, mask_dir: Path) -> Path:
    mask = mask_dir / f"{image.stem}_mask{IMAGE_SUFFIX}"
    if mask.is_symlink() and not mask.exists():
        raise DatasetError(f"the mask {mask} of {image} is a broken link")
    if not mask.is_file():
        raise DatasetError(f"defect image {image} has no mask (expected {mask})")
    return mask


def check_layout(root: str | Path | None, category: str, *, verify_images: bool = True) -> LayoutReport:
    """Check one category's layout and return its counts, or raise :class:`DatasetError`.

    ``verify_images`` decodes every image and mask with the training loader and checks that each
    mask has its image's size (evaluation, which reads images the training already read, skips it).
    """
    category = validate_category_name(category)
    base = resolve_data_root(root)
    if not base.is_dir():
        raise DatasetError(f"dataset root {base} does not exist (set --data-root or INSPECT_DATA_ROOT)")
    cat = base / category
    if not cat.is_dir():
        found = ", ".join(list_categories(base)) or "none"
        raise DatasetError(f"category '{category}' not found in {base} (categories found: {found})")
    report = LayoutReport(root=base, category=category)
    train_good = cat / "train" / GOOD
    if not train_good.is_dir():
        raise DatasetError(f"{train_good} is missing: training needs the good images there")
    train_files = _image_files(train_good)
    if not train_files:
        raise DatasetError(f"{train_good} is empty: training needs good images")
    report.counts["train/good"] = len(train_files)
    test_dir = cat / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir} is missing: evaluation needs test/good and test/<defect> folders")
    test_files: list[Path] = []
    masks: dict[Path, Path] = {}
    for defect_type, sub in _leaf_folders(cat, "test"):
        files = _image_files(sub)
        if not files:
            raise DatasetError(f"{sub} is an empty folder")
        report.counts[f"test/{defect_type}"] = len(files)
        test_files += files
        if defect_type == GOOD:
            continue
        report.defect_types.append(defect_type)
        masks.update({image: _mask_of(image, cat / "ground_truth" / defect_type) for image in files})
    if not test_files:
        raise DatasetError(f"{test_dir} holds no image folders")
    if verify_images:
        sizes = {path: _check_image(path, report) for path in train_files + test_files}
        for image, mask in masks.items():
            mask_size = _check_image(mask, LayoutReport(root=base, category=category))
            if mask_size != sizes[image]:
                raise DatasetError(
                    f"the mask {mask} is {mask_size[0]}x{mask_size[1]} px but its image {image} is "
                    f"{sizes[image][0]}x{sizes[image][1]} px"
                )
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

    from core.data.anomalib_io import use_inspect_loader

    use_inspect_loader()  # anomalib's own reader turns 16-bit PNGs white (see core.data.anomalib_io)
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
