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
    >>> from pipeline.data.preprocess import model_input, scalings, pixel_outliers
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

import numpy as np
import torch

from pipeline.core.io import read_image

#: Ultralytics pads with this grey level (114/255 = 0.447 after scaling).
PAD_VALUE = 114


def load_bgr(image_bgr_or_path) -> tuple[np.ndarray, str | None]:
    """Return ``(BGR uint8 HxWx3, source path or None)`` the way Ultralytics' predictor would get it.

    A path is read like the predictor reads a file (``pipeline.core.io.read_image``: grayscale -> 3 equal
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


def tensor_to_bgr(tensor: torch.Tensor) -> np.ndarray:
    """Model input back to a BGR uint8 picture (exact: x*255 rounds back to the original byte)."""
    x = tensor[0] if tensor.ndim == 4 else tensor
    rgb = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])
