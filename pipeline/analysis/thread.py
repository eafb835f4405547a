"""The thread of one detection, pixel to score: the stage map, the worked neuron on its path, its anchor.

Pure functions of recorded tensors (``LayerRecorder.stages``, a Conv block's z and SiLU(z), the Detect
head's per-scale outputs); ``PhotoRun`` calls them, the lesson page draws what they return.

* ``forward_map``: the model input, then every top-level layer with the shape it produced in this run.
* ``choose_neuron``: a neuron where SiLU bends (|z| <= 3 and SiLU'(z) <= ``BEND_SLOPE``, so it is visibly
  not the identity), inside the top box if there is one, in the channel that fires most there.
* ``anchor_detail``: one reported box's anchor opened up: its 4 x ``reg_max`` DFL logits, the softmax over
  each side's bins, the expected distance and the box they make; its class logits, their sigmoids (the
  scores YOLOv8 uses) and, for contrast only, a softmax over the same logits.

Examples:
    >>> channel, y, x, inside = choose_neuron(z[0], a[0], stride=8, box_xyxy=(40, 60, 200, 180))
    >>> anchor_detail(rec.head, run.head_trace[0])["class_sigmoid"]
"""

from __future__ import annotations

import torch

from pipeline.lesson.activations import d_silu

#: A neuron "bends" where SiLU's slope is at most this (SiLU'(z) = 1 would pass z through unchanged):
#: -3 <= z <= ~0.6; SiLU'(0) = 0.5, SiLU'(0.6) = 0.78.
BEND_SLOPE = 0.8
#: |z| bound of the worked neuron: beyond it SiLU is ~ReLU (slope ~0 or ~1) and shows nothing.
BEND_Z = 3.0
#: Where the worked neuron is looked for, first present wins: mid-backbone, stride 8, after the stem's edges.
NEURON_LAYERS = ("model.4.cv1", "model.4.cv2", "model.2.cv2", "model.6.cv1")


def forward_map(input_shape, stages: dict) -> list[dict]:
    """``[{"path", "type", "out_shape"}]``: ``"input"`` first, then every recorded top-level layer in order."""
    rows = [{"path": "input", "type": "Tensor", "out_shape": list(input_shape)}]
    rows += [{"path": p, "type": s["type"], "out_shape": s["out_shape"]} for p, s in stages.items()]
    return rows


def choose_neuron(z: torch.Tensor, a: torch.Tensor, stride: float, box_xyxy=None) -> tuple[int, int, int, bool]:
    """``(channel, y, x, inside)``: a bending neuron of one layer, in the box when it can be.

    Args:
        z, a: the layer's pre-activation and SiLU output, ``C x H x W``.
        stride: input pixels per cell; a cell's centre is ``((x + 0.5) * stride, (y + 0.5) * stride)``.
        box_xyxy: the top box in model-input pixels, or ``None`` (no detection: the whole map).

    The cells whose centre lies in the box are the candidates (all cells without a box, or if no cell
    centre falls inside a tiny box). Among channels with a bending cell there, the one whose mean SiLU over
    the candidates is largest; in it, the bending candidate with the largest SiLU. Without a box, the
    bending neuron with the largest SiLU anywhere. ``inside`` says whether the box constrained the choice.
    """
    z, a = z.double(), a.double()
    _, h, w = z.shape
    cells = torch.ones(h, w, dtype=torch.bool)
    inside = False
    if box_xyxy is not None:
        cy = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
        cx = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        in_box = ((cy >= y0) & (cy <= y1))[:, None] & ((cx >= x0) & (cx <= x1))[None, :]
        if in_box.any():
            cells, inside = in_box, True
    bend = (z.abs() <= BEND_Z) & (d_silu(z) <= BEND_SLOPE) & cells
    if not bend.any():  # nothing bends among the candidates: anywhere on the map
        bend = (z.abs() <= BEND_Z) & (d_silu(z) <= BEND_SLOPE)
        inside = False
    if not bend.any():
        bend = torch.ones_like(z, dtype=torch.bool)
    if not inside:  # no box to stay in: the strongest bending neuron of the whole map
        ch, rest = divmod(int(torch.where(bend, a, torch.full_like(a, -torch.inf)).argmax()), h * w)
        return ch, *divmod(rest, w), False
    has = bend.flatten(1).any(1)
    energy = torch.where(cells, a, torch.zeros_like(a)).flatten(1).sum(1) / cells.sum()
    ch = int(torch.where(has, energy, torch.full_like(energy, -torch.inf)).argmax())
    pick = torch.where(bend[ch], a[ch], torch.full_like(a[ch], -torch.inf))
    y, x = divmod(int(pick.argmax()), w)
    return ch, y, x, inside


def anchor_detail(head: dict, det: dict) -> dict:
    """One reported box's anchor: DFL bins -> softmax -> distances -> box; class logits -> sigmoids (and softmax).

    Args:
        head: ``LayerRecorder.head`` (per-scale ``box`` and ``cls_logits``, ``reg_max``, ``strides``).
        det: one row of ``probe.trace.head_detections`` (``scale``, ``grid_y``, ``grid_x``, ``class_id``).

    Returns:
        ``{"scale", "stride", "grid_y", "grid_x", "anchor_index", "grid_hw", "dfl_logits"`` (4 x reg_max, sides
        left, top, right, bottom), ``"dfl_softmax"``, ``"distances"`` (cells), ``"box_xyxy_input"``,
        ``"class_logits"``, ``"class_sigmoid"``, ``"class_softmax"``, ``"class_id"``, ``"score"}``.
    """
    s, gy, gx = det["scale"], det["grid_y"], det["grid_x"]
    stride = float(head["strides"][s])
    reg = int(head.get("reg_max", head["box"][s].shape[1] // 4))
    bins = head["box"][s][0, :, gy, gx].double().view(4, reg)
    soft = torch.softmax(bins, dim=1)
    dist = (soft * torch.arange(reg, dtype=torch.float64)).sum(1)
    ax_, ay_ = gx + 0.5, gy + 0.5
    box = [(ax_ - dist[0]) * stride, (ay_ - dist[1]) * stride, (ax_ + dist[2]) * stride, (ay_ + dist[3]) * stride]
    logits = head["cls_logits"][s][0, :, gy, gx].double()
    sig = torch.sigmoid(logits)
    return {"scale": s, "stride": stride, "grid_y": gy, "grid_x": gx, "anchor_index": det["anchor_index"],
            "grid_hw": list(head["cls_logits"][s].shape[2:]), "reg_max": reg,
            "dfl_logits": bins.tolist(), "dfl_softmax": soft.tolist(), "distances": dist.tolist(),
            "box_xyxy_input": [float(v) for v in box], "class_logits": logits.tolist(), "class_sigmoid": sig.tolist(),
            "class_softmax": torch.softmax(logits, 0).tolist(), "class_id": det["class_id"],
            "score": float(sig[det["class_id"]])}
