"""BatchNorm folding and parameter counts: the weight and bias each neuron really applies.

``fold_bn`` turns ``bn(conv(x, W))`` into ``conv(x, W') + b'``, the form in which a neuron reads as
``sum(w * x) + b``; ``conv_params``, ``head_params`` and ``param_counts`` list raw, BatchNorm and folded
parameters per layer.

Examples:
    >>> from pipeline.probe.fold import fold_bn
    >>> w, b = fold_bn(model.model[0])
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.model.load import detection_model
from pipeline.probe.layers import conv_blocks, detect_head, is_fused, select_layers

# ------------------------------------------------------------------------------------------------
# Parameters: raw, BatchNorm, folded; counts
# ------------------------------------------------------------------------------------------------


def fold_bn(block: nn.Module, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded weight and bias of a Conv block: ``z = conv(x, W') + b'`` equals ``bn(conv(x, W))``.

    ``W' = W * gamma / sqrt(var + eps)`` per output channel, ``b' = beta - mean * gamma / sqrt(var + eps)``
    (plus the conv's own bias times the same scale, if it has one). Computed in float64, returned in
    ``dtype`` (the weight's dtype by default). A fused block already holds ``W'`` and ``b'``.

    Examples:
        >>> w, b = fold_bn(conv_blocks(yolo)["model.0"])
        >>> w.shape, b.shape
        (torch.Size([16, 3, 3, 3]), torch.Size([16]))
    """
    conv = block.conv
    dtype = dtype or conv.weight.dtype
    with torch.no_grad():
        w = conv.weight.detach().double()
        b0 = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if is_fused(block):
            return w.to(dtype), b0.to(dtype)
        bn = block.bn
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        w_folded = w * scale.view(-1, 1, 1, 1)
        b_folded = bn.bias.detach().double() + (b0 - bn.running_mean.detach().double()) * scale
    return w_folded.to(dtype), b_folded.to(dtype)


def block_params(block: nn.Module) -> dict[str, torch.Tensor]:
    """One Conv block's tensors: ``conv.weight`` (``conv.bias`` if any), ``bn.*`` (unfused), ``folded.*``."""
    out = {"conv.weight": block.conv.weight.detach()}
    if block.conv.bias is not None:
        out["conv.bias"] = block.conv.bias.detach()
    if not is_fused(block):
        bn = block.bn
        out.update({"bn.weight": bn.weight.detach(), "bn.bias": bn.bias.detach(),
                    "bn.running_mean": bn.running_mean.detach(), "bn.running_var": bn.running_var.detach()})
    out["folded.weight"], out["folded.bias"] = fold_bn(block)
    return out


def conv_params(model, layers=None) -> dict[str, dict[str, torch.Tensor]]:
    """``{block path: block_params(block)}`` for the selected Conv blocks (all by default).

    BatchNorm's ``eps`` is a float, not a tensor: read it from ``conv_meta``.
    """
    blocks = conv_blocks(model)
    return {path: block_params(blocks[path]) for path in select_layers(model, layers)}


def head_params(model) -> dict[str, torch.Tensor]:
    """The Detect head's final plain ``Conv2d`` layers (class logits and box distributions), by path."""
    hpath, detect = detect_head(model)
    if detect is None:
        return {}
    out = {}
    for branch in ("cv2", "cv3"):
        for i, seq in enumerate(getattr(detect, branch)):
            conv = seq[-1]
            out[f"{hpath}.{branch}.{i}.{len(seq) - 1}.weight"] = conv.weight.detach()
            out[f"{hpath}.{branch}.{i}.{len(seq) - 1}.bias"] = conv.bias.detach()
    return out


def conv_meta(block: nn.Module) -> dict:
    """Geometry of a Conv block: kernel, stride, padding, dilation, groups, channels, bn eps, fused flag."""
    conv = block.conv
    return {
        "type": type(block).__name__,
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": list(conv.padding),
        "dilation": list(conv.dilation),
        "groups": conv.groups,
        "bn_eps": None if is_fused(block) else float(block.bn.eps),
        "fused": is_fused(block),
        "activation": type(block.act).__name__,
        "params": sum(p.numel() for p in block.parameters()),
    }


def param_counts(model) -> dict:
    """Trainable-parameter counts (as ``model.info()`` counts them) per top-level layer, per Conv block, in total.

    Returns:
        ``{"layers": [{"index", "path", "type", "params"}...], "blocks": {path: n}, "total": n}``; the
        per-layer counts are the ``params`` column of Ultralytics' model summary table and they add up to
        ``total``. BatchNorm's gamma and beta count, its running statistics (buffers) do not.
    """
    m = detection_model(model)
    layers = [
        {"index": i, "path": f"model.{i}", "type": type(layer).__name__,
         "params": sum(p.numel() for p in layer.parameters())}
        for i, layer in enumerate(m.model)
    ]
    blocks = {path: sum(p.numel() for p in b.parameters()) for path, b in conv_blocks(m).items()}
    return {"layers": layers, "blocks": blocks, "total": sum(p.numel() for p in m.parameters())}
