"""Which modules compute what in YOLOv8: the Conv blocks, the Detect head, and the math of each.

Every ``Conv`` block of YOLOv8 computes, per output channel ``c`` and position ``(y, x)``::

    z = bn(conv(x))            pre-activation   (fused model: z = conv(x), BN already folded in)
    a = silu(z) = z * sigmoid(z)                post-activation, what the next layer sees

and the head's class branch ends in a plain ``Conv2d`` whose outputs are class logits; the score of a
class is ``sigmoid(logit)``. ``LayerRecorder`` hooks the Conv blocks (never the one ``nn.SiLU`` object
all 57 blocks of yolov8n share) and keeps ``z`` and ``a``, or only per-channel statistics of them:

- unfused block: a forward hook on ``block.bn`` sees ``z``, a forward hook on ``block`` sees ``a``;
- fused block (``model.fuse()`` deleted ``bn``): the hook on ``block.conv`` sees ``z``.

Nothing is computed twice: the hooks only keep what the forward pass already made. One catch: a
checkpoint loaded by Ultralytics runs SiLU *in place* (``inplace=True``), so ``a`` overwrites ``z`` in
memory; the recorder then copies ``z`` (tensors mode) or takes its statistics before the SiLU runs.
Stats mode reads each map once in a small C kernel (``_channel_stats.c``), so recording all 57 blocks
costs little more than a plain forward (rows inspect-* in docs/benchmarks.md).

BatchNorm in eval mode is an affine map per channel, so it folds into the convolution::

    s  = gamma / sqrt(running_var + eps)
    W' = W * s          (per output channel)
    b' = beta - running_mean * s

``fold_bn`` computes that in float64 and matches what ``model.fuse()`` writes into the fused conv.

Examples:
    >>> import torch, pipeline
    >>> from pipeline.model.load import load_model
    >>> from pipeline.probe.fold import conv_params, param_counts
    >>> from pipeline.probe.recorder import LayerRecorder
    >>> yolo = load_model("yolov8n.yaml", nc=6)
    >>> x = torch.rand(1, 3, 320, 320)
    >>> with LayerRecorder(yolo, mode="both") as rec:
    ...     _ = rec.model(x)
    >>> z, a = rec.activations["model.0"]          # pre and post of the first conv, 1x16x160x160
    >>> rec.stats["model.0"].table()[0]["mean"]     # per-channel statistics of z
    >>> rec.head["cls_logits"][0].shape             # class logits at stride 8: 1x6x40x40
    >>> conv_params(yolo)["model.0"]["folded.bias"].shape
    torch.Size([16])
    >>> param_counts(yolo)["total"]                 # == model.info()'s parameter count
"""

from __future__ import annotations

import re

from torch import nn

from pipeline.model.load import detection_model

# ------------------------------------------------------------------------------------------------
# Which modules: Conv blocks, the Detect head, layer selection
# ------------------------------------------------------------------------------------------------


def _conv_class():
    from ultralytics.nn.modules.conv import Conv

    return Conv


def _detect_class():
    from ultralytics.nn.modules.head import Detect

    return Detect


def is_fused(block: nn.Module) -> bool:
    """True when ``model.fuse()`` has folded this Conv block's BatchNorm into its conv (``bn`` is gone)."""
    return not hasattr(block, "bn")


def _named(model, modules: dict | None):
    """``(path, module)`` pairs: from ``modules`` (``dict(named_modules())``) when given, else a walk."""
    return modules.items() if modules is not None else detection_model(model).named_modules()


def conv_blocks(model, modules: dict | None = None) -> dict[str, nn.Module]:
    """All Conv blocks (``ultralytics.nn.modules.conv.Conv`` and subclasses) by module path, in model order."""
    Conv = _conv_class()
    return {name: m for name, m in _named(model, modules) if isinstance(m, Conv)}


def detect_head(model, modules: dict | None = None) -> tuple[str, nn.Module] | tuple[None, None]:
    """``(path, Detect module)`` of the model's detection head, or ``(None, None)``."""
    Detect = _detect_class()
    return next(((name, m) for name, m in _named(model, modules) if isinstance(m, Detect)), (None, None))


def select_layers(model, layers=None, modules: dict | None = None) -> list[str]:
    """Resolve a layer selection to Conv block paths, in model order.

    Args:
        model: a YOLO wrapper or DetectionModel.
        layers: ``None`` (all Conv blocks) or an iterable mixing
            - ints or digit strings: top-level layer index (``2`` -> every Conv block inside ``model.2``),
            - module paths: ``"model.2.cv1"`` (that block) or ``"model.2"`` (every Conv block inside it),
            - type names: ``"C2f"``, ``"SPPF"``, ``"Detect"``, ``"Conv"`` (Conv blocks inside modules of that type).
        modules: ``dict(model.named_modules())`` if the caller has it already (saves a walk over the model).

    Raises:
        ValueError: a selector that matches no Conv block.

    Examples:
        >>> select_layers(yolo, [0, "model.2.cv1", "SPPF"])
        ['model.0', 'model.2.cv1', 'model.9.cv1', 'model.9.cv2']
    """
    if modules is None:
        modules = dict(detection_model(model).named_modules())
    blocks = conv_blocks(model, modules)
    if layers is None:
        return list(blocks)
    if isinstance(layers, (str, int)):
        layers = [layers]
    wanted: set[str] = set()
    for sel in layers:
        s = str(sel).strip()
        if re.fullmatch(r"\d+", s):
            s = f"model.{s}"
        if s in modules:
            prefix = s + "."
            hits = [p for p in blocks if p == s or p.startswith(prefix)]
        else:  # a type name: Conv blocks that are, or sit inside, modules of that type
            roots = [p for p, m in modules.items() if type(m).__name__ == s]
            hits = [p for p in blocks if any(p == r or p.startswith(r + ".") for r in roots)]
        if not hits:
            top = sum(1 for p in modules if re.fullmatch(r"model\.\d+", p))  # the top-level layers: model.0 ...
            raise ValueError(f"layer selector {sel!r} matches no Conv block (try an index 0-{top - 1}, "
                             f"a path like 'model.2.cv1', or a type like 'C2f')")
        wanted.update(hits)
    return [p for p in blocks if p in wanted]

