"""``PhotoRun``: one photo through one model, computed once and then only asked questions.

Made once per photo: the photo is decoded once, letterboxed into the exact model input, and one forward
pass of a private fused copy of the model is recorded (``LayerRecorder``: every Conv block's input, z and
SiLU(z), their statistics, and the Detect head's logits). The caller's model is never fused nor changed:
BatchNorm's own parameters (weights, biases, the unfolded neuron route) are read from it.

From that one pass, without running the network again: any neuron's hand trace (``neuron``), the
detections and their head trace (Ultralytics' own NMS on the recorded head output, with the anchor of each
box), EigenCAM, per-layer statistics. What truly needs another pass is a named method, computed when asked
and kept: ``gradients`` (backward passes of the detection loss), ``layercam`` (Ultralytics' LayerCAM, a
backward pass per explained box), ``dataset_stats`` (other photos) and the effect of a neuron on the top box's
logit (``effect``, ``choose_by_effect``, ``top_channels``: batched passes from the neuron's layer on, counted
in ``effect_passes``).

Examples:
    >>> from pipeline.model.load import load_model
    >>> from pipeline.analysis.run import PhotoRun
    >>> run = PhotoRun(load_model("best.pt"), "photo.jpg", imgsz=640, conf=0.25)
    >>> run.detections[0]["score"], run.head_trace[0]["logit"]
    >>> run.neuron("model.2.cv1", 5, 40, 40)["z_by_hand"]        # no forward pass: read off the record
    >>> flow = run.gradients(imgsz=320, batch=2)["real"]            # backward passes, on request
"""

from __future__ import annotations

import copy
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from ultralytics.nn.autobackend import AutoBackend
from ultralytics.utils import ops

from pipeline.analysis.cam import eigencam, layercam
from pipeline.analysis.effect import LogitEffects, effect_words, noise_floor
from pipeline.analysis.thread import BEND_SLOPE, BEND_Z, NEURON_LAYERS, anchor_detail, choose_neuron, forward_map
from pipeline.core.io import read_image, shrink
from pipeline.data.labels import label_path, photo_labels
from pipeline.data.preprocess import model_input
from pipeline.data.synth import labelled_scene
from pipeline.lesson.activations import d_silu, describe_all, silu_minimum
from pipeline.lesson.gradients import activation_comparison, gradient_flow, make_batch, sgd_step
from pipeline.lesson.input_scaling import pixel_outliers, scalings
from pipeline.model.detections import detection_dicts, match_labels
from pipeline.model.load import detection_model, model_stride, trained_imgsz
from pipeline.probe.fold import conv_params, param_counts
from pipeline.probe.layers import conv_blocks, detect_head
from pipeline.probe.logit import final_convs, trace_dfl_side, trace_logit
from pipeline.probe.receptive_field import receptive_field, to_photo
from pipeline.probe.recorder import LayerRecorder
from pipeline.probe.statistics import record_statistics
from pipeline.probe.trace import head_detections, head_nms, trace_recorded


def checkpoint_facts(yolo) -> dict:
    """What a loaded checkpoint says about its training: ``{"trained", "epoch", "metrics"}``.

    ``trained`` is whether the weights came from a checkpoint file (Ultralytics' ``YOLO.ckpt`` holds one; a
    model built from a YAML has none); ``metrics`` are the validation numbers the trainer stored with it
    (``train_metrics``: precision, recall, mAP50, mAP50-95 over all classes; empty when none were stored).
    """
    ckpt = getattr(yolo, "ckpt", None) or {}
    metrics = {k: float(v) for k, v in (ckpt.get("train_metrics") or {}).items() if isinstance(v, (int, float))}
    epoch = ckpt.get("epoch")
    return {"trained": bool(ckpt), "epoch": int(epoch) if isinstance(epoch, int) and epoch >= 0 else None,
            "metrics": metrics}


class PhotoRun:
    """One photo, one model, one recorded forward pass; everything else is derived or asked for by name.

    Args:
        yolo: an ``ultralytics.YOLO`` (``pipeline.model.load.load_model``) or its DetectionModel; copied, never changed.
        image: a photo path, or the photo as BGR uint8 (``read_image``).
        imgsz, conf, iou, max_det: as in ``YOLO.predict`` (``imgsz`` defaults to the weights' training size,
            ``pipeline.model.load.trained_imgsz``).
        keep_side: keep only a copy of the photo this long (``None``: the photo itself). An 8000x8000 photo
            is 183 MB; what is drawn from it needs ~1000 px, and every number in photo pixels uses ``shape``.

    Attributes:
        source: the photo's path (``None`` for pixels). shape: the photo's own HxWx3.
        pixels: the photo, decoded once; with ``keep_side``, a copy at most that long (area average), made
            once the model input is made from the full photo.
        model: the caller's DetectionModel (read only). net: the private fused copy that ran.
        x, meta: the model input ``1x3xHxW`` and its letterbox numbers. record: the closed recorder.
        blocks, paths: the caller's Conv blocks and their paths, stem first. names: class names.
    """

    def __init__(self, yolo, image, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                 keep_side: int | None = None):
        self.source = None if isinstance(image, np.ndarray) else Path(image)
        pixels = image if self.source is None else read_image(self.source)
        self.shape = tuple(pixels.shape)
        self.imgsz, self.conf, self.iou, self.max_det = trained_imgsz(yolo, imgsz), conf, iou, max_det
        self.model = detection_model(yolo)
        self.checkpoint = checkpoint_facts(yolo)
        # A private copy prepared by Ultralytics' own AutoBackend, as predict prepares it (Conv+BN fused, and
        # channels-last on x86 CPUs, which changes float32 rounding): its detections are predict's to the bit,
        # and the caller keeps its BatchNorm (the report reads BN's own parameters from it).
        self._backend = AutoBackend(model=copy.deepcopy(self.model), device=torch.device("cpu"), fuse=True,
                                    verbose=False)
        self.net = self._backend.model
        self.names = {int(k): str(v) for k, v in self.model.names.items()}
        self.blocks = conv_blocks(self.model)
        self.paths = list(self.blocks)
        self.x, self.meta = model_input(pixels, imgsz=self.imgsz, stride=model_stride(self.net), auto=True)
        self.pixels = pixels if keep_side is None else shrink(pixels, keep_side)
        del pixels  # the full photo goes now, before the recorded pass (when it is not the one kept)
        if self.source is not None:
            self.meta["source"] = str(self.source)
        self.record = self._record()
        self._gradients: dict = {}
        self._layercam: dict = {}

    def _record(self) -> LayerRecorder:
        """The one recorded forward pass, with the CPU thread count predict would use.

        Ultralytics' ``select_device`` sets torch's threads (``min(8, cores - 1)``) before predict runs, and
        the thread count changes how float32 sums are split, so detections match predict's only with the
        same count. The process's own count is restored after, so the run changes nothing around it.
        """
        from ultralytics.utils.torch_utils import select_device

        threads = torch.get_num_threads()
        try:
            select_device("cpu", verbose=False)
            with LayerRecorder(self.net, mode="both", head=True, keep_inputs=True) as rec:
                rec(self.x)
        finally:
            torch.set_num_threads(threads)
        return rec

    # -- the photo and its input ---------------------------------------------------------------
    @cached_property
    def scalings(self) -> dict:
        """x/255, min-max and z-score scalings of the model input (``lesson.input_scaling.scalings``)."""
        return scalings(self.x)

    @cached_property
    def outliers(self) -> dict:
        """Pixels with |z| > 3 in the content area (``lesson.input_scaling.pixel_outliers``)."""
        return pixel_outliers(self.x, meta=self.meta)

    # -- parameters (the caller's model: BatchNorm unfused) --------------------------------------
    @cached_property
    def params(self) -> dict:
        """``probe.fold.conv_params`` of the caller's model: raw, BN and folded tensors per Conv block."""
        return conv_params(self.model)

    @cached_property
    def counts(self) -> dict:
        """Parameter counts per top-level layer and in total (``probe.fold.param_counts``)."""
        return param_counts(self.model)

    @cached_property
    def head_inputs(self) -> list[int]:
        """Indices of the layers the Detect head reads (its ``f``)."""
        _, detect = detect_head(self.model)
        return [int(i) for i in getattr(detect, "f", [])]

    @cached_property
    def head_path(self) -> str | None:
        """Module path of the Detect head, e.g. ``model.22``."""
        return detect_head(self.model)[0]

    # -- neurons ------------------------------------------------------------------------------
    def activation(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Recorded ``(z, SiLU(z))`` of a Conv block, each ``1xCxHxW``."""
        return self.record.activations[layer]

    def neuron(self, layer: str, channel: int, y: int, x: int) -> dict:
        """What ``cardamage trace`` computes for this neuron, read off the recorded pass (no forward pass).

        The hand computation uses the caller's (unfused) block, so the unfolded BatchNorm route is shown;
        the framework values are the fused pass's, which agree to float32 rounding.

        Raises:
            ValueError: not a Conv block, or a position outside its output.
        """
        if layer not in self.blocks:
            raise ValueError(f"{layer!r} is not a Conv block; Conv blocks are e.g. {', '.join(self.paths[:4])}, ...")
        return trace_recorded(self.blocks[layer], layer, self.record.inputs[layer], *self.record.activations[layer],
                              channel, y, x)

    @cached_property
    def neuron_layer(self) -> str:
        """The layer of the lesson's neuron: mid-backbone (``thread.NEURON_LAYERS``, first present)."""
        return next((p for p in NEURON_LAYERS if p in self.record.activations), self.paths[1])

    @cached_property
    def focus(self) -> tuple[str, int, int, int]:
        """The lesson's neuron, on the top detection's path, in ``neuron_layer`` (``focus_info``).

        Among the cells whose centre lies in the top box, where SiLU bends (|z| <= 3, SiLU'(z) <= 0.8), the
        neuron whose zeroing moves the box's class logit most (``choose_by_effect``); without a detection,
        the strongest bending neuron of the map (``thread.choose_neuron``).
        """
        return self.focus_info["layer"], self.focus_info["channel"], self.focus_info["y"], self.focus_info["x"]

    @cached_property
    def focus_info(self) -> dict:
        """The lesson's neuron and where it looks: ``{layer, channel, y, x, z, silu_slope, inside_box,
        detection_index, chosen_by, measured (candidates zeroed), receptive_field_input, receptive_field_xyxy, rf_centre_in_box,
        rf_inside_box, effect, top_channels}`` (boxes in photo pixels).

        With a detection, the neuron is, among the bending cells whose centre lies in the box, the shortlisted one
        (largest gradient x activation) whose zeroing moves the top box's class logit most (``choose_by_effect``);
        without one, ``thread.choose_neuron``.
        """
        layer = self.neuron_layer
        z, a = self.activation(layer)
        stride = self.x.shape[-1] / z.shape[-1]
        kept = self._kept[0]
        box = kept[0, :4].tolist() if len(kept) else None
        picked = self.choose_by_effect(layer, box, stride) if box is not None else None
        if picked is None:
            ch, y, x, inside = choose_neuron(z[0], a[0], stride, box)
            chosen_by, measured, basis = "activation", 0, None
        else:
            ch, y, x, measured, basis = picked
            inside, chosen_by = True, "effect"
        hw = tuple(self.x.shape[2:])
        rf = receptive_field(self.net, layer, hw, y, x)  # autograd to this layer only; the head never runs
        zz = float(z[0, ch, y, x])
        cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
        out = {"layer": layer, "channel": ch, "y": y, "x": x, "z": zz, "stride": stride,
               "silu_slope": float(d_silu(zz)), "inside_box": inside, "chosen_by": chosen_by, "measured": measured,
               "chosen_on": basis,
               "detection_index": 0 if inside else None, "receptive_field_input": list(rf),
               "receptive_field_xyxy": to_photo(rf, hw, self.shape),
               "rf_centre_in_box": bool(box is not None and box[0] <= cx <= box[2] and box[1] <= cy <= box[3]),
               "rf_inside_box": bool(box is not None and box[0] <= rf[0] and box[1] <= rf[1] and rf[2] <= box[2]
                                     and rf[3] <= box[3]),
               "effect": None, "top_channels": []}
        if box is not None:
            out["effect"] = self.effect(layer, ch, y, x)
            out["top_channels"] = self.top_channels(layer, y, x)
        return out

    # -- the score's own arithmetic: the head's final convs, and how much a neuron mattered ----------
    @cached_property
    def final_convs(self) -> dict:
        """The head's final plain convs (``probe.logit.final_convs``): ``cv2.<s>.2`` (DFL) and ``cv3.<s>.2`` (classes)."""
        return final_convs(self.model)

    def head_conv_io(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A final head conv's recorded input (the SiLU output of the block before it) and output (its logits)."""
        info = self.final_convs[layer]
        out = self.record.head["cls_logits" if info["branch"] == "class" else "box"][info["scale"]]
        return self.record.activations[info["input_block"]][1], out

    def logit(self, layer: str, channel: int, y: int, x: int, top: int = 8) -> dict:
        """One output of a final head conv by hand (``probe.logit.trace_logit``), read off the recorded pass.

        Raises:
            ValueError: not a final head conv, or a position outside its output.
        """
        if layer not in self.final_convs:
            raise ValueError(f"{layer!r} is not one of the head's final convs ({', '.join(self.final_convs)})")
        info = self.final_convs[layer]
        t = trace_logit(info["conv"], layer, *self.head_conv_io(layer), channel, y, x, top)
        t.update(branch=info["branch"], scale=info["scale"], input_block=info["input_block"],
                 stride=float(self.record.head["strides"][info["scale"]]))
        if info["branch"] == "class":
            t["class_name"] = self.names.get(channel, str(channel))
        else:
            reg = int(self.record.head.get("reg_max", 16))
            t["side"], t["bin"] = divmod(channel, reg)
        return t

    @cached_property
    def logit_trace(self) -> dict | None:
        """The top box's class logit by hand at its anchor, its sigmoid and NMS's choice; one DFL side to its edge.

        ``{layer, class_id, class_name, y, x, bias, dot, logit, sigmoid, top_terms, framework_logit, abs_error,
        input_channels, input_block, score (what NMS reported), conf, class_rank (classes whose logit is larger),
        dfl (``probe.logit.trace_dfl_side`` of the left side), box_edge_input (the reported box's left x)}``;
        ``None`` without a detection.
        """
        if not self.head_trace:
            return None
        d = self.head_trace[0]
        cls_path = next(p for p, i in self.final_convs.items() if i["branch"] == "class" and i["scale"] == d["scale"])
        box_path = next(p for p, i in self.final_convs.items() if i["branch"] == "box" and i["scale"] == d["scale"])
        t = self.logit(cls_path, d["class_id"], d["grid_y"], d["grid_x"])
        t = {k: v for k, v in t.items() if k not in ("terms", "weights", "inputs")}
        t.update(class_id=d["class_id"], detection_index=0, score=float(self.detections[0]["score"]), conf=self.conf,
                 n_classes=len(d["all_logits"]), is_max_logit=d["is_max_logit"],
                 class_rank=sum(v > d["logit"] for v in d["all_logits"]))
        info = self.final_convs[box_path]
        t["dfl"] = trace_dfl_side(info["conv"], box_path, *self.head_conv_io(box_path), 0, d["grid_y"], d["grid_x"],
                                  float(d["stride"]), int(self.record.head.get("reg_max", 16)))
        t["box_edge_input"] = float(self._kept[0][0, 0])
        return t

    @property
    def effect_passes(self) -> int:
        """How many batched passes from a layer on the effect measurements have run (each runs the head once)."""
        return 0 if self.logit_trace is None else self._effects.passes

    @cached_property
    def _effects(self) -> LogitEffects | None:
        """The followed box's class logit, ready to be differentiated and measured (``None`` without a box)."""
        t = self.logit_trace
        return None if t is None else LogitEffects(self.net, self.x, (t["layer"], t["class_id"], t["y"], t["x"]))

    def effect(self, layer: str, channel: int, y: int, x: int) -> dict | None:
        """How much one Conv block neuron mattered to the followed box's class logit (``analysis.effect``).

        Returns:
            ``{"grad_x_act", "zeroed_delta", "grad", "act", "logit", "logit_zeroed", "first_order_estimate",
            "words", "reaches"}`` or ``None`` without a detection (``reaches``: whether the layer feeds that logit).

        Raises:
            ValueError: not a Conv block, or a position outside its output.
        """
        if self._effects is None:
            return None
        if layer not in self.blocks:
            raise ValueError(f"{layer!r} is not a Conv block")
        _, c, h, w = self.activation(layer)[0].shape
        if not (0 <= channel < c and 0 <= y < h and 0 <= x < w):
            raise ValueError(f"{layer} has output {c}x{h}x{w}; channel={channel} y={y} x={x} is outside it")
        dz = self._effects.zeroed(layer, (channel, y, x))  # one pass, unless the choice already measured it
        m = self._effects.measure(layer, [])  # the layer's gradient: kept from the first time it was asked
        gxa = float(m["grad_x_act"][channel, y, x])
        return {"grad_x_act": gxa, "zeroed_delta": dz, "grad": float(m["grad"][channel, y, x]),
                "act": float(m["act"][channel, y, x]), "logit": m["logit"], "logit_zeroed": m["logit"] + dz,
                "first_order_estimate": -gxa, "words": effect_words(gxa, dz, m["logit"], m["reaches"], self._effects.target[0]),
                "reaches": m["reaches"]}

    def top_channels(self, layer: str, y: int, x: int, top: int = 8) -> list[dict]:
        """The channels of ``layer`` at one cell that matter most to the followed logit: largest |grad x act|, each
        with its measured zeroing change (``[{channel, act, grad_x_act, zeroed_delta}]``, one batched pass)."""
        if self._effects is None:
            return []
        first = self._effects.measure(layer, [])["grad_x_act"][:, y, x]
        chans = first.abs().argsort(descending=True)[:top].tolist()
        m = self._effects.measure(layer, [(c, y, x) for c in chans])
        return [{"channel": c, "act": float(m["act"][c, y, x]), "grad_x_act": float(first[c]),
                 "zeroed_delta": dz} for c, dz in zip(chans, m["zeroed_delta"])]

    def choose_by_effect(self, layer: str, box_xyxy, stride: float, shortlist: int = 8):
        """``(channel, y, x, measured, basis)``: among the bending neurons whose cell centre lies in the box
        (``thread``'s rule), the one whose zeroing changes the top box's class logit most (``basis`` "measured"),
        and how many were measured; when no zeroing moves the logit beyond float32 rounding, the largest
        |grad x act| (``basis`` "first-order"); ``None`` when no such neuron exists.

        The ``shortlist`` largest |grad x act| (one backward pass) are measured by zeroing (one batched pass).
        """
        if self._effects is None:
            return None
        z = self.activation(layer)[0][0].double()
        _, h, w = z.shape
        cy = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
        cx = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        cells = ((cy >= y0) & (cy <= y1))[:, None] & ((cx >= x0) & (cx <= x1))[None, :]
        bend = (z.abs() <= BEND_Z) & (d_silu(z) <= BEND_SLOPE) & cells
        if not bend.any():
            return None
        first = self._effects.measure(layer, [])["grad_x_act"].abs()
        score = torch.where(bend, first, torch.full_like(first, -1.0)).flatten()
        order = score.argsort(descending=True)[:min(shortlist, int(bend.sum()))].tolist()
        cand = [(k // (h * w), *divmod(k % (h * w), w)) for k in order]
        m = self._effects.measure(layer, cand)
        dz = m["zeroed_delta"]
        if max(abs(v) for v in dz) <= noise_floor(m["logit"]):  # no measured change beyond float32 rounding
            return (*cand[0], len(cand), "first-order")
        return (*cand[max(range(len(cand)), key=lambda i: abs(dz[i]))], len(cand), "measured")

    @cached_property
    def traced(self) -> dict:
        """``neuron`` at ``focus``."""
        return self.neuron(*self.focus)

    def sgd_step(self, lr: float = 0.01) -> dict:
        """One SGD step on the traced neuron, by hand and by autograd (``lesson.gradients.sgd_step``)."""
        t = self.traced
        return sgd_step(t["patch"], t["weights"], t["bias"], lr=lr)

    # -- activations ---------------------------------------------------------------------------
    @cached_property
    def layer_stats(self) -> dict:
        """Summary statistics of z and SiLU(z) per Conv block on this photo."""
        return {p: self.record.stats[p].summary() for p in self.paths if p in self.record.stats}

    @cached_property
    def silu_minimum(self) -> tuple[float, float]:
        """(z*, SiLU(z*)) where SiLU' = 0 (``lesson.activations.silu_minimum``)."""
        return silu_minimum()

    def gallery(self, layer: str) -> list[dict]:
        """Every gallery activation described over ``layer``'s real pre-activations."""
        return describe_all(self.activation(layer)[0])

    # -- output ------------------------------------------------------------------------------
    @cached_property
    def _kept(self):
        """Ultralytics' NMS on the recorded head output: kept rows, their anchors and boxes in photo pixels."""
        kept, idxs = head_nms(self.record.head, self.conf, self.iou, self.max_det,
                              end2end=getattr(self.net, "end2end", False))
        boxes = ops.scale_boxes(self.x.shape[2:], kept[:, :4].clone(), self.shape)
        return kept, idxs, boxes

    @cached_property
    def anchor_logits(self) -> torch.Tensor:
        """Every anchor's class logits, ``nc x anchors`` in Detect's order (stride 8, 16, 32), before the sigmoid."""
        return torch.cat([t.flatten(2) for t in self.record.head["cls_logits"]], 2)[0]

    @cached_property
    def detections(self) -> list[dict]:
        """The boxes ``predict`` reports (class, sigmoid score, the logit behind it, box in photo pixels)."""
        kept, idxs, boxes = self._kept
        raw = self.anchor_logits
        logits = raw[kept[:, 5].long(), idxs.long()] if len(kept) else kept[:, 4]
        return detection_dicts(boxes, kept[:, 4], kept[:, 5], logits, self.names)

    @cached_property
    def labels(self) -> list[dict] | None:
        """The labelled damage of the YOLO label file beside the photo (``images/X.jpg`` -> ``labels/X.txt``),
        in photo pixels as ``{class_id, class_name, box_xyxy}`` (polygons as their bounding box, as Ultralytics
        trains on them); ``None`` without a usable label file (``data.labels.photo_labels``)."""
        rows = self._label_file[0]
        if rows is None:
            return None
        h, w = self.shape[:2]
        xyxy = ops.xywhn2xyxy(np.array([r[1:] for r in rows], dtype=np.float64).reshape(-1, 4), w=w, h=h)
        return [{"class_id": r[0], "class_name": self.names.get(r[0], str(r[0])),
                 "box_xyxy": [round(float(v), 2) for v in b]} for r, b in zip(rows, xyxy)]

    @cached_property
    def _label_file(self) -> tuple[list[tuple] | None, str | None]:
        """``(rows, problem)`` of the photo's label file (``data.labels.photo_labels``): normalised
        ``(class, xc, yc, w, h)`` rows or ``None``, and why a file in ``labels/`` was not used."""
        return (None, None) if self.source is None else photo_labels(self.source, len(self.names))

    @property
    def label_problem(self) -> str | None:
        """Why a label file in a ``labels/`` folder was not used (one line naming file and line), or ``None``."""
        return self._label_file[1]

    @cached_property
    def label_check(self) -> dict | None:
        """The detections against ``labels`` at IoU 0.5 (``model.detections.match_labels``): which boxes found
        labelled damage, which are false positives, which labels were missed; ``None`` without a label file."""
        return None if self.labels is None else match_labels(self.detections, self.labels)

    @cached_property
    def forward_map(self) -> list[dict]:
        """The input, then every top-level layer with the shape it produced (``thread.forward_map``)."""
        return forward_map(self.x.shape, self.record.stages)

    @cached_property
    def detection_logits(self) -> list[list[float]]:
        """Every class logit at each reported box's anchor (the head's raw outputs before the sigmoid)."""
        return [d["all_logits"] for d in self.head_trace]

    @cached_property
    def top_anchor(self) -> dict | None:
        """The top box's anchor opened up (``thread.anchor_detail``), or ``None`` without detections."""
        return anchor_detail(self.record.head, self.head_trace[0]) if self.head_trace else None

    @cached_property
    def head_trace(self) -> list[dict]:
        """Each reported box traced to its anchor's logit (``probe.trace.head_detections``)."""
        kept, idxs, boxes = self._kept
        return head_detections(self.record.head, kept, idxs, boxes, self.names, kept[:, 4], boxes)

    @cached_property
    def cam_layer(self) -> str:
        """The first Conv block feeding the head (the stride-8 features): where EigenCAM looks."""
        acts = self.record.activations
        return next((f"model.{i}.cv2" for i in self.head_inputs if f"model.{i}.cv2" in acts), self.paths[-1])

    @cached_property
    def eigencam(self) -> np.ndarray:
        """EigenCAM of ``cam_layer`` (``report.cam.eigencam``), HxW in [0, 1]."""
        return eigencam(self.activation(self.cam_layer)[1])

    # -- what needs more passes: named, computed when asked, kept ----------------------------------
    def layercam(self, out_dir) -> dict:
        """Ultralytics' LayerCAM on the model input (``report.cam.layercam``): its own forward and backward passes.

        Adds what it explained: ``candidates``, the anchors whose best class score passes ``conf`` before NMS
        (read off the recorded head), and ``explained``, the strongest ``topk`` of them (the single best anchor
        when none passes, as Ultralytics does).
        """
        key = str(out_dir)
        if key not in self._layercam:
            lc = layercam(self._backend, self.x, out_dir, conf=self.conf)
            candidates = int((self.anchor_logits.amax(0).sigmoid() >= self.conf).sum())  # as Ultralytics keeps them
            self._layercam[key] = dict(lc, candidates=candidates, explained=min(max(candidates, 1), lc["topk"]))
        return self._layercam[key]

    def gradients(self, imgsz: int = 320, batch: int = 2, seed: int = 0) -> dict:
        """Gradient flow of the detection loss: this model, then fresh SiLU/sigmoid/tanh/ReLU variants.

        The batch is this photo (with its YOLO labels if a label file sits beside it; letterboxed from
        ``pixels``, the kept copy where ``keep_side`` was given) plus ``batch - 1`` synthetic scenes. One backward pass per model (``lesson.gradients``), each on its own copy.

        Returns:
            ``{"batch_sources": [...], "real": gradient_flow, "variants": activation_comparison}``.
        """
        key = (imgsz, batch, seed)
        if key not in self._gradients:
            data, sources = self._gradient_batch(batch, imgsz, seed)
            self._gradients[key] = {"batch_sources": sources, "real": gradient_flow(self.model, data),
                                    "variants": activation_comparison(self.model.yaml, len(self.names), data, seed=seed)}
        return self._gradients[key]

    def _gradient_batch(self, n: int, imgsz: int, seed: int):
        name = self.source.name if self.source else "the photo"
        labels = self._label_file[0] or []
        samples = [(self.pixels, labels)]
        sources = [f"{name} ({len(labels)} label{'s' * (len(labels) != 1)} from {label_path(self.source)})" if labels
                   else f"{name} (no labelled damage: background only)"]
        for i in range(max(0, n - 1)):
            img, boxes = labelled_scene(seed + 1000 + i, imgsz)
            samples.append((img, boxes))
            sources.append(f"synthetic scene seed {seed + 1000 + i} ({len(boxes)} labels)")
        return make_batch(samples, imgsz), sources

    def dataset_stats(self, files, limit: int | None = None):
        """Per-layer statistics over other photos with the caller's model (as ``cardamage inspect``).

        Returns:
            ``(layer_stats, used, errors)``: ``{path: summary}``, the photos used, their ``InputError``s.
        """
        rec, used, errors, _ = record_statistics(self.model, files, self.imgsz, progress=False, limit=limit)
        return {p: rec.stats[p].summary() for p in self.paths if p in rec.stats}, used, errors
