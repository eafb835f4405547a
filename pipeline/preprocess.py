"""The input layer: the exact tensor YOLOv8 sees, three ways to scale it, and the pixels that stand out.

YOLOv8's first convolution does not see a photo, it sees a ``1x3xHxW`` float tensor built in four steps::

    photo (BGR uint8, any size)
      -> letterbox: resize by r = min(H/h, W/w), pad with grey 114 (to a stride multiple, or to a square)
      -> BGR -> RGB, HWC -> CHW, add a batch axis
      -> x / 255  (float32 in [0, 1]: the only "normalization" YOLOv8 applies)

``model_input`` builds that tensor with Ultralytics' own ``LetterBox`` and the same operations as its
predictor, so it is equal, bit for bit, to what ``YOLO.predict`` feeds the network (the tests compare
them with a max abs difference of exactly 0). Photos are read with the same reader Ultralytics uses
(grayscale becomes three equal channels, alpha is dropped, 16-bit keeps its high byte).

``scalings`` then puts three scalings of the same pixels side by side:

- ``divide255``: x/255, what the model uses (the tensor itself);
- ``minmax``: per channel (x - min) / (max - min), stretched to exactly [0, 1];
- ``zscore``: per channel (x - mean) / std with this image's statistics (``zscore_dataset`` with a
  dataset's statistics, when given).

All three are affine maps per channel, so they move and stretch the histogram but never change its
shape, and the pixels with |z| > 3 are the same pixels under all three. ``pixel_outliers`` turns that
|z| > 3 test into a mask over the photo: glare (z > 3), deep shadows or black borders (z < -3).

Examples:
    >>> from pipeline.preprocess import model_input, scalings, pixel_outliers
    >>> x, meta = model_input("photo.jpg", imgsz=640)   # e.g. 1x3x480x640 for a 4:3 photo
    >>> meta["ratio"], meta["pad"]
    (0.5, {'top': 0, 'bottom': 0, 'left': 0, 'right': 0})
    >>> stats = scalings(x)                             # per-channel min/max/mean/std/histogram x3
    >>> out = pixel_outliers(x, threshold=3.0)          # out["mask"] is HxW bool

    Command line (writes input.safetensors, stats.json and plots)::

        cardamage preprocess photo.jpg --out runs/preprocess --imgsz 640
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from pipeline import Z_THRESHOLD, runtime  # noqa: F401  (runtime: offline env before ultralytics)
from pipeline.io import InputError, read_image

import torch  # noqa: E402  (after the runtime so Ultralytics sees the offline environment)

#: Ultralytics pads with this grey level (114/255 = 0.447 after scaling).
PAD_VALUE = 114
#: |z| above this marks a pixel (or an image statistic) as an outlier.
#: Channel names of the model input (RGB after the flip).
CHANNELS = ("R", "G", "B")


def load_bgr(image_bgr_or_path) -> tuple[np.ndarray, str | None]:
    """Return ``(BGR uint8 HxWx3, source path or None)`` the way Ultralytics' predictor would get it.

    A path is read like the predictor reads a file (``pipeline.io.read_image``: grayscale -> 3 equal
    channels, alpha dropped, 16-bit -> high byte). An array goes through the predictor's own check for
    in-memory images, so a 2-D grey array, a 4-channel array or a ``uint16`` array become what the
    predictor would make of them.

    Raises:
        InputError: unreadable file.
        ValueError: an array that is not one image.
    """
    if isinstance(image_bgr_or_path, (str, os.PathLike)):
        return read_image(image_bgr_or_path), str(image_bgr_or_path)
    if not isinstance(image_bgr_or_path, np.ndarray):
        raise TypeError(f"expected an image path or a numpy array, got {type(image_bgr_or_path).__name__}")
    from ultralytics.data.loaders import LoadPilAndNumpy

    return np.ascontiguousarray(LoadPilAndNumpy._single_check(image_bgr_or_path, 3)), None


def input_size(imgsz=640, stride: int = 32) -> list[int]:
    """The ``[height, width]`` the predictor letterboxes to: ``imgsz`` rounded up to a stride multiple."""
    from ultralytics.utils.checks import check_imgsz

    return check_imgsz(imgsz, stride=stride, min_dim=2)


def letterbox(image_bgr: np.ndarray, imgsz=640, stride: int = 32, auto: bool = True) -> tuple[np.ndarray, dict]:
    """Resize and pad a BGR photo exactly as the predictor does, with Ultralytics' own ``LetterBox``.

    Args:
        image_bgr: HxWx3 uint8 BGR.
        imgsz: target size (int for a square, or ``[h, w]``), rounded up to a multiple of ``stride``.
        stride: the model's largest stride (32 for YOLOv8).
        auto: ``True`` (the predictor's default for one photo and a PyTorch model) pads only up to the next
            stride multiple, so a 4:3 photo at 640 becomes 480x640; ``False`` pads to the full square.

    Returns:
        ``(letterboxed BGR uint8 HxWx3, meta)`` with ``orig_shape`` [h, w], ``input_shape`` [H, W],
        ``imgsz`` [h, w], ``ratio`` (one scale factor for both axes), ``resized_shape`` [h, w] of the photo
        inside the input, ``pad`` {top, bottom, left, right} in pixels, ``stride``, ``auto``, ``pad_value``.
    """
    from ultralytics.data.augment import LetterBox

    size = input_size(imgsz, stride)
    box = LetterBox(size, auto=auto, stride=stride)
    params = box.get_params({"img": image_bgr})  # the same two calls LetterBox.__call__ makes
    out = box.apply_image({"img": image_bgr}, params)["img"]
    w_unpad, h_unpad = params["new_unpad"]
    meta = {
        "orig_shape": [int(image_bgr.shape[0]), int(image_bgr.shape[1])],
        "input_shape": [int(out.shape[0]), int(out.shape[1])],
        "imgsz": [int(s) for s in size],
        "ratio": float(params["ratio"][0]),
        "resized_shape": [int(h_unpad), int(w_unpad)],
        "pad": {k: int(params[k]) for k in ("top", "bottom", "left", "right")},
        "stride": int(stride),
        "auto": bool(auto),
        "pad_value": PAD_VALUE,
    }
    return out, meta


def to_tensor(letterboxed_bgr: np.ndarray) -> torch.Tensor:
    """BGR uint8 HxWx3 -> RGB float32 1x3xHxW in [0, 1]: flip channels, move them first, divide by 255."""
    x = torch.from_numpy(np.ascontiguousarray(letterboxed_bgr)).unsqueeze(0)  # 1xHxWx3 uint8
    x = x.permute(0, 3, 1, 2).contiguous().flip(1)  # 1x3xHxW, BGR -> RGB
    return x.float().div_(255)  # float32 x/255 is correctly rounded, so this matches the predictor bit for bit


def model_input(image_bgr_or_path, imgsz=640, stride: int = 32, auto: bool = True) -> tuple[torch.Tensor, dict]:
    """The exact tensor the YOLOv8 predictor feeds the network for one photo.

    Args:
        image_bgr_or_path: a path (read like Ultralytics reads it) or a BGR uint8 array.
        imgsz: as in ``YOLO.predict(imgsz=...)``.
        stride: the model's largest stride (``int(model.stride.max())``, 32 for YOLOv8).
        auto: ``True`` = the predictor's default for one photo with a ``.pt`` model (minimum rectangle);
            ``False`` = fixed square ``imgsz x imgsz`` (what ``predict(rect=False)`` or exported models use).

    Returns:
        ``(x, meta)``: ``x`` is float32 ``1x3xHxW``, RGB, in [0, 1]; ``meta`` is ``letterbox``'s dict plus
        ``source`` (the path or None).

    Examples:
        >>> x, meta = model_input("photo_640x480.jpg", imgsz=640)
        >>> tuple(x.shape), meta["pad"]
        ((1, 3, 480, 640), {'top': 0, 'bottom': 0, 'left': 0, 'right': 0})
    """
    image, source = load_bgr(image_bgr_or_path)
    boxed, meta = letterbox(image, imgsz, stride, auto)
    meta["source"] = source
    return to_tensor(boxed), meta


def content_mask(meta: dict) -> np.ndarray:
    """HxW bool over the model input: True on the photo, False on the grey letterbox padding."""
    h, w = meta["input_shape"]
    p = meta["pad"]
    mask = np.zeros((h, w), dtype=bool)
    mask[p["top"] : h - p["bottom"], p["left"] : w - p["right"]] = True
    return mask


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


def tensor_to_bgr(tensor: torch.Tensor) -> np.ndarray:
    """Model input back to a BGR uint8 picture (exact: x*255 rounds back to the original byte)."""
    x = tensor[0] if tensor.ndim == 4 else tensor
    rgb = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


__all__ = [
    "CHANNELS",
    "PAD_VALUE",
    "Z_THRESHOLD",
    "channel_stats",
    "content_mask",
    "dataset_channel_stats",
    "input_size",
    "letterbox",
    "load_bgr",
    "minmax_scale",
    "model_input",
    "outlier_summary",
    "pixel_outliers",
    "scalings",
    "tensor_to_bgr",
    "to_tensor",
    "zscore_scale",
]
