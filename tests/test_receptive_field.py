"""Receptive fields and the stage map, against hand arithmetic and the test's own autograd and hooks."""

from __future__ import annotations

import copy

import pytest
import torch

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.model.load import load_model
from pipeline.probe import receptive_field as rf
from pipeline.probe.receptive_field import receptive_field, to_photo
from pipeline.probe.recorder import LayerRecorder


@pytest.fixture(scope="module")
def yolo():
    torch.manual_seed(0)
    return load_model("yolov8n.yaml", nc=6)


def _support(net, layer, inp, y, x):
    """The pixels of ``inp`` where the whole network's input gradient of neuron (y, x), summed over channels, is
    nonzero, as ``(x0, y0, x1, y1)``: the oracle, autograd on a full forward pass, with no code of the module."""
    block = dict(net.named_modules())[layer]
    kept = {}
    handle = block.register_forward_hook(lambda m, i, o: kept.__setitem__("a", o))
    inp = inp.clone().requires_grad_(True)
    try:
        net.eval()
        with torch.enable_grad():
            net(inp)
            (g,) = torch.autograd.grad(kept["a"][0, :, y, x].sum(), inp)
    finally:
        handle.remove()
    assert all(p.grad is None for p in net.parameters())  # only the input gradient was taken
    seen = g[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(seen.any(1)).flatten(), torch.nonzero(seen.any(0)).flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _clip(lo, hi, n):
    return max(0, lo), min(n, hi)


@pytest.mark.parametrize("y, x", [(0, 0), (5, 9), (159, 119)])
def test_first_two_convs_match_kernel_arithmetic(yolo, y, x):
    """model.0 is a 3x3 stride-2 conv with padding 1: it sees input rows 2y-1 .. 2y+1; model.1 stacks
    another, so it sees 4y-3 .. 4y+3 (jump 2, size 3 + 2*2 = 7)."""
    h, w = 320, 240
    y0, y1 = _clip(2 * y - 1, 2 * y + 2, h)
    x0, x1 = _clip(2 * x - 1, 2 * x + 2, w)
    assert receptive_field(yolo, "model.0", (h, w), y, x) == (x0, y0, x1, y1)
    yy, xx = y // 2, x // 2
    y0, y1 = _clip(4 * yy - 3, 4 * yy + 4, h)
    x0, x1 = _clip(4 * xx - 3, 4 * xx + 4, w)
    assert receptive_field(yolo, "model.1", (h, w), yy, xx) == (x0, y0, x1, y1)


@pytest.mark.parametrize("layer, y, x", [("model.4.m.0.cv2", 3, 5), ("model.4.m.0.cv2", 0, 0),
                                         ("model.6.cv2", 7, 4), ("model.15.cv2", 12, 20),
                                         ("model.12.cv1", 0, 1), ("model.12.cv1", 3, 5)])
def test_window_equals_the_full_gradient_support(yolo, layer, y, x):
    """The oracle: the whole network run on a random input, the neuron's input gradient taken by autograd;
    its nonzero support is the window (the module moves a window measured elsewhere, or measures it). Past
    SPPF (model.12) a blank canvas's tied maxima hid most of the field (200 of 320 rows): pools are measured
    as average pools, which reach every pixel a maximum can come from."""
    h, w = 320, 256
    net = yolo.model
    assert receptive_field(yolo, layer, (h, w), y, x) == _support(net, layer, torch.rand(1, 3, h, w), y, x)
    assert all(p.grad is None for p in net.parameters())  # only the input gradient was taken


def test_window_on_the_photo_uses_the_letterbox(yolo):
    """A 640x480 photo letterboxed to 640x640 has 80 px of padding above: input row 100 is photo row 20."""
    assert to_photo((10, 100, 20, 110), (640, 640), (480, 640)) == [10.0, 20.0, 20.0, 30.0]
    assert to_photo((10, 0, 20, 50), (640, 640), (480, 640))[1::2] == [0.0, 0.0]  # in the padding: clipped


def test_stage_map_matches_hooks_of_our_own(yolo):
    """Every top-level layer's output shape, in order, as hooks registered here see it."""
    x = torch.rand(1, 3, 256, 192)
    seen, handles = {}, []
    for i, layer in enumerate(yolo.model.model):
        handles.append(layer.register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(f"model.{i}", out.shape if isinstance(out, torch.Tensor) else None)))
    with torch.no_grad():
        yolo.model.eval()
        yolo.model(x)
    for h in handles:
        h.remove()
    with LayerRecorder(yolo, mode="stats") as rec:
        rec(x)
    assert list(rec.stages) == [f"model.{i}" for i in range(len(yolo.model.model))]
    for path, shape in seen.items():
        if shape is not None:
            assert rec.stages[path]["out_shape"] == list(shape), path
    assert rec.stages["model.22"]["type"] == "Detect"
    assert rec.stages["model.22"]["out_shape"][0] == [1, 4 + 6, (32 * 24) + (16 * 12) + (8 * 6)]


@pytest.mark.parametrize("layer, y, x", [("model.15.cv2", 3, 2), ("model.15.cv2", 4, 7), ("model.12.cv1", 5, 0),
                                         ("model.18.cv2", 2, 3), ("model.21.cv1", 7, 1), ("model.22.cv3.0.1", 10, 31)])
def test_a_deep_window_is_every_pixel_a_max_pool_can_take(yolo, layer, y, x):
    """The oracle: a copy of the network whose max pools are average pools of the same window (every pixel a
    maximum can come from then passes gradient), run whole on a random 640 x 480 input, autograd's support. The
    module measures such windows on strips, once per residue of a row: after an upsampling, rows of either parity
    see different windows (rows 3 and 4 here)."""
    inp = torch.rand(1, 3, 640, 480, generator=torch.Generator().manual_seed(1))
    assert receptive_field(yolo, layer, (640, 480), y, x) == _support(_averaged(yolo.model), layer, inp, y, x)


def _averaged(net):
    """A copy of ``net`` whose max pools are average pools of the same window."""
    net = copy.deepcopy(net).eval()
    for name, m in list(net.named_modules()):
        if isinstance(m, torch.nn.MaxPool2d):
            parent = net.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[1], torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    return net


@pytest.mark.parametrize("layer, y, x", [("model.1", 5, 7), ("model.4.m.0.cv2", 0, 3), ("model.15.cv2", 3, 2),
                                         ("model.21.cv1", 2, 1)])
def test_a_wide_kernel_has_its_columns_measured_apart(yolo, layer, y, x):
    """YOLOv8 treats rows and columns alike, so the module measures a window's rows and reads its columns as the
    same; a stem conv of 3 x 5 (3 rows, 5 columns) breaks that, and its windows still equal autograd's."""
    net = copy.deepcopy(yolo.model).eval()
    net.model[0].conv = torch.nn.Conv2d(3, net.model[0].conv.out_channels, (3, 5), 2, (1, 2), bias=False)
    assert rf._square(yolo.model) and not rf._square(net)
    inp = torch.rand(1, 3, 320, 256, generator=torch.Generator().manual_seed(2))
    got = receptive_field(net, layer, (320, 256), y, x)
    assert got == _support(_averaged(net), layer, inp, y, x)
    if layer in ("model.1", "model.4.m.0.cv2"):  # away from the borders: wider than tall
        assert got[2] - got[0] > got[3] - got[1]
