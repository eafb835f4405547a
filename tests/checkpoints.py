"""A "trained-looking" checkpoint in seconds, for tests that need BatchNorm folding to matter.

A fresh yolov8n has BatchNorm at its initial values (mean 0, var 1, gamma 1, beta 0), so folding changes
nothing and no box passes conf 0.25. Training moves those numbers; here they are moved at random (seeded),
and the model is saved the way Ultralytics' trainer saves ``best.pt``, so ``YOLO(path)`` loads it as one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pipeline.data.preprocess import model_input
from pipeline.model.load import load_model


def save_checkpoint(path: Path, seed: int = 1, imgsz: int = 640, key: str = "ema") -> Path:
    """Save a 6-class yolov8n with randomized BatchNorm and class biases near -1.5; return ``path``.

    ``key="ema"`` matches what the trainer writes (``model`` None, the EMA weights in half precision);
    ``key="model"`` the older layout. Both load through ``load_model``.
    """
    import ultralytics

    torch.manual_seed(seed)
    net = load_model("yolov8n.yaml", nc=6).model
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) * 2.0 + 0.05)
            m.weight.data.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.5)
    for seq in net.model[-1].cv3:  # class-logit biases near -1.5 (untrained: ~-8), so boxes pass conf 0.25
        seq[-1].bias.data.copy_(torch.randn(seq[-1].out_channels, generator=g) * 0.5 - 1.5)
    net.eval()
    ckpt = {
        "epoch": -1, "best_fitness": None, "model": None, "ema": None, "updates": 0, "optimizer": None,
        "train_args": {"task": "detect", "model": "yolov8n.yaml", "imgsz": imgsz},
        "train_metrics": {}, "version": ultralytics.__version__,
    }
    ckpt[key] = copy.deepcopy(net).half()
    torch.save(ckpt, path)
    return path


def redraw_head(yolo, photo, imgsz: int, seed: int = 0):
    """Give a weak checkpoint a head whose NMS has one stable answer (for agreement checks: bench and tests).

    A checkpoint trained for minutes on synthetic data scores every CarDD anchor about alike (~0.002),
    so which of two near-tied boxes NMS keeps is decided by float noise of ~1e-7, and no two backends
    can agree box for box. Keeping the trained backbone, this redraws the last class convs as random
    readouts of the features (logit ~ -3 + N(0, 1), standardised on ``photo``) and puts each box side's
    DFL mass on bins 1-2 (boxes 2-4 strides wide). Speed is unchanged: same layers, same shapes.
    Modifies ``yolo`` in place and returns it.
    """
    model = yolo.model.eval()
    detect = model.model[-1]
    heads = [seq[-1] for seq in detect.cv3] + [seq[-1] for seq in detect.cv2]
    stats = {}

    def measure(k):
        def hook(module, inputs, output):
            f = inputs[0][0].flatten(1)
            stats[k] = (f.mean(1), f.std(1).clamp_min(1e-6))

        return hook

    hooks = [h.register_forward_hook(measure(k)) for k, h in enumerate(heads)]
    with torch.no_grad():
        model(model_input(photo, imgsz)[0])
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(seed)

    def readout(k, rows):
        mu, sigma = stats[k]
        w = torch.randn(rows, len(mu), generator=g) / (sigma * len(mu) ** 0.5)
        return w, -(w @ mu)

    for k, conv in enumerate(heads):
        if k < len(detect.cv3):
            w, b = readout(k, conv.weight.shape[0])
            conv.weight.data, conv.bias.data = w[:, :, None, None].clone(), b - 3.0
        else:
            w, b = torch.zeros(conv.weight.shape[:2]), torch.full((conv.weight.shape[0],), -20.0)
            wk, bk = readout(k, 4)
            for side in range(4):
                r = side * detect.reg_max
                b[r + 1] = 0.0
                w[r + 2], b[r + 2] = wk[side], bk[side]
            conv.weight.data, conv.bias.data = w[:, :, None, None].clone(), b
    return yolo
