"""Robust loading of uploaded and dataset images.

:func:`load_image` is the single door through which an image enters Inspect. Whatever the file is,
the caller gets back an RGB ``uint8`` array of shape ``(H, W, 3)`` or an :class:`ImageError` whose
one-line message says what is wrong. The decisions, in one place:

* **Formats.** PNG, JPEG, BMP and TIFF only (:data:`SUPPORTED_FORMATS`). Anything else, a text
  file renamed ``.png`` included, is "not an image file Inspect can read".
* **Truncation.** The pixels are decoded in full (``Image.load()``) before anything else, so a
  file cut short fails here with a message that says so, not later inside the model. PIL's global
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone: half an image must never be inspected as if it
  were a whole one (the missing half would be grey and look like a defect, or hide one).
* **16-bit grayscale** (modes ``I;16*``, ``I``, ``F``): scaled to 8 bits by the *bit depth*, never
  by the image's own min-max, so two images of the same part stay comparable (a per-image stretch
  would turn a uniformly dark good part into a high-contrast one). Industrial cameras either use
  the full 16-bit range or store 12-bit data in 16-bit words; so if the brightest pixel is at most
  4095 the data is taken as 12-bit and divided by 4095, otherwise by 65535. (A 10-bit image comes
  out darker than it could; that is the price of never guessing from the content beyond this one
  rule.) 32-bit float images with values in [0, 1] are taken as already normalised. 16-bit
  *colour* images are reduced by Pillow itself to their high byte, i.e. scaled by 65535; the
  12-bit rule applies to grayscale only.
* **Transparency** (RGBA, LA, palette images with a transparent colour) is composited onto
  *black*: a transparent pixel carries no measurement, and black is what the models see for
  "nothing there" (the hidden colour values under alpha 0 are arbitrary and must not leak in).
* **Other modes**: grayscale and 1-bit become 3 equal channels, CMYK and YCbCr become RGB.
* **EXIF orientation** is applied, so the image is upright as the camera or phone meant it.
* **Size.** Smaller than :data:`MIN_SIDE` px on a side is refused (the models work on 256 px
  crops; a 1x1 image is a mistake). Larger than ``max_pixels`` (default 150 MP, env
  ``INSPECT_MAX_PIXELS``) is refused from the header alone, before decoding. Anything in between
  is decoded, without PIL's decompression-bomb error, and shrunk to at most ``max_side`` (default
  8192) px on its long side: JPEGs are decoded at reduced scale directly (``Image.draft``), other
  formats are reduced by whole factors and then resampled. A tiled model (``train --tile``) judges
  the camera's own pixels, so a line camera's frame (up to 5472 x 3648, 20 MP) is kept whole.
* **Concurrency.** Decoding a 150 MP PNG holds about 1.4 GB, so at most
  ``INSPECT_MAX_LARGE_DECODES`` (default 2) images larger than ``INSPECT_LARGE_DECODE_PIXELS``
  (default 16 MP, by the header) decode at once in a process. A further one waits up to
  ``INSPECT_DECODE_WAIT_S`` (default 5 s) for a slot and then fails with :class:`BusyError`
  ("try again in a moment") rather than queueing without bound and exhausting memory. Smaller
  images never wait.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core import settings
from core.errors import BusyError, ImageError

#: File suffixes the upload widget and the dataset scanner accept.
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: PIL format names tried when opening; nothing else is even attempted.
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF")

#: Smallest accepted side in pixels.
MIN_SIDE = 16
#: Default long-side cap after loading. Untiled models resize to 256 px anyway; tiled models
#: (core/models/tiling.py) need the camera's pixels, and line cameras write up to 5472 px (20 MP)
#: and line-scan ones 8K: those are kept whole, larger ones are shrunk to bound memory.
DEFAULT_MAX_SIDE = 8192

# File signatures: a file that starts like one of our formats but cannot be opened is damaged,
# not "not an image", and the message should say so.
_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)

_NOT_AN_IMAGE = "{name} is not an image file Inspect can read (PNG, JPEG, BMP or TIFF)"

# Serialises the rare temporary change of PIL's module-level pixel limit (see _open).
_PIL_LIMIT_LOCK = threading.Lock()

BUSY_MESSAGE = "Inspect is busy decoding other large images; try again in a moment"

# The slots for large decodes: (size it was made with, semaphore). Rebuilt when the configured
# size changes; a decode releases the semaphore object it acquired, so a rebuild never miscounts.
_LARGE_SLOTS: tuple[int, threading.BoundedSemaphore] | None = None
_LARGE_SLOTS_LOCK = threading.Lock()


def _large_decode_slots() -> threading.BoundedSemaphore:
    """The process-wide semaphore for large decodes, sized by ``INSPECT_MAX_LARGE_DECODES``."""
    global _LARGE_SLOTS
    size = settings.max_large_decodes()
    with _LARGE_SLOTS_LOCK:
        if _LARGE_SLOTS is None or _LARGE_SLOTS[0] != size:
            _LARGE_SLOTS = (size, threading.BoundedSemaphore(size))
        return _LARGE_SLOTS[1]


@contextmanager
def large_decode_slot(pixels: int) -> Iterator[None]:
    """Hold a large-decode slot while an image of ``pixels`` decodes (no-op for small images).

    Waits at most ``INSPECT_DECODE_WAIT_S`` and then raises :class:`BusyError`: a request that
    fails fast with "try again" is better than a pile of 1.4 GB decodes that takes the server down.
    """
    if pixels <= settings.large_decode_pixels():
        yield
        return
    slots = _large_decode_slots()
    if not slots.acquire(timeout=settings.decode_wait_s()):
        raise BusyError(BUSY_MESSAGE)
    try:
        yield
    finally:
        slots.release()


def sha256_of(data: bytes | bytearray | memoryview | str | Path) -> str:
    """Hex SHA-256 of bytes, or of a file's bytes (read in 1 MiB chunks).

    The one hash of Inspect's files: an upload's identity in the history and the similarity store,
    a checkpoint's and a teacher weights file's checksum.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(data, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_image(
    source: bytes | bytearray | memoryview | Path | str,
    name: str = "",
    *,
    max_side: int | None = DEFAULT_MAX_SIDE,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode ``source`` (file bytes or a path) into an upright RGB ``uint8`` array ``(H, W, 3)``.

    ``name`` is used in error messages (defaults to the file name for paths). ``max_side`` caps the
    long side of the result (``None``: keep full size); ``max_pixels`` overrides
    ``INSPECT_MAX_PIXELS``. Raises :class:`ImageError` for anything that is not a complete,
    sensible PNG/JPEG/BMP/TIFF image; see the module docstring for every rule.
    """
    fp, head, name = _open_source(source, name)
    limit = max_pixels if max_pixels is not None else settings.max_pixels()
    looks_like_image = head.startswith(_SIGNATURES)
    try:
        return _open_and_decode(fp, name, limit, max_side, looks_like_image)
    except Image.DecompressionBombError as exc:
        _refuse_over_limit(exc, name, limit)
    return _decode_above_pil_limit(fp, name, limit, max_side, looks_like_image)


def _open_source(source: bytes | bytearray | memoryview | Path | str, name: str) -> tuple[Path | io.BytesIO, bytes, str]:
    """(what PIL opens, the first 16 bytes, the name for messages); a missing, unreadable or empty source is refused."""
    if isinstance(source, str):
        source = Path(source)
    if isinstance(source, Path):
        name = name or source.name
        if not source.is_file():
            raise ImageError(f"{name} does not exist or is not a file ({source})")
        try:
            with source.open("rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise ImageError(f"{name} could not be read: {exc.strerror or exc}") from None
        return source, head, name
    data = bytes(source)
    name = name or "The uploaded file"
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    return io.BytesIO(data), data[:16], name


def _refuse_over_limit(exc: Image.DecompressionBombError, name: str, limit: int) -> None:
    """Raise :class:`ImageError` if PIL's decompression-bomb error reports more pixels than ``limit``.

    PIL refuses images above 2 x Image.MAX_IMAGE_PIXELS (~179 MP), in open() or, for TIFF strips,
    in load(). Only an image within *our* limit goes on to :func:`_decode_above_pil_limit`.
    """
    pixels = _pixels_in(str(exc))
    if pixels is not None and pixels > limit:
        raise ImageError(
            f"{name} is {pixels / 1e6:.1f} megapixels, larger than the limit of "
            f"{limit / 1e6:g} megapixels (set INSPECT_MAX_PIXELS to raise it)"
        ) from None


def _decode_above_pil_limit(
    fp: Path | io.BytesIO, name: str, limit: int, max_side: int | None, looks_like_image: bool
) -> np.ndarray:
    """Decode again with PIL's module-global pixel limit lifted to ``limit``: briefly, under a lock, then restored.

    This path only exists when INSPECT_MAX_PIXELS is set above ~179 MP. LOAD_TRUNCATED_IMAGES is
    never touched.
    """
    if isinstance(fp, io.BytesIO):
        fp.seek(0)
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(limit, saved or 0)
        try:
            return _open_and_decode(fp, name, limit, max_side, looks_like_image)
        except Image.DecompressionBombError:
            raise ImageError(
                f"{name} is larger than the limit of {limit / 1e6:g} megapixels (set INSPECT_MAX_PIXELS to raise it)"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pixels_in(message: str) -> int | None:
    """The pixel count PIL's DecompressionBombError message reports, if it can be found."""
    match = re.search(r"\((\d+) pixels\)", message)
    return int(match.group(1)) if match else None


def _open_and_decode(fp: Path | io.BytesIO, name: str, limit: int, max_side: int | None, looks_like_image: bool) -> np.ndarray:
    """Open with PIL (a damaged file and a non-image told apart), then decode holding a large-decode slot."""
    try:
        with warnings.catch_warnings():
            # We enforce our own limit right after opening; PIL's warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=list(SUPPORTED_FORMATS))
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError):
        if looks_like_image:
            raise ImageError(
                f"{name} starts like a PNG, JPEG, BMP or TIFF file but is truncated or damaged before its pixel data"
            ) from None
        raise ImageError(_NOT_AN_IMAGE.format(name=name)) from None
    try:
        pixels = img.size[0] * img.size[1]  # from the header: nothing is decoded yet
        # An image over the limit is refused at once by _decode; it must not wait for a slot.
        with large_decode_slot(pixels if pixels <= limit else 0):
            return _decode(img, name, limit, max_side)
    finally:
        img.close()


def _decode(img: Image.Image, name: str, limit: int, max_side: int | None) -> np.ndarray:
    """Size checks, the full decode, EXIF orientation, then 8 bits, the ``max_side`` cap and RGB."""
    _check_size(img, name, limit)
    _load_pixels(img, name, max_side)
    img = _upright(img)
    img = _to_8bit(img, name)
    if max_side is not None and max(img.size) > max_side:
        # thumbnail() reduces by whole factors first (reducing_gap) and then resamples: fast and
        # antialiased. It keeps the aspect ratio and never enlarges.
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return _to_rgb(img, name)


def _check_size(img: Image.Image, name: str, limit: int) -> None:
    """Refuse, from the header alone, an image under :data:`MIN_SIDE` px on a side or over ``limit`` pixels."""
    width, height = img.size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"{name} is {width}x{height} px; Inspect needs at least {MIN_SIDE} px on each side")
    if width * height > limit:
        raise ImageError(
            f"{name} is {width}x{height} px ({width * height / 1e6:.1f} megapixels), larger than "
            f"the limit of {limit / 1e6:g} megapixels (set INSPECT_MAX_PIXELS to raise it)"
        )


def _load_pixels(img: Image.Image, name: str, max_side: int | None) -> None:
    """Decode every pixel now (a JPEG at reduced scale if it is large), so a damaged file fails here."""
    width, height = img.size
    if max_side is not None and max(width, height) > max_side and img.format in ("JPEG", "MPO"):
        # Decode the JPEG at 1/2, 1/4 or 1/8 scale straight away (never below max_side).
        k = max_side / max(width, height)
        img.draft(None, (max(1, int(width * k)), max(1, int(height * k))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise ImageError(f"{name} is truncated or damaged: its pixel data could not be decoded in full ({exc})") from None
    except MemoryError:
        raise ImageError(f"{name} ({width}x{height} px) is too large to decode with the memory available") from None


def _upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; unchanged if that block is missing or broken."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a good image unreadable
        return img


def _to_8bit(img: Image.Image, name: str) -> Image.Image:
    """Bring every mode into one of L, LA, RGB, RGBA (still full size where possible)."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in img.info
        return img.convert("RGBA" if has_alpha else "RGB")
    if mode == "La":  # premultiplied alpha variants (rare from files)
        return img.convert("LA")
    if mode == "RGBa":
        return img.convert("RGBA")
    if mode in ("CMYK", "YCbCr", "RGBX"):
        return img.convert("RGB")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_high_depth(np.asarray(img), mode), mode="L")
    try:
        return img.convert("RGB")
    except (ValueError, OSError):
        raise ImageError(f"{name} uses the image mode {mode!r}, which Inspect cannot convert") from None


def _scale_high_depth(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float grayscale array to uint8 by its bit depth."""
    if arr.ndim != 2:  # e.g. a multi-sample mode PIL exposes oddly; keep the first plane
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)[..., 0]
    peak = float(arr.max()) if arr.size else 0.0
    if mode == "F" and peak <= 1.0:
        full = 1.0
    elif peak <= 4095:
        full = 4095.0  # 12-bit camera data stored in 16-bit words
    else:
        full = 65535.0  # full 16-bit range; 32-bit values beyond it are clipped
    # Work row blocks at a time so a 150 MP frame does not need a float64 copy of itself.
    out = np.empty(arr.shape, dtype=np.uint8)
    step = max(1, 4_000_000 // max(1, arr.shape[1]))
    for r in range(0, arr.shape[0], step):
        block = arr[r : r + step].astype(np.float32)
        np.nan_to_num(block, copy=False, nan=0.0, posinf=full, neginf=0.0)
        block *= 255.0 / full
        np.clip(block, 0.0, 255.0, out=block)
        out[r : r + step] = np.rint(block)
    return out


def _to_rgb(img: Image.Image, name: str) -> np.ndarray:
    """The contiguous ``(H, W, 3)`` uint8 array, any transparency composited onto black."""
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # pragma: no cover - defensive
        raise ImageError(f"{name} could not be converted to an RGB image (got shape {arr.shape})")
    return np.ascontiguousarray(arr)
