"""A small PNG writer for tests: every filter type, bit depth, colour type and Adam7, chosen by the test.

Pillow's encoder picks its own filters; the strip decoder must be right for each of the
five, for every filter stride, so tests write files whose rows cycle through them.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _pack_rows(samples: np.ndarray, depth: int) -> np.ndarray:
    """(H, W, C) sample values to (H, row bytes) uint8 scanlines without filter bytes."""
    height = samples.shape[0]
    flat = samples.reshape(height, -1)
    if depth == 16:
        return flat.astype(">u2").view(np.uint8).reshape(height, -1)
    if depth == 8:
        return flat.astype(np.uint8)
    per_byte = 8 // depth
    n = flat.shape[1]
    padded = np.zeros((height, -(-n // per_byte) * per_byte), dtype=np.uint8)
    padded[:, :n] = flat
    groups = padded.reshape(height, -1, per_byte)
    out = np.zeros(groups.shape[:2], dtype=np.uint8)
    for k in range(per_byte):
        out |= (groups[:, :, k] << (8 - depth * (k + 1))).astype(np.uint8)
    return out


def _filter(rows: np.ndarray, bpp: int, filters: list[int]) -> bytes:
    """Apply the given filter type to each row (cycling through ``filters``)."""
    out = bytearray()
    prior = np.zeros(rows.shape[1], dtype=np.int32)
    for i, row in enumerate(rows.astype(np.int32)):
        kind = filters[i % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]]) if row.size > bpp else np.zeros_like(row)
        upleft = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]]) if row.size > bpp else np.zeros_like(row)
        if kind == 0:
            line = row
        elif kind == 1:
            line = row - left
        elif kind == 2:
            line = row - prior
        elif kind == 3:
            line = row - (left + prior) // 2
        else:
            p = left + prior - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
            line = row - pred
        out.append(kind)
        out += (line & 255).astype(np.uint8).tobytes()
        prior = row
    return bytes(out)


def write_png(
    path: Path,
    samples: np.ndarray,
    *,
    depth: int,
    colour: int,
    filters: list[int] | None = None,
    palette: np.ndarray | None = None,
    trns: bytes | None = None,
    interlace: bool = False,
    idat_pieces: int = 3,
) -> None:
    """Write ``samples`` (H, W, C) as a PNG with the given depth, colour type and row filters."""
    filters = filters or [0, 1, 2, 3, 4]
    height, width = samples.shape[:2]
    bpp = max(1, CHANNELS[colour] * depth // 8)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    data = b""
    for x0, y0, dx, dy in passes:
        part = samples[y0::dy, x0::dx]
        if part.size:
            data += _filter(_pack_rows(part, depth), bpp, filters)
    compressed = zlib.compress(data, 6)
    body = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, int(interlace)))
    if palette is not None:
        body += _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if trns is not None:
        body += _chunk(b"tRNS", trns)
    size = -(-len(compressed) // idat_pieces)
    for start in range(0, len(compressed), size):  # several IDAT chunks, as big files have
        body += _chunk(b"IDAT", compressed[start : start + size])
    body += _chunk(b"IEND", b"")
    path.write_bytes(body)
