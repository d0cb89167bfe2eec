"""Find the burned-in SEM data bar at the bottom of a micrograph.

Scanning electron microscopes write a band of text (high voltage, magnification,
working distance, date) and a scale bar under or over the bottom of the image.
Left in, it leaks into retrieval (images from the same instrument look alike)
and misleads the LMM, so the encoder and the LMM only see the micrograph proper.

What every instrument's bar has in common, and what this detector relies on:

* it spans the full width at the bottom and has one background level (black on
  FEI/Thermo and JEOL, white or light grey on Zeiss and Tescan, black on Hitachi
  where it is drawn over the image's last rows);
* its pixels are two-level: background, or "ink" (text, scale bar, separator
  lines) of strong contrast to it; antialiasing and JPEG ringing add a few
  in-between values near the ink;
* it starts with a sharp change of row statistics (often a separator line),
  whereas a dark, bright or smooth region of a real micrograph fades in;
* it holds text: rows that cross a line of characters cut many strokes, below
  a margin of background; and a margin row is noise-free, unlike an image.

Steps, all on per-row histograms of the bottom 35 % of the frame (one
``np.bincount``; about 2 ms for 1024 x 1024):

1. background = the commonest level of the bottom rows; per row, the share of
   pixels near it ("near", within 12 levels), at it ("flat", within 3), far
   from it ("ink") and in between ("mid");
2. boundary = the row maximising (mean share of the rows below) minus (largest
   share among the three rows above): a change-point search that a gradual
   fade cannot win;
3. the band below it must be thin enough, keep background in every row, be
   mostly two-level, hold a flat margin row and at least three text rows under
   an ink-free margin, and the image above must not fade into its level.

It is tuned to miss rather than to cut: a false crop removes real content from
every later step, a miss only leaves a bar in. ``benchmarks/databar_rates.py``
measures both on bars of several instrument styles and on hard negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Largest bar height as a fraction of the image height; taller bands are image content.
_MAX_BAR_FRACTION = 0.35
# Rows of image above the tallest bar examined for the step at the boundary.
_CONTEXT_ROWS = 16
# Background tolerances in grey levels: "near" admits JPEG ringing and antialiasing
# around text; "flat" is the exact level of an untouched bar margin.
_NEAR_TOL = 12
_FLAT_TOL = 3
# Every row of a bar keeps some background (text covers part of a row), and the
# band as a whole has few in-between grey levels (text is two-level).
_ROW_MIN_NEAR_ANY = 0.25
_BAND_MAX_MID = 0.2
# The boundary: background share must jump by this much from the image row above
# to the bar's first rows (a fade or a clipped region rises gradually).
_MIN_STEP = 0.4
# Text evidence: a row crossing a line of text cuts many strokes.
_TEXT_RUNS = 8
_MIN_TEXT_ROWS = 3
# A margin row: (nearly) every pixel at the exact background level.
_BLANK_FLAT = 0.85

# Wider images are examined on every k-th row and column (text on such frames
# is drawn proportionally large, so strokes survive the subsampling).
_MAX_WIDTH = 2048

@dataclass(frozen=True)
class DataBar:
    """A detected data bar.

    Attributes:
        y0: First row of the bar (the micrograph proper is rows ``0 .. y0-1``).
        height: Rows from ``y0`` to the bottom of the image.
        background: The bar's background grey level (0-255).
        confidence: In (0, 1]; how clearly the evidence separates bar from image.
    """

    y0: int
    height: int
    background: int
    confidence: float


def _row_histograms(rows: np.ndarray) -> np.ndarray:
    """Shape (R, 256): per-row grey-level counts of an (R, W) uint8 array."""
    n_rows = rows.shape[0]
    offsets = (np.arange(n_rows, dtype=np.int32) * 256)[:, None]
    flat = (rows.astype(np.int32) + offsets).ravel()
    return np.bincount(flat, minlength=n_rows * 256).reshape(n_rows, 256)


def detect_data_bar(view8: np.ndarray) -> DataBar | None:
    """Detect a burned-in data bar at the bottom of a grey 8-bit image.

    Args:
        view8: (H, W) uint8 grey image (``Micrograph.view8``).

    Returns:
        The bar, or None when there is none or the evidence is not clear.

    Raises:
        ValueError: If ``view8`` is not a 2-D uint8 array.
    """
    return _detect(view8)[0]


def _detect(view8: np.ndarray) -> tuple[DataBar | None, str]:
    """:func:`detect_data_bar` plus the reason for a rejection (tests and benchmark use it)."""
    if view8.ndim != 2 or view8.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got {view8.dtype} {view8.shape}")
    full_height, full_width = view8.shape
    step_px = -(-full_width // _MAX_WIDTH)
    if step_px > 1:
        bar, reason = _detect(np.ascontiguousarray(view8[::step_px, ::step_px]))
        if bar is None:
            return None, reason
        # The true edge lies within the k rows above the subsampled one; keeping
        # k-1 bar rows in the crop is safer than cutting image rows.
        y0 = min(full_height - 1, bar.y0 * step_px)
        return DataBar(y0=y0, height=full_height - y0, background=bar.background, confidence=bar.confidence), reason
    height, width = view8.shape
    if height < 32 or width < 32:
        return None, "image too small"
    max_bar = int(height * _MAX_BAR_FRACTION)
    min_bar = max(6, int(round(height * 0.015)))
    start = max(0, height - max_bar - _CONTEXT_ROWS)
    rows = view8[start:]
    hist = _row_histograms(rows)
    n_rows = hist.shape[0]
    cum = np.zeros((n_rows, 257), dtype=np.int64)
    np.cumsum(hist, axis=1, out=cum[:, 1:])

    def share(lo: int, hi: int) -> np.ndarray:
        """Per-row share of pixels with level in [lo, hi]."""
        lo, hi = max(0, lo), min(255, hi)
        if hi < lo:
            return np.zeros(n_rows)
        return (cum[:, hi + 1] - cum[:, lo]) / width

    # The bar's background: the commonest level of the bottom rows.
    tail = max(3, n_rows // 12)
    background = int(np.argmax(hist[-tail:].sum(axis=0)))
    near = share(background - _NEAR_TOL, background + _NEAR_TOL)
    if near[-tail:].mean() < 0.5:
        return None, "no common background in the bottom rows"
    flat = share(background - _FLAT_TOL, background + _FLAT_TOL)
    ink_gap = max(40, int(0.35 * max(background, 255 - background)))
    ink = share(0, background - ink_gap) + share(background + ink_gap, 255)
    mid = np.clip(1.0 - near - ink, 0.0, 1.0)
    # Lines (separator, frame) are rows (nearly) all at one level other than the background.
    line = (hist.max(axis=1) >= 0.9 * width) & (near < 0.5)
    # Looser: most of the row within the near tolerance of its own commonest level.
    modes = np.argmax(hist, axis=1)
    idx = np.arange(n_rows)
    around_mode = (cum[idx, np.minimum(modes + _NEAR_TOL, 255) + 1] - cum[idx, np.maximum(modes - _NEAR_TOL, 0)]) / width
    line_like = (around_mode >= 0.85) & (np.abs(modes - background) > _NEAR_TOL)

    # Change point: the boundary row t maximises (mean background share of rows
    # t..end) - (largest background share among the 3 rows above t). Inside the
    # bar the rows above are bar rows too (high share); in a fade they rise
    # gradually; only a real boundary gives a large value. Computed for the
    # "near" and the "flat" share: flat separates a bright, noisy image from a
    # white bar that "near" (which tolerates JPEG ringing) cannot.
    best_score, top = -1.0, -1
    for share_row in (near, flat):
        inside = np.where(line, 1.0, share_row)
        suffix = np.cumsum(inside[::-1])[::-1]
        candidates = np.arange(3, n_rows - min_bar + 1)
        if candidates.size == 0:
            return None, "image too small"
        band_mean = suffix[candidates] / (n_rows - candidates)
        above_max = np.maximum.reduce([share_row[candidates - k] for k in (1, 2, 3)])
        scores = band_mean - above_max
        k = int(np.argmax(scores))
        if scores[k] > best_score:
            best_score, top = float(scores[k]), int(candidates[k])
    if best_score < _MIN_STEP:
        return None, f"no sharp boundary (step {best_score:.2f})"
    # The mean rewards taking in one last image row that is a little bar-like
    # (JPEG blocks straddle the edge): a bar's first row is a margin, a line or
    # text on background, never mostly foreign pixels.
    for _ in range(3):
        if line[top] or line_like[top] or near[top] >= 0.5:
            break
        top += 1
    if start + top < height - max_bar:
        return None, "band taller than any data bar"
    # Skip separator lines at the top: the evidence comes from the bar's body.
    first = top
    while first < n_rows and line[first]:
        first += 1
    # A thin separator line (possibly blurred by JPEG) directly above belongs to the bar.
    line_top = top
    while line_top > 0 and line_like[line_top - 1] and top - line_top < 4:
        line_top -= 1
    if line_top < top and line_top > 0 and not line_like[line_top - 1]:
        top = line_top
    if n_rows - first < min_bar:
        return None, "band too thin"
    body = slice(first, n_rows)
    not_line = ~line[body]
    # (Allow a row or two, e.g. a frame line blurred by JPEG compression.)
    near_body = np.sort(near[body][not_line])
    if float(near_body[min(len(near_body) - 1, len(near_body) // 12)]) < _ROW_MIN_NEAR_ANY:
        return None, "a row of the band has little background (image content)"
    if float(mid[body][not_line].mean()) > _BAND_MAX_MID:
        return None, "too many in-between grey levels in the band (image content)"
    if int((flat[body] >= _BLANK_FLAT).sum()) < 1:
        return None, "no flat background row (noise: image content)"
    # Text: rows where the ink mask changes from off to on many times.
    band = rows[first:]
    inked = (band <= background - ink_gap) | (band >= background + ink_gap)
    runs = (inked[:, 1:] & ~inked[:, :-1]).sum(axis=1) + inked[:, 0]
    is_text = runs >= _TEXT_RUNS
    text_rows = int(is_text.sum())
    if text_rows < _MIN_TEXT_ROWS:
        return None, f"no text ({text_rows} text rows)"
    # Text sits below a margin: some row between the bar's top and its first
    # text row is free of ink. Image remnants fading into a dark region touch
    # the boundary instead.
    first_text = int(np.argmax(is_text))
    ink_per_row = inked[:first_text].mean(axis=1) if first_text > 0 else np.ones(1)
    if float(ink_per_row.min()) > 0.01:
        return None, "ink touches the top of the band (no margin above the text)"
    # A fade: the image above darkens (or brightens) steadily towards the bar's
    # level, and more and more of its pixels already reach that level.
    if top >= 12:
        level_near = float(np.abs(rows[top - 3 : top].astype(np.float32).mean() - background))
        level_far = float(np.abs(rows[top - 12 : top - 9].astype(np.float32).mean() - background))
        share_rise = float(near[top - 3 : top].mean() - near[top - 12 : top - 9].mean())
        if level_far > 2 * _NEAR_TOL and level_near < 0.6 * level_far and share_rise > 0.08:
            return None, "the image fades into the band's level (no boundary)"
    confidence = float(np.clip(0.4 + 0.4 * min(1.0, best_score) + 0.2 * min(1.0, text_rows / 10), 0.0, 1.0))
    y0 = start + top
    return DataBar(y0=y0, height=height - y0, background=background, confidence=confidence), "bar"


def find_micrograph_box(view8: np.ndarray) -> tuple[int, int, int, int]:
    """The crop box ``(x0, y0, x1, y1)`` of the micrograph proper.

    Args:
        view8: (H, W) uint8 grey image.

    Returns:
        ``(0, 0, W, bar.y0)`` when a data bar is found, else the full frame ``(0, 0, W, H)``.
    """
    height, width = view8.shape[:2]
    bar = detect_data_bar(view8)
    if bar is None:
        return (0, 0, int(width), int(height))
    return (0, 0, int(width), int(bar.y0))
