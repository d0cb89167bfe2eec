"""Read any micrograph: raw data kept as stored, an 8-bit grey view, pixel size, pages, limits.

Two readers sit behind one interface: tifffile for TIFF (8/16/32-bit integer and
float, grey or RGB, multi-page, vendor metadata) and Pillow for PNG, JPEG and BMP.
The format is taken from the file's first bytes, not its suffix, so a mislabelled
file is still read correctly and a text file called ``x.png`` is named as such.

Every failure a file can cause (missing, empty, not an image, corrupt header,
truncated data, a bad page index, over the pixel limit) surfaces as
:class:`~nmid_desktop.core.errors.ImageError` with a specific reason; no raw Pillow
or tifffile exception escapes.

Decompression bombs: the pixel limit is ours (``max_pixels``, from settings) and is
checked on the header before any pixel is decoded. Pillow's own global check
(``Image.MAX_IMAGE_PIXELS``) is left in place for everybody else; we construct
Pillow's format plugins directly (which is what ``Image.open`` does internally,
minus the check) so that a user who raised ``max_pixels`` can open a big image
without us disabling the protection process-wide.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.fileio import open_regular

DEFAULT_MAX_PIXELS = 400_000_000
"""Default decompression-bomb limit; ``Settings.max_pixels`` overrides it."""

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

# Magic numbers of the formats we read (first bytes of the file).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
# Formats we recognise but do not read, so the message can name them.
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"RIFF", "RIFF/WebP"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
)

# ITU-R 601-2 luma in 16-bit fixed point, exactly as Pillow's ``convert("L")``
# (libImaging/Convert.c), so that a PNG and a TIFF of the same RGB data give the
# same grey view.
_LUMA_R, _LUMA_G, _LUMA_B = 19595, 38470, 7471

# Percentiles are computed on at most this many samples (a strided subsample), so
# the stretch of a 400 MP image costs no more than that of a 4 MP one.
_MAX_STAT_SAMPLES = 4_000_000

_PILLOW_LIMIT_LOCK = threading.Lock()
# Pixels per band when large frames are converted band by band (1 MB of uint8; index
# temporaries of a 16-bit lookup are 8 bytes a pixel).
_BAND_PIXELS = 1_000_000
# From this size on, :func:`decode_for_import` reads grey TIFF pages strip by strip.
_PAGED_MIN_PIXELS = 16_000_000


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image file.

    Attributes:
        path: The file.
        format: ``"PNG"``, ``"JPEG"``, ``"BMP"`` or ``"TIFF"`` (from the content, not the suffix).
        width: Width in pixels (of page 0 for multi-page files).
        height: Height in pixels.
        n_pages: Number of pages (1 except for multi-page TIFF).
        dtype: NumPy dtype name of the stored samples (``"uint8"``, ``"uint16"``, ``"float32"``, ...).
        channels: Samples per pixel (1 grey, 3 RGB, 4 RGBA, 2 grey+alpha).
        pixel_size_m: Physical pixel size in metres from vendor metadata, or None.
        metadata: Small JSON-able facts found in the file (instrument, kV, magnification, ...).
        damage: Why the file holds fewer pages than it claims (a truncated multi-page TIFF
            whose page list ends in an offset past the end of the file), or "".
    """

    path: Path
    format: str
    width: int
    height: int
    n_pages: int
    dtype: str
    channels: int
    pixel_size_m: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    damage: str = ""

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


@dataclass
class Micrograph:
    """One decoded page of an image file.

    Attributes:
        info: The file's header facts.
        page: Which page this is (0 for single-page files).
        raw: The samples as stored: 2-D grey or HxWxC, original dtype, never cast.
        view8: 2-D uint8 grey view for display and models (see :func:`to_view8`).
            For 8-bit grey files it is the same array as ``raw`` (no copy of a
            large frame): treat both as read-only.
    """

    info: ImageInfo
    page: int
    raw: np.ndarray
    view8: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of this page."""
        return int(self.view8.shape[0]), int(self.view8.shape[1])


# ----------------------------------------------------------------------------- sniffing


def _sniff(path: Path) -> tuple[str, int]:
    """Return (format, file size) from the first bytes, or raise ImageError."""
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image file")
    try:
        # Regular files only: a FIFO or a link to /dev/zero would block or never end.
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(64)
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageError(path, "file is empty (0 bytes)")
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt, size
    for magic, fmt in _OTHER_MAGIC:
        if head.startswith(magic):
            raise ImageError(path, f"{fmt} files are not supported (use PNG, JPEG, BMP or TIFF)")
    expected = path.suffix.lower().lstrip(".").upper() or "image"
    if _looks_like_text(head):
        raise ImageError(path, f"not an image: the file contains text, not {expected} data")
    raise ImageError(path, f"not an image: unknown format (the content is not {expected} data)")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _check_limit(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(path, f"corrupt header: image size {width} x {height}")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            path,
            f"image is {width} x {height} = {pixels / 1e6:.1f} MP, over the limit of "
            f"{max_pixels / 1e6:.1f} MP; raise max_pixels in settings to open it",
        )


# ----------------------------------------------------------------------------- Pillow path


def _pillow_open(path: Path, fmt: str, handle: BinaryIO) -> Any:
    """Construct Pillow's plugin for ``fmt`` on an open handle (header only).

    ``Image.open`` would run Pillow's global decompression-bomb check against
    ``Image.MAX_IMAGE_PIXELS`` (about 179 MP raises); we enforce our own,
    configurable limit on the header instead, and leave the global alone.
    """
    from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin

    plugins: dict[str, Callable[[BinaryIO, str], Image.Image]] = {
        "PNG": PngImagePlugin.PngImageFile,
        "JPEG": JpegImagePlugin.JpegImageFile,
        "BMP": BmpImagePlugin.BmpImageFile,
    }
    plugin = plugins[fmt]
    try:
        return plugin(handle, str(path))
    except Exception as exc:  # Pillow raises SyntaxError, OSError, struct.error, ...
        raise ImageError(path, f"corrupt {fmt} header ({_short(exc)})") from None


_PIL_DTYPES = {
    "1": ("uint8", 1),  # bilevel: decoded as 0/255 grey
    "L": ("uint8", 1),
    "P": ("uint8", 3),
    "PA": ("uint8", 4),
    "LA": ("uint8", 2),
    "RGB": ("uint8", 3),
    "RGBA": ("uint8", 4),
    "RGBX": ("uint8", 3),
    "CMYK": ("uint8", 3),
    "YCbCr": ("uint8", 3),
    "I;16": ("uint16", 1),
    "I;16B": ("uint16", 1),
    "I;16L": ("uint16", 1),
    "I": ("int32", 1),
    "F": ("float32", 1),
}


def _grey_palette(im: Any) -> bool:
    """True if a palette image's colours are all grey (old SEM BMP/TIFF often are)."""
    if im.mode not in ("P", "PA") or im.palette is None or "transparency" in im.info:
        return False
    # Read from the palette object: ``getpalette()`` would decode the whole frame first.
    from PIL import Image

    rawmode, data = im.palette.getdata()
    probe = Image.new("P", (1, 1))
    probe.putpalette(data, rawmode)
    palette = probe.getpalette()
    if not palette:
        return False
    rgb = np.asarray(palette, dtype=np.int16).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def _pil_info(path: Path, fmt: str, im: Any) -> ImageInfo:
    width, height = im.size
    dtype, channels = _PIL_DTYPES.get(im.mode, ("uint8", 3))
    if im.mode == "P":
        try:
            grey = _grey_palette(im)
        except Exception as exc:  # a damaged palette surfaces only when it is read
            raise ImageError(path, f"corrupt {fmt} header ({_short(exc)})") from None
        channels = 1 if grey else (4 if "transparency" in im.info else 3)
    return ImageInfo(
        path=path,
        format=fmt,
        width=int(width),
        height=int(height),
        n_pages=1,
        dtype=dtype,
        channels=channels,
        pixel_size_m=None,
        metadata={},
    )


def _pil_raw(path: Path, fmt: str, im: Any, info: ImageInfo) -> np.ndarray:
    """Decode a Pillow image into the stored samples (palette expanded)."""
    try:
        im.load()
        raw = _pil_samples(im)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as exc:
        raise ImageError(path, f"corrupt or truncated {fmt} data ({_short(exc)})") from None
    return raw


def _pil_samples(im: Any) -> np.ndarray:
    """The stored samples of a loaded Pillow image (palette expanded), native byte order."""
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode == "P":
        if _grey_palette(im):
            im = im.convert("L")
        else:
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "RGBX"):
        im = im.convert("RGB")
    raw = np.asarray(im)
    if raw.dtype.byteorder == ">":
        raw = raw.astype(raw.dtype.newbyteorder("="))
    return raw


# ----------------------------------------------------------------------------- TIFF path


class _TiffLogCapture(logging.Handler):
    """Collects tifffile's error log lines per thread (imports read files in parallel).

    tifffile reports a page list that points past the end of a truncated file only as
    a log line and then lists fewer pages; the line is turned into ``ImageInfo.damage``
    instead of going to stderr.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self.local, "lines", None)
        if lines is not None:
            lines.append(record.getMessage())
        else:
            logging.getLogger(__name__).debug("tifffile: %s", record.getMessage())


_TIFF_LOG = _TiffLogCapture()
_TIFF_DAMAGE_WORDS = ("invalid page offset", "invalid offset to page", "corrupted tag list", "circular reference")


def _tiff_damage(lines: list[str]) -> str:
    for line in lines:
        if any(word in line for word in _TIFF_DAMAGE_WORDS):
            return "the file is truncated or damaged: its list of pages breaks off, so later pages are missing"
    return ""


def _tiff_open(path: Path) -> Any:
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # TiffFileError, ValueError, struct.error, ...
        raise ImageError(path, f"corrupt TIFF header ({_short(exc)})") from None


def _tiff_page_geometry(page: Any) -> tuple[int, int, int, str]:
    """(width, height, channels, dtype name) of a page as :func:`read_image` returns it."""
    width = int(page.imagewidth)
    height = int(page.imagelength)
    channels = int(page.samplesperpixel)  # alpha counts as a channel; the view ignores it
    dtype = np.dtype(page.dtype).name if page.dtype is not None else "uint8"
    if dtype == "bool":
        dtype = "uint8"  # bilevel: decoded as 0/255 grey
    colormap = getattr(page, "colormap", None)
    if int(getattr(page, "photometric", 1)) == 3 and colormap is not None:
        colormap = np.asarray(colormap).reshape(3, -1)
        grey = np.array_equal(colormap[0], colormap[1]) and np.array_equal(colormap[1], colormap[2])
        channels, dtype = (1 if grey else 3), "uint8"
    return width, height, channels, dtype


def _tiff_info(path: Path, tif: Any) -> ImageInfo:
    logger = logging.getLogger("tifffile")
    if _TIFF_LOG not in logger.handlers:
        logger.addHandler(_TIFF_LOG)
    lines: list[str] = []
    _TIFF_LOG.local.lines = lines
    try:
        n_pages = len(tif.pages)
        page = tif.pages.first
        width, height, channels, dtype = _tiff_page_geometry(page)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(path, f"corrupt TIFF header ({_short(exc)})") from None
    finally:
        _TIFF_LOG.local.lines = None
    pixel_size, metadata = _tiff_vendor_metadata(tif)
    return ImageInfo(
        path=path,
        format="TIFF",
        width=width,
        height=height,
        n_pages=n_pages,
        dtype=dtype,
        channels=channels,
        pixel_size_m=pixel_size,
        metadata=metadata,
        damage=_tiff_damage(lines),
    )


def _tiff_raw(path: Path, tif: Any, page_index: int, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Decode one page; returns (samples, True if the view must be inverted)."""
    try:
        page = tif.pages[page_index]
        width, height, _, _ = _tiff_page_geometry(page)
    except Exception as exc:
        raise ImageError(path, f"corrupt TIFF page {page_index} ({_short(exc)})") from None
    _check_limit(path, width, height, max_pixels)
    try:
        raw = page.asarray()
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as exc:
        message = str(exc)
        if "imagecodecs" in message:
            # tifffile decodes LZW/JPEG only with the optional imagecodecs package;
            # Pillow reads those codecs itself, so fall back rather than fail.
            return _tiff_raw_pillow(path, page_index, width * height), False
        raise ImageError(path, f"corrupt or truncated TIFF data on page {page_index} ({_short(exc)})") from None
    photometric = int(getattr(page, "photometric", 1))
    if photometric == 3 and getattr(page, "colormap", None) is not None:
        raw = _apply_colormap(np.squeeze(raw), np.asarray(page.colormap))
    # MINISWHITE (photometric 0): samples count darkness; keep them, invert the view.
    return _tiff_layout(path, raw, page), photometric == 0


def _apply_colormap(indices: np.ndarray, colormap: np.ndarray) -> np.ndarray:
    """Expand a palette TIFF: grey palettes give 2-D grey, others HxWx3 (8-bit if the map is)."""
    colormap = colormap.reshape(3, -1)
    if colormap.max() > 255:
        colormap = (colormap >> 8).astype(np.uint8)  # TIFF colormaps are 16-bit
    else:
        colormap = colormap.astype(np.uint8)
    indices = np.clip(indices, 0, colormap.shape[1] - 1)
    if np.array_equal(colormap[0], colormap[1]) and np.array_equal(colormap[1], colormap[2]):
        return colormap[0][indices]
    return np.stack([colormap[c][indices] for c in range(3)], axis=-1)


def _tiff_layout(path: Path, raw: np.ndarray, page: Any) -> np.ndarray:
    """Bring a tifffile page array to 2-D grey or HxWxC."""
    height = int(getattr(page, "imagelength", 0) or 0)
    width = int(getattr(page, "imagewidth", 0) or 0)
    samples = int(getattr(page, "samplesperpixel", 1) or 1)
    if raw.size == height * width * samples and (height == 1 or width == 1):
        # np.squeeze would drop a 1-pixel-wide axis and leave a 1-D "image": shape it from the header.
        if samples > 1 and getattr(page, "planarconfig", 1) == 2:
            raw = np.moveaxis(raw.reshape(samples, height, width), 0, -1)
        else:
            raw = raw.reshape((height, width, samples) if samples > 1 else (height, width))
    else:
        raw = np.squeeze(raw)
    if raw.ndim == 3 and getattr(page, "planarconfig", 1) == 2 and raw.shape[0] <= 4 < raw.shape[2]:
        raw = np.moveaxis(raw, 0, -1)  # planar (separate) samples: SYX -> YXS
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] > 4):
        raise ImageError(path, f"unsupported TIFF page layout {raw.shape} (expected grey or RGB)")
    if raw.dtype == bool:
        raw = raw.astype(np.uint8) * 255
    if raw.dtype.byteorder == ">":
        raw = raw.astype(raw.dtype.newbyteorder("="))
    return np.ascontiguousarray(raw)


def _tiff_raw_pillow(path: Path, page_index: int, pixels: int) -> np.ndarray:
    """Decode a TIFF page with Pillow (for codecs tifffile needs imagecodecs for)."""
    from PIL import Image, TiffImagePlugin

    try:
        with path.open("rb") as handle:
            im: Image.Image = TiffImagePlugin.TiffImageFile(handle, str(path))
            im.seek(page_index)
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and pixels > limit:
                # Pillow checks its own global limit again when it allocates the
                # page; ours (already passed) governs, so lift Pillow's to exactly
                # this image's size for the duration of the load, under a lock.
                # It is never lowered and never disabled.
                with _PILLOW_LIMIT_LOCK:
                    saved = Image.MAX_IMAGE_PIXELS
                    Image.MAX_IMAGE_PIXELS = max(pixels, saved or 0)
                    try:
                        im.load()
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
            else:
                im.load()
            if im.mode == "P":
                im = im.convert("L" if _grey_palette(im) else "RGB")
            elif im.mode in ("1", "CMYK", "YCbCr", "LAB"):
                im = im.convert("L" if im.mode == "1" else "RGB")
            raw = np.asarray(im)
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as exc:
        raise ImageError(path, f"corrupt or truncated TIFF data on page {page_index} ({_short(exc)})") from None
    if raw.dtype.byteorder == ">":
        raw = raw.astype(raw.dtype.newbyteorder("="))
    return np.ascontiguousarray(raw)


# ----------------------------------------------------------------------------- vendor metadata

_LENGTH_UNITS = {
    "m": 1.0,
    "mm": 1e-3,
    "um": 1e-6,
    "µm": 1e-6,
    "μm": 1e-6,
    "nm": 1e-9,
    "pm": 1e-12,
    "a": 1e-10,
    "å": 1e-10,
    "Å": 1e-10,
}


def _tiff_vendor_metadata(tif: Any) -> tuple[float | None, dict[str, str]]:
    """Pixel size (metres) and a few facts from FEI/Thermo or Zeiss SEM tags.

    The TIFF resolution tags (XResolution/ResolutionUnit) are deliberately not
    used: nearly every writer fills them with a screen/print DPI (72, 96, 300 per
    inch), which would turn into a false physical scale.
    """
    metadata: dict[str, str] = {}
    pixel_size: float | None = None
    try:
        fei = tif.fei_metadata
    except Exception:
        fei = None
    if fei:
        pixel_size = _fei_pixel_size(fei, metadata)
    try:
        sem = tif.sem_metadata
    except Exception:
        sem = None
    if sem:
        zeiss = _zeiss_pixel_size(sem, metadata)
        pixel_size = pixel_size if pixel_size is not None else zeiss
    return pixel_size, metadata


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _fei_pixel_size(fei: dict[str, Any], metadata: dict[str, str]) -> float | None:
    metadata["vendor"] = "FEI/Thermo"
    system = fei.get("System") or {}
    for key in ("SystemType", "Type", "Dnumber"):
        if system.get(key):
            metadata["instrument"] = str(system[key])
            break
    beam = fei.get("Beam") or {}
    hv = _positive(beam.get("HV"))
    if hv is not None:
        metadata["kV"] = f"{hv / 1000:g}"
    hfw = _positive((fei.get("EBeam") or {}).get("HFW") or (fei.get("Scan") or {}).get("HorFieldsize"))
    if hfw is not None:
        metadata["hfw_m"] = f"{hfw:g}"
    user = fei.get("User") or {}
    if user.get("Date"):
        metadata["date"] = f"{user['Date']} {user.get('Time', '')}".strip()
    for section in ("Scan", "EScan", "IScan"):
        size = _positive((fei.get(section) or {}).get("PixelWidth"))
        if size is not None:
            return size  # FEI writes PixelWidth in metres
    return None


def _zeiss_pixel_size(sem: dict[str, Any], metadata: dict[str, str]) -> float | None:
    metadata.setdefault("vendor", "Zeiss")
    pixel_size: float | None = None
    for key, value in sem.items():
        if not key or not isinstance(value, tuple) or len(value) < 2:
            continue
        name = str(value[0]).strip().lower()
        if name == "image pixel size" or key in ("ap_image_pixel_size", "ap_pixel_size"):
            pixel_size = _zeiss_length(value)
        elif name == "eht" or key == "ap_actualkv":
            number = _positive(value[1])
            if number is not None:
                unit = str(value[2]).lower() if len(value) > 2 else "kv"
                metadata["kV"] = f"{number / 1000 if unit == 'v' else number:g}"
        elif name == "mag" or key == "ap_mag":
            metadata["magnification"] = " ".join(str(v) for v in value[1:])
        elif name == "sem" or key == "dp_sem":
            metadata["instrument"] = str(value[1])
        elif name == "date" or key == "ap_date":
            metadata["date"] = str(value[1])
    return pixel_size


def _zeiss_length(value: tuple[Any, ...]) -> float | None:
    """Zeiss writes e.g. ('Image Pixel Size', 2.345, 'nm') or ('Image Pixel Size', '2.345 nm')."""
    number: Any = value[1]
    unit = str(value[2]) if len(value) > 2 else ""
    if isinstance(number, str):
        parts = number.split()
        if len(parts) == 2:
            number, unit = parts[0], parts[1]
    size = _positive(number)
    if size is None:
        return None
    scale = _LENGTH_UNITS.get(unit.strip()) or _LENGTH_UNITS.get(unit.strip().lower())
    return size * scale if scale is not None else None


# ----------------------------------------------------------------------------- public API


def probe_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read an image file's header only: size, pages, sample type, pixel size.

    Fast enough for importing folders of 10k files: no pixel data is decoded.

    Args:
        path: The image file.
        max_pixels: Decompression-bomb limit on width x height.

    Returns:
        The header facts.

    Raises:
        ImageError: Missing or empty file, not an image, unsupported or corrupt
            header, or more pixels than ``max_pixels``.
    """
    path = Path(path)
    fmt, _ = _sniff(path)
    if fmt == "TIFF":
        tif = _tiff_open(path)
        try:
            info = _tiff_info(path, tif)
        finally:
            tif.close()
    else:
        try:
            with path.open("rb") as handle:
                im = _pillow_open(path, fmt, handle)
                info = _pil_info(path, fmt, im)
        except OSError as exc:
            raise ImageError(path, f"cannot read file ({_short(exc)})") from None
    _check_limit(path, info.width, info.height, max_pixels)
    return info


def read_image(path: Path, page: int = 0, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Micrograph:
    """Decode one page of an image file.

    Args:
        path: The image file.
        page: Page index for multi-page TIFF (0 for everything else).
        max_pixels: Decompression-bomb limit on width x height.

    Returns:
        The raw samples (as stored) and the 8-bit grey view.

    Raises:
        ImageError: Any problem with the file, including a page index out of range.
    """
    path = Path(path)
    fmt, _ = _sniff(path)
    if fmt == "TIFF":
        tif = _tiff_open(path)
        try:
            info = _tiff_info(path, tif)
            _check_page(path, page, info.n_pages)
            raw, invert = _tiff_raw(path, tif, page, max_pixels)
        finally:
            tif.close()
        view8 = to_view8(raw)
        if invert:
            view8 = 255 - view8
    else:
        _check_page(path, page, 1)
        try:
            with path.open("rb") as handle:
                im = _pillow_open(path, fmt, handle)
                info = _pil_info(path, fmt, im)
                _check_limit(path, info.width, info.height, max_pixels)
                raw = _pil_raw(path, fmt, im, info)
        except OSError as exc:
            raise ImageError(path, f"cannot read file ({_short(exc)})") from None
        view8 = to_view8(raw)
    return Micrograph(info=info, page=page, raw=raw, view8=view8)


@dataclass(frozen=True)
class DecodedPage:
    """What an import needs of one page: its size, sample type and 8-bit view (no raw copy kept).

    Attributes:
        width: Width in pixels.
        height: Height in pixels.
        dtype: NumPy dtype name of the page's samples as stored.
        view8: (H, W) uint8 view, as :func:`read_image` derives it; for a colour JPEG it is
            libjpeg's own luma, which differs a little from luma of the decoded RGB (chroma
            subsampling), enough for the data bar search, not meant for the encoder.
    """

    width: int
    height: int
    dtype: str
    view8: np.ndarray


def decode_estimate_bytes(info: ImageInfo) -> int:
    """Memory :func:`decode_for_import` may need for the largest page of a file, from its header.

    Used by the importer to bound how much is decoded at once. Generous on purpose: a
    Pillow image and its NumPy copy live together for a moment.
    """
    pixels = info.width * info.height
    if info.format == "JPEG":
        return pixels * 2 + (64 << 20)  # decoded straight to grey (draft mode)
    itemsize = np.dtype(info.dtype).itemsize if info.dtype in np.sctypeDict else 1
    if info.format == "TIFF" and info.channels == 1 and pixels >= _PAGED_MIN_PIXELS:
        return pixels * 2 + (64 << 20)  # strip by strip into the view
    if info.format == "TIFF" and info.dtype == "uint8" and info.channels in (3, 4) and pixels >= _PAGED_MIN_PIXELS:
        return pixels * 2 + (64 << 20)  # 8-bit RGB: strip by strip into the view
    if info.format in ("PNG", "BMP") and pixels >= _PAGED_MIN_PIXELS:
        return pixels * 2 + (64 << 20)  # strip by strip into the view (core/strips.py)
    return pixels * (info.channels * itemsize * 2 + 2) + (64 << 20)


def decode_for_import(path: Path, page: int = 0, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedPage:
    """Decode one page completely (truncation is caught) while holding as little memory as possible.

    * large grey TIFF pages are read strip by strip (tifffile segments) straight into the
      8-bit view, two passes for deep data (the stretch statistics, then the view), so a
      400 MP 16-bit frame needs its 400 MB view, not 1.2 GB;
    * colour JPEGs are decoded straight to luma by libjpeg (Pillow's draft mode);
    * anything else goes through :func:`read_image`, and its raw copy is dropped at once.

    Raises:
        ImageError: As :func:`read_image`.
    """
    path = Path(path)
    fmt, _ = _sniff(path)
    if fmt == "TIFF":
        tif = _tiff_open(path)
        try:
            info = _tiff_info(path, tif)
            _check_page(path, page, info.n_pages)
            paged = _tiff_paged_view8(path, tif, page, max_pixels)
        finally:
            tif.close()
        if paged is not None:
            return paged
    else:
        _check_page(path, page, 1)
        try:
            with path.open("rb") as handle:
                im = _pillow_open(path, fmt, handle)
                info = _pil_info(path, fmt, im)
                _check_limit(path, info.width, info.height, max_pixels)
                if fmt in ("PNG", "BMP") and info.pixels >= _PAGED_MIN_PIXELS:
                    striped = _striped_view8(path, fmt, im, info)
                    if striped is not None:
                        return striped
                if fmt == "JPEG" and im.mode in ("RGB", "YCbCr"):
                    im.draft("L", im.size)  # libjpeg decodes luma only: a third of the memory
                if im.mode in ("L", "RGB"):
                    try:
                        im.load()
                        view8 = _pil_view8_banded(im)
                    except MemoryError:
                        raise ImageError(path, "not enough memory to decode this image") from None
                    except Exception as exc:
                        raise ImageError(path, f"corrupt or truncated {fmt} data ({_short(exc)})") from None
                    finally:
                        im.close()
                    return DecodedPage(info.width, info.height, info.dtype, view8)
        except OSError as exc:
            raise ImageError(path, f"cannot read file ({_short(exc)})") from None
    image = read_image(path, page, max_pixels=max_pixels)
    height, width = image.shape
    dtype, view8 = image.raw.dtype.name, image.view8
    del image
    return DecodedPage(width, height, dtype, view8)


def _striped_view8(path: Path, fmt: str, im: Any, info: ImageInfo) -> DecodedPage | None:
    """The view of a large PNG or uncompressed BMP, decoded strip by strip; None when not applicable.

    Each strip goes through the same conversion as a whole-frame decode (:func:`_pil_samples`,
    then :func:`to_view8`, whose 8-bit conversions work pixel by pixel), so the view is the
    same bytes. Deep (16-bit grey) data takes two passes, as the paged TIFF reader does: the
    stretch statistics from the strided sample :func:`to_view8` would take, then the view.
    """
    from nmid_desktop.core import strips

    def decode() -> Iterator[strips.Strip]:
        if fmt == "PNG":
            return strips.png_strips(path, _BAND_PIXELS)
        found = strips.bmp_strips(path, im, _BAND_PIXELS)
        return found if found is not None else iter(())

    if fmt == "BMP" and strips.bmp_strips(path, im, _BAND_PIXELS) is None:
        return None  # RLE-compressed: decoded whole
    deep = info.dtype != "uint8"
    if deep and info.channels != 1:
        return None
    height, width = info.height, info.width
    view8 = np.empty((height, width), dtype=np.uint8)
    dtype_name = info.dtype
    try:
        if not deep:
            for strip in decode():
                view8[strip.rows, strip.cols] = to_view8(_pil_samples(strip.image))
        else:
            step = _sample_step(height, width)
            sample: np.ndarray | None = None
            for strip in decode():
                raw = _pil_samples(strip.image)
                if sample is None:
                    sample = np.zeros((-(-height // step), -(-width // step)), dtype=raw.dtype)
                    dtype_name = raw.dtype.name
                ys = np.arange(strip.rows.start, strip.rows.stop, strip.rows.step)
                xs = np.arange(strip.cols.start, strip.cols.stop, strip.cols.step)
                keep_y, keep_x = ys % step == 0, xs % step == 0
                if keep_y.any() and keep_x.any():
                    sample[np.ix_(ys[keep_y] // step, xs[keep_x] // step)] = raw[np.ix_(keep_y, keep_x)]
            if sample is None:
                raise ImageError(path, f"corrupt {fmt} data: no pixels")
            params = _stretch_params(sample, 0.5, 99.5)
            del sample
            for strip in decode():
                view8[strip.rows, strip.cols] = _stretch_apply(_pil_samples(strip.image), params)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as exc:
        raise ImageError(path, f"corrupt or truncated {fmt} data ({_short(exc)})") from None
    return DecodedPage(width, height, dtype_name, view8)


def _contiguous_bands(
    path: Path, offset: int, dtype: np.dtype, height: int, width: int, samples: int = 1
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Bands of rows of an uncompressed frame stored at ``offset``; a short file is an ImageError.

    Blocks are (rows, width), or (rows, width, samples) for interleaved samples (RGB).
    """
    rows = max(1, _BAND_PIXELS // max(1, width))
    width_samples = width * samples
    try:
        with open_regular(path) as handle:
            handle.seek(offset)
            for y in range(0, height, rows):
                n = min(rows, height - y)
                data = handle.read(n * width_samples * dtype.itemsize)
                if len(data) < n * width_samples * dtype.itemsize:
                    row = y + len(data) // (width_samples * dtype.itemsize)
                    raise ImageError(path, f"truncated TIFF data: the file ends in row {row} of {height}")
                block = np.frombuffer(data, dtype=dtype).reshape((n, width, samples) if samples > 1 else (n, width))
                yield y, 0, block.astype(block.dtype.newbyteorder("=")) if block.dtype.byteorder == ">" else block
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({_short(exc)})") from None


def _pil_view8_banded(im: Any) -> np.ndarray:
    """The (H, W) uint8 view of a loaded 8-bit ``L`` or ``RGB`` Pillow image, copied band by band.

    ``np.asarray(im)`` goes through ``tobytes()``, which joins encoded chunks: for a
    400 MP frame that is two more frame-sized buffers beside Pillow's own.
    """
    width, height = im.size
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for y in range(0, height, rows):
        band = im.crop((0, y, width, min(height, y + rows)))
        if band.mode != "L":
            band = band.convert("L")  # ITU-R 601 luma, the same integers as to_view8
        out[y : y + band.size[1]] = np.frombuffer(band.tobytes(), dtype=np.uint8).reshape(band.size[1], width)
    return out


def _tiff_paged_view8(path: Path, tif: Any, page_index: int, max_pixels: int) -> DecodedPage | None:
    """The view of a large single-sample TIFF page, built strip by strip; None when not applicable."""
    try:
        page = tif.pages[page_index]
        width, height, channels, dtype_name = _tiff_page_geometry(page)
    except Exception as exc:
        raise ImageError(path, f"corrupt TIFF page {page_index} ({_short(exc)})") from None
    _check_limit(path, width, height, max_pixels)
    photometric = int(getattr(page, "photometric", 1))
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    if width * height >= _PAGED_MIN_PIXELS and photometric == 2:
        return _tiff_rgb8_paged_view8(path, page, page_index, width, height, dtype)
    if (
        width * height < _PAGED_MIN_PIXELS
        or channels != 1
        or photometric not in (0, 1)
        or dtype is None
        or dtype.kind not in "uif"
        or int(getattr(page, "samplesperpixel", 1)) != 1
        or int(getattr(page, "imagedepth", 1) or 1) != 1
    ):
        return None

    final = bool(getattr(page, "is_final", False)) and not getattr(page, "is_tiled", False)
    file_dtype = dtype.newbyteorder(tif.byteorder) if dtype.itemsize > 1 else dtype

    def bands() -> Iterator[tuple[int, int, np.ndarray]]:
        """(y, x, 2-D block) per decoded strip or tile, clipped to the frame."""
        if final:
            # Uncompressed and contiguous (often one strip of the whole frame): read bands of
            # rows straight from the file instead of one frame-sized segment.
            yield from _contiguous_bands(path, int(page.dataoffsets[0]), file_dtype, height, width)
            return
        try:
            for segment, index, _shape in page.segments():
                y, x = int(index[2]), int(index[3])
                if segment is None:  # an empty (sparse) segment: zeros
                    continue
                block = np.asarray(segment)[0, :, :, 0][: height - y, : width - x]
                if block.dtype.byteorder == ">":
                    block = block.astype(block.dtype.newbyteorder("="))
                yield y, x, block
        except MemoryError:
            raise ImageError(path, "not enough memory to decode this image") from None
        except ImageError:
            raise
        except Exception as exc:
            raise ImageError(path, f"corrupt or truncated TIFF data on page {page_index} ({_short(exc)})") from None

    view8 = np.zeros((height, width), dtype=np.uint8)
    if dtype == np.uint8:
        for y, x, block in bands():
            view8[y : y + block.shape[0], x : x + block.shape[1]] = block
    else:
        # Pass 1: the same strided sample to_view8 takes from a whole frame.
        step = _sample_step(height, width)
        sample = np.zeros((-(-height // step), -(-width // step)), dtype=dtype)
        for y, x, block in bands():
            first_row = (-y) % step
            first_col = (-x) % step
            part = block[first_row::step, first_col::step]
            if part.size:
                r0, c0 = (y + first_row) // step, (x + first_col) // step
                sample[r0 : r0 + part.shape[0], c0 : c0 + part.shape[1]] = part
        params = _stretch_params(sample, 0.5, 99.5)
        del sample
        # Pass 2: each block through the stretch into the view.
        for y, x, block in bands():
            view8[y : y + block.shape[0], x : x + block.shape[1]] = _stretch_apply(block, params)
    if photometric == 0:
        np.subtract(255, view8, out=view8)
    return DecodedPage(width, height, dtype_name, view8)


def _tiff_rgb8_paged_view8(
    path: Path, page: Any, page_index: int, width: int, height: int, dtype: np.dtype | None
) -> DecodedPage | None:
    """The view of a large interleaved 8-bit RGB(A) TIFF page, strip by strip; None when not applicable.

    Luma is computed pixel by pixel, so each decoded strip or tile goes straight through
    :func:`to_view8`: a 400 MP RGB page needs its 400 MB view, not the 1.2 GB frame.
    """
    samples = int(getattr(page, "samplesperpixel", 1))
    if (
        dtype != np.uint8
        or samples not in (3, 4)
        or int(getattr(page, "planarconfig", 1)) != 1
        or int(getattr(page, "imagedepth", 1) or 1) != 1
    ):
        return None
    view8 = np.empty((height, width), dtype=np.uint8)
    if bool(getattr(page, "is_final", False)) and not getattr(page, "is_tiled", False):
        for y, _x, block in _contiguous_bands(path, int(page.dataoffsets[0]), dtype, height, width, samples):
            view8[y : y + block.shape[0]] = to_view8(block)
        return DecodedPage(width, height, "uint8", view8)
    view8.fill(0)  # sparse (empty) segments are zeros, as page.asarray() gives
    try:
        for segment, index, _shape in page.segments():
            if segment is None:
                continue
            y, x = int(index[2]), int(index[3])
            block = np.asarray(segment)[0][: height - y, : width - x]
            view8[y : y + block.shape[0], x : x + block.shape[1]] = to_view8(block)
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except ImageError:
        raise
    except Exception as exc:
        if "imagecodecs" in str(exc):
            return None  # LZW/JPEG without imagecodecs: the whole-page path falls back to Pillow
        raise ImageError(path, f"corrupt or truncated TIFF data on page {page_index} ({_short(exc)})") from None
    return DecodedPage(width, height, "uint8", view8)


def _check_page(path: Path, page: int, n_pages: int) -> None:
    if not isinstance(page, (int, np.integer)) or isinstance(page, bool) or not 0 <= page < n_pages:
        which = "only page 0" if n_pages == 1 else f"pages 0 to {n_pages - 1}"
        raise ImageError(path, f"no page {page}: the file has {which}")


def to_view8(raw: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """The 2-D uint8 grey view of raw samples, as :func:`read_image` derives it.

    8-bit data keeps its values (RGB becomes grey by ITU-R 601-2 luma, exactly as
    Pillow's ``convert("L")``; if R = G = B one channel is taken as is). Deeper
    integer and float data are stretched linearly so that the ``low`` and ``high``
    percentiles of the finite samples map to 0 and 255 (if they coincide, the
    minimum and maximum do); NaN and -inf become 0, +inf 255.

    Args:
        raw: 2-D grey or HxWxC (C in 1..4; a 2nd or 4th channel is alpha and ignored).
        low: Lower percentile in [0, 100).
        high: Upper percentile in (low, 100].

    Returns:
        A C-contiguous (H, W) uint8 array.

    Raises:
        ValueError: If the array is not 2-D or HxWxC with C <= 4, or the percentiles are invalid.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, not {low}, {high}")
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim == 3:
        channels = raw.shape[2]
        if channels == 2:  # grey + alpha
            raw = raw[:, :, 0]
        elif channels in (3, 4):
            return _rgb_view8(raw[:, :, :3], low, high)
        else:
            raise ValueError(f"expected grey or RGB samples, got shape {raw.shape}")
    if raw.ndim != 2:
        raise ValueError(f"expected a 2-D or HxWxC array, got shape {raw.shape}")
    if raw.dtype == np.uint8:
        return np.ascontiguousarray(raw)
    if raw.dtype == bool:
        return np.ascontiguousarray(raw.astype(np.uint8) * 255)
    return _stretch(raw, low, high)


def _rgb_view8(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        return to_view8(np.ascontiguousarray(r), low, high)
    height = rgb.shape[0]
    # Bands of rows: whole-frame uint32/float32 temporaries of a 64 MP RGB frame took 1 GB.
    rows = max(1, _BAND_PIXELS // max(1, rgb.shape[1]))
    if rgb.dtype == np.uint8:
        out = np.empty(rgb.shape[:2], dtype=np.uint8)
        for y in range(0, height, rows):
            band = slice(y, y + rows)
            luma = r[band].astype(np.uint32) * _LUMA_R
            luma += g[band].astype(np.uint32) * _LUMA_G
            luma += b[band].astype(np.uint32) * _LUMA_B
            luma += 0x8000
            luma >>= 16
            out[band] = luma
        return out
    # Deep RGB: luma in float32 (display only), then the usual stretch, both by bands.
    params = _stretch_params(_deep_luma(_stat_sample(rgb)), low, high)
    out = np.empty(rgb.shape[:2], dtype=np.uint8)
    for y in range(0, height, rows):
        out[y : y + rows] = _stretch_apply(_deep_luma(rgb[y : y + rows]), params)
    return out


def _deep_luma(rgb: np.ndarray) -> np.ndarray:
    """Float32 ITU-R 601 luma of (H, W, >=3) deep samples."""
    grey = rgb[..., 0].astype(np.float32) * np.float32(_LUMA_R / 65536)
    grey += rgb[..., 1].astype(np.float32) * np.float32(_LUMA_G / 65536)
    grey += rgb[..., 2].astype(np.float32) * np.float32(_LUMA_B / 65536)
    return grey


def _stat_sample(values: np.ndarray) -> np.ndarray:
    """A deterministic strided subsample with at most _MAX_STAT_SAMPLES values."""
    step = _sample_step(values.shape[0], values.shape[1])
    return values[::step, ::step] if step > 1 else values


def _sample_step(height: int, width: int) -> int:
    """The stride of :func:`_stat_sample` for a frame of this size (pixels, not samples)."""
    return max(1, int(math.ceil(math.sqrt(height * width / _MAX_STAT_SAMPLES))))


def _stretch(raw: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linear stretch of 2-D deep data: the low/high percentiles go to 0/255."""
    return _stretch_apply(raw, _stretch_params(_stat_sample(raw), low, high))


@dataclass(frozen=True)
class _StretchParams:
    """How deep samples map to 0..255: a lookup table (16-bit) or a linear range."""

    dtype: np.dtype
    lo: float = 0.0
    hi: float = 0.0
    lut: np.ndarray | None = None
    offset: int = 0
    empty: bool = False  # no finite sample at all: everything is black


def _stretch_params(sample: np.ndarray, low: float, high: float) -> _StretchParams:
    """The stretch of :func:`to_view8`, computed from a sample (``_stat_sample`` of the frame)."""
    if sample.dtype in (np.uint16, np.int16):
        # Exact percentiles from a histogram, then a 65536-entry lookup table:
        # several times faster than np.percentile plus float arithmetic per pixel.
        offset = 32768 if sample.dtype == np.int16 else 0
        counts = np.bincount((sample.astype(np.int32) + offset).ravel(), minlength=65536)
        cdf = np.cumsum(counts)
        n = int(cdf[-1])
        lo_level = int(np.searchsorted(cdf, max(1, math.ceil(n * low / 100)))) - offset
        hi_level = int(np.searchsorted(cdf, max(1, math.ceil(n * high / 100)))) - offset
        if hi_level <= lo_level:  # one level fills the percentile range: fall back to min..max
            present = np.flatnonzero(counts)
            lo_level, hi_level = int(present[0]) - offset, int(present[-1]) - offset
        levels = np.arange(65536, dtype=np.float32) - offset
        lut = _scale(levels, float(lo_level), float(hi_level), sample.dtype)
        return _StretchParams(sample.dtype, float(lo_level), float(hi_level), lut, offset)
    values = sample.astype(np.float64, copy=False)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return _StretchParams(sample.dtype, empty=True)
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return _StretchParams(sample.dtype, lo, hi)


def _stretch_apply(raw: np.ndarray, params: _StretchParams) -> np.ndarray:
    """Map samples (a whole frame or a band of rows) to uint8 with :func:`_stretch_params`' result."""
    if params.lut is not None:
        return params.lut[raw.astype(np.int32) + params.offset] if params.offset else params.lut[raw]
    if params.empty:
        return np.zeros(raw.shape, dtype=np.uint8)
    return _scale(raw, params.lo, params.hi, params.dtype)


def _scale(values: np.ndarray, lo: float, hi: float, dtype: np.dtype) -> np.ndarray:
    """Map [lo, hi] linearly to 0..255 (clipped; NaN and -inf to 0, +inf to 255)."""
    out = np.empty(values.shape, dtype=np.uint8)
    if hi <= lo:
        # A flat image: integer data keeps its place in the type's range (a
        # uniform white 16-bit frame stays white); float data shows mid-grey.
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            level = (lo - info.min) / (info.max - info.min) * 255
        else:
            level = 128.0
        out.fill(np.uint8(round(min(max(level, 0.0), 255.0))))
        if not np.issubdtype(dtype, np.integer):
            out[~np.isfinite(values)] = 0
        return out
    # float32 in row chunks: a 400 MP float64 frame must not need 3 GB of temporaries.
    gain = np.float32(255.0 / (hi - lo))
    offset = np.float32(lo)
    rows = max(1, 4_000_000 // max(1, int(np.prod(values.shape[1:]))))
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, values.shape[0], rows):
            chunk = values[start : start + rows].astype(np.float32)
            chunk -= offset
            chunk *= gain
            np.nan_to_num(chunk, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            np.clip(chunk, 0, 255, out=chunk)
            np.rint(chunk, out=chunk)
            out[start : start + rows] = chunk
    return out


def crop(view8: np.ndarray, crop_box: tuple[int, int, int, int]) -> np.ndarray:
    """The region ``(x0, y0, x1, y1)`` (half-open, like Pillow) of a 2-D view.

    Raises:
        ImageError: If the box is empty or not inside the image.
    """
    height, width = view8.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ImageError("image", f"crop box {crop_box} is not inside the {width} x {height} image")
    return view8[y0:y1, x0:x1]


def model_input(
    path: Path,
    page: int = 0,
    crop_box: tuple[int, int, int, int] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> np.ndarray:
    """The 2-D uint8 array encoders and the LMM see: ``view8`` cropped to the micrograph.

    Args:
        path: The image file.
        page: Page index.
        crop_box: ``(x0, y0, x1, y1)`` of the micrograph proper (data bar excluded),
            in full-resolution pixels, or None for the whole frame.
        max_pixels: Decompression-bomb limit.
        min_side: When given, a large JPEG may be decoded at 1/2, 1/4 or 1/8 scale
            (Pillow's draft mode: several times faster) as long as the cropped
            result keeps at least ``min_side`` pixels on its shorter side; the
            result is then smaller than the crop box. Encoders that resize to
            224 px anyway pass 224. None always decodes at full resolution.

    Returns:
        (H, W) uint8 array.

    Raises:
        ImageError: Any problem with the file or a crop box outside the image.
    """
    path = Path(path)
    if min_side is not None and page == 0:
        reduced = _jpeg_reduced(path, crop_box, min_side, max_pixels)
        if reduced is not None:
            return reduced
    view8 = read_image(path, page, max_pixels=max_pixels).view8
    if crop_box is None:
        return view8
    try:
        return crop(view8, crop_box)
    except ImageError as exc:
        raise ImageError(path, exc.reason) from None


def _jpeg_reduced(
    path: Path,
    crop_box: tuple[int, int, int, int] | None,
    min_side: int,
    max_pixels: int,
) -> np.ndarray | None:
    """A JPEG decoded at reduced scale by libjpeg (DCT scaling), or None if no gain."""
    fmt, _ = _sniff(path)
    if fmt != "JPEG":
        return None
    try:
        with path.open("rb") as handle:
            im = _pillow_open(path, fmt, handle)
            width, height = im.size
            _check_limit(path, width, height, max_pixels)
            box = crop_box if crop_box is not None else (0, 0, width, height)
            x0, y0, x1, y1 = (int(v) for v in box)
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise ImageError(path, f"crop box {tuple(box)} is not inside the {width} x {height} image")
            scale = 1
            while scale < 8 and min(x1 - x0, y1 - y0) // (scale * 2) >= max(1, min_side):
                scale *= 2
            if scale == 1:
                return None
            im.draft("L", (-(-width // scale), -(-height // scale)))
            if im.mode != "L":
                return None  # e.g. CMYK JPEG: no grey draft; take the full path
            im.load()
            view = np.asarray(im)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as exc:
        raise ImageError(path, f"corrupt or truncated JPEG data ({_short(exc)})") from None
    sx, sy = width / view.shape[1], height / view.shape[0]
    left, top = int(x0 / sx), int(y0 / sy)
    right = max(left + 1, min(view.shape[1], int(math.ceil(x1 / sx))))
    bottom = max(top + 1, min(view.shape[0], int(math.ceil(y1 / sy))))
    return np.ascontiguousarray(view[top:bottom, left:right])


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
