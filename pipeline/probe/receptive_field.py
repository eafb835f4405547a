"""Which input pixels a neuron can see: its receptive field, read off autograd, in input or photo pixels.

A neuron of a Conv block (layer, any channel, position ``(y, x)``) depends on a window of the model input.
YOLOv8 is not a chain (C2f branches, SPPF pooling, upsampling, concatenations), so instead of adding kernel
sizes by hand the window is measured: the gradient of the neuron's sum over channels with respect to the
input is nonzero exactly on the pixels it can see (SiLU's slope is never 0). The forward pass stops at the
layer, and only ``d(neuron)/d(input)`` is taken, so no parameter gradient is touched.

A max pool (SPPF's) passes a gradient to one pixel of its window only, the one holding the maximum, which on
a blank canvas is a tie broken by position: the window would miss pixels the pool can take its maximum from.
So pools are measured as average pools of the same size, whose gradient reaches every pixel they can pick.

Because every layer is translation-equivariant, the window is measured once per layer (at the centre of
a canvas large enough that it does not touch the border) and moved to any position; near the image
border it is clipped to the input, as the real window is. A deep layer's window is wider than the canvas:
its rows and columns are measured on strips of the real input. Where every op treats rows and columns alike
(square kernels, strides and pools: all of YOLOv8) only rows are measured, and the columns read as the same. ``to_photo`` maps a window from the letterboxed
input back to the photo with Ultralytics' own ``scale_boxes``.

Examples:
    >>> from pipeline.probe.receptive_field import receptive_field, to_photo
    >>> receptive_field(yolo, "model.0", (640, 640), y=10, x=20)     # 3x3 conv, stride 2, padding 1
    (39, 19, 42, 22)
    >>> to_photo((39, 19, 42, 22), (640, 640), photo_shape=(480, 640))
"""

from __future__ import annotations

import contextlib
import math
import weakref

import torch
import torch.nn.functional as F
from ultralytics.utils.ops import scale_boxes

from pipeline.model.load import detection_model, model_stride

#: The probing canvas. A window still touching its border there (a deep layer) is measured again on strips
#: longer than twice the input's side, once per residue of its row and column (see ``receptive_field``).
CANVAS = 256

#: The short side of the strips a wide window is measured on (a multiple of the largest stride, 32).
NARROW = 32

# per model, dropped with it (an id() key could be reused by a later model of another architecture)
_OFFSETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> {layer: offsets}
# net -> {(layer, strip length): (rows, cols, middle)}: per residue, (d0, d1, reaches start, reaches end)
_MEASURED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SQUARE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> every op square (``_square``)


class _Stop(Exception):
    """Raised by the probe hook once the layer has run: the rest of the network is not needed."""


def _block(net, layer: str):
    modules = dict(net.named_modules())
    if layer not in modules:
        raise ValueError(f"no module {layer!r} in this model")
    return modules[layer]


@contextlib.contextmanager
def _pools_averaged(net):
    """Every max pool of ``net`` run as the average pool of the same window while the block is open."""
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    for m in pools:
        m.forward = lambda x, m=m: F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode)
    try:
        yield
    finally:
        for m in pools:
            del m.forward  # the class's own forward again


def _windows(net, block, canvas: tuple[int, int], points) -> list[tuple]:
    """For each ``(y, x)`` of ``points`` (``None``: the map's middle), ``(x0, y0, x1, y1, stride, (y, x))``: the
    pixels of a zero ``canvas`` input that neuron sees. One forward and one backward pass over a batch: each
    neuron reads its own batch item (eval mode mixes nothing across a batch), so one gradient holds every window."""
    captured = {}

    def hook(module, inputs, output):
        captured["a"] = output
        raise _Stop

    inp = torch.zeros(len(points), 3, *canvas, requires_grad=True)
    handle = block.register_forward_hook(hook)
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad(), _pools_averaged(net):
            try:
                net(inp)
            except _Stop:
                pass
            a = captured["a"]
            h, w = a.shape[-2:]
            at = [(h // 2 if y is None else y, w // 2 if x is None else x) for y, x in points]
            (g,) = torch.autograd.grad(sum(a[b, :, y, x].sum() for b, (y, x) in enumerate(at)), inp)
    finally:
        handle.remove()
        net.train(was_training)
    found = []
    for b, yx in enumerate(at):
        seen = g[b].abs().sum(0) > 0
        rows, cols = torch.nonzero(seen.any(1)).flatten(), torch.nonzero(seen.any(0)).flatten()
        found.append((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1, canvas[0] // h, yx))
    return found


def _square(net) -> bool:
    """Every op of ``net`` treats rows and columns alike (square kernels, strides, paddings, scale factors), so a
    window's columns are its rows transposed. A leaf module of a kind not known here counts as not square."""
    neutral = ("torch.nn.modules.activation", "torch.nn.modules.batchnorm", "torch.nn.modules.linear")
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            pads = m.padding if isinstance(m.padding, tuple) else (0, 0)  # "same" / "valid": as square as the kernel
            if any(len(set(v)) > 1 for v in (m.kernel_size, m.stride, m.dilation, pads, m.output_padding)):
                return False
        elif isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            sides = (m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1))
            if any(isinstance(v, tuple) and len(set(v)) > 1 for v in sides):
                return False
        elif isinstance(m, torch.nn.Upsample):
            if isinstance(m.scale_factor, tuple) and len(set(m.scale_factor)) > 1 or m.size is not None:
                return False
        elif not any(m.children()) and type(m).__module__ not in neutral and type(m).__name__ != "Concat":
            return False
    return True


def _offsets(net, layer: str) -> tuple[int, int, int, int, int, int | None]:
    """The window of neuron (y, x) as ``(x*stride + dx0, y*stride + dy0, ...)``, measured once per model and
    layer, and the canvas side it still touched (``None`` when it fits, so the offsets hold everywhere)."""
    cache = _OFFSETS.setdefault(net, {})
    if layer not in cache and _squares(net):  # rows on a CANVAS x NARROW strip, an eighth of the canvas; columns alike
        ((_, y0, _, y1, s, (y, _)),) = _windows(net, _block(net, layer), (CANVAS, NARROW), [(None, None)])
        touches = y0 == 0 or y1 == CANVAS
        cache[layer] = (y0 - y * s, y0 - y * s, y1 - y * s, y1 - y * s, s, CANVAS if touches else None)
    elif layer not in cache:
        ((x0, y0, x1, y1, s, (y, x)),) = _windows(net, _block(net, layer), (CANVAS, CANVAS), [(None, None)])
        touches = x0 == 0 or y0 == 0 or x1 == CANVAS or y1 == CANVAS
        cache[layer] = (x0 - x * s, y0 - y * s, x1 - x * s, y1 - y * s, s, CANVAS if touches else None)
    return cache[layer]


def receptive_field(model, layer: str, input_hw: tuple[int, int], y: int, x: int) -> tuple[int, int, int, int]:
    """The input pixels neuron ``(y, x)`` of Conv block ``layer`` sees, as ``(x0, y0, x1, y1)`` (end exclusive).

    Args:
        model: a YOLO wrapper or DetectionModel.
        layer: a Conv block path such as ``"model.4.m.0.cv2"``.
        input_hw: the model input's height and width (a multiple of the stride, as letterboxed inputs are).
        y, x: the neuron's position in the layer's output map.

    Examples:
        >>> receptive_field(yolo, "model.1", (640, 640), y=0, x=0)   # two 3x3 stride-2 convs: 7 px, clipped
        (0, 0, 4, 4)
    """
    net = detection_model(model)
    dx0, dy0, dx1, dy1, s, touched = _offsets(net, layer)
    h, w = input_hw
    if touched is None:
        return max(0, x * s + dx0), max(0, y * s + dy0), min(w, x * s + dx1), min(h, y * s + dy1)
    # a wide window: its rows are measured on a strip L tall and NARROW wide, its columns on one NARROW tall and
    # L wide (every op acts on rows and columns alike and independently, so the rows a neuron sees do not depend
    # on the width). Shifting a neuron by P / s cells (P: the model's largest stride) shifts every grid on its path
    # by whole cells, so its window moves with it; by less, not (after an upsampling a window depends on its row's
    # parity): one measurement per residue of the row modulo P / s, at the strip's middle. There the window either
    # ends inside the strip and moves with the neuron, or reaches the strip's end, over L / 2 - P away: then, with
    # L >= 2 * (side + P), it reaches that end of the real input from any of its rows too.
    big = model_stride(net)
    length = NARROW * math.ceil(2 * (max(h, w) + big) / NARROW)
    cache = _MEASURED.setdefault(net, {})
    if (layer, length) not in cache:
        cache[layer, length] = _strips(net, layer, length, max(1, big // s))
    rows, cols, yc = cache[layer, length]
    dy0, dy1, top, bottom = rows[(y - yc) % len(rows)]
    dx0, dx1, left, right = cols[(x - yc) % len(cols)]
    return (0 if left else max(0, x * s + dx0), 0 if top else max(0, y * s + dy0),
            w if right else min(w, x * s + dx1), h if bottom else min(h, y * s + dy1))


def _strips(net, layer: str, length: int, residues: int):
    """Per residue ``r`` of a row (column) modulo ``residues``, the window of the neuron at the middle of a strip
    ``length`` long plus ``r``: ``(d0, d1, reaches start, reaches end)`` relative to that neuron; and the middle.
    All residues in one batch; a model whose every op is square (``_square``) has its columns measured as rows."""
    block = _block(net, layer)
    s = _offsets(net, layer)[4]
    mid = length // s // 2
    ends = [(y0, y1) for _, y0, _, y1, _, _ in _windows(net, block, (length, NARROW), [(mid + r, None) for r in range(residues)])]
    rows = [(y0 - (mid + r) * s, y1 - (mid + r) * s, y0 == 0, y1 == length) for r, (y0, y1) in enumerate(ends)]
    if _squares(net):
        return rows, rows, mid
    ends = [(x0, x1) for x0, _, x1, _, _, _ in _windows(net, block, (NARROW, length), [(None, mid + r) for r in range(residues)])]
    cols = [(x0 - (mid + r) * s, x1 - (mid + r) * s, x0 == 0, x1 == length) for r, (x0, x1) in enumerate(ends)]
    return rows, cols, mid


def _squares(net) -> bool:
    """``_square(net)``, once per model."""
    if net not in _SQUARE:
        _SQUARE[net] = _square(net)
    return _SQUARE[net]


def to_photo(box_xyxy, input_hw: tuple[int, int], photo_shape: tuple[int, int]) -> list[float]:
    """A window in letterboxed-input pixels as photo pixels (padding removed, scaled, clipped to the photo).

    Ultralytics' ``scale_boxes`` does the mapping, the same call that places predicted boxes on the photo.
    """
    return to_photo_many([box_xyxy], input_hw, photo_shape)[0]


def to_photo_many(boxes_xyxy, input_hw: tuple[int, int], photo_shape: tuple[int, int]) -> list[list[float]]:
    """``to_photo`` of many windows of one input size and photo in one ``scale_boxes`` call (the atlas maps
    tens of thousands: one call each was a tenth of its time)."""
    if not len(boxes_xyxy):
        return []
    box = torch.tensor([list(map(float, b)) for b in boxes_xyxy])
    return [[round(v, 2) for v in row] for row in scale_boxes(tuple(input_hw), box, tuple(photo_shape[:2])).tolist()]
