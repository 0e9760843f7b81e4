"""core.data.image_io: every kind of bad or unusual upload gives an RGB uint8 array or a clear error."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.image_io import SUPPORTED_EXTENSIONS, load_image, sha256_of
from core.errors import ImageError


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _flat_png(width: int, height: int, value: int = 128, rows: int | None = None) -> bytes:
    """An 8-bit grayscale PNG written by hand: cheap even at 12000x12000 (rows compress to nothing).

    ``rows`` < ``height`` writes only that many rows of data and stops there, without the closing
    chunk, like a file cut short: a header that promises more pixels than the file holds, which
    costs nothing to build.
    """
    row = b"\x00" + bytes([value]) * width
    comp = zlib.compressobj(1)
    data = b"".join(comp.compress(row) for _ in range(height if rows is None else rows))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
    if rows is not None:
        return head + _chunk(b"IDAT", data + comp.flush(zlib.Z_SYNC_FLUSH))
    return head + _chunk(b"IDAT", data + comp.flush()) + _chunk(b"IEND", b"")


@pytest.fixture
def rgb() -> np.ndarray:
    """A smooth colour image (so JPEG stays close to it) with a little noise."""
    yy, xx = np.mgrid[0:48, 0:64]
    base = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.int16)
    noise = np.random.default_rng(0).integers(-3, 4, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,suffix,lossless",
    [("PNG", ".png", True), ("BMP", ".bmp", True), ("TIFF", ".tif", True), ("JPEG", ".jpg", False)],
)
def test_round_trips_bytes_and_path(tmp_path: Path, rgb: np.ndarray, fmt: str, suffix: str, lossless: bool) -> None:
    data = _encode(Image.fromarray(rgb), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    path = tmp_path / f"part{suffix}"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        out = load_image(source)
        _check_rgb(out, (48, 64))
        if lossless:
            assert np.array_equal(out, rgb)
        else:
            assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 20
    assert suffix in SUPPORTED_EXTENSIONS


def test_sha256_of() -> None:
    assert sha256_of(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# --- not an image / damaged ------------------------------------------------------------------


def test_text_renamed_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is a shopping list, not a picture\n")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(err.value) == ("notes.png is not an image file Inspect can read (PNG, JPEG, BMP or TIFF)")
    with pytest.raises(ImageError, match="upload.png is not an image file"):
        load_image(path.read_bytes(), "upload.png")


def test_unsupported_format_is_refused(rgb: np.ndarray) -> None:
    with pytest.raises(ImageError, match="not an image file Inspect can read"):
        load_image(_encode(Image.fromarray(rgb), "GIF"), "anim.gif")


def test_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(b"", "empty.png")
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)  # noise: data spans the whole file
    data = _encode(Image.fromarray(noisy), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as err:
        load_image(path)
    assert "cut." in str(err.value)
    # Cut inside the header: still named as damaged, not "not an image".
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(data[:12], "head.png")


def test_truncation_not_tolerated_globally() -> None:
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- modes -----------------------------------------------------------------------------------


def test_16bit_grayscale_full_range(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16)
    arr = np.tile(ramp, (32, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = load_image(path)
    _check_rgb(out, (32, 64))
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, -1].tolist() == [255, 255, 255]
    assert np.all(out[..., 0] == out[..., 1]) and np.all(out[..., 1] == out[..., 2])
    # scaled by the bit depth, not stretched: 32768 -> 128
    mid = np.full((20, 20), 32768, np.uint16)
    assert load_image(_encode(Image.fromarray(mid), "PNG"))[0, 0, 0] == 128


def test_16bit_grayscale_12bit_data_and_no_per_image_stretch() -> None:
    dark = np.full((20, 20), 1000, np.uint16)  # <= 4095: 12-bit camera data
    out = load_image(_encode(Image.fromarray(dark), "PNG"))
    assert out[0, 0, 0] == round(1000 * 255 / 4095)
    # a flat image is not stretched to white or black
    flat = np.full((20, 20), 40000, np.uint16)
    assert load_image(_encode(Image.fromarray(flat), "TIFF"))[0, 0, 0] == round(40000 * 255 / 65535)


def test_16bit_via_opencv(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    arr = np.full((24, 24), 65535, np.uint16)
    arr[:12] = 0
    path = tmp_path / "cv.png"
    assert cv2.imwrite(str(path), arr)
    out = load_image(path)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_grayscale_to_three_channels() -> None:
    gray = np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) % 256
    out = load_image(_encode(Image.fromarray(gray.astype(np.uint8), "L"), "PNG"))
    _check_rgb(out, (20, 30))
    assert np.array_equal(out[..., 2], gray.astype(np.uint8))


def test_rgba_composited_on_black() -> None:
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:10, :, 3] = 255  # top half opaque
    rgba[10:, :, 3] = 0  # bottom half transparent (colour underneath must not leak)
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), "alpha.png")
    _check_rgb(out, (20, 20))
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[-1, -1].tolist() == [0, 0, 0]


def test_palette_with_transparency_and_cmyk() -> None:
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    data = _encode(pal, "PNG", transparency=1)
    assert load_image(data)[0, 0].tolist() == [0, 0, 0]
    assert load_image(_encode(pal, "PNG"))[0, 0].tolist() == [255, 0, 0]
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red
    out = load_image(_encode(cmyk, "TIFF"))
    assert out[0, 0].tolist() == [255, 0, 0]
    out = load_image(_encode(cmyk, "JPEG", quality=95))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 60


def test_exif_orientation_applied() -> None:
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape, red on the left
    arr[:, :20] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = load_image(_encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)  # now portrait
    assert out[2, 10, 0] > 200  # red now on top


# --- sizes -----------------------------------------------------------------------------------


def test_tiny_images_refused() -> None:
    with pytest.raises(ImageError) as err:
        load_image(_encode(Image.new("RGB", (1, 1)), "PNG"), "dot.png")
    assert str(err.value) == "dot.png is 1x1 px; Inspect needs at least 16 px on each side"
    with pytest.raises(ImageError, match="at least 16 px"):
        load_image(_encode(Image.new("RGB", (200, 15)), "PNG"), "strip.png")
    assert load_image(_encode(Image.new("RGB", (16, 16)), "PNG")).shape == (16, 16, 3)


def test_huge_image_decoded_and_downscaled(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_flat_png(12000, 12000, value=77))  # 144 MP: over PIL's bomb warning level
    out = load_image(path)
    from core.data.image_io import DEFAULT_MAX_SIDE

    _check_rgb(out, (DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE))  # the long side capped, camera frames kept whole
    assert out[1000, 1000].tolist() == [77, 77, 77]


def test_large_jpeg_uses_draft_and_keeps_aspect() -> None:
    img = Image.new("RGB", (4100, 2050), (10, 200, 30))
    out = load_image(_encode(img, "JPEG", quality=90), max_side=1000)
    _check_rgb(out, (500, 1000))
    assert abs(int(out[250, 500, 1]) - 200) < 8
    full = load_image(_encode(Image.new("RGB", (3000, 200)), "PNG"), max_side=None)
    assert full.shape == (200, 3000, 3)


def test_over_the_limit_refused_from_header(monkeypatch: pytest.MonkeyPatch) -> None:
    # 20000x20000 = 400 MP claimed by the header, only 2 rows of data: never decoded.
    data = _flat_png(20000, 20000, rows=2)
    with pytest.raises(ImageError) as err:
        load_image(data, "bomb.png")
    assert str(err.value) == (
        "bomb.png is 400.0 megapixels, larger than the limit of 150 megapixels (set INSPECT_MAX_PIXELS to raise it)"
    )
    data = _flat_png(12500, 12500, rows=2)  # 156 MP: within PIL's tolerance, over ours
    with pytest.raises(ImageError, match=r"12500x12500 px \(156.2 megapixels\)"):
        load_image(data, "bomb.png")
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "1000000")
    with pytest.raises(ImageError, match="2000x2000 px .* limit of 1 megapixels"):
        load_image(_flat_png(2000, 2000, rows=2), "big.png")
    assert load_image(_flat_png(1000, 1000)).shape == (1000, 1000, 3)


def test_limit_above_pil_bomb_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PIL's own error level (~179 MP) a raised INSPECT_MAX_PIXELS is honoured."""
    saved = Image.MAX_IMAGE_PIXELS
    data = _flat_png(14000, 14000, rows=2)  # 196 MP promised, 2 rows present
    with pytest.raises(ImageError, match="limit of 150 megapixels"):
        load_image(data, "big.png")
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "200000000")
    with pytest.raises(ImageError, match="could not be decoded in full"):  # past the bomb check
        load_image(data, "big.png")
    assert saved == Image.MAX_IMAGE_PIXELS


# --- concurrent large decodes ----------------------------------------------------------------


@pytest.fixture
def one_large_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """One large decode at a time, 'large' above 1 MP, and a short wait so the test is quick."""
    monkeypatch.setenv("INSPECT_MAX_LARGE_DECODES", "1")
    monkeypatch.setenv("INSPECT_LARGE_DECODE_PIXELS", "1000000")
    monkeypatch.setenv("INSPECT_DECODE_WAIT_S", "0.3")


def _hold_a_large_decode(monkeypatch: pytest.MonkeyPatch, data: bytes):
    """Start load_image(data) in a thread whose decode blocks until the returned event is set."""
    import threading

    from core.data import image_io

    entered, release = threading.Event(), threading.Event()
    real_decode = image_io._decode

    def slow_decode(img, *args, **kwargs):
        if img.size[0] * img.size[1] > 1_000_000 and not entered.is_set():
            entered.set()
            release.wait(10)
        return real_decode(img, *args, **kwargs)

    monkeypatch.setattr(image_io, "_decode", slow_decode)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.setdefault("image", load_image(data, "first.png")))
    worker.start()
    assert entered.wait(10), "the first decode never started"
    return release, worker, result


def test_large_decodes_are_limited_and_busy_is_quick(one_large_slot, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from core.errors import BusyError

    large = _flat_png(1200, 1000, value=9)  # 1.2 MP: "large" here
    release, worker, result = _hold_a_large_decode(monkeypatch, large)
    try:
        started = time.monotonic()
        with pytest.raises(BusyError) as err:
            load_image(large, "second.png")
        assert time.monotonic() - started < 2.0
        assert str(err.value) == "Inspect is busy decoding other large images; try again in a moment"
        assert isinstance(err.value, ImageError)  # the pages show it like any image error
        # Small images are not limited.
        assert load_image(_flat_png(900, 1000, value=3)).shape == (1000, 900, 3)
        # An image over the pixel limit is refused at once, not made to wait for a slot.
        monkeypatch.setenv("INSPECT_MAX_PIXELS", "1500000")
        with pytest.raises(ImageError, match="larger than the limit") as err:
            load_image(_flat_png(2000, 2000, rows=2), "bomb.png")
        assert not isinstance(err.value, BusyError)
        monkeypatch.delenv("INSPECT_MAX_PIXELS")
    finally:
        release.set()
        worker.join(10)
    assert result["image"].shape == (1000, 1200, 3)
    # The slot is free again: the same large image loads.
    assert load_image(large, "again.png")[0, 0].tolist() == [9, 9, 9]


def test_a_failed_large_decode_frees_its_slot(one_large_slot) -> None:
    with pytest.raises(ImageError, match="truncated"):
        load_image(_flat_png(1200, 1000, rows=10), "cut.png")
    assert load_image(_flat_png(1200, 1000)).shape == (1000, 1200, 3)


def test_large_decode_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.errors import ConfigError

    monkeypatch.setenv("INSPECT_MAX_LARGE_DECODES", "0")
    with pytest.raises(ConfigError, match="INSPECT_MAX_LARGE_DECODES must be at least 1"):
        load_image(_flat_png(5000, 4000))
