"""Ultralytics' AMP decision made offline: the trainer's ``check_amp`` without downloading weights.

On a GPU the trainer's check_amp loads yolo26n.pt and, when it is missing, downloads it. ``offline_check_amp``
makes the same decision without weights or network; ``pipeline.core.runtime.ultralytics_settings`` installs it
into the trainer (``install_offline_amp_check``).

Examples:
    >>> from pipeline.core.amp import offline_check_amp, AMP_DECISIONS
    >>> offline_check_amp(model_on_cpu), AMP_DECISIONS[-1]["reason"]
    (False, 'cpu: Ultralytics trains in fp32 there')
"""

from __future__ import annotations

import copy
import re

# The GPUs Ultralytics' own check_amp (8.4.190) turns AMP off for: fp16 there gives NaN losses or zero mAP.
FP16_UNSAFE_GPUS = re.compile(
    r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)", re.IGNORECASE
)
AMP_REL_TOL = 0.05  # see amp_forward_agrees: far above fp16 rounding, far below a broken forward
AMP_DECISIONS: list[dict] = []  # what offline_check_amp decided in this process, newest last


def amp_forward_agrees(model, device, dtype=None, imgsz: int = 256) -> tuple[bool, float]:
    """Forward a copy of ``model`` on a real photo in fp32 and under autocast; (finite and close, rel. error).

    The copy is in eval mode, so the model being trained keeps its BatchNorm statistics and weights.
    "Close" means the largest absolute difference of the raw head outputs is within ``AMP_REL_TOL`` of
    the largest fp32 output: fp16 rounding gives ~1e-3 there (spacing 0.25 px at 256 px box coordinates),
    broken fp16 gives inf/NaN or errors of order 1. (A from-scratch model's boxes are noise, so the
    post-NMS comparison Ultralytics makes with pretrained weights would have nothing to compare.)
    """
    import cv2
    import torch
    from ultralytics.utils import ASSETS

    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cpu" else torch.float16)
    im = cv2.resize(cv2.imread(str(ASSETS / "bus.jpg")), (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(im[..., ::-1].copy()).permute(2, 0, 1)[None].float().div(255).to(device)
    m = copy.deepcopy(model).to(device).float().eval()
    with torch.no_grad():
        a = m(x)
        with torch.autocast(device_type=device.type, dtype=dtype):
            b = m(x)
    a, b = (t[0] if isinstance(t, (tuple, list)) else t for t in (a, b))
    b = b.float()
    rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    ok = bool(torch.isfinite(b).all()) and a.shape == b.shape and rel <= AMP_REL_TOL
    return ok, rel


def offline_check_amp(model) -> bool:
    """Ultralytics' AMP decision without downloading ``yolo26n.pt``: the trainer's ``check_amp``, offline.

    Off on CPU and MPS (Ultralytics trains those in fp32) and on the GPUs Ultralytics knows are fp16-unsafe;
    otherwise on when the model's fp16 forward is finite and agrees with fp32 (``amp_forward_agrees``).
    """
    import torch

    device = next(model.parameters()).device
    decision = {"device": str(device), "amp": False, "reason": "", "rel_error": None}
    if device.type in {"cpu", "mps"}:
        decision["reason"] = f"{device.type}: Ultralytics trains in fp32 there"
    elif device.type == "cuda" and FP16_UNSAFE_GPUS.search(name := torch.cuda.get_device_name(device)):
        decision["reason"] = f"{name} is on Ultralytics' fp16-unsafe list"
    else:
        ok, rel = amp_forward_agrees(model, device)
        decision.update(amp=ok, rel_error=rel, reason="fp16 forward finite and within tolerance" if ok else
                        "fp16 forward not finite or too far from fp32")
    AMP_DECISIONS.append(decision)
    return decision["amp"]


def install_offline_amp_check() -> None:
    """Make the trainer call ``offline_check_amp`` (it imported ``check_amp`` by name, so patch it there)."""
    import ultralytics.engine.trainer as trainer

    trainer.check_amp = offline_check_amp
