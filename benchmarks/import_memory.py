"""Peak memory of importing very large micrographs: 64- and 400-megapixel files.

Usage::

    .venv/bin/python benchmarks/import_memory.py [--workers N] [--sizes 64,400] [--kinds png8,tif16,jpgrgb,tifrgb,pngrgb,bmprgb] [--keep DIR]

Writes one folder of large synthetic images per size (each file written by a child
process, so the writer's memory is not counted), imports the folder into a fresh
library in another child process, and prints that child's peak resident set size
(``ru_maxrss``: Python, NumPy, Pillow and tifffile included) and the time. The target
(issue 10) is a peak under 2 GB for folders of 64- and 400-megapixel images, with the
import's default number of decoding threads (``--workers`` to emulate a 4-core PC).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

KINDS = {
    "png8": "8-bit grey PNG",
    "tif8": "8-bit grey TIFF",
    "tif16": "16-bit grey TIFF",
    "tiff32": "32-bit float TIFF",
    "jpgrgb": "RGB JPEG",
    "tifrgb": "RGB TIFF",
    "pngrgb": "RGB PNG",
    "pngrgbi": "interlaced RGB PNG",
    "bmprgb": "24-bit RGB BMP",
}
SUFFIXES = {"png8": ".png", "jpgrgb": ".jpg", "pngrgb": ".png", "pngrgbi": ".png", "bmprgb": ".bmp"}

_WRITER = r"""
import sys
import numpy as np
kind, side, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if kind in ("pngrgb", "pngrgbi", "bmprgb"):
    # Written band by band (a 400 MP RGB frame would need 1.2 GB here, 1.6 GB in Pillow).
    import struct, zlib

    def rgb(ys, xs):
        ys, xs = np.asarray(ys, np.int64)[:, None], np.asarray(xs, np.int64)[None, :]
        def a(y, x):
            return (((x * 7) ^ (y * 3)) & 255).astype(np.uint8)
        return np.stack([a(ys, xs), a(side - 1 - ys, xs), a(ys, side - 1 - xs)], -1)

    band = max(1, 4_000_000 // side)
    with open(path, "wb") as out:
        if kind == "bmprgb":
            stride = (side * 3 + 3) & ~3
            out.write(b"BM" + struct.pack("<IHHI", 54 + stride * side, 0, 0, 54))
            out.write(struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, stride * side, 2835, 2835, 0, 0))
            for top in range(side, 0, -band):  # bottom-up: the last row first
                ys = np.arange(top - 1, max(0, top - band) - 1, -1)
                rows = np.zeros((len(ys), stride), np.uint8)
                rows[:, : side * 3] = rgb(ys, np.arange(side))[:, :, ::-1].reshape(len(ys), -1)
                out.write(rows.tobytes())
        else:
            def chunk(kind, data):
                out.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))
            out.write(b"\x89PNG\r\n\x1a\n")
            chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, int(kind == "pngrgbi")))
            passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
            z = zlib.compressobj(1)
            for x0, y0, dx, dy in passes if kind == "pngrgbi" else ((0, 0, 1, 1),):
                xs, all_ys = np.arange(x0, side, dx), np.arange(y0, side, dy)
                for start in range(0, len(all_ys), band):
                    rows = rgb(all_ys[start : start + band], xs).reshape(-1, len(xs) * 3).astype(np.int16)
                    rows[:, 3:] -= rows[:, :-3].copy()  # the Sub filter on every row
                    lines = np.concatenate([np.ones((len(rows), 1), np.int16), rows], 1) & 255
                    data = z.compress(lines.astype(np.uint8).tobytes())
                    if data:
                        chunk(b"IDAT", data)
            chunk(b"IDAT", z.flush())
            chunk(b"IEND", b"")
    sys.exit(0)
rows = []
# Built in bands so the writer itself stays small; a texture that compresses moderately.
y = np.arange(side, dtype=np.uint32)[:, None]
x = np.arange(side, dtype=np.uint32)[None, :]
a = (((x * 7) ^ (y * 3)) & 255).astype(np.uint8)
if kind == "png8":
    from PIL import Image
    Image.fromarray(a).save(path, compress_level=1)
elif kind == "tif8":
    import tifffile
    tifffile.imwrite(path, a)
elif kind == "tif16":
    import tifffile
    tifffile.imwrite(path, a.astype(np.uint16) * 257)
elif kind == "tiff32":
    import tifffile
    tifffile.imwrite(path, a.astype(np.float32) / 255)
elif kind == "tifrgb":
    import tifffile
    tifffile.imwrite(path, np.stack([a, a[::-1], a[:, ::-1]], -1))
elif kind == "jpgrgb":
    from PIL import Image
    Image.fromarray(np.stack([a, a[::-1], a[:, ::-1]], -1)).save(path, quality=85)
"""

_IMPORTER = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from nmid_desktop.core.importer import import_folder
from nmid_desktop.core.jobs import run_job
from nmid_desktop.core.store import open_library
folder, library, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) or None
store = open_library(library)
start = time.perf_counter()
report = run_job(import_folder(store, folder, layout="flat", workers=workers))
seconds = time.perf_counter() - start
store.close()
print(json.dumps({
    "seconds": seconds,
    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "summary": report.summary(),
    "skipped": [[i.path.name, i.reason] for i in report.items if i.status == "skipped"],
}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="decoding threads (0: the import's default)")
    parser.add_argument("--sizes", default="64,400", help="megapixels per image, comma-separated")
    parser.add_argument("--kinds", default="png8,tif16,jpgrgb,tifrgb,pngrgb,bmprgb", help=f"file kinds: {','.join(KINDS)}")
    parser.add_argument("--keep", type=Path, default=None, help="write the images here and keep them")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="nmid-bigimages-"))
    worst = 0.0
    try:
        for mp in (int(s) for s in args.sizes.split(",")):
            side = int((mp * 1_000_000) ** 0.5)
            folder = root / f"{mp}mp"
            folder.mkdir(parents=True, exist_ok=True)
            for kind in kinds:
                suffix = SUFFIXES.get(kind, ".tif")
                path = folder / f"{kind}{suffix}"
                if not path.exists():
                    subprocess.run([sys.executable, "-c", _WRITER, kind, str(side), str(path)], check=True)
            library = root / f"lib-{mp}"
            shutil.rmtree(library, ignore_errors=True)
            out = subprocess.run(
                [sys.executable, "-c", _IMPORTER, str(folder), str(library), str(args.workers), str(REPO)],
                check=True, capture_output=True, text=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            worst = max(worst, result["peak_mb"])
            names = ", ".join(KINDS[k] for k in kinds)
            print(f"{mp} MP folder ({side} x {side}: {names}): peak RSS {result['peak_mb']:.0f} MB, "
                  f"{result['seconds']:.1f} s, {result['summary']}")
            for name, reason in result["skipped"]:
                print(f"  skipped {name}: {reason}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"worst peak RSS: {worst:.0f} MB (target < 2048 MB)")
    return 0 if worst < 2048 else 1


if __name__ == "__main__":
    sys.exit(main())
