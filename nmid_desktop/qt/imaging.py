"""NumPy arrays to Qt images, display look-up tables, and small drawing helpers.

Everything here is cheap enough for the GUI thread (work on 256-entry tables or
on thumbnails); whole-image arithmetic on raw data runs in workers
(:mod:`nmid_desktop.workspace.display`).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QColor, QImage, QPixmap

# Class colours when the taxonomy has none: Okabe-Ito, distinguishable by colour-blind readers.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

SOURCE_NAMES = {
    "import": "imported",
    "expert": "expert",
    "local": "local predictor",
    "lmm": "model",
    "synthetic": "synthetic",
}


def gray_qimage(view8: np.ndarray, lut: list[int] | None = None) -> QImage:
    """A QImage owning a copy of a 2-D uint8 array, optionally through a colour table.

    Args:
        view8: (H, W) uint8.
        lut: 256 ``qRgb`` values (Indexed8 with that table); None gives plain grey.

    Raises:
        ValueError: If the array is not 2-D uint8.
    """
    if view8.ndim != 2 or view8.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got {view8.dtype} {view8.shape}")
    data = np.ascontiguousarray(view8)
    height, width = data.shape
    fmt = QImage.Format.Format_Indexed8 if lut is not None else QImage.Format.Format_Grayscale8
    image = QImage(data.data, width, height, data.strides[0], fmt)
    if lut is not None:
        image.setColorTable(lut)
    return image.copy()  # detach from the NumPy buffer


def gray_pixmap(view8: np.ndarray) -> QPixmap:
    """A QPixmap of a 2-D uint8 array (GUI thread only: pixmaps are not thread-safe)."""
    return QPixmap.fromImage(gray_qimage(view8))


def window_lut(black: float, white: float, gamma: float = 1.0) -> list[int]:
    """A grey colour table mapping ``black`` to 0 and ``white`` to 255 (8-bit levels).

    Args:
        black: Level shown black (0-255).
        white: Level shown white (> black).
        gamma: Display gamma (1 = linear).
    """
    white = max(white, black + 1e-3)
    levels = np.clip((np.arange(256, dtype=np.float64) - black) / (white - black), 0.0, 1.0)
    if gamma != 1.0:
        levels = levels ** (1.0 / gamma)
    grey = np.rint(levels * 255).astype(np.uint32)
    return [int(0xFF000000 | (g << 16) | (g << 8) | g) for g in grey]


def class_color(name: str, classes: list[str], explicit: str = "") -> QColor:
    """A stable colour for a class: its own colour if set, else one of the palette by position."""
    if explicit:
        color = QColor(explicit)
        if color.isValid():
            return color
    index = classes.index(name) if name in classes else abs(hash(name))
    return QColor(PALETTE[index % len(PALETTE)])


def format_length(metres: float) -> str:
    """A length with a sensible unit (e.g. ``250 nm``, ``1.5 µm``)."""
    for unit, scale in (("m", 1.0), ("mm", 1e-3), ("µm", 1e-6), ("nm", 1e-9), ("pm", 1e-12)):
        if metres >= scale:
            value = metres / scale
            return f"{value:.3g} {unit}"
    return f"{metres:.3g} m"


def nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``metres`` (scale bar lengths)."""
    if metres <= 0:
        return 0.0
    exponent = np.floor(np.log10(metres))
    base = 10.0**exponent
    for step in (5.0, 2.0, 1.0):
        if step * base <= metres:
            return float(step * base)
    return float(base)
