"""A "trained-looking" checkpoint in seconds, for tests that need BatchNorm folding to matter.

A fresh yolov8n has BatchNorm at its initial values (mean 0, var 1, gamma 1, beta 0), so folding changes
nothing and no box passes conf 0.25. Training moves those numbers; here they are moved at random (seeded),
and the model is saved the way Ultralytics' trainer saves ``best.pt``, so ``YOLO(path)`` loads it as one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

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
