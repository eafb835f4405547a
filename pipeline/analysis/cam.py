"""Where the model looks: EigenCAM from recorded activations, LayerCAM from Ultralytics' own ``visualize=True``.

Both are numbers computed here and only drawn by ``pipeline.report.plots``:

- ``eigencam`` needs no gradient: the first principal component of one recorded layer's activations;
- ``layercam`` asks Ultralytics for its LayerCAM overlay (a backward pass per explained box) and
  measures how much heat it holds, so a flat map from an untrained head is not shown as an explanation.

Examples:
    >>> from pipeline.analysis.cam import eigencam, layercam
    >>> cam = eigencam(rec.activations["model.15.cv2"][1])     # HxW in [0, 1]
    >>> lc = layercam(AutoBackend(model=private_copy, fuse=True), x, "runs/report/report_files/layercam")
    >>> lc["usable"], lc["heat_spread"]
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from ultralytics.utils import LOGGER

#: A LayerCAM overlay whose heat varies less than this (std, 0-255) explains nothing (an untrained head).
MIN_HEAT_SPREAD = 8.0
#: Ultralytics' default: LayerCAM explains at most this many predictions, one backward pass each.
LAYERCAM_TOPK = 16


class _DropTopkWarning(logging.Filter):
    """Ultralytics warns when it explains fewer predictions than pass conf; the report states that count itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Explaining the ")


def eigencam(act) -> np.ndarray:
    """EigenCAM: project each position's C-vector of activations on their first principal direction.

    ``A`` is the activation reshaped to (H*W, C); after centring, the first right singular vector ``v``
    is the direction along which positions differ most; the map is ``A v`` reshaped to HxW, signed so
    that it correlates positively with the channel-mean activation, clipped at 0 and scaled to [0, 1].
    """
    a = torch.as_tensor(act).detach().double()
    a = a[0] if a.ndim == 4 else a
    c, h, w = a.shape
    A = a.reshape(c, h * w).T  # (HW, C)
    A = A - A.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(A, full_matrices=False)
    cam = (A @ vh[0]).reshape(h, w)
    if float((cam.flatten() * a.mean(0).flatten()).sum()) < 0:  # singular vectors have no fixed sign
        cam = -cam
    cam = cam.clamp(min=0)
    return (cam / cam.max().clamp(min=1e-12)).numpy()


def layercam(backend, input_tensor, out_dir, conf: float = 0.25, min_spread: float = MIN_HEAT_SPREAD,
             topk: int = LAYERCAM_TOPK) -> dict:
    """Ultralytics' own LayerCAM (``class_activation_map``, what ``predict(visualize=True)`` calls) on the model input.

    Called directly with the model input and an ``AutoBackend``, so no predictor is set up around it (no
    letterbox of an already letterboxed input, no warm-up, no second model preparation): the same map.

    Ultralytics saves ``0.5 * jet(cam) + 0.5 * input`` as a JPEG. Knowing the input (min-max scaled per
    channel as Ultralytics does), we take the input back out and measure the spread (std, 0-255) of the
    colour-mapped heat alone: a flat map (an untrained head explains nothing) is not usable.

    Args:
        backend: an ``ultralytics.nn.autobackend.AutoBackend`` around a PyTorch detection model.
        input_tensor: the model input ``1x3xHxW``. out_dir: where Ultralytics writes ``image0_cam.jpg``.
        conf: score a prediction must pass to be explained (Ultralytics explains the best one if none does).
        topk: the most predictions explained (the strongest; one backward pass each).

    Returns:
        ``{"path": Path or None, "heat_spread": float, "usable": bool, "topk": int}``.
    """
    from ultralytics.utils.plotting import class_activation_map

    out_dir = Path(out_dir).resolve()
    level, quiet = LOGGER.level, _DropTopkWarning()
    LOGGER.setLevel(max(level, logging.WARNING))  # its "Saving <file>... (LayerCAM)" line is not the report's output
    LOGGER.addFilter(quiet)
    try:
        class_activation_map(backend, input_tensor, ["image0"], out_dir, conf=conf, topk=topk)
    except Exception:  # a failure here only loses the optional LayerCAM picture; EigenCAM stays
        return {"path": None, "heat_spread": float("nan"), "usable": False, "topk": topk}
    finally:
        LOGGER.removeFilter(quiet)
        LOGGER.setLevel(level)
    files = sorted(out_dir.glob("*_cam*.jpg"), key=lambda f: f.stat().st_mtime)
    img = cv2.imread(str(files[-1])) if files else None  # Ultralytics' overlay, not the photo
    if img is None:
        return {"path": None, "heat_spread": float("nan"), "usable": False, "topk": topk}
    x = torch.as_tensor(input_tensor)[0].float()
    lo, hi = x.amin((1, 2), keepdim=True), x.amax((1, 2), keepdim=True)
    base = ((x - lo) / (hi - lo).clamp(min=1e-7) * 255).byte().permute(1, 2, 0).numpy()[..., ::-1].astype(np.float32)
    if base.shape != img.shape:
        return {"path": files[-1], "heat_spread": float("nan"), "usable": True, "topk": topk}
    heat = np.clip(2 * img.astype(np.float32) - base, 0, 255)
    spread = float(heat.reshape(-1, 3).std(0).max())
    return {"path": files[-1], "heat_spread": spread, "usable": spread >= min_spread, "topk": topk}
