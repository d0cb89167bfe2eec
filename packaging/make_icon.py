"""Render resources/icons/nmid-desktop.svg into packaging/nmid-desktop.ico (the Windows executable's icon).

Qt draws the SVG (the same renderer the window uses) and Pillow writes the multi-size .ico,
so the .ico never drifts from the SVG. Run by build_bundle.sh; the result is also committed
(a few kB) so a Windows build works without this step.

Usage: python packaging/make_icon.py [OUT.ico]
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (16, 24, 32, 48, 64, 128, 256)


def render_png(svg: Path, size: int) -> bytes:
    """The SVG drawn at ``size`` x ``size`` pixels, as PNG bytes."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data.data())


def main(argv: list[str]) -> int:
    """Write the .ico; returns the exit status."""
    from PIL import Image

    out = Path(argv[0]) if argv else ROOT / "packaging" / "nmid-desktop.ico"
    big = Image.open(io.BytesIO(render_png(ROOT / "resources" / "icons" / "nmid-desktop.svg", max(SIZES))))
    big.save(out, format="ICO", sizes=[(s, s) for s in SIZES])
    print(f"{out}: {', '.join(str(s) for s in SIZES)} px")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
