"""Decode very large PNG and BMP files in strips of rows, so memory follows the strip, not the frame.

Pillow decodes a PNG or BMP into one frame-sized buffer (4 bytes a pixel for RGB: a
400 MP photo needs 1.6 GB before anything else). The import only needs the 8-bit view,
one byte a pixel, so here the file is decoded a strip at a time and each strip is handed
on as a small Pillow image in the very mode (palette, transparency) the full decode has:
the pixels are Pillow's own, bit for bit, and only the strip's bytes are ever held.

PNG: the IDAT stream is inflated incrementally (``zlib.decompressobj`` with a bounded
output) and each strip of filtered rows becomes a stand-alone PNG (IHDR, PLTE, tRNS,
one stored IDAT). Its first row is the previous strip's last *unfiltered* row with
filter type 0, so the Up, Average and Paeth filters of the strip's first real row see
the same prior row as in the whole file; that row is decoded and dropped. The unfiltered
bytes of a strip's last row come from Pillow too: directly from the pixels where the
mode keeps every byte (8-bit types, 16-bit grey), otherwise from a "carrier" PNG of
8-bit samples with the same filter stride (PNG filters work on bytes, ``bpp`` apart; a
16-bit type is two independent byte lanes, high and low, each an 8-bit image).
Interlaced (Adam7) files are decoded the same way pass by pass; each pass's pixels are
placed at their stride in the frame.

BMP: uncompressed rows are read straight from the file (bottom-up or top-down, rows
padded to 4 bytes) and unpacked by Pillow's raw decoder with the plugin's own raw mode.
RLE-compressed BMPs are not handled here (their caller decodes them whole).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import BmpImagePlugin, Image, PngImagePlugin

from nmid_desktop.core.errors import ImageError
from nmid_desktop.core.fileio import open_regular

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 passes: (x0, y0, dx, dy).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# Colour type of an 8-bit carrier image by its bytes per pixel (the PNG filter stride).
_CARRIER_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
_READ_PIECE = 1 << 20


@dataclass(frozen=True)
class Strip:
    """A block of decoded pixels and where it sits in the frame.

    Attributes:
        rows: The frame rows it covers (``start:stop:step``; the step is > 1 for Adam7 passes).
        cols: The frame columns it covers, likewise.
        image: The pixels, in the mode a whole-file Pillow decode gives (with its palette
            and ``transparency``).
    """

    rows: slice
    cols: slice
    image: Image.Image


@dataclass(frozen=True)
class _PngHeader:
    width: int
    height: int
    depth: int
    colour: int
    interlace: int
    extra: tuple[tuple[bytes, bytes], ...]  # PLTE and tRNS, copied into every strip
    idat_offset: int  # file offset of the first IDAT chunk's length field

    @property
    def bits_per_pixel(self) -> int:
        return _CHANNELS[self.colour] * self.depth

    def row_bytes(self, width: int) -> int:
        return (width * self.bits_per_pixel + 7) // 8

    @property
    def bpp(self) -> int:
        """The filter stride in bytes."""
        return max(1, self.bits_per_pixel // 8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _read_png_header(path: Path, handle: BinaryIO) -> _PngHeader:
    if handle.read(8) != _PNG_SIGNATURE:
        raise ImageError(path, "corrupt PNG header (bad signature)")
    ihdr: bytes | None = None
    extra: list[tuple[bytes, bytes]] = []
    while True:
        offset = handle.tell()
        head = handle.read(8)
        if len(head) < 8:
            raise ImageError(path, "truncated PNG data: the file ends before any pixel data")
        length, kind = struct.unpack(">I", head[:4])[0], head[4:]
        if kind == b"IDAT":
            break
        if length > 1 << 24:  # no header chunk we copy is this large; skip others without reading
            handle.seek(length + 4, io.SEEK_CUR)
            continue
        data = handle.read(length)
        handle.read(4)  # CRC (Pillow checks it on open, which has already succeeded)
        if len(data) < length:
            raise ImageError(path, "truncated PNG data: the file ends inside a header chunk")
        if kind == b"IHDR":
            ihdr = data
        elif kind in (b"PLTE", b"tRNS"):
            extra.append((kind, data))
        elif kind == b"IEND":
            raise ImageError(path, "corrupt PNG data: no IDAT chunk")
    if ihdr is None or len(ihdr) < 13:
        raise ImageError(path, "corrupt PNG header (no IHDR)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
    if colour not in _CHANNELS:
        raise ImageError(path, f"corrupt PNG header (colour type {colour})")
    return _PngHeader(width, height, depth, colour, interlace, tuple(extra), offset)


def _idat_pieces(path: Path, handle: BinaryIO, offset: int) -> Iterator[bytes]:
    """The compressed bytes of consecutive IDAT chunks, in pieces of at most 1 MB."""
    handle.seek(offset)
    while True:
        head = handle.read(8)
        if len(head) < 8 or head[4:] != b"IDAT":
            return
        left = struct.unpack(">I", head[:4])[0]
        while left:
            piece = handle.read(min(left, _READ_PIECE))
            if not piece:
                return
            left -= len(piece)
            yield piece
        handle.read(4)  # CRC: not checked, as Pillow does not check it for IDAT


class _Inflater:
    """Inflates a zlib stream on demand, never holding more than what was asked for."""

    def __init__(self, path: Path, pieces: Iterator[bytes]) -> None:
        self._path = path
        self._pieces = pieces
        self._z = zlib.decompressobj()
        self._tail = b""

    def read(self, n: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            if not self._tail:
                if self._z.eof:
                    break
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._tail = piece
            try:
                data = self._z.decompress(self._tail, n - got)
            except zlib.error as exc:
                raise ImageError(self._path, f"corrupt PNG data ({exc})") from None
            self._tail = self._z.unconsumed_tail
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def _png_image(header: _PngHeader, width: int, height: int, depth: int, colour: int, raw: bytes,
               extra: tuple[tuple[bytes, bytes], ...]) -> Image.Image:
    """Pillow's decode of a small non-interlaced PNG whose (filtered) scanlines are ``raw``."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    data = _PNG_SIGNATURE + _chunk(b"IHDR", ihdr)
    for kind, body in extra:
        data += _chunk(kind, body)
    data += _chunk(b"IDAT", zlib.compress(raw, 0)) + _chunk(b"IEND", b"")
    image = PngImagePlugin.PngImageFile(io.BytesIO(data))
    image.load()
    return image


def _exact_row(image: Image.Image, header: _PngHeader) -> bytes | None:
    """The unfiltered bytes of the image's last row, where its mode keeps every byte."""
    if header.depth == 8:
        return np.asarray(image)[-1].tobytes()
    if header.depth == 16 and header.colour == 0:
        return np.asarray(image)[-1].astype(">u2").tobytes()
    return None


def _carrier_row(header: _PngHeader, filtered: np.ndarray, prefix: bytes | None) -> bytes:
    """Unfiltered bytes of the last of ``filtered`` rows (N, 1 + row bytes), via 8-bit carriers."""
    lanes = 2 if header.depth == 16 else 1
    lane_bpp = header.bpp // lanes
    colour = _CARRIER_TYPE[lane_bpp]
    body = filtered[:, 1:]
    out = np.empty(body.shape[1], dtype=np.uint8)
    for lane in range(lanes):
        part = body[:, lane::lanes]
        rows = np.concatenate([filtered[:, :1], part], axis=1)
        if prefix is not None:
            first = np.frombuffer(prefix, dtype=np.uint8)[lane::lanes]
            rows = np.concatenate([np.concatenate([[0], first]).astype(np.uint8)[None, :], rows])
        width = part.shape[1] // lane_bpp
        image = _png_image(header, width, rows.shape[0], 8, colour, rows.tobytes(), ())
        out[lane::lanes] = np.asarray(image)[-1].reshape(-1)
    return out.tobytes()


def png_strips(path: Path, strip_pixels: int) -> Iterator[Strip]:
    """Decode a PNG strip by strip (about ``strip_pixels`` pixels each), Adam7 pass by pass.

    Raises:
        ImageError: A corrupt or truncated file (the row where the data ends is named).
    """
    try:
        with open_regular(path) as handle:
            header = _read_png_header(path, handle)
            inflater = _Inflater(path, _idat_pieces(path, handle, header.idat_offset))
            passes = _ADAM7 if header.interlace else ((0, 0, 1, 1),)
            for x0, y0, dx, dy in passes:
                width = -(-(header.width - x0) // dx) if header.width > x0 else 0
                height = -(-(header.height - y0) // dy) if header.height > y0 else 0
                if not width or not height:
                    continue
                yield from _png_pass(path, header, inflater, (x0, y0, dx, dy), width, height, strip_pixels)
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from None


def _png_pass(path: Path, header: _PngHeader, inflater: _Inflater, geometry: tuple[int, int, int, int],
              width: int, height: int, strip_pixels: int) -> Iterator[Strip]:
    x0, y0, dx, dy = geometry
    line = header.row_bytes(width) + 1
    rows_per_strip = max(1, strip_pixels // max(1, width))
    prefix: bytes | None = None
    for r0 in range(0, height, rows_per_strip):
        n = min(rows_per_strip, height - r0)
        data = inflater.read(n * line)
        if len(data) < n * line:
            row = y0 + (r0 + len(data) // line) * dy
            raise ImageError(path, f"truncated PNG data: the file ends in row {row} of {header.height}")
        filtered = np.frombuffer(data, dtype=np.uint8).reshape(n, line)
        if filtered[:, 0].max() > 4:
            raise ImageError(path, f"corrupt PNG data: unknown filter type in rows from {y0 + r0 * dy}")
        raw = data if prefix is None else b"\x00" + prefix + data
        try:
            image = _png_image(header, width, n + (prefix is not None), header.depth, header.colour, raw, header.extra)
        except ImageError:
            raise
        except Exception as exc:  # Pillow: SyntaxError, OSError, ValueError on a damaged palette
            raise ImageError(path, f"corrupt PNG data ({str(exc)[:120]})") from None
        if prefix is not None:
            image = image.crop((0, 1, width, n + 1))
        last = _exact_row(image, header)
        prefix = last if last is not None else _carrier_row(header, filtered, prefix)
        rows = slice(y0 + r0 * dy, y0 + (r0 + n - 1) * dy + 1, dy)
        yield Strip(rows, slice(x0, header.width, dx), image)


def bmp_strips(path: Path, image: Image.Image, strip_pixels: int) -> Iterator[Strip] | None:
    """Strips of an uncompressed BMP opened (header only) as ``image``; None if it is compressed.

    Raises:
        ImageError: When the file is shorter than its rows (iterating).
    """
    if not isinstance(image, BmpImagePlugin.BmpImageFile) or len(image.tile) != 1:
        return None
    tile = image.tile[0]
    if tile.codec_name != "raw" or not isinstance(tile.args, tuple) or len(tile.args) != 3:
        return None
    rawmode, stride, direction = tile.args
    if not isinstance(rawmode, str) or not isinstance(stride, int) or direction not in (1, -1):
        return None
    return _bmp_iter(path, image, int(tile.offset), rawmode, stride, direction, strip_pixels)


def _bmp_iter(path: Path, image: Image.Image, offset: int, rawmode: str, stride: int, direction: int,
              strip_pixels: int) -> Iterator[Strip]:
    width, height = image.size
    palette = image.palette.getdata() if image.mode == "P" and image.palette is not None else None
    rows_per_strip = max(1, strip_pixels // max(1, width))
    try:
        with open_regular(path) as handle:
            for y in range(0, height, rows_per_strip):
                n = min(rows_per_strip, height - y)
                first = y if direction == 1 else height - y - n  # file row of the block's first row
                handle.seek(offset + first * stride)
                data = handle.read(n * stride)
                if len(data) < n * stride:
                    complete = max(0, (handle.seek(0, io.SEEK_END) - offset) // stride)
                    where = "top" if direction == 1 else "bottom"  # rows are stored from there on
                    raise ImageError(path, f"truncated BMP data: the file holds the {where} {complete} of {height} rows only")
                strip = Image.frombuffer(image.mode, (width, n), data, "raw", rawmode, stride, direction)
                if palette is not None:
                    strip.putpalette(palette[1], palette[0])
                    if "transparency" in image.info:
                        strip.info["transparency"] = image.info["transparency"]
                yield Strip(slice(y, y + n), slice(0, width), strip)
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from None

