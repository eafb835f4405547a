"""Plots of the hidden layers: feature maps, pre vs post SiLU, filters, weight and bias histograms.

Every function takes tensors as the inspector recorded them (activations ``1xCxHxW``, conv weights
``C_out x C_in x k x k``), draws one PNG with matplotlib (Agg), writes it atomically and returns its path.

- ``plot_feature_maps``: the k channels with the most activation energy (mean of a^2), all on one shared
  colour scale with a colorbar, titled with the module path, the shape and the stride (input pixels per
  feature-map pixel);
- ``plot_pre_post``: the same channels before and after SiLU, side by side on one diverging scale, so the
  negative dip (never below SiLU's minimum, about -0.278) is visible;
- ``plot_stem_filters``: the first conv's kernels as RGB patches (folded weights, scaled symmetrically
  so grey = 0); ``plot_filter_grid``: a deeper layer's kernels as grayscale tiles;
- ``plot_param_histograms``: per layer, raw conv weights vs BatchNorm-folded weights, and BN's beta vs the
  folded bias.

Examples:
    >>> from safetensors.torch import load_file
    >>> acts = load_file("dump/activations.safetensors"); params = load_file("dump/params.safetensors")
    >>> plot_feature_maps(acts["model.2.cv1.post"], "fm.png", "model.2.cv1", stride=4)
    >>> plot_stem_filters(params["model.0.folded.weight"], "stem.png")
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch

from pipeline.report.plots import save_png  # noqa: E402

DIVERGING = "RdBu_r"  # negative blue, zero white, positive red: the sign of an activation reads at a glance


_save = save_png


def _chw(t) -> torch.Tensor:
    t = torch.as_tensor(t).detach().float().cpu()
    return t[0] if t.ndim == 4 else t


#: Colour scales stop at this percentile of |value|: a few extreme pixels would otherwise wash out the rest.
ROBUST_Q = 99.5


def _robust_limit(t) -> float:
    v = np.percentile(torch.as_tensor(t).abs().flatten().numpy(), ROBUST_Q)
    return float(v) if v > 0 else (float(torch.as_tensor(t).abs().max()) or 1.0)


def channel_energy(act) -> torch.Tensor:
    """Mean of a^2 over each channel's feature map (C,): how strongly the channel fired."""
    a = _chw(act)
    return (a**2).mean(dim=(1, 2))


def top_channels(act, k: int = 16) -> list[int]:
    """Indices of the ``k`` channels with the largest activation energy, strongest first."""
    e = channel_energy(act)
    return torch.argsort(e, descending=True)[: min(k, len(e))].tolist()


def _grid(n: int, cols: int | None = None) -> tuple[int, int]:
    cols = cols or min(n, 8)
    return math.ceil(n / cols), cols


def plot_feature_maps(act, path, layer: str, stride: int | None = None, k: int = 16, channels=None) -> Path:
    """The top-``k`` channels by energy of one layer's activation, on one shared colour scale.

    Args:
        act: ``1xCxHxW`` (or ``CxHxW``) activation.
        path: PNG to write.
        layer: module path for the title (e.g. ``model.2.cv1``).
        stride: input pixels per feature-map pixel (for the title).
        k: number of channels to show; ``channels`` overrides the choice.
    """
    a = _chw(act)
    chans = list(channels) if channels is not None else top_channels(a, k)
    energy = channel_energy(a)
    shown = a[chans]
    lim = _robust_limit(shown)
    vmin = -lim if float(shown.min()) < 0 else 0.0  # post-SiLU maps dip below 0: keep 0 at the scale's centre
    rows, cols = _grid(len(chans))
    # one image of tiles on one axes: the same panels as a subplot per channel, at a fraction of matplotlib's
    # cost per axes (five of these figures per report)
    h, w = a.shape[1:]
    gap = max(1, round(0.2 * max(h, w)))  # room for each tile's title, in feature-map pixels
    mosaic = np.full((rows * (h + gap), cols * (w + gap) - gap), np.nan, dtype=np.float32)
    fig, ax = plt.subplots(figsize=(1.6 * cols + 1.2, 1.6 * rows + 0.7))
    for i, c in enumerate(chans):
        r, q = divmod(i, cols)
        y0, x0 = r * (h + gap) + gap, q * (w + gap)
        mosaic[y0:y0 + h, x0:x0 + w] = a[c].numpy()
        ax.text(x0 + w / 2, y0 - gap * 0.15, f"ch {c}  E={float(energy[c]):.3g}", fontsize=7, ha="center", va="bottom")
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap=DIVERGING if vmin < 0 else "viridis", vmin=vmin, vmax=lim,
                   interpolation="antialiased")
    ax.axis("off")
    c_ = a.shape[0]
    s = f", stride {stride}" if stride else ""
    fig.suptitle(f"{layer}: {c_}x{h}x{w}{s}; top {len(chans)} of {c_} channels by energy mean(a^2); "
                 f"one colour scale for all (clipped at the {ROBUST_Q:g}th percentile of |a|)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="activation", extend="both" if vmin < 0 else "max")
    return _save(fig, path)


def plot_pre_post(pre, post, path, layer: str, k: int = 4, silu_min: float | None = None) -> Path:
    """Pre-activation z = bn(conv(x)) beside a = SiLU(z) for the ``k`` strongest channels, one shared scale.

    Args:
        pre, post: the layer's recorded ``.pre`` and ``.post`` tensors.
        silu_min: SiLU's minimum (from ``pipeline.lesson.activations.silu_minimum``), printed for comparison.
    """
    z, a = _chw(pre), _chw(post)
    chans = top_channels(a, k)
    lim = _robust_limit(torch.cat([z[chans], a[chans]]))
    h, w = z.shape[1:]
    gap = max(1, round(0.3 * h))  # room for two lines of title above each tile, in feature-map pixels
    mosaic = np.full((len(chans) * (h + gap), 2 * w + gap // 2), np.nan, dtype=np.float32)
    fig, ax = plt.subplots(figsize=(6.2, 2.5 * len(chans) + 0.6))
    for r, c in enumerate(chans):  # one image of tiles on one axes: a subplot per tile costs far more
        for q, (t, name) in enumerate(((z[c], "z = bn(conv(x))"), (a[c], "a = SiLU(z)"))):
            y0, x0 = r * (h + gap) + gap, q * (w + gap // 2)
            mosaic[y0:y0 + h, x0:x0 + w] = t.numpy()
            ax.text(x0 + w / 2, y0 - gap * 0.08, f"ch {c}: {name}\nmin {float(t.min()):.3f}  max {float(t.max()):.3f}",
                    fontsize=8, ha="center", va="bottom")
    im = ax.imshow(np.ma.masked_invalid(mosaic), cmap=DIVERGING, vmin=-lim, vmax=lim)
    ax.axis("off")
    floor = f"; SiLU never goes below {silu_min:.4f}" if silu_min is not None else ""
    fig.suptitle(f"{layer}: before and after SiLU (negatives shrink toward 0{floor})", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="value", extend="both")
    return _save(fig, path)


def symmetric_rgb(kernel) -> np.ndarray:
    """A 3xkxk kernel as a kxkx3 picture: w / max|w| mapped to [0, 1] so that grey (0.5) means weight 0."""
    w = torch.as_tensor(kernel).detach().float()
    lim = float(w.abs().max()) or 1.0
    return ((w / lim + 1) / 2).permute(1, 2, 0).numpy()


def plot_stem_filters(weight, path, layer: str = "model.0", max_filters: int = 64) -> Path:
    """The first conv's kernels (``C_out x 3 x k x k``, RGB input) as colour patches.

    Each kernel is scaled by its own max |w| (grey = 0, a saturated colour = that channel weighted
    strongly), so the pattern it looks for shows: colour blobs, edges, opponent colours.
    """
    w = torch.as_tensor(weight).detach().float()
    n = min(len(w), max_filters)
    rows, cols = _grid(n, 8)
    k = w.shape[-1]
    gx, gy = max(1, round(0.4 * k)), max(1, round(0.5 * k))  # gaps between tiles, the upper one for the title
    mosaic = np.ones((rows * (k + gy), cols * (k + gx) - gx, 3))  # white between tiles
    fig, ax = plt.subplots(figsize=(1.1 * cols, 1.2 * rows + 0.5))
    for i in range(n):  # one RGB image of tiles on one axes: a subplot per kernel costs far more
        r, q = divmod(i, cols)
        y0, x0 = r * (k + gy) + gy, q * (k + gx)
        mosaic[y0:y0 + k, x0:x0 + k] = symmetric_rgb(w[i])
        ax.text(x0 + (k - 1) / 2, y0 - 0.6, f"{i}: |w|max {float(w[i].abs().max()):.2f}", fontsize=6, ha="center",
                va="bottom")
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"{layer} kernels {tuple(w.shape)} (folded with BN), RGB, each scaled to its max |w|; grey = 0", fontsize=8)
    return _save(fig, path)


def plot_filter_grid(weight, path, layer: str, max_out: int = 16, max_in: int = 16) -> Path:
    """A deeper conv's kernels as a grayscale grid: row = output channel, column = input channel.

    One symmetric scale for the whole grid (black = most negative, white = most positive, mid grey = 0).
    A 1x1 conv is shown as its C_out x C_in weight matrix instead.
    """
    w = torch.as_tensor(weight).detach().float()
    co, ci, kh, kw = w.shape
    lim = float(w.abs().max()) or 1.0
    if kh == 1 and kw == 1:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        im = ax.imshow(w[:, :, 0, 0].numpy(), cmap="gray", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xlabel("input channel")
        ax.set_ylabel("output channel")
        fig.colorbar(im, ax=ax, label="weight")
        ax.set_title(f"{layer}: 1x1 conv {tuple(w.shape)} as a matrix", fontsize=9)
        return _save(fig, path)
    no, ni = min(co, max_out), min(ci, max_in)
    pad = 1
    tile = np.full((no * (kh + pad) - pad, ni * (kw + pad) - pad), np.nan)
    for o in range(no):
        for i in range(ni):
            tile[o * (kh + pad) : o * (kh + pad) + kh, i * (kw + pad) : i * (kw + pad) + kw] = w[o, i].numpy()
    fig, ax = plt.subplots(figsize=(6, 6))
    cmap = plt.get_cmap("gray").with_extremes(bad="#f4d58d")  # gaps between kernels
    im = ax.imshow(np.ma.masked_invalid(tile), cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"input channels 0..{ni - 1} of {ci}")
    ax.set_ylabel(f"output channels 0..{no - 1} of {co}")
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight (folded)")
    ax.set_title(f"{layer}: {kh}x{kw} kernels {tuple(w.shape)}, grayscale, one symmetric scale", fontsize=9)
    return _save(fig, path)


def plot_param_histograms(layers: list[dict], path, bins: int = 60) -> Path:
    """Per layer: raw vs folded weight histograms (left) and BN beta vs folded bias (right).

    Args:
        layers: list of dicts with ``name``, ``weight`` (raw conv weight), ``folded_weight``, ``beta``
            (BN bias) and ``folded_bias``.
    """
    fig, axes = plt.subplots(len(layers), 2, figsize=(9, 2.1 * len(layers) + 0.4), squeeze=False)
    for (axw, axb), L in zip(axes, layers):
        w = torch.as_tensor(L["weight"]).flatten().float().numpy()
        fw = torch.as_tensor(L["folded_weight"]).flatten().float().numpy()
        lo, hi = float(min(w.min(), fw.min())), float(max(w.max(), fw.max()))
        edges = np.linspace(lo, hi, bins + 1)
        axw.stairs(np.histogram(w, edges)[0], edges, fill=True, alpha=0.6, label=f"raw W (std {w.std():.3g})", color="tab:gray")
        axw.stairs(np.histogram(fw, edges)[0], edges, fill=True, alpha=0.6, label=f"folded W' (std {fw.std():.3g})",
                   color="tab:orange")
        axw.set_title(f"{L['name']}: weights ({w.size} values)", fontsize=8)
        axw.legend(fontsize=7)
        beta = torch.as_tensor(L["beta"]).flatten().float().numpy()
        fb = torch.as_tensor(L["folded_bias"]).flatten().float().numpy()
        lo, hi = float(min(beta.min(), fb.min())), float(max(beta.max(), fb.max()))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
        axb.stairs(np.histogram(beta, edges)[0], edges, fill=True, alpha=0.6, label="BN beta", color="tab:gray")
        axb.stairs(np.histogram(fb, edges)[0], edges, fill=True, alpha=0.6, label="folded b'", color="tab:purple")
        axb.set_title(f"{L['name']}: biases ({beta.size} channels)", fontsize=8)
        axb.legend(fontsize=7)
    fig.suptitle("W' = W * gamma / sqrt(var + eps),   b' = beta - gamma * mean / sqrt(var + eps)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, tight=False)
