"""One neuron and one detection recomputed by hand, in float64, next to what the framework computed.

- ``trace_neuron``: for a Conv block, channel and output position, takes the input window the neuron
  sees (zero-padded at the border), the BatchNorm-folded weights and bias (``fold.fold_bn``), and
  computes z = sum(w * x) + b, sigmoid(z) and SiLU(z) = z * sigmoid(z); the recorder's float32 values
  from the same forward pass must agree within ``REL_TOL`` (``rel_error``). The unfolded route, conv
  first and BatchNorm after, is returned as well, and the ``top`` largest products w * x are listed.
- ``trace_head``: runs Ultralytics' own NMS with ``return_idxs`` on the recorded head output, with the
  predictor's arguments, to find the anchor (scale, grid cell) behind each reported box, then shows
  its class logit, ``core.facts.sigmoid`` of it, and the ``conf`` Ultralytics reported.
- ``format_trace`` and ``format_head``: the same numbers as text for the terminal.

Examples:
    >>> from pipeline.data.preprocess import model_input
    >>> from pipeline.model.load import load_model, model_stride
    >>> from pipeline.probe.trace import format_trace, trace_head, trace_neuron
    >>> yolo = load_model("best.pt")
    >>> x, _ = model_input("photo.jpg", 640, stride=model_stride(yolo))
    >>> t = trace_neuron(yolo, x, "model.2.cv1", channel=5, y=40, x=40)
    >>> t["rel_error"] <= 1e-5
    True
    >>> h = trace_head(yolo, "photo.jpg", imgsz=640, conf=0.25)
    >>> [(d["logit"], d["sigmoid_by_hand"], d["ultralytics_conf"]) for d in h["detections"]]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline.core.facts import sigmoid
from pipeline.core.io import read_image
from pipeline.model.load import detection_model, trained_imgsz
from pipeline.model.predict import release_photos
from pipeline.probe.fold import conv_meta, fold_bn
from pipeline.probe.layers import conv_blocks, is_fused
from pipeline.probe.recorder import LayerRecorder

#: The agreement the lesson promises between the float64 hand computation and the float32 framework.
REL_TOL = 1e-5


def rel_error(hand: float, framework: float) -> float:
    """|hand - framework| / max(1, |framework|): relative for big values, absolute near zero."""
    return abs(hand - framework) / max(1.0, abs(framework))


def trace_neuron(model, inp: torch.Tensor, layer: str, channel: int, y: int, x: int, top: int = 5) -> dict:
    """Recompute the neuron (``layer``, ``channel``, ``y``, ``x``) by hand in float64 and compare with the hooks.

    Args:
        model: YOLO wrapper or DetectionModel (fused or not).
        inp: the model input, ``1x3xHxW`` (``model_input(image, imgsz, stride=model_stride(model))``).
        layer: Conv block path, e.g. ``"model.2.cv1"``.
        channel, y, x: output channel and position in the layer's output map.
        top: how many of the largest |w*x| products to list.

    Returns:
        ``trace_recorded``'s dict, for one forward pass of ``model`` on ``inp``.

    Raises:
        ValueError: unknown layer or a position outside the layer's output.
    """
    blocks = conv_blocks(model)
    if layer not in blocks:
        raise ValueError(f"{layer!r} is not a Conv block; Conv blocks are e.g. {', '.join(list(blocks)[:4])}, ...")
    with LayerRecorder(model, layers=[layer], mode="tensors", head=False, keep_inputs=True) as rec:
        rec(inp)
    return trace_recorded(blocks[layer], layer, rec.inputs[layer], *rec.activations[layer], channel, y, x, top)


def trace_recorded(block, layer: str, x_in: torch.Tensor, z_fw: torch.Tensor, a_fw: torch.Tensor, channel: int, y: int,
                   x: int, top: int = 5) -> dict:
    """``trace_neuron`` on tensors a recorder already holds: no forward pass (a live explorer asks for many).

    Args:
        block: the Conv block whose weights the hand computation uses (unfused: the unfolded route is added).
        layer: its path, e.g. ``"model.2.cv1"``.
        x_in, z_fw, a_fw: the block's recorded input and pre/post-SiLU outputs (``LayerRecorder`` with
            ``keep_inputs``); they may come from a fused copy of the same weights.
        channel, y, x, top: as in ``trace_neuron``.

    Returns:
        JSON-ready dict: ``layer``, ``channel``, ``y``, ``x``, geometry (``kernel``, ``stride``, ``padding``,
        ``dilation``, ``groups``, ``input_channels``), ``patch_origin`` (top-left of the window in the layer
        input, negative inside the zero padding), ``patch`` and ``weights`` (nested [cin][ky][kx], the folded
        weights), ``bias`` (folded), ``dot`` (sum of products), ``z_by_hand``, ``sigmoid_by_hand``,
        ``silu_by_hand``, ``framework_pre``, ``framework_value`` (post), ``abs_error`` and ``rel_error``
        (post), ``abs_error_pre``, ``top_products``, and for an unfused block ``unfolded`` (raw conv sum,
        gamma, beta, running mean/var, eps and the BN formula's z).

    Raises:
        ValueError: a position outside the layer's output.

    Examples:
        >>> with LayerRecorder(yolo, mode="tensors", keep_inputs=True) as rec:
        ...     rec(x)
        >>> t = trace_recorded(conv_blocks(yolo)["model.0"], "model.0", rec.inputs["model.0"],
        ...                    *rec.activations["model.0"], channel=3, y=10, x=12)
    """
    _, c_out, h_out, w_out = z_fw.shape
    if not (0 <= channel < c_out and 0 <= y < h_out and 0 <= x < w_out):
        raise ValueError(f"{layer} has output {c_out}x{h_out}x{w_out} (channels x rows x columns); "
                         f"channel={channel} y={y} x={x} is outside it")
    geo = conv_meta(block)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo["kernel"], geo["stride"], geo["padding"], geo["dilation"]
    cin_g = geo["in_channels"] // geo["groups"]
    g = channel // (geo["out_channels"] // geo["groups"])

    # the window of the layer input this neuron sees (zero padding as the conv pads)
    padded = F.pad(x_in[0].double(), (pw, pw, ph, ph))
    r0, c0 = y * sh, x * sw  # top-left in padded coordinates
    patch = padded[g * cin_g:(g + 1) * cin_g, r0:r0 + dh * (kh - 1) + 1:dh, c0:c0 + dw * (kw - 1) + 1:dw]

    w_folded, b_folded = fold_bn(block, torch.float64)
    w = w_folded[channel]
    b = float(b_folded[channel])
    products = w * patch
    dot = float(products.sum())
    z = dot + b
    sig = sigmoid(z)
    silu = z * sig
    pre, post = float(z_fw[0, channel, y, x]), float(a_fw[0, channel, y, x])

    flat = products.flatten()
    order = flat.abs().argsort(descending=True)[:top].tolist()
    top_products = []
    for k in order:
        i, rem = divmod(k, kh * kw)
        u, v = divmod(rem, kw)
        top_products.append({"in_channel": g * cin_g + i, "ky": u, "kx": v, "w": float(w[i, u, v]),
                             "x": float(patch[i, u, v]), "w_times_x": float(flat[k])})

    out = {
        "layer": layer, "type": geo["type"], "channel": channel, "y": y, "x": x,
        "kernel": geo["kernel"], "stride": geo["stride"], "padding": geo["padding"], "dilation": geo["dilation"],
        "groups": geo["groups"], "input_channels": [g * cin_g, (g + 1) * cin_g], "fused": geo["fused"],
        "input_shape": list(x_in.shape), "output_shape": list(z_fw.shape),
        "patch_origin": [r0 - ph, c0 - pw],
        "patch": patch.tolist(), "weights": w.tolist(), "bias": b,
        "n_products": int(flat.numel()), "dot": dot,
        "z_by_hand": z, "sigmoid_by_hand": sig, "silu_by_hand": silu,
        "framework_pre": pre, "framework_value": post,
        "abs_error_pre": abs(z - pre), "abs_error": abs(silu - post), "rel_error": rel_error(silu, post),
        "rel_error_pre": rel_error(z, pre), "top_products": top_products,
    }
    if not is_fused(block):
        bn = block.bn
        gamma, beta = float(bn.weight.detach()[channel]), float(bn.bias.detach()[channel])
        mean, var, eps = float(bn.running_mean[channel]), float(bn.running_var[channel]), float(bn.eps)
        raw = float((block.conv.weight.detach()[channel].double() * patch).sum())
        out["unfolded"] = {"conv_sum": raw, "gamma": gamma, "beta": beta, "running_mean": mean,
                           "running_var": var, "eps": eps,
                           "z": (raw - mean) / math.sqrt(var + eps) * gamma + beta}
    return out


def format_trace(t: dict) -> str:
    """The neuron trace as readable steps (what ``cardamage trace`` prints)."""
    kh, kw = t["kernel"]
    (r, c), n = t["patch_origin"], t["n_products"]
    lines = [
        f"neuron {t['layer']} channel {t['channel']} at (y={t['y']}, x={t['x']}): {t['type']} {kh}x{kw}, "
        f"stride {t['stride'][0]}, padding {t['padding'][0]}, groups {t['groups']}" + (" (fused)" if t["fused"] else ""),
        f"  input window: channels {t['input_channels'][0]}..{t['input_channels'][1] - 1} x rows {r}..{r + kh - 1} "
        f"x cols {c}..{c + kw - 1} of the layer input {t['input_shape']} (outside = zero padding)",
    ]
    if "unfolded" in t:
        u = t["unfolded"]
        lines += [
            f"  0) unfolded: conv = sum(W * patch) = {u['conv_sum']:.9g}; "
            f"bn = (conv - {u['running_mean']:.6g}) / sqrt({u['running_var']:.6g} + {u['eps']:g}) * {u['gamma']:.6g} "
            f"+ {u['beta']:.6g} = {u['z']:.9g}",
            "  1) fold BN into the weights: W' = W * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)",
        ]
    biggest = ", ".join(f"{p['w']:.4g}*{p['x']:.4g}" for p in t["top_products"][:3])
    lines += [
        f"  2) z = sum of {n} products W'*x + b' = {t['dot']:.9g} + ({t['bias']:.9g}) = {t['z_by_hand']:.9g}"
        f"   (largest products: {biggest})",
        f"  3) sigmoid(z) = 1 / (1 + exp(-z)) = {t['sigmoid_by_hand']:.9g}",
        f"  4) SiLU(z) = z * sigmoid(z) = {t['silu_by_hand']:.9g}",
        f"  framework (float32 hooks): z = {t['framework_pre']:.9g}, SiLU = {t['framework_value']:.9g}",
        f"  |hand - framework| = {t['abs_error']:.3g} (over max(1, |framework|): {t['rel_error']:.3g}; "
        f"{'OK' if t['rel_error'] <= REL_TOL else 'ABOVE'} the {REL_TOL:g} tolerance)",
    ]
    return "\n".join(lines)


def trace_head(yolo, image, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, pixels=None) -> dict:
    """Trace every box Ultralytics reports back to its class logit: logit -> sigmoid -> reported ``conf``.

    Runs ``yolo.predict`` on ``image`` while the predictor's own (fused) network is hooked, so the logits
    are the very numbers behind the reported boxes. Ultralytics' NMS is re-run on the recorded head output
    with the predictor's arguments and ``return_idxs=True``, which names the anchor of each kept box.

    Args:
        yolo: an ``ultralytics.YOLO`` (``pipeline.model.load_model``).
        image: photo path.
        imgsz, conf, iou, max_det: as in ``YOLO.predict`` (``imgsz`` defaults to the weights' training size).
        pixels: the photo as ``pipeline.core.io.read_image(image)`` returns it, when the caller has read it
            already; read here otherwise. Either way it is decoded once, not once per ``predict`` call
            (an 8000x8000 photo decodes into 183 MB, at a peak of twice that).

    Returns:
        ``{"image", "input_shape", "strides", "grid_shapes", "names", "detections": [...]}``; each detection:
        ``index``, ``box_xyxy`` (original-image pixels), ``class_id``, ``class_name``, ``ultralytics_conf``,
        ``anchor_index``, ``scale`` (0 = stride 8), ``stride``, ``grid_y``, ``grid_x``, ``anchor_center``
        (input pixels), ``logit``, ``all_logits`` (every class at that anchor), ``sigmoid_by_hand``,
        ``abs_error`` (vs Ultralytics' conf), ``box_matches`` (our NMS box == Ultralytics' box).
    """
    from ultralytics.utils import ops

    image = str(image)
    if pixels is None:
        pixels = read_image(image)  # the very pixels Ultralytics' own reader would give predict for the path
    kwargs = dict(imgsz=trained_imgsz(yolo, imgsz), conf=conf, iou=iou, max_det=max_det, verbose=False, save=False)
    yolo.predict(pixels, **kwargs)  # builds (or updates) the predictor and its fused copy of the network
    net = detection_model(yolo.predictor.model.model)
    seen = {}
    grab = net.register_forward_pre_hook(lambda m, args: seen.__setitem__("input", args[0].detach()))
    try:
        with LayerRecorder(net, layers=[], mode="tensors", head=True) as rec:
            result = yolo.predict(pixels, **kwargs)[0]
    finally:
        grab.remove()
        release_photos(yolo)
    args = yolo.predictor.args
    kept, idxs = head_nms(rec.head, args.conf, args.iou, args.max_det, args.classes, args.agnostic_nms,
                          end2end=getattr(net, "end2end", False))
    x = seen["input"]
    boxes = ops.scale_boxes(x.shape[2:], kept[:, :4].clone(), result.orig_shape)
    names = {int(k): str(v) for k, v in result.names.items()}
    return {
        "image": image,
        "input_shape": list(x.shape),
        "strides": rec.head["strides"],
        "grid_shapes": [list(t.shape[2:]) for t in rec.head["cls_logits"]],
        "names": names,
        "n_reported": len(result.boxes.conf),
        "detections": head_detections(rec.head, kept, idxs, boxes, names, result.boxes.conf, result.boxes.xyxy),
    }


def head_nms(head: dict, conf: float, iou: float, max_det: int = 300, classes=None, agnostic: bool = False,
             end2end: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ultralytics' own NMS on a recorded head output, with ``return_idxs``: which anchor each kept box came from.

    Args:
        head: ``LayerRecorder.head`` of one image (its ``decoded`` output).
        conf, iou, max_det, classes, agnostic: the predictor's arguments.
        end2end: the network's ``end2end`` flag.

    Returns:
        ``(kept, anchor_idxs)``: ``N x 6`` (xyxy in input pixels, score, class) and ``N`` anchor indices.

    Examples:
        >>> kept, idxs = head_nms(rec.head, conf=0.25, iou=0.7)
    """
    import torchvision  # noqa: F401  (see below)
    from ultralytics.utils import nms

    # Ultralytics' NMS takes torchvision's kernel only once torchvision is imported, and predict always imports
    # it first (AutoBackend.warmup); its own fallback can order near-equal boxes differently, so import it too.
    kept, idxs = nms.non_max_suppression(head["decoded"], conf, iou, classes, agnostic, max_det=max_det, nc=0,
                                         end2end=end2end, rotated=False, return_idxs=True)
    return kept[0], idxs[0].view(-1)


def head_detections(head: dict, kept, idxs, boxes, names: dict, reported_conf, reported_boxes) -> list[dict]:
    """Each kept box traced to its anchor's class logit: logit -> sigmoid by hand -> the reported score.

    Args:
        head: ``LayerRecorder.head`` (per-scale ``cls_logits``, ``strides``).
        kept, idxs: from ``head_nms``. boxes: ``kept``'s boxes in original-photo pixels.
        names: class names. reported_conf, reported_boxes: what Ultralytics reported for these boxes.

    Returns:
        the ``detections`` list of ``trace_head``.

    Examples:
        >>> head_detections(rec.head, kept, idxs, boxes, names, kept[:, 4], boxes)[0]["sigmoid_by_hand"]
    """
    grids = [tuple(t.shape[2:]) for t in head["cls_logits"]]
    offsets = [0]
    for h, w in grids:
        offsets.append(offsets[-1] + h * w)
    detections = []
    for k in range(len(kept)):
        a = int(idxs[k])
        s = max(i for i in range(len(grids)) if offsets[i] <= a)
        gy, gx = divmod(a - offsets[s], grids[s][1])
        cls = int(kept[k, 5])
        logits = head["cls_logits"][s][0, :, gy, gx].double()
        logit = float(logits[cls])
        sig = sigmoid(logit)
        stride = head["strides"][s]
        reported = float(reported_conf[k]) if k < len(reported_conf) else float("nan")
        detections.append({
            "index": k,
            "box_xyxy": [float(v) for v in boxes[k]],
            "class_id": cls,
            "class_name": str(names.get(cls, cls)),
            "ultralytics_conf": reported,
            "anchor_index": a,
            "scale": s,
            "stride": stride,
            "grid_y": gy,
            "grid_x": gx,
            "anchor_center": [(gx + 0.5) * stride, (gy + 0.5) * stride],
            "logit": logit,
            "all_logits": logits.tolist(),
            "is_max_logit": bool(int(logits.argmax()) == cls),
            "sigmoid_by_hand": sig,
            "abs_error": abs(sig - reported),
            "box_matches": bool(k < len(reported_boxes) and torch.allclose(boxes[k], reported_boxes[k], atol=1e-4)),
        })
    return detections


def format_head(h: dict, limit: int = 10) -> str:
    """The head trace as readable lines, one per reported box."""
    lines = [f"head: {h['n_reported']} boxes reported on {h['image']} (input {h['input_shape']})"]
    for d in h["detections"][:limit]:
        lines.append(
            f"  box {d['index']}: {d['class_name']} from scale {d['scale']} (stride {d['stride']:g}) cell "
            f"(y={d['grid_y']}, x={d['grid_x']}): logit {d['logit']:.6g} -> sigmoid = {d['sigmoid_by_hand']:.7g}; "
            f"Ultralytics conf {d['ultralytics_conf']:.7g} (|diff| {d['abs_error']:.2g})")
    if len(h["detections"]) > limit:
        lines.append(f"  ... {len(h['detections']) - limit} more in the JSON")
    return "\n".join(lines)
