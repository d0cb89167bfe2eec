"""Work the window hands to worker threads: plain functions and job generators, no Qt.

Everything here takes and returns plain data (paths, NumPy arrays, dataclasses)
so that it can run in any thread and be tested without a display. The window
only ever calls these through :class:`nmid_desktop.qt.workers.JobManager`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.images import DEFAULT_MAX_PIXELS, Micrograph, crop, read_image
from nmid_desktop.core.jobs import CancelToken, Job, Progress
from nmid_desktop.core.paths import cache_dir

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 256
AUTO_LOW, AUTO_HIGH = 0.5, 99.5  # the percentiles core.images.to_view8 stretches deep data to
_STAT_SAMPLES = 1_000_000


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Histogram:
    """Grey-level histogram of an image in its raw units, for the contrast control.

    Attributes:
        counts: (HISTOGRAM_BINS,) counts over ``[minimum, maximum]``.
        minimum: Lowest finite raw value.
        maximum: Highest finite raw value.
        auto_black: Raw value the automatic stretch shows black.
        auto_white: Raw value the automatic stretch shows white.
        deep: True for data deeper than 8 bits (contrast recomputes from raw).
    """

    counts: np.ndarray
    minimum: float
    maximum: float
    auto_black: float
    auto_white: float
    deep: bool


@dataclass(frozen=True)
class ImagePayload:
    """An image ready to show: its 8-bit view, raw data when deeper, and facts.

    Attributes:
        path: The file it came from.
        page: Page index.
        view8: (H, W) uint8 display view.
        raw_grey: (H, W) raw grey samples when deeper than 8 bits (None for 8-bit data).
        histogram: For the contrast control.
        crop_box: The micrograph proper, or None for the full frame.
        pixel_size_m: From vendor metadata, or None.
        dtype: Raw dtype name.
        n_pages: Pages in the file.
        metadata: Small facts from the file (instrument, kV, ...).
        image_id: Library id when the image is in the library.
    """

    path: Path
    page: int
    view8: np.ndarray
    raw_grey: np.ndarray | None
    histogram: Histogram
    crop_box: tuple[int, int, int, int] | None
    pixel_size_m: float | None
    dtype: str
    n_pages: int
    metadata: dict[str, str] = field(default_factory=dict)
    image_id: int | None = None

    def model_view(self) -> np.ndarray:
        """What the encoder and the model see: the 8-bit view cropped to the micrograph proper."""
        return self.view8 if self.crop_box is None else crop(self.view8, self.crop_box)


def _grey(raw: np.ndarray) -> np.ndarray:
    """Raw samples as 2-D grey (luma for RGB, alpha dropped), float64 only when needed."""
    if raw.ndim == 2:
        return raw
    if raw.shape[2] in (1, 2):
        return raw[:, :, 0]
    rgb = raw[:, :, :3].astype(np.float64)
    return rgb[:, :, 0] * 0.299 + rgb[:, :, 1] * 0.587 + rgb[:, :, 2] * 0.114


def _sample(values: np.ndarray) -> np.ndarray:
    step = max(1, int(math.ceil(math.sqrt(values.size / _STAT_SAMPLES))))
    sample = values[::step, ::step] if step > 1 else values
    sample = sample.astype(np.float64, copy=False).ravel()
    return sample[np.isfinite(sample)]


def histogram(view8: np.ndarray, raw_grey: np.ndarray | None) -> Histogram:
    """The contrast control's histogram: of raw data when deeper than 8 bits, else of the view."""
    if raw_grey is None:
        counts = np.bincount(view8.ravel(), minlength=256).astype(np.int64)
        return Histogram(counts, 0.0, 255.0, 0.0, 255.0, deep=False)
    sample = _sample(raw_grey)
    if sample.size == 0:
        return Histogram(np.zeros(HISTOGRAM_BINS, np.int64), 0.0, 1.0, 0.0, 1.0, deep=True)
    lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, _ = np.histogram(sample, bins=HISTOGRAM_BINS, range=(lo, hi))
    black, white = (float(v) for v in np.percentile(sample, [AUTO_LOW, AUTO_HIGH]))
    if white <= black:
        black, white = lo, hi
    return Histogram(counts.astype(np.int64), lo, hi, black, white, deep=True)


def payload_from(micrograph: Micrograph, crop_box: tuple[int, int, int, int] | None, image_id: int | None) -> ImagePayload:
    """Bundle a decoded micrograph for the window."""
    raw = micrograph.raw
    deep = raw.dtype != np.uint8
    raw_grey = np.ascontiguousarray(_grey(raw)) if deep else None
    info = micrograph.info
    return ImagePayload(
        path=Path(info.path),
        page=micrograph.page,
        view8=micrograph.view8,
        raw_grey=raw_grey,
        histogram=histogram(micrograph.view8, raw_grey),
        crop_box=crop_box,
        pixel_size_m=info.pixel_size_m,
        dtype=str(raw.dtype),
        n_pages=info.n_pages,
        metadata=dict(info.metadata),
        image_id=image_id,
    )


def load_image(
    path: Path,
    page: int = 0,
    crop_box: tuple[int, int, int, int] | None = None,
    *,
    image_id: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImagePayload:
    """Decode an image for display (raises ImageError for a bad file)."""
    return payload_from(read_image(Path(path), page, max_pixels=max_pixels), crop_box, image_id)


def rescale(raw_grey: np.ndarray, black: float, white: float) -> np.ndarray:
    """Map raw values ``black`` -> 0 and ``white`` -> 255 linearly (the 16-bit contrast control).

    Args:
        raw_grey: (H, W) raw samples, any numeric dtype.
        black: Raw value shown black.
        white: Raw value shown white.

    Returns:
        (H, W) uint8; NaN becomes 0.
    """
    if not white > black:
        white = black + 1e-9
    # Convert first, subtract after: integer data minus a Python number would wrap around.
    out = np.asarray(raw_grey, dtype=np.float32).copy() if raw_grey.dtype != np.float32 else raw_grey.copy()
    out -= np.float32(black)
    out *= np.float32(255.0 / (white - black))
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(out, 0, 255, out=out)
    return np.rint(out).astype(np.uint8)


# ----------------------------------------------------------------------------- thumbnails


def make_thumbnail(view8: np.ndarray, crop_box: tuple[int, int, int, int] | None, size: int) -> np.ndarray:
    """A square-bounded thumbnail of the micrograph proper (data bar left out).

    Returns:
        (h, w) uint8 with max(h, w) == size (or smaller for tiny images).
    """
    if crop_box is not None:
        x0, y0, x1, y1 = crop_box
        height, width = view8.shape
        if 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height:
            view8 = view8[y0:y1, x0:x1]
    image = Image.fromarray(np.ascontiguousarray(view8))
    # reducing_gap makes Pillow shrink by integer factors first: fast on big micrographs.
    image.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image)


class ThumbnailCache:
    """Thumbnails on disk (keyed by content hash, page and size) and the newest in memory.

    Safe to share between threads: the memory part is guarded by a lock, and disk
    files are written under a temporary name then renamed.
    """

    def __init__(self, folder: Path | None = None, memory_items: int = 4096) -> None:
        self.folder = Path(folder) if folder is not None else cache_dir() / "thumbnails"
        self._memory: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._memory_items = memory_items
        self._lock = threading.Lock()

    def _path(self, sha256: str, page: int, size: int) -> Path:
        return self.folder / sha256[:2] / f"{sha256}-{page}-{size}.png"

    def get(
        self,
        sha256: str,
        page: int,
        size: int,
        source: Path,
        crop_box: tuple[int, int, int, int] | None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """The thumbnail of one library image, made and cached on first use.

        Raises:
            ImageError: When the image cannot be read.
        """
        key = (sha256, page, size)
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                return hit
        path = self._path(sha256, page, size)
        thumb: np.ndarray | None = None
        if path.is_file():
            try:
                with Image.open(path) as im:
                    thumb = np.asarray(im.convert("L"))
            except (OSError, ValueError):
                thumb = None  # a damaged cache file is simply made again
        if thumb is None:
            view8 = read_image(Path(source), page, max_pixels=max_pixels).view8
            thumb = make_thumbnail(view8, crop_box, size)
            self._write(path, thumb)
        with self._lock:
            self._memory[key] = thumb
            while len(self._memory) > self._memory_items:
                self._memory.popitem(last=False)
        return thumb

    @staticmethod
    def _write(path: Path, thumb: np.ndarray) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
            Image.fromarray(thumb).save(tmp, format="PNG", compress_level=1)
            tmp.replace(path)
        except OSError as exc:  # a read-only cache only costs speed
            log.debug("cannot cache thumbnail %s: %s", path, exc)


@dataclass(frozen=True)
class ThumbRequest:
    """What the thumbnail loader needs to make one thumbnail."""

    image_id: int
    sha256: str
    page: int
    path: Path
    crop_box: tuple[int, int, int, int] | None
    size: int


class ThumbnailQueue:
    """Pending thumbnail requests, newest first (what was scrolled to last is drawn first)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[int, int], ThumbRequest] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    def put_many(self, requests: Iterable[ThumbRequest]) -> None:
        """Queue requests (a repeated request moves to the front)."""
        with self._cond:
            for request in requests:
                key = (request.image_id, request.size)
                self._items.pop(key, None)
                self._items[key] = request
            self._cond.notify()

    def clear(self) -> None:
        """Drop every pending request (e.g. the view's content changed)."""
        with self._cond:
            self._items.clear()

    def close(self) -> None:
        """Wake and stop the loader."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, n: int, timeout: float) -> list[ThumbRequest]:
        """Up to ``n`` newest requests, waiting up to ``timeout`` seconds for one."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            out: list[ThumbRequest] = []
            while self._items and len(out) < n:
                out.append(self._items.popitem(last=True)[1])
            return out

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


def thumbnail_loader(
    requests: ThumbnailQueue,
    cache: ThumbnailCache,
    token: CancelToken,
    *,
    batch: int = 24,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Job[int]:
    """Serve thumbnail requests until cancelled; yields batches as ``data``.

    Yields:
        ``Progress(done, 0, data=[(request, thumb or None), ...])``; None marks an image
        that cannot be read (the view shows a placeholder). The request says which
        content (sha256, page) the thumbnail shows, so a view never pins it on another
        library's image of the same id.

    Returns:
        How many thumbnails were served.
    """
    served = 0
    while not token.cancelled and not requests.closed:
        todo = requests.take(batch, timeout=0.1)
        if not todo:
            continue  # idle: the loop condition checks the token every 0.1 s, no report needed
        out: list[tuple[ThumbRequest, np.ndarray | None]] = []
        for request in todo:
            if token.cancelled:
                break
            try:
                thumb = cache.get(request.sha256, request.page, request.size, request.path, request.crop_box, max_pixels)
            except ImageError as exc:
                log.info("no thumbnail for image %s: %s", request.image_id, exc)
                thumb = None
            out.append((request, thumb))
        served += len(out)
        yield Progress(served, 0, data=out)
    return served


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DemoTile:
    """One demonstration as the grid shows it.

    Attributes:
        image_id: The library image.
        label: Its label.
        similarity: Cosine similarity to the query.
        source: Who set the label (``import``, ``expert``, ``lmm``, ``synthetic`` ...).
        synthetic: True for a synthetic image.
        name: The file name it was imported as.
        thumb: (h, w) uint8 thumbnail, None when it could not be read.
    """

    image_id: int
    label: str
    similarity: float
    source: str
    synthetic: bool
    name: str
    thumb: np.ndarray | None


@dataclass(frozen=True)
class ModelAnswer:
    """The multimodal model's prediction for the current image, as the card shows it.

    Attributes:
        model: Model name.
        label: Its label (None when invalid).
        confidence: Its stated confidence in [0, 1], or None.
        rationale: Its short reason.
        ranking: Its ranked labels (best first).
        valid: False when the answer was outside the taxonomy after a repair request, or refused.
        reason: Why it is invalid, or a note.
        cost_usd: What the call cost.
        cached: True when the answer came from the response cache (no cost).
    """

    model: str
    label: str | None
    confidence: float | None
    rationale: str = ""
    ranking: tuple[str, ...] = ()
    valid: bool = True
    reason: str = ""
    cost_usd: float = 0.0
    cached: bool = False


def save_pasted(view8: np.ndarray, folder: Path | None = None) -> Path:
    """Write a pasted or dropped bitmap as a PNG named by its content (so a re-paste is a duplicate).

    Returns:
        The file, under the cache folder's ``pasted/`` unless ``folder`` is given.
    """
    folder = Path(folder) if folder is not None else cache_dir() / "pasted"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(np.ascontiguousarray(view8).tobytes()).hexdigest()[:16]
    path = folder / f"pasted-{digest}.png"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(view8).save(tmp, format="PNG")
        tmp.replace(path)
    return path
