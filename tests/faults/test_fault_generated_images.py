"""Endpoints: generated images are checked (bomb header, real format, size) before they are stored."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from fake_openai_server import Reply
from PIL import Image

from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store.base import DescriptionRecord, DescriptionRow, ImageFilter
from nmid_desktop.lmm.images import check_generated_image
from nmid_desktop.lmm.synthesize import synthesize_images

IMAGES = "/v1/images/generations"


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` grey pixels, with a tiny (wrong) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def encoded(fmt: str, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    array = np.random.default_rng(0).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "size", "reason"),
    [
        (png_header_claiming(30000, 30000), "1024x1024", "too many pixels|30000 x 30000"),
        (png_header_claiming(12000, 12000), "1024x1024", "too many pixels|12000 x 12000"),
        (encoded("PNG", (3000, 3000)), "1024x1024", r"3000 x 3000 pixels, but 1024x1024 was asked for"),
        (encoded("GIF"), "1024x1024", "is GIF, not PNG, JPEG or WebP"),
        (encoded("BMP"), "auto", "is BMP"),
        (encoded("PNG")[:60], "1024x1024", "damaged|not a readable"),
        (b"", "1024x1024", "empty"),
        (b"hello, not an image", "1024x1024", "not a readable image"),
    ],
)
def test_bad_generated_images_are_refused_with_a_reason(data: bytes, size: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        check_generated_image(data, size)


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_good_images_get_the_suffix_of_their_real_format(fmt: str, suffix: str) -> None:
    checked = check_generated_image(encoded(fmt, (40, 30)), "1024x1024")
    assert (checked.width, checked.height, checked.suffix) == (40, 30, suffix)


def test_synthesis_stores_only_checked_images_and_reports_the_rest(server, library, settings, client, prices) -> None:
    image = library.images()[0]
    library.add_description(
        DescriptionRecord(image.id, "vision-1", "describe-v1/x/1", [DescriptionRow("Basics", "What?", "Cracks.")])
    )
    bad = [png_header_claiming(30000, 30000), encoded("GIF"), encoded("PNG", (3000, 3000))]
    good = encoded("JPEG", (64, 64))
    server.script(IMAGES, Reply(body={"data": [{"b64_json": base64.b64encode(b).decode()} for b in [*bad, good]]}))
    result = run_job(synthesize_images(library, image.id, 4, settings, client=client, prices=prices))
    assert len(result.image_ids) == 1 and len(result.rejected) == 3
    assert any("GIF" in r for r in result.rejected) and any("1024x1024" in r for r in result.rejected)
    stored = library.get_image(result.image_ids[0])
    assert stored.path.suffix == ".jpg" and stored.width == 64
    assert library.count_images(ImageFilter(synthetic=True)) == 1
