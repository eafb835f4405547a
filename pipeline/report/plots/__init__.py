"""Plots (matplotlib, Agg backend, PNG files), one module per lesson topic.

``input.py`` (preprocessing and outliers), ``layers.py`` (feature maps, filters, weight histograms) and
``lesson.py`` (activation gallery, gradient flow, SGD step, detections, CAM) all write through
``save_png``, so every figure is written atomically. Photos are drawn with ``imshow_photo``, which hands
matplotlib a copy no bigger than the figure can show, in a figure sized by ``photo_figsize``, whose shape
follows the photo's only up to ``MAX_FIGURE_ASPECT``. Nothing here runs the model.

Examples:
    >>> fig, ax = plt.subplots()
    >>> imshow_photo(ax, run.pixels)
    >>> save_png(fig, "out/report_files/photo.png")
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
# A name with a control character (a file's, a class's) has no glyph: matplotlib would warn with the raw byte in
# the message, on the terminal. save_png escapes every text before the figure is written, so the warning says
# nothing the figure keeps (layout passes such as tight_layout run before it).
warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)

import matplotlib.pyplot as plt  # noqa: E402

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from matplotlib.text import Text  # noqa: E402

from pipeline.core.io import atomic_write_bytes, one_line, shrink  # noqa: E402

#: Longest side, in pixels, of a photo as handed to matplotlib. Our figures are at most ~1100 pixels wide,
#: so this is about twice what any panel can show; a bigger photo is shrunk first, because matplotlib
#: resamples the whole array in float64 RGBA (about 70 bytes per pixel at its peak: 4.4 GB for 8000x8000).
DISPLAY_MAX_SIDE = 1024
#: Most a photo's figure is taller than wide (or wider than tall). The figure's pixels are what matplotlib
#: allocates: a 16x20000 strip gave a figure thousands of inches tall (tens of GB) and a 20000x16 panorama
#: one with no pixel row (a traceback). Beyond this the photo is drawn letterboxed in the clamped figure.
MAX_FIGURE_ASPECT = 2.5


def _escape_texts(fig) -> None:
    """Escape every control character in the figure's texts (``one_line``, line by line), before it is drawn.

    A file name is drawn into titles and captions, and a name may hold an ESC or a CR: matplotlib then warns
    "Glyph 27 (<ESC>) missing from font", quoting the raw character onto the terminal. Every figure is drawn
    here, so escaping here covers every name any plot draws, present or future. Newlines the plots put
    between lines of a caption stay newlines; a name's own newline at worst starts a new line in a picture.
    """
    for text in fig.findobj(Text):
        raw = text.get_text()
        safe = "\n".join(one_line(part) for part in raw.split("\n"))
        if safe != raw:
            text.set_text(safe)


def narrow_path(path) -> Path:
    """Where ``save_png`` writes the stacked version of a figure of several panel columns (``NAME.narrow.png``)."""
    path = Path(path)
    return path.with_name(path.stem + ".narrow" + path.suffix)


def _stacked_panels(fig, renderer, rgba: np.ndarray, dpi: int, pad_inches: float) -> np.ndarray | None:
    """The figure's panels one under another, cut from its one rendering, or None when it has one column.

    A phone shows a figure of 2-4 panels side by side at a third of their size; stacked, each panel keeps its
    own width. A panel is an axes with its labels and title (and its twin axes); a colourbar goes with the panel
    whose image it explains, the figure's own title and texts on top. A regular grid is read row by row,
    any other layout column by column.
    """
    def is_bar(ax):
        return ax.get_label() == "<colorbar>" or getattr(ax, "_colorbar", None) is not None

    shown = [ax for ax in fig.axes if ax.get_visible()]
    panels, boxes, owner = [], {}, {}
    for ax in (ax for ax in shown if not is_bar(ax)):
        twin = next((p for p in panels if np.allclose(p.get_position().bounds, ax.get_position().bounds, atol=1e-3)), None)
        if twin is None:  # a twinx/twiny axes shares its panel's place: one panel
            panels.append(ax)
            boxes[ax] = ax.get_tightbbox(renderer)
        else:
            owner[ax] = twin
            boxes[twin] = Bbox.union([boxes[twin], ax.get_tightbbox(renderer)])
    if len({round(ax.get_position().x0, 2) for ax in panels}) < 2:
        return None
    for bar in (ax for ax in shown if is_bar(ax)):
        b = bar.get_tightbbox(renderer)
        mappable = getattr(getattr(bar, "_colorbar", None), "mappable", None)
        near = getattr(mappable, "axes", None)  # the axes whose image the bar explains, where matplotlib says it
        near = owner.get(near, near)
        if near not in boxes:
            near = min(panels, key=lambda ax: min(abs(b.x0 - boxes[ax].x1), abs(boxes[ax].x0 - b.x1)))
        boxes[near] = Bbox.union([boxes[near], b])
    col = {ax: round(ax.get_position().x0, 2) for ax in panels}
    row = {ax: round(ax.get_position().y1, 2) for ax in panels}
    grid = len({tuple(sorted(row[a] for a in panels if col[a] == c)) for c in set(col.values())}) == 1
    # a regular grid reads row by row (a row is one layer, one channel); else column by column, each top to
    # bottom, so that a column of small panels beside tall ones stays together
    order = sorted(panels, key=(lambda ax: (-row[ax], col[ax])) if grid else (lambda ax: (col[ax], -row[ax])))
    tops = [t.get_window_extent(renderer) for t in fig.texts if t.get_visible() and t.get_text()]
    h, w = rgba.shape[:2]
    pad = pad_inches * dpi

    def cut(box):
        x0, x1 = max(0, int(box.x0 - pad)), min(w, int(np.ceil(box.x1 + pad)))
        y0, y1 = max(0, int(h - box.y1 - pad)), min(h, int(np.ceil(h - box.y0 + pad)))
        return rgba[y0:y1, x0:x1]

    panel_parts = [cut(boxes[ax]) for ax in order]
    width = max(p.shape[1] for p in panel_parts)
    parts = (_wrap_text(cut(Bbox.union(tops)), width) if tops else []) + panel_parts
    width = max(p.shape[1] for p in parts)
    white = np.full((1, 1, 4), 255, np.uint8)
    rows = []
    for p in parts:
        side = width - p.shape[1]
        rows.append(np.concatenate([np.broadcast_to(white, (p.shape[0], side // 2, 4)), p,
                                    np.broadcast_to(white, (p.shape[0], side - side // 2, 4))], axis=1))
    return np.concatenate(rows, axis=0)


def _wrap_text(line: np.ndarray, width: int) -> list[np.ndarray]:
    """A drawn line of text wider than ``width`` pixels cut at its blank columns (between words) into lines of
    at most ``width``: a title as wide as all the panels would otherwise shrink each stacked panel to fit."""
    blank = (line[..., :3] >= 250).all(axis=(0, 2))
    # a word gap: a run of at least 3 blank columns (letters sit 0-2 columns apart at these sizes)
    word_gap = blank & np.concatenate([blank[1:], [True]]) & np.concatenate([blank[2:], [True, True]])
    pieces, start = [], 0
    while line.shape[1] - start > width:
        gaps = np.flatnonzero(word_gap[start + 1:start + width + 1]) + start + 1
        if not len(gaps):
            break  # no gap in reach: the rest stays one piece
        pieces.append(line[:, start:gaps[-1]])
        start = gaps[-1]
        while start < line.shape[1] - 1 and blank[start]:
            start += 1  # the next piece begins at its first drawn column
    return pieces + [line[:, start:]]


def _png_bytes(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # zlib level 1, not PIL's 6: the report's figures encode in ~40% of the time for ~5% more bytes (scripts/bench.py report)
    PIL.Image.fromarray(np.ascontiguousarray(rgba)).save(buf, format="png", compress_level=1)
    return buf.getvalue()


def save_png(fig, path, tight: bool = True, dpi: int = 100, pad_inches: float = 0.1) -> Path:
    """Write ``fig`` as PNG atomically and close it, drawing it once.

    ``tight`` crops to the drawn content plus ``pad_inches``, as ``bbox_inches="tight"`` would, but from the
    one rendering: matplotlib's own tight save draws every figure twice (about a tenth of a second more per
    figure here). ``tight=False`` for figures already laid out by ``tight_layout``. A figure of several panel
    columns is also written stacked, one panel a row, at ``narrow_path(path)``, for the page on a phone.
    """
    fig.set_dpi(dpi)
    _escape_texts(fig)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    stacked = _stacked_panels(fig, canvas.get_renderer(), rgba, dpi, pad_inches)
    narrow = narrow_path(path)
    if stacked is not None:
        atomic_write_bytes(narrow, _png_bytes(stacked))
    elif narrow.exists():  # a figure redrawn with one column into a folder that held an older stacked one
        narrow.unlink()
    if tight:
        box = fig.get_tightbbox(canvas.get_renderer()).padded(pad_inches)  # inches, origin bottom left
        h, w = rgba.shape[:2]
        x0, x1 = max(0, int(box.x0 * dpi)), min(w, int(np.ceil(box.x1 * dpi)))
        y0, y1 = max(0, h - int(np.ceil(box.y1 * dpi))), min(h, h - int(box.y0 * dpi))
        rgba = rgba[y0:y1, x0:x1]
    plt.close(fig)
    return atomic_write_bytes(path, _png_bytes(rgba))


def photo_figsize(shape, width: float) -> tuple[float, float]:
    """``(width, height)`` in inches for a figure of one photo or map of ``shape`` (HxW...): the photo's own
    aspect, clamped to ``MAX_FIGURE_ASPECT`` either way, so no input can size a figure beyond
    ``width`` x ``MAX_FIGURE_ASPECT * width`` or below ``width`` x ``width / MAX_FIGURE_ASPECT``.

    Examples:
        >>> photo_figsize((16, 20000), 8)
        (8, 3.2)
    """
    h, w = shape[:2]
    ratio = min(max(h / max(w, 1), 1 / MAX_FIGURE_ASPECT), MAX_FIGURE_ASPECT)
    return width, width * ratio


def clamped_aspect(w: float, h: float) -> float:
    """``w / h`` clamped to ``MAX_FIGURE_ASPECT`` either way: a panel's width ratio that no photo can make
    vanish or take the whole figure."""
    return min(max(w / max(h, 1), 1 / MAX_FIGURE_ASPECT), MAX_FIGURE_ASPECT)


def display_copy(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """``image`` itself if its longest side is at most ``max_side``, else a copy shrunk to it (area average)."""
    return shrink(image, max_side)


def imshow_photo(ax, image_bgr: np.ndarray, shape=None, **kwargs):
    """Draw a BGR photo on ``ax`` in the photo's own pixel coordinates, from ``display_copy`` of it.

    A shrunk copy is stretched over the full photo's extent, so ticks, boxes and patches drawn in
    full-resolution pixels land where they would on the full photo. ``shape``: the full photo's HxW when
    ``image_bgr`` is already a smaller copy of it (``PhotoRun(keep_side=...)``); default its own shape.
    """
    h, w = (image_bgr.shape if shape is None else shape)[:2]
    shown = display_copy(image_bgr)
    if shown.shape[:2] != (h, w):
        kwargs.setdefault("extent", (-0.5, w - 0.5, h - 0.5, -0.5))  # imshow's own extent for an h x w array
    return ax.imshow(shown[..., ::-1], **kwargs)
