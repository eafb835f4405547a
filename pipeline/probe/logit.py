"""The last arithmetic before a score: the Detect head's final 1x1 convs, ``w . x + b`` at one anchor, by hand.

YOLOv8's head ends, per scale, in two plain ``Conv2d`` layers with a bias and no BatchNorm or SiLU:
``cv3.<scale>.2`` (``nc`` class logits per anchor) and ``cv2.<scale>.2`` (4 sides x ``reg_max`` DFL logits).
Their input is the SiLU output of the Conv block just before them (``cv3.<scale>.1``), which the recorder
already holds, so one logit is a plain dot product over the input channels at one cell::

    logit = sum_c w[k, c] * x[c, y, x] + b[k]       (k: the class, or one DFL bin)

* ``final_convs``: those convs by path, each with the Conv block whose output it reads.
* ``trace_logit``: one output of such a conv by hand in float64 (every term, the largest named), against
  the framework's float32 value; for a class conv, its sigmoid.
* ``trace_dfl_side``: one side's ``reg_max`` DFL logits by hand -> softmax -> expected distance -> the
  box edge in model-input pixels.

Examples:
    >>> convs = final_convs(yolo)
    >>> convs["model.22.cv3.0.2"]["input_block"]
    'model.22.cv3.0.1'
    >>> t = trace_logit(convs["model.22.cv3.0.2"]["conv"], "model.22.cv3.0.2", a_prev, logits, 2, 10, 12)
    >>> abs(t["logit"] - t["framework_logit"]) < 1e-5
    True
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.core.facts import sigmoid
from pipeline.probe.layers import conv_blocks, detect_head

#: Sides of a box in the order of the DFL outputs (distances from the anchor's centre).
SIDES = ("left", "top", "right", "bottom")


def final_convs(model) -> dict[str, dict]:
    """The Detect head's last plain ``Conv2d`` per branch and scale, in model order.

    Returns:
        ``{path: {"conv", "branch" ("box" for cv2, "class" for cv3), "scale", "input_block"}}``;
        ``input_block`` is the path of the Conv block whose SiLU output the conv reads (``cv3.<scale>.1``).
    """
    hpath, detect = detect_head(model)
    if detect is None:
        return {}
    blocks = list(conv_blocks(model))
    out = {}
    for attr, branch in (("cv2", "box"), ("cv3", "class")):
        for s, seq in enumerate(getattr(detect, attr)):
            last = len(seq) - 1
            prefix = f"{hpath}.{attr}.{s}.{last - 1}"
            feeding = [p for p in blocks if p == prefix or p.startswith(prefix + ".")]
            if not isinstance(seq[last], nn.Conv2d) or not feeding:
                continue
            out[f"{hpath}.{attr}.{s}.{last}"] = {"conv": seq[last], "branch": branch, "scale": s,
                                                 "input_block": feeding[-1]}
    return out


def trace_logit(conv: nn.Conv2d, layer: str, x_in: torch.Tensor, out: torch.Tensor, channel: int, y: int, x: int,
                top: int = 8) -> dict:
    """One output of a final 1x1 head conv by hand: ``sum_c w_c * x_c + b`` in float64, term by term.

    Args:
        conv: the plain ``Conv2d`` (1x1, stride 1, with a bias).
        layer: its path, e.g. ``"model.22.cv3.1.2"``.
        x_in: its recorded input ``1xCxHxW`` (the SiLU output of the block before it).
        out: its recorded output ``1xKxHxW`` (the framework's logits).
        channel, y, x: the output channel (class, or DFL bin) and the cell.
        top: how many of the largest |w_c * x_c| terms to name.

    Returns:
        JSON-ready: ``layer``, ``channel``, ``y``, ``x``, ``input_channels`` (C), ``bias``, ``dot`` (the sum of
        the C products), ``logit`` (dot + bias), ``sigmoid``, ``framework_logit``, ``abs_error``,
        ``top_terms`` (``[{channel, w, x, product}]``, largest |product| first), ``terms`` (every product, by
        input channel), ``weights`` and ``inputs`` (the C numbers each), ``batchnorm`` and ``activation``
        (``False`` and ``None``: these convs have neither).

    Raises:
        ValueError: a conv that is not 1x1, or a position or channel outside its output.
    """
    _, k_out, h, w = out.shape
    if tuple(conv.kernel_size) != (1, 1) or conv.groups != 1:
        raise ValueError(f"{layer} is not a plain 1x1 conv")
    if not (0 <= channel < k_out and 0 <= y < h and 0 <= x < w):
        raise ValueError(f"{layer} has output {k_out}x{h}x{w} (channels x rows x columns); "
                         f"channel={channel} y={y} x={x} is outside it")
    weights = conv.weight.detach()[channel, :, 0, 0].double()
    bias = float(conv.bias.detach()[channel]) if conv.bias is not None else 0.0
    inputs = x_in[0, :, y, x].double()
    terms = weights * inputs
    dot = float(terms.sum())
    logit = dot + bias
    fw = float(out[0, channel, y, x])
    order = terms.abs().argsort(descending=True)[:top].tolist()
    return {
        "layer": layer, "channel": channel, "y": y, "x": x, "input_channels": int(weights.numel()),
        "bias": bias, "dot": dot, "logit": logit, "sigmoid": sigmoid(logit),
        "framework_logit": fw, "abs_error": abs(logit - fw),
        "top_terms": [{"channel": c, "w": float(weights[c]), "x": float(inputs[c]), "product": float(terms[c])}
                      for c in order],
        "terms": terms.tolist(), "weights": weights.tolist(), "inputs": inputs.tolist(),
        "batchnorm": False, "activation": None,
    }


def trace_dfl_side(conv: nn.Conv2d, layer: str, x_in: torch.Tensor, out: torch.Tensor, side: int, y: int, x: int,
                   stride: float, reg_max: int) -> dict:
    """One side of one anchor's box by hand: its ``reg_max`` DFL logits (each ``w . x + b``), their softmax, the
    expected bin (the distance in cells) and the box edge in model-input pixels.

    Args:
        conv, layer, x_in, out: as in ``trace_logit``, for a ``cv2.<scale>.2`` conv.
        side: 0 left, 1 top, 2 right, 3 bottom.
        y, x: the anchor's cell. stride: input pixels per cell. reg_max: bins per side (16).

    Returns:
        ``{layer, side, side_name, y, x, bins: [trace_logit of each bin], logits, framework_logits,
        max_abs_error, softmax, distance_cells, distance_px, anchor_centre, edge}``; ``edge`` is the x of the
        box's left/right side or the y of its top/bottom, in model-input pixels.
    """
    bins = [trace_logit(conv, layer, x_in, out, side * reg_max + i, y, x, top=3) for i in range(reg_max)]
    for b in bins:  # the page lists 16 bins: their every-term lists stay in the per-logit answer
        for key in ("terms", "weights", "inputs"):
            b.pop(key)
    logits = [b["logit"] for b in bins]
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    soft = [v / sum(e) for v in e]
    dist = sum(p * i for i, p in enumerate(soft))
    centre = (x + 0.5) * stride if side in (0, 2) else (y + 0.5) * stride
    edge = centre - dist * stride if side in (0, 1) else centre + dist * stride
    return {"layer": layer, "side": side, "side_name": SIDES[side], "y": y, "x": x, "bins": bins, "logits": logits,
            "framework_logits": [b["framework_logit"] for b in bins],
            "max_abs_error": max(b["abs_error"] for b in bins), "softmax": soft, "distance_cells": dist,
            "distance_px": dist * stride, "anchor_centre": centre, "edge": edge}
