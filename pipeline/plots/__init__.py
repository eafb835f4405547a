"""Plots (matplotlib, Agg backend, PNG files), one module per lesson topic.

``input.py`` (preprocessing and outliers), ``layers.py`` (feature maps, filters, weight histograms) and
``lesson.py`` (activation gallery, gradient flow, SGD step, detections, CAM) all write through
``save_png``, so every figure is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402

from pipeline.io import atomic_write_bytes  # noqa: E402


def save_png(fig, path, tight: bool = True, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically and close it. ``tight=False`` for figures already laid out by
    ``tight_layout`` (a second tight-bbox pass costs about a second per figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
