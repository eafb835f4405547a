"""Plots of the input layer: the photo vs the model input, the three scalings, pixel and dataset outliers.

Each function draws one PNG with matplotlib (Agg backend), writes it atomically and returns its path.

Examples:
    >>> from pipeline.data.preprocess import load_bgr, model_input, scalings, pixel_outliers
    >>> from pipeline.report.plots.input import plot_letterbox, plot_scaling_histograms, plot_outlier_mask
    >>> x, meta = model_input("photo.jpg", imgsz=640)
    >>> plot_letterbox(load_bgr("photo.jpg")[0], x, meta, "out/letterbox.png")
    >>> plot_scaling_histograms(scalings(x), "out/histograms.png")
    >>> plot_outlier_mask(x, pixel_outliers(x, meta=meta), "out/outliers.png")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.core.io import InputError, read_image, shrink  # noqa: E402
from pipeline.report.plots import clamped_aspect, imshow_photo, save_png  # noqa: E402

CHANNEL_COLORS = ("tab:red", "tab:green", "tab:blue")
SCALING_TITLES = {
    "divide255": "x / 255  (what YOLOv8 uses)",
    "minmax": "min-max per channel",
    "zscore": "z-score per channel (this image)",
    "zscore_dataset": "z-score per channel (dataset stats)",
}


def _save(fig, path) -> Path:
    return save_png(fig, path, dpi=110)


def _rgb(tensor) -> np.ndarray:
    """1x3xHxW float in [0, 1] -> HxWx3 float for imshow."""
    x = tensor[0] if tensor.ndim == 4 else tensor
    return x.permute(1, 2, 0).numpy().clip(0, 1)


def plot_letterbox(original_bgr: np.ndarray, tensor, meta: dict, path, title: str | None = None) -> Path:
    """Original photo beside the model input, with the letterbox padding and the scale factor marked.

    Args:
        original_bgr: the photo as read (HxWx3 BGR uint8), e.g. ``load_bgr(path)[0]``, or a smaller copy of it
            (its full size is ``meta["orig_shape"]``).
        tensor: ``model_input``'s 1x3xHxW tensor.
        meta: ``model_input``'s meta (orig_shape, input_shape, ratio, pad).
        path: PNG to write.
    """
    h0, w0 = meta["orig_shape"]
    h, w = meta["input_shape"]
    p = meta["pad"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [clamped_aspect(w0, h0), clamped_aspect(w, h)]})
    imshow_photo(axes[0], original_bgr, shape=(h0, w0), interpolation="nearest")
    axes[0].set_title(f"photo: {h0}x{w0} (HxW), BGR uint8 0..255", fontsize=9)
    axes[1].imshow(_rgb(tensor), interpolation="nearest")
    rect = plt.Rectangle(
        (p["left"] - 0.5, p["top"] - 0.5), w - p["left"] - p["right"], h - p["top"] - p["bottom"],
        fill=False, ec="yellow", lw=1.2, ls="--",
    )
    axes[1].add_patch(rect)
    mode = "pad to stride multiple (auto)" if meta.get("auto") else "pad to square"
    axes[1].set_title(
        f"model input: 1x3x{h}x{w}, RGB float32 = x/255\nratio {meta['ratio']:.4g}, pad t{p['top']} b{p['bottom']} "
        f"l{p['left']} r{p['right']} (grey {meta.get('pad_value', 114)}), {mode}",
        fontsize=9,
    )
    for ax in axes:
        ax.set_xlabel("x (pixels)", fontsize=8)
        ax.set_ylabel("y (pixels)", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_scaling_histograms(stats: dict, path, channels=("R", "G", "B")) -> Path:
    """One panel per scaling (x/255, min-max, z-score[, dataset z-score]) with the R, G, B histograms.

    The histograms have the same shape in every panel (the scalings are affine per channel); only the
    axis moves. Each panel lists the per-channel range, mean and std and the share of |z| > 3.

    Args:
        stats: ``pipeline.lesson.input_scaling.scalings`` output.
        path: PNG to write.
    """
    names = [k for k in SCALING_TITLES if k in stats]
    fig, axes = plt.subplots(1, len(names), figsize=(4.4 * len(names), 3.8))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        s = stats[name]
        edges = np.asarray(s["hist"]["edges"])
        for c, counts in enumerate(s["hist"]["counts"]):
            ax.stairs(counts, edges, color=CHANNEL_COLORS[c], label=channels[c], lw=1.2)
        lines = [
            f"{channels[c]}: [{s['min'][c]:.3g}, {s['max'][c]:.3g}] mean {s['mean'][c]:.3g} std {s['std'][c]:.3g}"
            for c in range(len(s["min"]))
        ]
        lines.append("|z|>3: " + ", ".join(f"{100 * f:.2f}%" for f in s["frac_abs_z_gt_3"]))
        ax.text(0.02, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7, family="monospace",
                bbox={"fc": "white", "alpha": 0.8, "ec": "none"})
        ax.set_title(SCALING_TITLES[name], fontsize=9)
        ax.set_xlabel("value", fontsize=8)
        ax.set_ylabel("pixels", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.45)  # room for the text box
    axes[0].legend(fontsize=7, loc="center right")
    return _save(fig, path)


def plot_outlier_mask(tensor, outliers: dict, path, title: str | None = None) -> Path:
    """The model input with its |z| > threshold pixels painted: bright outliers red, dark ones blue.

    Args:
        tensor: ``model_input``'s tensor.
        outliers: ``pipeline.lesson.input_scaling.pixel_outliers`` output (with its ``bright``/``dark`` masks).
        path: PNG to write.
    """
    rgb = _rgb(tensor)
    overlay = rgb.copy()
    overlay[outliers["bright"]] = 0.35 * overlay[outliers["bright"]] + 0.65 * np.array([1.0, 0.0, 0.0])
    overlay[outliers["dark"]] = 0.35 * overlay[outliers["dark"]] + 0.65 * np.array([0.0, 0.4, 1.0])
    h, w = outliers["mask"].shape
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6 * min(max(h / w, 0.3), 2)))
    axes[0].imshow(rgb, interpolation="nearest")
    axes[0].set_title("model input", fontsize=9)
    axes[1].imshow(overlay, interpolation="nearest")
    t = outliers["threshold"]
    axes[1].set_title(
        f"|z|>{t:g}: {outliers['count']} px ({100 * outliers['fraction']:.2f}%)  "
        f"red z>{t:g}: {outliers['bright_count']}, blue z<-{t:g}: {outliers['dark_count']}",
        fontsize=9,
    )
    if outliers.get("bbox"):
        x0, y0, x1, y1 = outliers["bbox"]
        axes[1].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec="yellow", lw=1, ls=":"))
    for ax in axes:
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_dataset_stats(rows: list[dict], flags: list[dict], statistics, path, z_threshold: float = 3.0) -> Path:
    """One histogram per image statistic over a dataset, with the flagged images marked and named.

    Args:
        rows: one dict per image (``pipeline.data.outliers.image_table`` rows: ``path`` plus one value per statistic).
        flags: ``pipeline.data.outliers.flag_outliers`` output (``path``, ``statistic``, ``value``, ``z``).
        statistics: the statistic names to draw (one panel each).
        path: PNG to write.
    """
    statistics = list(statistics)
    cols = 4
    nrows = -(-len(statistics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.1 * nrows))
    axes = np.atleast_1d(axes).ravel()
    for ax, stat in zip(axes, statistics):
        values = np.array([r[stat] for r in rows], dtype=float)
        ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="0.6")
        marked = [f for f in flags if f["statistic"] == stat]
        for f in marked:
            ax.axvline(f["value"], color="tab:red", lw=1.2)
        if marked:
            names = [f"{Path(f['path']).name[:18]} z={f['z']:+.1f}" for f in marked[:4]]
            more = f"\n+{len(marked) - 4} more" if len(marked) > 4 else ""
            ax.text(0.98, 0.98, "\n".join(names) + more, transform=ax.transAxes, ha="right", va="top", fontsize=6,
                    color="tab:red", bbox={"fc": "white", "alpha": 0.8, "ec": "none"})
        ax.set_title(f"{stat} ({len(marked)} flagged, |z|>{z_threshold:g})", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[len(statistics):]:
        ax.axis("off")
    fig.suptitle(f"per-image statistics over {len(rows)} images (red: flagged)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _thumb_rgb(path, side: int = 160) -> np.ndarray | None:
    try:
        return shrink(read_image(path), side)[..., ::-1]
    except InputError:
        return None


def _thumb_grid(cells: list[tuple[str, str]], path, title: str, cols: int) -> Path:
    """Thumbnails in a grid: cells are (image path, caption); an empty list draws a 'none' note."""
    n = max(1, len(cells))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    axes = axes.ravel()
    for ax in axes:
        ax.axis("off")
    if not cells:
        axes[0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=12)
    for ax, (img_path, caption) in zip(axes, cells):
        thumb = _thumb_rgb(img_path)
        if thumb is not None:
            ax.imshow(thumb)
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_flagged(flags: list[dict], path, limit: int = 16) -> Path:
    """Thumbnails of the flagged images (most extreme first), each captioned with its statistics and z.

    Args:
        flags: ``pipeline.data.outliers.flag_outliers`` output.
        path: PNG to write.
        limit: most images shown.
    """
    by_image: dict[str, list[dict]] = {}
    for f in flags:
        by_image.setdefault(f["path"], []).append(f)
    cells = [
        (p, Path(p).name[:24] + "\n" + "\n".join(f"{f['statistic']} {f['value']:.3g} z={f['z']:+.1f}" for f in fs[:3]))
        for p, fs in list(by_image.items())[:limit]
    ]
    return _thumb_grid(cells, path, f"flagged images ({len(by_image)}, showing {len(cells)})", cols=4)


def plot_duplicates(duplicates: list[dict], path, limit: int = 6) -> Path:
    """Duplicate pairs across splits side by side (left: split_a, right: split_b) with kind and distance.

    Args:
        duplicates: ``pipeline.data.duplicates.find_duplicates`` output.
        path: PNG to write.
        limit: most pairs shown.
    """
    cells = []
    for d in duplicates[:limit]:
        cells.append((d["path_a"], f"{d['kind']} d={d['distance']}  {d['split_a']}\n{Path(d['path_a']).name[:24]}"))
        cells.append((d["path_b"], f"{d['kind']} d={d['distance']}  {d['split_b']}\n{Path(d['path_b']).name[:24]}"))
    return _thumb_grid(cells, path, f"duplicate pairs across splits ({len(duplicates)}, showing {len(cells) // 2})", cols=4)


__all__ = ["plot_dataset_stats", "plot_duplicates", "plot_flagged", "plot_letterbox", "plot_outlier_mask", "plot_scaling_histograms"]
