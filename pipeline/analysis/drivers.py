"""Which channels drove a box's score: activation x gradient at the head's input layers.

For one reported box, the logit of its class at its anchor (the number whose sigmoid is the score) is
differentiated with respect to the feature maps the Detect head reads (the last Conv block of each of its
input layers, e.g. ``model.15.cv2``, ``model.18.cv2``, ``model.21.cv2``). A channel's share is

    sum over positions (y, x) of  a[c, y, x] * d logit / d a[c, y, x]

over the box's receptive positions: the gradient is zero outside the cells the anchor's logit can see, so
the sum over the whole map is the sum over those positions. A box of the stride-8 scale reads the first head
input only (the deeper ones are computed after it), so its shares at the others are 0. A share is the
first-order (Taylor) estimate of how much the logit would drop if the channel were switched off there;
positive shares pushed the score up.

Examples:
    >>> from pipeline.analysis.drivers import box_drivers
    >>> d = box_drivers(run, 0, top=8)          # run: a PhotoRun; 0: its first detection
    >>> d["drivers"][0]                          # {"layer": "model.15.cv2", "channel": 41, "score": 1.93, ...}
"""

from __future__ import annotations

import threading

import torch

from pipeline.probe.layers import conv_blocks, detect_head

_LOCK = threading.Lock()  # the hooks go on the run's private net: one attribution at a time


def head_input_blocks(net) -> list[str]:
    """The Conv block whose output each of the Detect head's inputs is: the last Conv block inside that layer."""
    _, detect = detect_head(net)
    blocks = list(conv_blocks(net))
    out = []
    for i in getattr(detect, "f", []):
        inside = [p for p in blocks if p == f"model.{i}" or p.startswith(f"model.{i}.")]
        if inside:
            out.append(inside[-1] if f"model.{i}.cv2" not in inside else f"model.{i}.cv2")
    return out


def box_drivers(run, index: int, top: int = 8) -> dict:
    """The channels that drove detection ``index`` of ``run`` most, by activation x gradient of its class logit.

    Args:
        run: a ``PhotoRun`` (its fused net and model input are used; one forward and one backward pass).
        index: the detection (``run.head_trace`` order, as ``run.detections``).
        top: channels returned, largest share first (all channels' shares are in ``per_layer``).

    Returns:
        ``{"logit", "class_id", "layers", "drivers": [{"layer", "channel", "score"}], "per_layer": {layer: [C
        floats]}, "total"}``; ``logit`` is the recomputed class logit (it equals the recorded one).
    """
    det = run.head_trace[index]
    net = run.net
    layers = head_input_blocks(net)
    modules = dict(net.named_modules())
    _, detect = detect_head(net, modules)
    maps, handles = {}, []
    cls_out = {}
    with _LOCK:
        try:
            for p in layers:
                handles.append(modules[p].register_forward_hook(lambda m, i, o, p=p: maps.__setitem__(p, o)))
            heads = detect.one2many["cls_head"] if hasattr(type(detect), "one2many") else detect.cv3
            s = det["scale"]
            handles.append(heads[s][-1].register_forward_hook(lambda m, i, o: cls_out.__setitem__("x", o)))
            with torch.enable_grad():
                x = run.x.clone().requires_grad_(True)  # so the maps are in the graph even with frozen weights
                net(x)
                logit = cls_out["x"][0, det["class_id"], det["grid_y"], det["grid_x"]]
                # a stride-8 box's logit reads model.15 only: the deeper head inputs come after it, no gradient there
                grads = torch.autograd.grad(logit, [maps[p] for p in layers], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
    per_layer, rows = {}, []
    for p, g in zip(layers, grads):
        share = torch.zeros(maps[p].shape[1], dtype=torch.float64) if g is None else (maps[p].detach() * g).sum(
            dim=(0, 2, 3)).double()
        per_layer[p] = share.tolist()
        rows += [{"layer": p, "channel": c, "score": v} for c, v in enumerate(per_layer[p])]
    rows.sort(key=lambda r: -r["score"])
    return {"logit": float(logit.detach()), "class_id": det["class_id"], "layers": layers, "drivers": rows[:top],
            "per_layer": per_layer, "total": float(sum(sum(v) for v in per_layer.values()))}
