"""Train with another input scaling: YOLOv8's x/255 against per-channel z-score standardization.

YOLOv8 feeds the network ``x / 255`` and nothing else (no mean, no std). Many CNNs standardize instead:
``(x / 255 - mean_c) / std_c`` with the dataset's per-channel statistics. This module makes Ultralytics'
own trainer and validator do that, so the two can be trained side by side on the same data, seed and
budget (``scripts/figures.py scaling``) and their loss curves compared with real numbers.

Only the scaling changes: augmentation, model, loss and metrics are Ultralytics' own.

Examples:
    >>> from pipeline.lesson.input_scaling import standardized_trainer
    >>> Trainer = standardized_trainer(mean=[0.45, 0.44, 0.42], std=[0.22, 0.21, 0.23])
    >>> train("datasets/synth/data.yaml", "runs/std", trainer=Trainer, epochs=5, imgsz=224)
"""

from __future__ import annotations

from copy import copy
from typing import Iterable

import numpy as np
import torch

from pipeline.core.facts import Z_THRESHOLD
from pipeline.core.io import InputError
from pipeline.data.preprocess import content_mask, model_input

#: |z| above this marks a pixel (or an image statistic) as an outlier.
#: Channel names of the model input (RGB after the flip).
CHANNELS = ("R", "G", "B")


# ----------------------------------------------------------------------------------------------------
# Three scalings and their statistics
# ----------------------------------------------------------------------------------------------------


def _channels(x: torch.Tensor) -> torch.Tensor:
    """1x3xHxW or 3xHxW -> 3x(H*W) float64 (statistics in double precision, the tensor stays float32)."""
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image (batch of 1), got shape {tuple(x.shape)}")
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"expected a 1x3xHxW or 3xHxW tensor, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).double()


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Per channel (x - min) / (max - min) -> [0, 1]; a constant channel maps to 0 (its range is 0)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1), torch.zeros_like(x))


def zscore_scale(x: torch.Tensor, mean=None, std=None) -> torch.Tensor:
    """Per channel (x - mean) / std; this image's mean/std unless given (e.g. a dataset's). std 0 -> z 0."""
    c = x.shape[-3]
    if mean is None or std is None:
        flat = _channels(x)
        mean = flat.mean(dim=1) if mean is None else mean
        std = flat.std(dim=1, unbiased=False) if std is None else std
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(c, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float64).reshape(c, 1, 1)
    z = (x.double() - mean) / torch.where(std > 0, std, 1)
    return torch.where(std > 0, z, torch.zeros_like(z)).to(x.dtype)


def channel_stats(x: torch.Tensor, bins: int = 64, value_range: tuple[float, float] | None = None) -> dict:
    """Per channel min, max, mean, std (population, ddof 0), histogram and share of |z| > 3.

    The share of |z| > 3 standardizes the given values by their own mean and std, so it is the same for
    any per-channel affine scaling of the same pixels.
    """
    flat = _channels(x)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    z = (flat - mean[:, None]) / torch.where(std > 0, std, 1)[:, None]
    lo, hi = value_range if value_range is not None else (float(flat.min()), float(flat.max()))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(row.numpy(), bins=edges)[0].astype(int).tolist() for row in flat]
    return {
        "min": flat.min(dim=1).values.tolist(),
        "max": flat.max(dim=1).values.tolist(),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "frac_abs_z_gt_3": ((z.abs() > Z_THRESHOLD) & (std[:, None] > 0)).double().mean(dim=1).tolist(),
        "hist": {"edges": edges.tolist(), "counts": counts},
    }


def scalings(tensor: torch.Tensor, dataset_mean=None, dataset_std=None, bins: int = 64) -> dict:
    """The three scalings of one model input, with their per-channel statistics, side by side.

    Args:
        tensor: the model input (``1x3xHxW`` float32 in [0, 1], as from ``model_input``).
        dataset_mean, dataset_std: per-channel statistics of a dataset's model inputs (``dataset_channel_stats``);
            when given, a fourth entry ``zscore_dataset`` standardizes with them.
        bins: histogram bins per channel.

    Returns:
        ``{"divide255": s, "minmax": s, "zscore": s[, "zscore_dataset": s], "channels": ["R","G","B"],
        "pixels": H*W}`` where each ``s`` has per-channel lists ``min``, ``max``, ``mean``, ``std``,
        ``frac_abs_z_gt_3`` and ``hist`` {``edges``, ``counts``}. Statistics cover every pixel the model sees,
        grey padding included; ``zscore`` also records the ``mean_used``/``std_used`` it divided by.

    Examples:
        >>> s = scalings(model_input("photo.jpg")[0])
        >>> s["minmax"]["min"], s["zscore"]["mean"]     # [0, 0, 0] and ~[0, 0, 0]
    """
    x = tensor
    flat = _channels(x)
    out = {
        "divide255": channel_stats(x, bins, (0.0, 1.0)),
        "minmax": channel_stats(minmax_scale(x), bins, (0.0, 1.0)),
        "zscore": channel_stats(zscore_scale(x), bins),
    }
    out["zscore"]["mean_used"] = flat.mean(dim=1).tolist()
    out["zscore"]["std_used"] = flat.std(dim=1, unbiased=False).tolist()
    if dataset_mean is not None and dataset_std is not None:
        out["zscore_dataset"] = channel_stats(zscore_scale(x, dataset_mean, dataset_std), bins)
        out["zscore_dataset"]["mean_used"] = [float(v) for v in dataset_mean]
        out["zscore_dataset"]["std_used"] = [float(v) for v in dataset_std]
    out["channels"] = list(CHANNELS)
    out["pixels"] = int(flat.shape[1])
    return out


def dataset_channel_stats(images: Iterable, imgsz=640, stride: int = 32, auto: bool = True) -> dict:
    """Per-channel mean and std (population) of the model inputs of many photos, pooled over all pixels.

    Exact: sums of x and x^2 in float64 over every pixel of every model input (padding included, as
    the model sees it). Unreadable files are skipped and listed under ``errors``.

    Returns:
        ``{"mean": [R, G, B], "std": [R, G, B], "images": n, "pixels": total, "errors": [InputError, ...]}``
    """
    s1 = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    n_pixels, n_images, errors = 0, 0, []
    for item in images:
        try:
            x, _ = model_input(item, imgsz, stride, auto)
        except InputError as e:
            errors.append(e)
            continue
        flat = _channels(x)
        s1 += flat.sum(dim=1)
        s2 += (flat * flat).sum(dim=1)
        n_pixels += flat.shape[1]
        n_images += 1
    if n_images == 0:
        raise InputError(str(errors[0].path) if errors else "dataset", "no readable images for dataset statistics")
    mean = s1 / n_pixels
    std = (s2 / n_pixels - mean * mean).clamp_min(0).sqrt()
    return {"mean": mean.tolist(), "std": std.tolist(), "images": n_images, "pixels": n_pixels, "errors": errors}


# ----------------------------------------------------------------------------------------------------
# Pixel-level outliers
# ----------------------------------------------------------------------------------------------------


def pixel_outliers(tensor: torch.Tensor, threshold: float = Z_THRESHOLD, mean=None, std=None, meta: dict | None = None) -> dict:
    """Mark the pixels whose value is more than ``threshold`` standard deviations from the channel mean.

    A pixel is an outlier when any of its three channels has |z| > threshold, with z computed per channel
    from this image's statistics (or the given ``mean``/``std``, e.g. a dataset's). ``bright`` pixels
    (z > threshold: glare, sky, white paint) and ``dark`` ones (z < -threshold: shadows, black borders)
    are counted apart.

    Args:
        tensor: the model input, ``1x3xHxW``.
        threshold: |z| cut-off (3 by default).
        mean, std: per-channel statistics to standardize with (this image's when omitted).
        meta: ``model_input``'s meta; adds how many outliers sit in the letterbox padding.

    Returns:
        ``{"mask": HxW bool ndarray, "bright": HxW bool, "dark": HxW bool, "count", "fraction", "threshold",
        "per_channel_count": [R, G, B], "bright_count", "dark_count", "bbox": [x0, y0, x1, y1] or None,
        "centroid": [x, y] or None, "grid3x3": 3x3 fractions of all outliers by image region (rows top to
        bottom), "in_padding": count (with meta)}``.

    Examples:
        >>> out = pixel_outliers(model_input("photo.jpg")[0])
        >>> out["count"], out["fraction"], out["bbox"]
    """
    z = zscore_scale(tensor.double(), mean, std)
    z = z[0] if z.ndim == 4 else z
    over = z.abs() > threshold  # 3xHxW
    mask = over.any(dim=0).numpy()
    bright = (z > threshold).any(dim=0).numpy()
    dark = (z < -threshold).any(dim=0).numpy()
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    count = int(mask.sum())
    grid = np.zeros((3, 3))
    if count:
        np.add.at(grid, (ys * 3 // h, xs * 3 // w), 1)
        grid /= count
    out = {
        "mask": mask,
        "bright": bright,
        "dark": dark,
        "count": count,
        "fraction": count / mask.size,
        "threshold": float(threshold),
        "pixels": int(mask.size),
        "per_channel_count": over.reshape(over.shape[0], -1).sum(dim=1).tolist(),
        "bright_count": int(bright.sum()),
        "dark_count": int(dark.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())] if count else None,
        "centroid": [float(xs.mean()), float(ys.mean())] if count else None,
        "grid3x3": grid.tolist(),
    }
    if meta is not None:
        out["in_padding"] = int((mask & ~content_mask(meta)).sum())
    return out


def outlier_summary(outliers: dict) -> dict:
    """``pixel_outliers``' result without its HxW arrays (what goes into stats.json)."""
    return {k: v for k, v in outliers.items() if not isinstance(v, np.ndarray)}


def standardized_trainer(mean, std):
    """A DetectionTrainer class whose batches (train and val) are ``(x/255 - mean) / std`` per channel.

    Args:
        mean: per-channel (R, G, B) means of ``x/255`` over the dataset (``preprocess.dataset_channel_stats``).
        std: per-channel standard deviations, same source.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def standardize(img: torch.Tensor) -> torch.Tensor:
        return (img - m.to(img)) / s.to(img)

    class StandardizedValidator(DetectionValidator):
        def preprocess(self, batch):
            batch = super().preprocess(batch)  # x / 255 on the device
            batch["img"] = standardize(batch["img"])
            return batch

    class StandardizedTrainer(DetectionTrainer):
        scaling = {"mean": list(map(float, mean)), "std": list(map(float, std))}

        def preprocess_batch(self, batch):
            batch = super().preprocess_batch(batch)  # x / 255 (and multi-scale resizing, if on)
            batch["img"] = standardize(batch["img"])
            return batch

        def get_validator(self):
            super().get_validator()  # keeps whatever bookkeeping the parent does (loss names)
            return StandardizedValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)

    return StandardizedTrainer
