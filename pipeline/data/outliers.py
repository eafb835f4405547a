"""Per-image statistics of a dataset and the images that stand out: the analysis behind ``cardamage outliers``.

- ``image_stats``: seven numbers for one BGR photo (``STATISTICS``: brightness, contrast, saturation,
  black_border, blur, megapixels, aspect), measured on a ``thumbnail`` at most ``THUMB_SIDE`` pixels
  long so that blur compares across photo sizes (size and aspect come from the full image);
  ``black_border_fraction`` is the share of the area in dark edge rows and columns.
- ``zscores``: robust z-scores, (x - median) / (1.4826 MAD), or plain (x - mean) / std. The robust
  form lets a small set reach |z| > 3 (a plain z-score cannot exceed sqrt(n - 1)) and keeps a few
  extreme photos from widening the spread that should expose them.
- ``flag_outliers``: one flag per (image, statistic) beyond the threshold (``core.facts.Z_THRESHOLD``),
  with a readable reason; the ``"log"`` statistics are scored on log10 (blur on log10(1 + v)), so an
  aspect of 2:1 and one of 1:2 are equally odd.
- ``image_table``: the statistics (and perceptual hashes) of every image of every split.
- ``analyse``: all of it for a ``data.yaml``, plus cross-split duplicates from ``data.duplicates``.

Examples:
    >>> from pipeline.data.outliers import analyse, zscores
    >>> z, centre, spread = zscores([100, 101, 99, 100, 30])
    >>> round(float(z[-1]), 1), centre
    (-47.2, 100.0)
    >>> res = analyse("../shared/data/cardd-sample/data.yaml", threshold=3.0)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.core.facts import Z_THRESHOLD
from pipeline.core.files import real_path
from pipeline.core.io import InputError, read_image, shrink
from pipeline.data.duplicates import find_duplicates, phash_of, sha1_of_file, split_overlaps
from pipeline.data.labels import dataset_splits

#: statistic -> (how it is scored: "linear" or "log", one-line description)
STATISTICS = {
    "brightness": ("linear", "mean grey level 0..255"),
    "contrast": ("linear", "std of grey levels"),
    "saturation": ("linear", "mean HSV saturation 0..255"),
    "black_border": ("linear", "share of area in dark edge rows/columns"),
    "blur": ("log", "variance of the Laplacian, low = blurry"),
    "megapixels": ("log", "width*height/1e6"),
    "aspect": ("log", "width/height"),
}
THUMB_SIDE = 256  # statistics are computed on a copy at most this long (except size and aspect)
DARK_LEVEL = 16  # a row/column whose mean grey is at most this counts as black border


def thumbnail(image_bgr: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """A copy at most ``side`` pixels on its long side (area interpolation; never enlarged)."""
    return shrink(image_bgr, side)


def black_border_fraction(grey: np.ndarray, level: int = DARK_LEVEL) -> float:
    """Share of the image area outside the largest inner rectangle whose edge rows/columns are not dark."""
    h, w = grey.shape
    dark_rows = grey.mean(axis=1) <= level
    dark_cols = grey.mean(axis=0) <= level
    if dark_rows.all() or dark_cols.all():
        return 1.0
    top = int(np.argmin(dark_rows))
    bottom = int(np.argmin(dark_rows[::-1]))
    left = int(np.argmin(dark_cols))
    right = int(np.argmin(dark_cols[::-1]))
    return 1.0 - (h - top - bottom) * (w - left - right) / (h * w)


def image_stats(image_bgr: np.ndarray) -> dict:
    """The seven statistics of one BGR uint8 image (see the module docstring), plus width and height.

    Examples:
        >>> image_stats(np.zeros((480, 640, 3), np.uint8))["brightness"]
        0.0
    """
    import cv2

    h, w = image_bgr.shape[:2]
    small = thumbnail(image_bgr)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "saturation": float(hsv[..., 1].mean()),
        "black_border": black_border_fraction(grey),
        "blur": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        "megapixels": h * w / 1e6,
        "aspect": w / h,
        "width": int(w),
        "height": int(h),
    }


def _scored(stat: str, values: np.ndarray) -> np.ndarray:
    """The values on the scale their z-score is taken on (log10 for positive, heavy-tailed statistics)."""
    if STATISTICS[stat][0] == "log":
        return np.log10(1.0 + values) if stat == "blur" else np.log10(values)
    return values


def zscores(values, robust: bool = True) -> tuple[np.ndarray, float, float]:
    """z-scores of ``values`` and the (centre, spread) used: robust (median, 1.4826 MAD) or (mean, std).

    When the MAD is 0 (over half the values are equal, e.g. all photos 640x640) the robust spread falls
    back to 1.2533 times the mean absolute deviation from the median; when that is 0 too, every value is
    equal and every z is 0.
    """
    x = np.asarray(values, dtype=float)
    if robust:
        centre = float(np.median(x))
        spread = 1.4826 * float(np.median(np.abs(x - centre)))
        if spread == 0:
            spread = 1.2533 * float(np.mean(np.abs(x - centre)))
    else:
        centre, spread = float(x.mean()), float(x.std())
    z = (x - centre) / spread if spread > 0 else np.zeros_like(x)
    return z, centre, spread


def flag_outliers(rows: list[dict], threshold: float = Z_THRESHOLD, robust: bool = True) -> tuple[list[dict], dict]:
    """Images with |z| > ``threshold`` on any statistic, one entry per (image, statistic).

    Args:
        rows: one dict per image with ``path`` and every statistic in ``STATISTICS`` (``image_stats``).
        threshold: |z| cut-off.
        robust: median/MAD z-scores (default) or mean/std.

    Returns:
        ``(flags, summary)``: flags are {path, statistic, value, z, split, reason}, sorted by |z| descending;
        summary maps each statistic to {scale, centre, spread, flagged} (centre/spread on the scored scale).

    Examples:
        >>> flags, _ = flag_outliers(rows)
        >>> flags[0]["reason"]
        'brightness 0 is 4.5 robust SDs below the median 135.5 (mean grey level 0..255)'
    """
    flags, summary = [], {}
    for stat, (scale, desc) in STATISTICS.items():
        values = np.array([r[stat] for r in rows], dtype=float)
        z, centre, spread = zscores(_scored(stat, values), robust)
        shown = 10**centre - (1 if stat == "blur" else 0) if scale == "log" else centre
        summary[stat] = {"scale": scale, "centre": centre, "spread": spread, "centre_value": shown, "flagged": 0}
        for r, v, zi in zip(rows, values, z):
            if abs(zi) > threshold:
                summary[stat]["flagged"] += 1
                side = "above" if zi > 0 else "below"
                what = "robust SDs" if robust else "SDs"
                where = "median" if robust else "mean"
                flags.append(
                    {
                        "path": r["path"],
                        "statistic": stat,
                        "value": float(v),
                        "z": float(zi),
                        "split": r.get("split", ""),
                        "reason": f"{stat} {v:.4g} is {abs(zi):.1f} {what} {side} the {where} {shown:.4g}"
                        + f" ({desc}{'; z on log10' if scale == 'log' else ''})",
                    }
                )
    flags.sort(key=lambda f: -abs(f["z"]))
    return flags, summary


def image_table(images_by_split: dict[str, list[Path]], with_hashes: bool = True):
    """Statistics of every image listed by any split (each file once, tagged with all its splits).

    Returns:
        ``(rows, hashes, errors)``: rows are ``image_stats`` dicts plus ``path`` and ``split``
        ("train" or "train,val"); hashes map path -> (sha1, phash) for ``find_duplicates`` (computed from
        the same decoded image, so nothing is read twice); errors are ``InputError`` for unreadable files.
    """

    order: dict[Path, list[str]] = {}
    by_real: dict[Path, Path] = {}
    for split, paths in images_by_split.items():
        for p in paths:
            key = by_real.setdefault(real_path(p), Path(p))
            order.setdefault(key, []).append(split)
    rows, hashes, errors = [], {}, []
    for path, splits in order.items():
        try:
            image = read_image(path)
        except InputError as e:
            errors.append(e)
            if with_hashes:
                hashes[path] = (sha1_of_file(path), None)
            continue
        rows.append({"path": str(path), "split": ",".join(splits), **image_stats(image)})
        if with_hashes:
            hashes[path] = (sha1_of_file(path), phash_of(image))
    for split, paths in images_by_split.items():  # the same file may be listed under another spelling
        for p in paths:
            if with_hashes:
                hashes.setdefault(Path(p), hashes[by_real[real_path(p)]])
    return rows, hashes, errors


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def analyse(data_yaml, threshold: float = Z_THRESHOLD, robust: bool = True, near_threshold: int = 4) -> dict:
    """Per-image statistics, flagged outliers and cross-split duplicates of one dataset.

    Returns:
        {rows, flags, summary, duplicates, overlaps, errors} (see ``flag_outliers`` and
        ``pipeline.data.duplicates.find_duplicates``/``split_overlaps``).

    Raises:
        InputError: a missing or malformed data.yaml, or a dataset without one readable image.
    """

    splits = dataset_splits(data_yaml)
    rows, hashes, errors = image_table(splits)
    if not rows:
        raise InputError(data_yaml, "no readable images")
    flags, summary = flag_outliers(rows, threshold, robust)
    duplicates = find_duplicates(splits, near_threshold, hashes=hashes)
    return {
        "rows": rows,
        "flags": flags,
        "summary": summary,
        "duplicates": duplicates,
        "overlaps": split_overlaps(splits),
        "errors": errors,
        "splits": {s: len(p) for s, p in splits.items()},
    }
