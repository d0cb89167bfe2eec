"""Images as the model sees them: data bar cropped, downscaled, PNG, base64 data URL.

The burned-in SEM data bar (kV, magnification, date, scale bar) is cut off before
anything is sent: it would leak acquisition details and mislead the model into
reading text instead of looking at the material. Library images carry their crop
box; files from outside get one from :func:`nmid_desktop.core.databar.find_micrograph_box`.

PNG keeps the grey levels exactly (micrograph texture is the signal); images go
inline as ``data:image/png;base64,...`` URLs, which every OpenAI-compatible
server accepts and which keeps the images off any public URL.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmid_desktop.core.errors import ImageError
from nmid_desktop.lmm.cost import scaled_size


@dataclass(frozen=True)
class ImageSource:
    """Where to read one image from: plain data, safe to hand to a worker thread.

    Attributes:
        path: The file.
        page: Page of a multi-page file.
        crop_box: ``(x0, y0, x1, y1)`` of the micrograph proper; None means "detect the data bar"
            when ``auto_crop`` is set, else the whole frame.
        image_id: Library id, when the image is in the library.
        width: Width of the part that will be sent (after cropping), when known without reading.
        height: Height likewise.
        auto_crop: Detect the data bar when ``crop_box`` is None.
    """

    path: Path
    page: int = 0
    crop_box: tuple[int, int, int, int] | None = None
    image_id: int | None = None
    width: int = 0
    height: int = 0
    auto_crop: bool = True


@dataclass(frozen=True)
class EncodedImage:
    """One image ready for a request.

    Attributes:
        data_url: ``data:image/png;base64,...``.
        width: Width in pixels as sent.
        height: Height in pixels as sent.
        image_id: Library id, when known.
    """

    data_url: str
    width: int
    height: int
    image_id: int | None = None

    def part(self, detail: str) -> dict[str, Any]:
        """The chat content part: ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``."""
        return {"type": "image_url", "image_url": {"url": self.data_url, "detail": detail}}


def source_from_record(record: Any, *, crop_data_bar: bool = True) -> ImageSource:
    """An :class:`ImageSource` for a library :class:`~nmid_desktop.core.store.base.ImageRecord`."""
    crop = record.crop_box if crop_data_bar else None
    if crop is not None:
        width, height = crop[2] - crop[0], crop[3] - crop[1]
    else:
        width, height = record.width, record.height
    return ImageSource(
        path=Path(record.path),
        page=record.page,
        crop_box=crop,
        image_id=record.id,
        width=int(width),
        height=int(height),
        auto_crop=False,  # the library's box is the expert-checked one; None there means "no bar"
    )


def source_from_path(path: Path, page: int = 0, *, crop_data_bar: bool = True, max_pixels: int | None = None) -> ImageSource:
    """An :class:`ImageSource` for a file outside the library (size from its header; crop found on load)."""
    from nmid_desktop.core.images import DEFAULT_MAX_PIXELS, probe_image

    info = probe_image(Path(path), max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    return ImageSource(path=Path(path), page=page, width=info.width, height=info.height, auto_crop=crop_data_bar)


def load_pixels(source: ImageSource, *, max_pixels: int | None = None) -> np.ndarray:
    """The 2-D uint8 micrograph of a source, data bar cut off. Shape: (H, W)."""
    from nmid_desktop.core.images import DEFAULT_MAX_PIXELS, model_input, read_image

    limit = max_pixels or DEFAULT_MAX_PIXELS
    if source.crop_box is None and source.auto_crop:
        from nmid_desktop.core.databar import find_micrograph_box

        view8 = read_image(source.path, source.page, max_pixels=limit).view8
        x0, y0, x1, y1 = find_micrograph_box(view8)
        return view8[y0:y1, x0:x1]
    return model_input(source.path, source.page, source.crop_box, max_pixels=limit)


def downscale(array: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink a (H, W) uint8 image so its long side is at most ``max_side`` (area filter; never enlarges)."""
    from PIL import Image

    height, width = array.shape[:2]
    new_w, new_h = scaled_size(width, height, max_side)
    if (new_w, new_h) == (width, height):
        return array
    # BOX (area averaging) keeps fine texture statistics better than bilinear when shrinking.
    return np.asarray(Image.fromarray(array).resize((new_w, new_h), Image.Resampling.BOX))


def encode_array(array: np.ndarray, max_side: int, *, image_id: int | None = None) -> EncodedImage:
    """Encode a grey micrograph as a PNG data URL.

    Args:
        array: (H, W) uint8 (other dtypes and RGB are refused: convert with core.images first).
        max_side: Longest side sent, in pixels (``lmm.image_max_side``).
        image_id: Library id to carry along.

    Raises:
        ImageError: If the array is not a non-empty 2-D uint8 image.
    """
    from PIL import Image

    if array.ndim != 2 or array.dtype != np.uint8 or array.size == 0:
        raise ImageError("image", f"expected a 2-D uint8 array, got shape {array.shape} {array.dtype}")
    small = np.ascontiguousarray(downscale(array, max_side))
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="PNG", optimize=False)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return EncodedImage(f"data:image/png;base64,{data}", int(small.shape[1]), int(small.shape[0]), image_id)


def encode_source(source: ImageSource | np.ndarray | Path | str, max_side: int, *, max_pixels: int | None = None) -> EncodedImage:
    """Read (if needed), crop and encode one image.

    Args:
        source: An :class:`ImageSource`, a (H, W) uint8 array, or a file path (data bar detected).
        max_side: Longest side sent.
        max_pixels: Decompression-bomb limit for files.
    """
    if isinstance(source, np.ndarray):
        return encode_array(source, max_side)
    if isinstance(source, (str, Path)):
        source = ImageSource(path=Path(source))
    return encode_array(load_pixels(source, max_pixels=max_pixels), max_side, image_id=source.image_id)


def source_size(source: ImageSource | np.ndarray | Path | str) -> tuple[int, int]:
    """``(width, height)`` for cost estimates, without decoding pixels where possible."""
    if isinstance(source, np.ndarray):
        return int(source.shape[1]), int(source.shape[0])
    if isinstance(source, (str, Path)):
        from nmid_desktop.core.images import probe_image

        info = probe_image(Path(source))
        return info.width, info.height
    if source.width and source.height:
        return source.width, source.height
    from nmid_desktop.core.images import probe_image

    info = probe_image(source.path)
    return info.width, info.height


# ----------------------------------------------------------------------------- generated images

GENERATED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
# An answer may be somewhat larger than asked (servers round sizes up), never a bomb.
_OVERSIZE_FACTOR = 2
_AUTO_MAX_SIDE = 4096


@dataclass(frozen=True)
class GeneratedImage:
    """A generated image that passed :func:`check_generated_image`.

    Attributes:
        width: Width in pixels.
        height: Height in pixels.
        suffix: File suffix of its real format (``.png``, ``.jpg``, ``.webp``).
    """

    width: int
    height: int
    suffix: str


def _requested(size: str) -> tuple[int, int] | None:
    """``(width, height)`` of a ``WIDTHxHEIGHT`` request, None for ``auto`` or anything else."""
    parts = size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def check_generated_image(data: bytes, requested_size: str = "auto") -> GeneratedImage:
    """Check what an image model returned before it is stored.

    The header is read first, so a 30000 x 30000 claim is refused without decoding a
    pixel; then the real format (a GIF named nothing is not a PNG) and the size
    against the request; finally the whole image is decoded, so a truncated one is caught.

    Args:
        data: The decoded ``b64_json`` bytes.
        requested_size: The ``size`` of the request (``1024x1024`` or ``auto``).

    Raises:
        ImageError: Naming what is wrong.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    what = "generated image"
    if not data:
        raise ImageError(what, "the endpoint returned an empty image")
    asked = _requested(requested_size)
    max_w, max_h = (asked[0] * _OVERSIZE_FACTOR, asked[1] * _OVERSIZE_FACTOR) if asked else (_AUTO_MAX_SIDE,) * 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = str(im.format or "")
                width, height = im.size
                if fmt not in GENERATED_FORMATS:
                    raise ImageError(what, f"is {fmt or 'an unknown format'}, not PNG, JPEG or WebP: not stored")
                if width < 1 or height < 1 or width > max_w or height > max_h:
                    raise ImageError(
                        what,
                        f"is {width} x {height} pixels, but {requested_size} was asked for: not stored "
                        "(a decompression bomb or a wrong answer)",
                    )
                im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(what, f"claims too many pixels to decode safely ({exc}): not stored") from None
    except UnidentifiedImageError:
        raise ImageError(what, "is not a readable image: not stored") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged data
        raise ImageError(what, f"is damaged ({exc}): not stored") from None
    return GeneratedImage(int(width), int(height), GENERATED_FORMATS[fmt])
