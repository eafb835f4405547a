"""Training by gradients, in numbers: how the detection loss's gradient reaches every layer, and one SGD step.

Two lessons, both measured, never drawn by hand:

1. **Gradient flow.** One real backward pass of YOLOv8's own detection loss (Ultralytics'
   ``v8DetectionLoss`` through ``model.loss(batch)``: box + class + DFL terms) on a batch of images with
   labels, in float32 without AMP (under AMP the gradients are multiplied by a loss scale). For every
   conv layer, the mean |dL/dW| of its weights, listed from stem to head. Then the *same* architecture
   built with the same seed (so the same initial weights) with SiLU swapped for sigmoid, tanh and ReLU,
   on the same batch: a saturating activation multiplies the gradient by at most 0.25 (sigmoid) per layer
   on the way back, and the numbers show it vanishing toward the stem.
2. **Backprop made concrete.** One conv neuron, its real input patch ``x``, kernel ``w`` and (folded) bias
   ``b``: ``z = sum(w*x) + b``, ``a = SiLU(z)``, a squared-error loss to a target, the chain rule by hand
   ``dL/dw = (a - t) * SiLU'(z) * x``, the update ``w <- w - lr * dL/dw`` and the loss after the step
   (it drops). Autograd checks every derivative.

The batch is built the way Ultralytics' trainer hands it to the loss: ``img`` (B,3,H,W float in [0,1]),
``cls`` (N,1), ``bboxes`` (N,4, normalized xywh), ``batch_idx`` (N,).

Examples:
    >>> from pipeline.model.load import load_model
    >>> from pipeline.lesson.gradients import make_batch, gradient_flow, activation_comparison
    >>> batch = make_batch([(image_bgr, [(0, 0.5, 0.5, 0.2, 0.1)])], imgsz=320)
    >>> flow = gradient_flow(load_model("yolov8n.yaml", nc=6).model, batch)
    >>> flow["layers"][0], flow["mean_abs_grad"][0]
    ('model.0', ...)
    >>> comparison = activation_comparison("yolov8n.yaml", 6, batch, seed=0)
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pipeline.lesson.activations import d_silu, silu, silu_minimum

#: Activations compared in the gradient-flow experiment (SiLU is YOLOv8's own).
VARIANTS = {
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


# --- the batch ------------------------------------------------------------------------------


def make_batch(samples, imgsz: int = 320) -> dict:
    """Build a training batch dict the way Ultralytics' trainer gives it to ``model.loss``.

    Args:
        samples: list of ``(image_bgr, labels)`` where ``labels`` is a list of
            ``(class_id, x_center, y_center, width, height)`` normalized to [0, 1] (YOLO format).
        imgsz: square side the images are resized to. Normalized xywh boxes do not change under a
            resize of the whole image, so labels stay exact.

    Returns:
        dict with ``img`` (B,3,imgsz,imgsz float32 in [0,1], RGB), ``cls`` (N,1), ``bboxes`` (N,4),
        ``batch_idx`` (N,).
    """
    import cv2

    imgs, cls, boxes, idx = [], [], [], []
    for i, (image, labels) in enumerate(samples):
        im = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
        imgs.append(torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))))  # BGR->RGB, HWC->CHW
        for c, x, y, w, h in labels:
            cls.append([float(c)])
            boxes.append([float(x), float(y), float(w), float(h)])
            idx.append(float(i))
    return {
        "img": torch.stack(imgs).float() / 255,  # the trainer's preprocess_batch: uint8 -> float / 255
        "cls": torch.tensor(cls, dtype=torch.float32).reshape(-1, 1),
        "bboxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "batch_idx": torch.tensor(idx, dtype=torch.float32),
    }


# --- gradient flow ------------------------------------------------------------------------------


def _hyperparameters(model):
    """The loss gains (box, cls, dfl) the criterion reads from ``model.args``, as the trainer attaches them.

    A checkpoint carries its training args as a plain dict; a YAML build has none. Either way we hand the
    criterion Ultralytics' defaults updated with whatever the model carries.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG_DICT

    args = getattr(model, "args", None)
    carried = dict(args) if isinstance(args, dict) else dict(vars(args)) if args is not None else {}
    known = {k: v for k, v in carried.items() if k in DEFAULT_CFG_DICT and k in ("box", "cls", "dfl")}
    return get_cfg(overrides=known)


def gradient_flow(model: nn.Module, batch: dict) -> dict:
    """One fp32 backward pass of YOLOv8's detection loss; mean |grad| of every conv layer's weights.

    The model is deep-copied (the caller's model is not touched), put in train mode (as during training:
    BatchNorm uses the batch's statistics) and the loss is Ultralytics' own ``model.loss(batch)``.

    Returns:
        dict with ``layers`` (module paths, stem -> head), ``mean_abs_grad`` (floats, same order),
        ``loss`` (total as the trainer backpropagates it), ``loss_items`` (box, cls, dfl),
        ``loss_names``.
    """
    return _flow(copy.deepcopy(model), batch)


def _flow(model: nn.Module, batch: dict) -> dict:
    """``gradient_flow`` on ``model`` itself (a private copy the caller made), which it changes."""
    model = model.float().train()
    for p in model.parameters():
        p.requires_grad_(True)
    model.args = _hyperparameters(model)
    model.criterion = model.init_criterion()  # Ultralytics' v8DetectionLoss for a DetectionModel
    batch = {k: v.float() for k, v in batch.items()}
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", enabled=False):
        loss, items = model.loss(batch)
        total = loss.sum()
        total.backward()
    layers, grads = [], []
    for name, p in model.named_parameters():
        if p.ndim == 4 and p.grad is not None:  # conv kernels (Conv blocks and the head's last 1x1 convs)
            path = name[: -len(".weight")]
            layers.append(path[: -len(".conv")] if path.endswith(".conv") else path)
            grads.append(float(p.grad.abs().mean()))
    items = items.detach().flatten().tolist() if isinstance(items, torch.Tensor) else [float(v) for v in items.values()]
    return {
        "layers": layers,
        "mean_abs_grad": grads,
        "loss": float(total.detach()),
        "loss_items": [float(v) for v in items],
        "loss_names": list(model.criterion.loss_names),
        "batch_size": int(batch["img"].shape[0]),
        "imgsz": int(batch["img"].shape[-1]),
        "num_labels": int(batch["cls"].shape[0]),
    }


def swap_activation(model: nn.Module, act: nn.Module) -> int:
    """Replace the activation of every Conv block with ``act``; return how many blocks changed.

    All Conv blocks of a YOLOv8 model share one ``nn.SiLU`` object (``Conv.default_act``); we set each
    block's ``act`` attribute, which is what ``Conv.forward`` calls.
    """
    from ultralytics.nn.modules.conv import Conv

    n = 0
    for m in model.modules():
        if isinstance(m, Conv) and isinstance(m.act, nn.Module) and not isinstance(m.act, nn.Identity):
            m.act = act
            n += 1
    return n


def fresh_model(cfg, nc: int, seed: int = 0) -> nn.Module:
    """A freshly initialised DetectionModel from ``cfg``, its weights drawn after ``torch.manual_seed(seed)``."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    return DetectionModel(copy.deepcopy(cfg), nc=nc, verbose=False)


def with_activation(model: nn.Module, activation: str) -> nn.Module:
    """A copy of ``model`` whose Conv blocks use ``activation`` (a ``VARIANTS`` name) instead of SiLU."""
    model = copy.deepcopy(model)
    changed = swap_activation(model, VARIANTS[activation]())
    assert changed > 0, "no Conv block found to swap"
    return model


def build_variant(cfg, nc: int, activation: str, seed: int = 0) -> nn.Module:
    """A fresh DetectionModel from ``cfg`` with the given seed, its SiLU swapped for ``activation``.

    Same seed -> same initial weights for every variant (activations have no parameters), so the only
    difference between two variants is the activation function.
    """
    return with_activation(fresh_model(cfg, nc, seed), activation)


def activation_comparison(cfg, nc: int, batch: dict, seed: int = 0, variants=tuple(VARIANTS)) -> dict:
    """``gradient_flow`` for the same architecture with each activation in ``variants``.

    The fresh model is built once and copied per activation (what ``build_variant`` gives for each, without
    building the network again: that was ~0.2 s a variant on a CPU).

    Args:
        cfg: the model YAML (path/name or the dict in ``model.yaml``).
        nc: number of classes.
        batch: from ``make_batch``; the same batch for every variant.
        seed: torch seed used before building the fresh model.

    Returns:
        ``{activation: gradient_flow(...) result}``.
    """
    base = fresh_model(cfg, nc, seed)
    return {name: _flow(with_activation(base, name), batch) for name in variants}  # each copy is private already


# --- one SGD step on one neuron ------------------------------------------------------------------


def step_direction(step: dict) -> str:
    """Which way one ``sgd_step`` moved z and a, and why, in words that follow its numbers.

    Left of SiLU's minimum its slope is negative: there the step lowers z to raise a, which reads as a
    paradox unless said.

    Examples:
        >>> "lowered z" in step_direction(sgd_step([[[1.0]]], [[[-3.0]]], 0.0))  # z = -3: left of the minimum
        True
    """
    dz, da = step["z_new"] - step["z"], step["a_new"] - step["a"]
    z_min = silu_minimum()[0]
    side = (f"SiLU'(z) = {step['da_dz']:+.4g} is negative here, left of SiLU's minimum at z = {z_min:.3f}, where the "
            f"curve falls as z grows: lowering z raises a" if step["da_dz"] < 0 else
            f"SiLU'(z) = {step['da_dz']:+.4g} is positive here, so a moves the way z does")
    return (f"dL/dz = (a - t) SiLU'(z) = {step['dL_dz']:+.4g} {'>' if step['dL_dz'] > 0 else '<='} 0, so the step "
            f"{'lowered' if dz < 0 else 'raised'} z by {abs(dz):.4g}; {side}: a {'rose' if da > 0 else 'fell'} by {abs(da):.4g}")




def sgd_step(patch, weight, bias, target: float | None = None, lr: float = 0.01) -> dict:
    """One SGD step on one SiLU neuron, by hand in float64, checked against autograd.

    Forward:  z = sum(w * x) + b,  a = SiLU(z),  L = 0.5 * (a - t)^2
    Backward: dL/da = a - t,  da/dz = SiLU'(z),  dL/dz = (a - t) SiLU'(z),
              dL/dw = dL/dz * x,  dL/db = dL/dz
    Update:   w <- w - lr * dL/dw,  b <- b - lr * dL/db, then the loss again (it drops for a small lr).

    Args:
        patch: the neuron's real input patch (same shape as ``weight``: C x k x k).
        weight: the neuron's kernel (folded with BatchNorm: what the neuron really multiplies by).
        bias: its folded bias.
        target: the output we ask of the neuron; default ``a + 1`` ("fire one unit more").
        lr: learning rate.

    Returns:
        dict of every intermediate number (floats / nested lists), including autograd's gradients and
        the max |difference| between the hand and autograd gradients.
    """
    x = torch.as_tensor(patch, dtype=torch.float64)
    w = torch.as_tensor(weight, dtype=torch.float64).reshape(x.shape)
    b = float(bias)

    z = float((w * x).sum()) + b
    a = float(silu(z))
    t = a + 1.0 if target is None else float(target)
    loss = 0.5 * (a - t) ** 2
    dL_da = a - t
    da_dz = float(d_silu(z))
    dL_dz = dL_da * da_dz
    dL_dw = dL_dz * x
    dL_db = dL_dz
    w_new = w - lr * dL_dw
    b_new = b - lr * dL_db
    z_new = float((w_new * x).sum()) + b_new
    a_new = float(silu(z_new))
    loss_new = 0.5 * (a_new - t) ** 2

    # autograd, the oracle: same formula through torch's SiLU
    wt = w.clone().requires_grad_(True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    at = torch.nn.functional.silu((wt * x).sum() + bt)
    lt = 0.5 * (at - t) ** 2
    lt.backward()
    return {
        "patch": x.tolist(),
        "weight": w.tolist(),
        "bias": b,
        "z": z,
        "a": a,
        "target": t,
        "loss": loss,
        "dL_da": dL_da,
        "da_dz": da_dz,
        "dL_dz": dL_dz,
        "dL_dw": dL_dw.tolist(),
        "dL_db": dL_db,
        "lr": lr,
        "weight_new": w_new.tolist(),
        "bias_new": b_new,
        "z_new": z_new,
        "a_new": a_new,
        "loss_new": loss_new,
        "autograd_dL_dw": wt.grad.tolist(),
        "autograd_dL_db": float(bt.grad),
        "autograd_loss": float(lt.detach()),
        "max_abs_grad_diff": max(float((wt.grad - dL_dw).abs().max()), abs(float(bt.grad) - dL_db)),
    }
