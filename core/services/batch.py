"""Many images at once: the folder command (``python -m core inspect``) and the Inspect page's batch.

Both judge images through :func:`core.services.inspection.inspect_images` (one forward pass per
batch, the history record and the similar-defect index) and report one row per file with the
same columns (:data:`CSV_COLUMNS`), written through :mod:`core.csv_safety`. A file that cannot be
read is a row with its one-line error, never the end of the run: on a production line one bad
frame must not hide the verdicts of the others.

The folder command reads and decodes files in a background thread while the caller's thread
runs the model, through a bounded queue, so a folder of any size holds only a few decoded images
in memory and the model never waits for the disk longer than it must.
"""

from __future__ import annotations

import csv
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import numpy as np

from core.csv_safety import csv_text, safe_cell, safe_row
from core.data.image_io import SUPPORTED_EXTENSIONS, load_image, sha256_of
from core.errors import BusyError, ImageError, InspectError
from core.services import catalog, history_view, inspection

if TYPE_CHECKING:
    from core.history import History
    from core.inference.detector import Detector
    from core.inference.overlay import Region

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_BATCH_SIZE",
    "BatchReport",
    "Decoded",
    "batches",
    "csv_of",
    "decode",
    "decoded_in_background",
    "JudgedBy",
    "failed_row",
    "find_images",
    "ImageFile",
    "overlay_names",
    "inspect_decoded",
    "inspect_paths",
    "read_file",
    "result_row",
    "run_folder",
    "thumbnail_uri",
    "verdict_row",
]

#: The columns of a batch's CSV (the folder command's ``--csv`` and the page's download), in order.
CSV_COLUMNS: tuple[str, ...] = (
    "file",
    "sha256",
    "category",
    "model",
    "model version",
    "score",
    "raw score",
    "threshold",
    "verdict",
    "defect area share",
    "defect regions",
    "top region (x y w h)",
    "inference ms",
    "inspection id",
    "error",
)
#: Images per forward pass: large enough to use a GPU well, small enough for a CPU's memory.
DEFAULT_BATCH_SIZE = 8
#: Overlay opacity of the folder command's PNGs (the page's slider starts there too).
OVERLAY_OPACITY = 0.5


# --- Reading --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """One file after the loader: its RGB image and SHA-256, or the one-line reason it has none."""

    name: str
    image: np.ndarray | None = None
    sha256: str | None = None
    error: str | None = None
    retry: bool = False  # the loader was busy: the same file can succeed moments later


def decode(data: bytes, name: str) -> Decoded:
    """Decode ``data`` with the one loader; an unreadable file is a :class:`Decoded` with its error."""
    sha = sha256_of(data) if data else None
    try:
        image = load_image(data, name)
    except ImageError as exc:
        return Decoded(name, sha256=sha, error=str(exc), retry=isinstance(exc, BusyError))
    return Decoded(name, image=image, sha256=sha)


class ImageFile(NamedTuple):
    """A file to judge: where it is, and the name its row and history record carry.

    The name is the path as the user typed it when that was relative; for an absolute argument it
    starts at the folder the argument named (``/srv/line3/parts`` gives ``parts/a/001.png``), so no
    server path reaches the history, its CSV export or the API.
    """

    path: Path
    name: str


def read_file(file: ImageFile) -> Decoded:
    """Read and decode one file; an entry that cannot be read (a folder, a dangling or looping link) is a row."""
    try:
        data = file.path.read_bytes()
    except OSError as exc:
        return Decoded(file.name, error=f"{file.name} could not be read: {exc.strerror or exc}")
    return decode(data, file.name)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _images_under(folder: Path) -> list[Path]:
    """Entries named like images under ``folder`` at any depth (hidden ones skipped), sorted.

    Not only regular files: a dangling or looping link, or a folder called ``x.png``, is listed too
    and becomes a row saying why it could not be read, so the count matches what the user sees.
    """
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS and not _is_hidden(p, folder))


def _named(paths: list[Path], pattern: str, root: Path) -> list[ImageFile]:
    if not Path(pattern).is_absolute():
        return [ImageFile(p, str(p)) for p in paths]
    return [ImageFile(p, p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name) for p in paths]


def _expand(pattern: str) -> list[ImageFile]:
    path = Path(pattern)
    if path.is_dir():
        return _named(_images_under(path), pattern, path.parent)
    if path.is_file() or path.is_symlink():
        return _named([path], pattern, path.parent)  # named explicitly: the loader says why it cannot be read
    if not any(ch in pattern for ch in "*?["):
        raise InspectError(f"{pattern}: no such file or folder")
    import glob

    static = Path(*[part for part in _until_wildcard(path.parts)])
    found: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        p = Path(match)
        if p.is_dir() and p.suffix.lower() not in SUPPORTED_EXTENSIONS:
            found.extend(_images_under(p))
        elif p.suffix.lower() in SUPPORTED_EXTENSIONS:
            found.append(p)
    return _named(found, pattern, static.parent)


def _until_wildcard(parts: Sequence[str]) -> Iterator[str]:
    """The leading parts of a glob pattern before its first wildcard."""
    for part in parts:
        if any(ch in part for ch in "*?["):
            return
        yield part


def find_images(patterns: Sequence[str]) -> list[ImageFile]:
    """The images named by ``patterns`` (files, folders searched recursively, globs), each once."""
    found: dict[Path, ImageFile] = {}
    for pattern in patterns:
        for file in _expand(pattern):
            found.setdefault(file.path, file)
    if not found:
        raise InspectError(f"no images found in {' '.join(patterns)} (looked for {', '.join(SUPPORTED_EXTENSIONS)})")
    return list(found.values())


_DONE = object()


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless the consumer has stopped; False when it has."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def decoded_in_background(files: Sequence[ImageFile], *, queue_size: int = 2 * DEFAULT_BATCH_SIZE) -> Iterator[Decoded]:
    """:func:`read_file` of each file, read ahead by a background thread.

    The queue holds at most ``queue_size`` decoded images, so memory stays bounded however many
    files there are. Stopping early (an error, Ctrl-C) stops the reader too.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
    stop = threading.Event()

    def work() -> None:
        outcome: object = _DONE
        try:
            for file in files:
                if not _put(q, read_file(file), stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - a bug in reading: raised again in the consumer's thread
            outcome = exc
        _put(q, outcome, stop)

    reader = threading.Thread(target=work, name="inspect-reader", daemon=True)
    reader.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


def batches(items: Iterable[Decoded], size: int) -> Iterator[list[Decoded]]:
    """``items`` in lists of at most ``size``."""
    chunk: list[Decoded] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- Judging ------------------------------------------------------------------------------------


def inspect_decoded(
    detector: Detector,
    items: Sequence[Decoded],
    *,
    threshold: float = inspection.CALIBRATED,
    history: History | None = None,
    record: bool = True,
    defect_type: str | None = None,
) -> list[inspection.Inspected | Decoded]:
    """Judge the readable ``items`` in one pass; unreadable ones come back as they are, in order."""
    readable = [d for d in items if d.error is None]
    judged: dict[int, inspection.Inspected | Decoded] = {}
    if readable:
        batch = [(d.name, d.image, d.sha256) for d in readable]
        results = inspection.inspect_images(
            detector, batch, threshold=threshold, history=history, record=record, defect_type=defect_type
        )
        judged = {id(d): r for d, r in zip(readable, results, strict=True)}
    return [judged.get(id(d), d) for d in items]


# --- Rows ---------------------------------------------------------------------------------------


class JudgedBy(NamedTuple):
    """Which model version of which category judged a row."""

    category: str
    model: str
    model_version: str

    @classmethod
    def of(cls, detector: Detector) -> JudgedBy:
        return cls(detector.meta.category, detector.meta.model, detector.version)


def verdict_row(
    file: str,
    sha256: str | None,
    by: JudgedBy,
    judgement: inspection.Judgement | None = None,
    defect_area: float | None = None,
    inspection_id: int | None = None,
    error: str | None = None,
    regions: Sequence[Region] | None = None,
) -> dict[str, Any]:
    """One CSV row (keys = :data:`CSV_COLUMNS`); the verdict columns are empty without a judgement.

    ``regions``: the defect regions in image pixels, highest first; the row gives their count and
    the highest one's box, where an inspector looks first on a large frame.
    """
    j = judgement
    top = regions[0] if regions else None
    return {
        "file": file,
        "sha256": sha256,
        "category": by.category,
        "model": by.model,
        "model version": by.model_version,
        "score": j.score if j else None,
        "raw score": j.raw_score if j else None,
        "threshold": j.threshold if j else None,
        "verdict": j.verdict if j else None,
        "defect area share": defect_area,
        "defect regions": len(regions) if regions is not None else None,
        "top region (x y w h)": f"{top.x} {top.y} {top.width} {top.height}" if top is not None else None,
        "inference ms": round(j.latency_ms, 2) if j else None,
        "inspection id": inspection_id,
        "error": error,
    }


def result_row(result: inspection.Inspected, by: JudgedBy, error: str | None = None) -> dict[str, Any]:
    """The row of one judged image (its own model version: the one that judged it)."""
    by = by._replace(model_version=result.model_version)
    return verdict_row(
        result.file_name,
        result.sha256,
        by,
        result.judgement,
        result.defect_area,
        result.inspection_id,
        error,
        regions=result.regions,
    )


def failed_row(item: Decoded, by: JudgedBy) -> dict[str, Any]:
    """The row of a file that could not be judged: its error, no verdict."""
    return verdict_row(item.name, item.sha256, by, error=item.error)


def csv_of(rows: Iterable[dict[str, Any]]) -> str:
    """The CSV text of ``rows`` (formula-safe cells, see :mod:`core.csv_safety`)."""
    return csv_text(CSV_COLUMNS, rows)


def thumbnail_uri(image: np.ndarray, size: int = 96) -> str:
    """A small JPEG data URI of a decoded image, for a table's image column."""
    import base64
    import io

    from PIL import Image

    img = Image.fromarray(image)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# --- The folder command -------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What a folder run did: counts, time, and the notes worth saying once (not once per image)."""

    images: int = 0
    defects: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: dict[str, None] = field(default_factory=dict)  # ordered set

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return f"{self.images} images, {self.defects} DEFECT, {self.failed} failed, {self.rate:.1f} images/s"


def overlay_names(files: Sequence[ImageFile]) -> dict[str, str]:
    """A PNG name for each file's overlay: its path below the files' common folder, flattened.

    ``test/crack/000.png`` and ``test/good/000.png`` become ``crack_000_overlay.png`` and
    ``good_000_overlay.png`` (MVTec folders repeat file names); a clash left after that is numbered.
    """
    if not files:
        return {}
    import os

    root = Path(os.path.commonpath([f.path.absolute().parent for f in files]))
    names: dict[str, str] = {}
    used: set[str] = set()
    for path, shown in files:
        parts = path.absolute().relative_to(root).with_suffix("").parts
        stem = "_".join(inspection.file_stem(part) for part in parts)
        name = next(n for i in range(1, len(files) + 2) if (n := f"{stem}{f'_{i}' if i > 1 else ''}_overlay.png") not in used)
        used.add(name)
        names[shown] = name
    return names


def _write_overlay(folder: Path, result: inspection.Inspected, name: str) -> str | None:
    """Write the heatmap overlay PNG of ``result``; the error, if it could not be written."""
    from core.files import write_atomically

    target = folder / name
    try:
        write_atomically(target, inspection.overlay_png(result.image, result.prediction, OVERLAY_OPACITY))
    except OSError as exc:
        return f"overlay not written to {target}: {exc.strerror or exc}"
    return None


def _rows_of_batch(
    outcomes: list[inspection.Inspected | Decoded],
    *,
    detector: Detector,
    overlays: Path | None,
    names: dict[str, str],
    report: BatchReport,
) -> Iterator[dict[str, Any]]:
    by = JudgedBy.of(detector)
    for outcome in outcomes:
        report.images += 1
        if isinstance(outcome, Decoded):
            report.failed += 1
            yield failed_row(outcome, by)
            continue
        error = _write_overlay(overlays, outcome, names[outcome.file_name]) if overlays is not None else None
        report.failed += error is not None
        report.defects += outcome.judgement.verdict == "DEFECT"
        report.notes.update(dict.fromkeys(outcome.notes))
        yield result_row(outcome, by, error)


def inspect_paths(
    detector: Detector,
    paths: Sequence[ImageFile],
    on_row: Callable[[dict[str, Any]], None],
    *,
    threshold: float = inspection.CALIBRATED,
    history: History | None = None,
    record: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overlays: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchReport:
    """Judge every file of ``paths`` in batches and hand each row to ``on_row`` as soon as it is known.

    ``progress(done, total)`` is called after each batch (the command line draws its bar from it).
    """
    report = BatchReport()
    names = overlay_names(paths) if overlays is not None else {}
    started = time.perf_counter()
    done = 0
    for chunk in batches(decoded_in_background(paths, queue_size=2 * batch_size), batch_size):
        outcomes = inspect_decoded(detector, chunk, threshold=threshold, history=history, record=record)
        for row in _rows_of_batch(outcomes, detector=detector, overlays=overlays, names=names, report=report):
            on_row(row)
        done += len(chunk)
        if progress is not None:
            progress(done, len(paths))
    report.seconds = time.perf_counter() - started
    return report


def _pick_model(category: str, model: str | None) -> str:
    """``model``, or the first model trained for ``category``; refuses an unknown category."""
    categories = catalog.available_categories()
    if category not in categories:
        known = ", ".join(categories) or "none: run `python -m core setup` or set INSPECT_DATA_ROOT"
        raise InspectError(f"unknown category '{category}' (known: {known})")
    if model is not None:
        return model
    trained = catalog.trained_models()
    return next((m for m in catalog.MODEL_NAMES if (m, category) in trained), catalog.MODEL_NAMES[0])


def _open_csv(path: Path) -> TextIO:
    try:
        return path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InspectError(f"cannot write the CSV {path}: {exc.strerror or exc}") from None


def _prepare_overlays(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InspectError(f"cannot create the overlay folder {folder}: {exc.strerror or exc}") from None


def run_folder(
    paths: Sequence[str],
    *,
    category: str,
    model: str | None = None,
    threshold: float = inspection.CALIBRATED,
    csv_path: str | None = None,
    overlays: str | None = None,
    record: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    runtime: str | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchReport:
    """``python -m core inspect``: judge files and folders through the one inspection path.

    Rows go to ``csv_path`` (streamed, so an interrupted run keeps what it did) and to ``on_row``.
    Usage problems raise :class:`~core.errors.InspectError` before any image is read; so does a
    CSV that cannot be written (a full disk), saying what was kept.
    """
    model = _pick_model(category, model)
    files = find_images(paths)
    overlay_dir = Path(overlays) if overlays else None
    if overlay_dir is not None:
        _prepare_overlays(overlay_dir)
    detector = inspection.load_detector(model, category, runtime)
    history, problem = history_view.open_history() if record else (None, None)
    out = _open_csv(Path(csv_path)) if csv_path else None
    try:
        report = inspect_paths(
            detector,
            files,
            _row_sink(out, on_row),
            threshold=threshold,
            history=history,
            record=history is not None,
            batch_size=batch_size,
            overlays=overlay_dir,
            progress=progress,
        )
        if out is not None:
            out.close()  # its last flush can fail too
    except OSError as exc:  # the CSV could not be written (a full disk): one line, and what is safe
        raise InspectError(_csv_failure(csv_path, exc, history is not None)) from None
    finally:
        if out is not None and not out.closed:
            _close_quietly(out)
    if problem is not None:  # said once, before what the images noted
        report.notes = {f"nothing is recorded in the history: {problem}": None} | report.notes
    return report


def _row_sink(out: TextIO | None, on_row: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None]:
    """Each row to the CSV ``out`` (formula-safe, flushed: an interrupted run keeps what it did) and to ``on_row``."""
    writer = None
    if out is not None:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([safe_cell(c) for c in CSV_COLUMNS])

    def sink(row: dict[str, Any]) -> None:
        if writer is not None:
            writer.writerow(safe_row(row, CSV_COLUMNS))
            out.flush()
        if on_row is not None:
            on_row(row)

    return sink


def _csv_failure(csv_path: str | None, exc: OSError, recorded: bool) -> str:
    import errno

    why = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    kept = "the verdicts judged so far are in the history" if recorded else "nothing was recorded (--no-record)"
    return f"cannot write the CSV {csv_path}: {why}; stopped, {kept}"


def _close_quietly(out: TextIO) -> None:
    """Close the CSV; after a failed write the close fails the same way, and that was said already."""
    try:
        out.close()
    except OSError:
        pass
