"""``Explorer``: the numbers behind ``cardamage explore``, one ``PhotoRun`` per photo, asked by the web page.

Each photo's run (one decode, one recorded forward pass: ``pipeline.analysis.run.PhotoRun``) is built on the
first request that needs it and kept while it fits a budget: at most ``MAX_RUNS`` runs and ``RUNS_BUDGET``
bytes between them, the least recently used dropped first and built again, to the same numbers, when asked
for again. So the server's memory is bounded by the budget, not by how many photos it is given (kept for
ever, 60 photos held gigabytes). A lock per photo makes two browsers asking at once share one run.
Every answer is read off that run: the model table (``model``), the detections with their anchors and
all class logits (``detections``), a feature map as a PNG (``featuremap``), one neuron's whole arithmetic
with its receptive field in photo pixels (``neuron``), and EigenCAM over the photo (``cam``).

Every parameter is checked here; a bad one raises ``BadRequest`` with a one-line reason (the server
answers 400 with it), so no request can reach a traceback.

Examples:
    >>> from pipeline.explore.session import Explorer
    >>> from pipeline.model.load import load_model
    >>> ex = Explorer(load_model("best.pt"), ["photo.jpg"], imgsz=640)
    >>> ex.neuron({"photo": "0", "layer": "model.2.cv1", "channel": "5", "y": "40", "x": "40"})["z_by_hand"]
    >>> png = ex.featuremap({"photo": "0", "layer": "model.0", "channel": "3", "stage": "post"})
"""

from __future__ import annotations

import gc
import re
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.core import heap
from pipeline.core.facts import sigmoid
from pipeline.core.io import InputError, shrink
from pipeline.model.detections import describe_match
from pipeline.model.load import trained_imgsz
from pipeline.probe.fold import conv_meta
from pipeline.probe.receptive_field import receptive_field, to_photo
from pipeline.analysis.run import PhotoRun

#: the two stages of a Conv block's output a feature map can show
STAGES = ("pre", "post")
#: the largest photo side the page is sent (the page scales; numbers are always in the photo's own pixels)
PHOTO_MAX_SIDE = 1280
#: Most photos' runs kept at once. A run holds every Conv block's input, z and SiLU(z), the model's private
#: fused copy and the shrunk photo (``held_bytes`` counts them), so at imgsz 640 the byte budget below binds
#: first; clicking back and forth between a handful of photos never waits for a rebuild.
MAX_RUNS = 8
#: Most bytes the kept runs hold together (``held_bytes``): big photos or a big imgsz make a run heavier,
#: and then fewer are kept. The run just built is always kept, whatever its size.
RUNS_BUDGET = 1 << 30


class BadRequest(ValueError):
    """A request parameter that names nothing real; its message is the one-line reason shown to the client."""


def _int(params, name: str, lo: int = 0, hi: int | None = None) -> int:
    """Parameter ``name`` as an int in ``[lo, hi)``, or ``BadRequest``."""
    raw = params.get(name)
    if raw is None:
        raise BadRequest(f"missing parameter {name!r}")
    text = str(raw).strip()
    # ASCII digits only: int() also reads "１" (fullwidth), "٣" (Arabic-Indic) and "1_000", no browser sends them
    if not re.fullmatch(r"[+-]?[0-9]{1,18}", text):
        raise BadRequest(f"{name} must be an integer, got {text[:40]!r}")
    value = int(text)
    if value < lo or (hi is not None and value >= hi):
        raise BadRequest(f"{name}={value} is outside [{lo}, {hi if hi is not None else 'inf'})")
    return value


def diverging_png(m: np.ndarray, symmetric: bool = True) -> tuple[bytes, float, float]:
    """One feature map as a PNG of its own size: blue for negative, white at 0, red for positive.

    Args:
        m: HxW floats.
        symmetric: scale by max|m| on both sides (so 0 is always white); else min..max onto white..red.

    Returns:
        ``(png_bytes, lo, hi)``: the values that map to the two ends of the colour scale.

    Examples:
        >>> png, lo, hi = diverging_png(np.array([[-1.0, 0.0], [0.5, 1.0]]))
        >>> cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).shape
        (2, 2, 3)
    """
    m = np.asarray(m, dtype=np.float64)
    top = float(np.abs(m).max()) if m.size else 0.0
    lo, hi = (-top, top) if symmetric else (float(m.min()), float(m.max()))
    scale = top if top > 0 else 1.0
    t = np.clip(m / scale, -1.0, 1.0)  # -1 .. 1
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    # BGR: white at 0; positive fades green and blue (towards red), negative fades red and green (towards blue)
    b = 255 * (1 - pos)
    g = 255 * (1 - np.maximum(pos, neg))
    r = 255 * (1 - neg)
    img = np.stack([b, g, r], axis=-1).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 HxWx3
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes(), lo, hi


def held_bytes(obj, _seen: set | None = None) -> int:
    """Bytes of the tensors and arrays reachable from ``obj`` (through attributes, dicts, lists and tuples),
    each storage counted once: what keeping ``obj`` keeps alive, for the run budget. Whatever is in ``_seen``
    (ids, filled by an earlier call) is not counted again.

    Examples:
        >>> held_bytes({"a": np.zeros(10), "b": [torch.zeros(4)]})
        96
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if ("storage", storage.data_ptr()) in seen:
            return 0
        seen.add(("storage", storage.data_ptr()))
        return storage.nbytes()
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if base is not obj:
            return held_bytes(base, seen)
        return obj.nbytes
    if isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return len(obj) if isinstance(obj, bytes) else 0
    if isinstance(obj, dict):
        return sum(held_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(held_bytes(v, seen) for v in obj)
    fields = getattr(obj, "__dict__", None)
    return held_bytes(fields, seen) if isinstance(fields, dict) else 0


class Explorer:
    """Photos and one model, answering the explorer page's questions from one recorded pass per photo.

    Args:
        yolo: the loaded model (``pipeline.model.load.load_model``); never changed.
        photos: photo paths, indexed from 0 in the API.
        imgsz, conf: as in ``cardamage predict`` (``imgsz`` defaults to the weights' training size).
        max_runs, runs_budget: at most this many runs, holding at most this many bytes together, are kept
            (``MAX_RUNS``, ``RUNS_BUDGET``); the least recently used go first.

    Examples:
        >>> ex = Explorer(load_model("best.pt"), ["a.jpg", "b.jpg"])
        >>> [d["anchor"] for d in ex.detections({"photo": "1"})]
    """

    def __init__(self, yolo, photos, imgsz: int | None = None, conf: float = 0.25, max_runs: int = MAX_RUNS,
                 runs_budget: int = RUNS_BUDGET):
        heap.return_freed_memory()  # runs and feature-map PNGs come and go: freed blocks go back to the OS
        self.yolo, self.imgsz, self.conf = yolo, trained_imgsz(yolo, imgsz), conf
        self.photos = [Path(p) for p in photos]
        self.max_runs, self.runs_budget = max(1, int(max_runs)), int(runs_budget)
        # photo index -> (run, its bytes, its page JPEGs), least recently used first; guarded by _kept_lock
        self._kept: OrderedDict[int, tuple[PhotoRun, int, dict]] = OrderedDict()
        self._kept_lock = threading.Lock()
        self._locks = [threading.Lock() for _ in self.photos]
        # receptive_field runs (stopped) forward passes of the shared model with a hook on it: one at a time
        self._rf_lock = threading.Lock()
        self.builds = 0  # runs built so far, rebuilds of dropped ones included
        self._shared: set = set()  # the caller's model, which every run reads: not counted in any run's bytes
        held_bytes(yolo, self._shared)

    # -- runs ------------------------------------------------------------------------------------
    def photo_index(self, params) -> int:
        """The ``photo`` parameter, checked against the photo list (default 0 where optional)."""
        return _int(params, "photo", 0, len(self.photos))

    def kept(self) -> list[int]:
        """The photos whose runs are kept now, least recently used first."""
        with self._kept_lock:
            return list(self._kept)

    def kept_bytes(self) -> int:
        """Bytes the kept runs hold together (``held_bytes`` of each, measured when it was built)."""
        with self._kept_lock:
            return sum(size for _, size, _ in self._kept.values())

    def _lookup(self, i: int) -> tuple[PhotoRun, int, dict] | None:
        with self._kept_lock:
            entry = self._kept.get(i)
            if entry is not None:
                self._kept.move_to_end(i)
            return entry

    def _entry(self, i: int) -> tuple[PhotoRun, int, dict]:
        """Photo ``i``'s kept ``(run, bytes, page JPEGs)``, its run built first if it is not kept (one build even
        when requests race). The JPEGs (photo, CAM) are kept and dropped with the run."""
        entry = self._lookup(i)
        if entry is not None:
            return entry
        with self._locks[i]:
            entry = self._lookup(i)
            if entry is not None:
                return entry
            try:
                # the page is sent at most PHOTO_MAX_SIDE: a bigger photo is kept only that long
                run = PhotoRun(self.yolo, self.photos[i], imgsz=self.imgsz, conf=self.conf, keep_side=PHOTO_MAX_SIDE)
                run.head_trace  # noqa: B018  (computed once, under the lock)
            except InputError as e:
                raise BadRequest(str(e)) from None
            entry = (run, held_bytes(run, set(self._shared)), {})
            dropped = []
            with self._kept_lock:
                self.builds += 1
                self._kept[i] = entry
                # drop the least recently used until both limits hold; the run just built always stays
                while len(self._kept) > 1 and (len(self._kept) > self.max_runs or
                                               sum(size for _, size, _ in self._kept.values()) > self.runs_budget):
                    dropped.append(self._kept.popitem(last=False))
        if dropped:
            del dropped  # a request still reading a dropped run keeps it alive until it answers
            # A run sits in reference cycles (its modules, hooks and cached properties), so only the cyclic
            # collector frees it, whenever it next runs: the server crept up ~12 MB a build without this.
            # Then its few-MB maps, freed into glibc's heaps, go back to the OS.
            gc.collect()
            heap.trim_heap()
        return entry

    def run(self, i: int) -> PhotoRun:
        """Photo ``i``'s ``PhotoRun``: the kept one, or built now (and kept within the budget)."""
        return self._entry(i)[0]

    def _layer(self, run: PhotoRun, params) -> str:
        layer = params.get("layer")
        if layer is None:
            raise BadRequest("missing parameter 'layer'")
        if layer not in run.blocks and layer not in run.final_convs:
            raise BadRequest(f"{str(layer)[:60]!r} is not a Conv block nor one of the head's final convs; "
                             "see /api/model for the paths")
        return layer

    @staticmethod
    def _maps(run: PhotoRun, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, a)`` of a Conv block; a final head conv has no SiLU, so its logits are both."""
        if layer in run.final_convs:
            out = run.head_conv_io(layer)[1]
            return out, out
        return run.activation(layer)

    # -- answers ------------------------------------------------------------------------------------
    def photos_list(self) -> list[dict]:
        """``[{index, name}]``: the photos given on the command line."""
        return [{"index": i, "name": p.name} for i, p in enumerate(self.photos)]

    def model(self, params) -> list[dict]:
        """Every Conv block and the Detect head with this photo's real shapes (photo 0 by default).

        Returns:
            ``[{path, stage, type, in_shape, out_shape, kernel, stride, padding, groups, params}]``; for the
            head ``in_shape`` lists its three inputs, ``out_shape`` its decoded output and ``stride`` its strides.
        """
        i = self.photo_index({"photo": params.get("photo", "0")})
        run = self.run(i)
        rows = []
        for path, block in run.blocks.items():
            meta, shape = conv_meta(block), run.record.shapes[path]
            rows.append({"path": path, "stage": ".".join(path.split(".")[:2]), "type": meta["type"],
                         "in_shape": shape["input"], "out_shape": shape["output"], "kernel": meta["kernel"],
                         "stride": meta["stride"], "padding": meta["padding"], "groups": meta["groups"],
                         "params": meta["params"]})
        for path, info in run.final_convs.items():  # the logits' own convs: plain Conv2d, no BatchNorm, no SiLU
            conv, x_in, out = info["conv"], *run.head_conv_io(path)
            rows.append({"path": path, "stage": ".".join(path.split(".")[:2]), "type": "Conv2d",
                         "in_shape": list(x_in.shape), "out_shape": list(out.shape), "kernel": list(conv.kernel_size),
                         "stride": list(conv.stride), "padding": list(conv.padding), "groups": conv.groups,
                         "params": sum(p.numel() for p in conv.parameters()), "branch": info["branch"],
                         "batchnorm": False, "activation": None})
        head = run.head_path
        if head is not None:
            stage = run.record.stages[head]
            ins = [run.record.stages[f"model.{k}"]["out_shape"] for k in run.head_inputs]
            rows.append({"path": head, "stage": head, "type": stage["type"], "in_shape": ins,
                         "out_shape": stage["out_shape"][0], "kernel": None,
                         "stride": [float(s) for s in run.record.head["strides"]], "padding": None, "groups": None,
                         "params": run.counts["layers"][int(head.split(".")[1])]["params"]})
        return rows

    def stages(self, params) -> dict:
        """The forward pass, top-level layer by layer: ``{input_shape, photo_shape, stages: [{path, type, out_shape}]}``."""
        run = self.run(self.photo_index({"photo": params.get("photo", "0")}))
        return {"input_shape": list(run.x.shape), "photo_shape": list(run.shape),
                "stages": [{"path": p, **s} for p, s in run.record.stages.items()]}

    def detections(self, params) -> list[dict]:
        """detections.json's records plus ``anchor`` {scale, stride, y, x, index}, ``logits``, ``sigmoids`` and
        ``label_match``: the box against the photo's label file in words (``None`` without a label file)."""
        run = self.run(self.photo_index(params))
        check = run.label_check
        out = []
        for i, (rec, h) in enumerate(zip(run.detections, run.head_trace)):
            out.append({**rec, "anchor": {"scale": h["scale"], "stride": h["stride"], "y": h["grid_y"],
                                          "x": h["grid_x"], "index": h["anchor_index"]},
                        "logits": h["all_logits"], "sigmoids": [sigmoid(v) for v in h["all_logits"]],
                        "names": [run.names[k] for k in range(len(h["all_logits"]))],
                        "label_match": describe_match(check, i) if check else None})
        return out

    def labels(self, params) -> dict:
        """The photo's labelled damage (the YOLO label file beside it) against its detections at IoU 0.5.

        ``{"labels": [{class_id, class_name, box_xyxy, found_by, best_iou}] or None, "missed", "iou_min",
        "problem"}``: ``found_by`` is the index of the detection that found the label (``None``: missed), boxes
        in photo pixels; ``labels`` is ``None`` without a usable label file, and ``problem`` says why a file in
        ``labels/`` was not used.
        """
        run = self.run(self.photo_index(params))
        check = run.label_check
        if check is None:
            return {"labels": None, "missed": None, "iou_min": None, "problem": run.label_problem}
        return {"labels": check["labels"], "missed": check["missed"], "iou_min": check["iou_min"],
                "problem": run.label_problem}

    def featuremap(self, params) -> tuple[bytes, dict]:
        """One channel of a Conv block as a PNG of the map's own HxW, pre or post SiLU, and its scale."""
        i = self.photo_index(params)
        run = self.run(i)
        layer = self._layer(run, params)
        z, a = self._maps(run, layer)
        channel = _int(params, "channel", 0, z.shape[1])
        stage = params.get("stage", "post")
        if stage not in STAGES:
            raise BadRequest(f"stage must be 'pre' or 'post', got {str(stage)[:20]!r}")
        m = (z if stage == "pre" else a)[0, channel].double().numpy()
        png, lo, hi = diverging_png(m)
        return png, {"lo": lo, "hi": hi, "min": float(m.min()), "max": float(m.max())}

    def _neuron_at(self, params) -> tuple[PhotoRun, str, int, int, int]:
        """The run, layer, channel, y and x a request names, each checked (``ValueError``: a 400)."""
        run = self.run(self.photo_index(params))
        layer = self._layer(run, params)
        _, c, h, w = self._maps(run, layer)[0].shape
        return run, layer, _int(params, "channel", 0, c), _int(params, "y", 0, h), _int(params, "x", 0, w)

    def neuron(self, params) -> dict:
        """``cardamage trace``'s JSON for one neuron (read off the recorded pass) plus ``receptive_field_xyxy``.

        ``receptive_field_xyxy`` is in photo pixels; ``receptive_field_input_xyxy`` in model-input pixels.
        ``effect`` (``PhotoRun.effect``) costs a pass from the layer on and its backward: ``effect=0`` leaves it
        out (the page shows the arithmetic first and asks ``/api/effect`` for it next).
        """
        run, layer, channel, y, x = self._neuron_at(params)
        if layer in run.final_convs:
            return self._logit(run, layer, channel, y, x)
        if params.get("effect", "1") not in ("0", "1"):
            raise BadRequest(f"effect must be 0 or 1, got {str(params['effect'])[:20]!r}")
        t = run.neuron(layer, channel, y, x)
        hw = tuple(run.x.shape[2:])
        with self._rf_lock:
            box = receptive_field(run.model, layer, hw, y, x)
            if params.get("effect", "1") == "1":
                t["effect"] = run.effect(layer, channel, y, x)  # one more pass of the run's network: one at a time
        t["receptive_field_input_xyxy"] = list(box)
        t["receptive_field_xyxy"] = to_photo(box, hw, run.pixels.shape)
        return t

    def effect(self, params) -> dict:
        """``{"effect": ...}``: how much one Conv block neuron moves box 0's class logit (``PhotoRun.effect``),
        ``null`` without a box or for a final head conv (it is a logit itself)."""
        run, layer, channel, y, x = self._neuron_at(params)
        if layer in run.final_convs:
            return {"effect": None}
        with self._rf_lock:  # a pass of the run's network, like the receptive fields: one at a time
            return {"effect": run.effect(layer, channel, y, x)}

    def _logit(self, run: PhotoRun, layer: str, channel: int, y: int, x: int) -> dict:
        """A final head conv's output by hand (``PhotoRun.logit``), in the fields a Conv block neuron has too.

        ``kind`` is ``"logit"``; ``z_by_hand`` is the logit, ``framework_pre`` the framework's; for a class conv
        ``sigmoid_by_hand`` is the score, and ``detection`` the reported box whose anchor and class this is.
        The receptive field is that of the block before it (a 1x1 conv adds none).
        """
        t = run.logit(layer, channel, y, x, top=12)
        t.update(kind="logit", type="Conv2d", n_products=t["input_channels"], z_by_hand=t["logit"],
                 framework_pre=t["framework_logit"], abs_error_pre=t["abs_error"],
                 sigmoid_by_hand=t["sigmoid"] if t["branch"] == "class" else None, fused=False,
                 note="a plain 1x1 Conv2d with a bias: no BatchNorm to fold and no SiLU after it; "
                      + ("sigmoid(logit) is the class score" if t["branch"] == "class" else
                         "each side's 16 outputs go through a softmax; the expected bin is the side's distance"))
        t["detection"] = next((k for k, d in enumerate(run.head_trace) if d["scale"] == t["scale"] and d["grid_y"] == y
                               and d["grid_x"] == x and (t["branch"] != "class" or d["class_id"] == channel)), None)
        hw = tuple(run.x.shape[2:])
        with self._rf_lock:
            box = receptive_field(run.model, t["input_block"], hw, y, x)
        t["receptive_field_input_xyxy"] = list(box)
        t["receptive_field_xyxy"] = to_photo(box, hw, run.shape)
        return t

    def photo_png(self, params) -> bytes:
        """The photo as the page shows it (JPEG, at most ``PHOTO_MAX_SIDE``; the page maps it to photo pixels)."""
        i = self.photo_index(params)
        key = ("photo", i)
        run, _, jpegs = self._entry(i)
        if key not in jpegs:
            img = shrink(run.pixels, PHOTO_MAX_SIDE)
            jpegs[key] = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        return jpegs[key]

    def cam(self, params) -> bytes:
        """EigenCAM of the run's ``cam_layer`` over the photo (letterbox padding removed), as a JPEG overlay.

        The map is cut to the photo's part of the model input by the letterbox's own padding (``run.meta``), so
        even a photo that letterboxes to a 1-pixel row has a map; it is blended over the photo as shown (at
        most ``PHOTO_MAX_SIDE``), never at full resolution.
        """
        i = self.photo_index(params)
        key = ("cam", i)
        run, _, jpegs = self._entry(i)
        if key not in jpegs:
            cam = np.asarray(run.eigencam, dtype=np.float32)
            ih, iw = run.x.shape[2:]
            big = cv2.resize(cam, (iw, ih), interpolation=cv2.INTER_LINEAR)
            pad = run.meta["pad"]
            crop = big[pad["top"]:ih - pad["bottom"], pad["left"]:iw - pad["right"]]
            shown = shrink(run.pixels, PHOTO_MAX_SIDE)
            crop = cv2.resize(crop, (shown.shape[1], shown.shape[0]), interpolation=cv2.INTER_LINEAR)
            heat = cv2.applyColorMap((np.clip(crop, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
            over = cv2.addWeighted(shown, 0.5, heat, 0.5, 0)
            jpegs[key] = cv2.imencode(".jpg", over, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        return jpegs[key]

    def summary(self, params) -> dict:
        """What the page opens on: photo shape, input shape, cam layer, class names, detection count."""
        i = self.photo_index(params)
        run = self.run(i)
        return {"photo": self.photos_list()[i],
                "photo_shape": list(run.shape), "input_shape": list(run.x.shape),
                "cam_layer": run.cam_layer, "names": run.names, "n_detections": len(run.detections),
                "imgsz": self.imgsz, "conf": self.conf, "threads": torch.get_num_threads()}
