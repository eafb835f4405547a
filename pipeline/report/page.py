"""Write an offline HTML report that walks one photo through YOLOv8: input -> neurons -> ... -> training.

One page, ``OUT/report.html``, with its pictures in ``OUT/report_files/`` (no CDN, no script, opens
from ``file://``), in the order of the lesson::

    input       the exact model input (letterbox, x/255), its per-channel numbers
    neurons     one real neuron recomputed by hand: sum(w*x) + b -> SiLU, against the framework
    weights     raw vs BatchNorm-folded conv weights, parameter counts per layer
    biases      BatchNorm folding: where a YOLOv8 neuron's bias lives
    activations seven activation functions over the real pre-activations of a YOLOv8 layer
    hidden      feature maps (top channels by energy), pre vs post SiLU, filters
    output      class logits -> sigmoid scores, detections with score and logit, CAM
    training    gradient flow per activation, one SGD step on the traced neuron, scaling and outliers

Every number is taken from this run by the modules that own it (``preprocess``, ``inspector``,
``trace``, ``predict``, ``activations``, ``gradients``); the report only lays them out. It also writes
``OUT/report_files/report.json`` with those numbers. The page names the image and the weights (path and
sha256 prefix).

Examples:
    cardamage report --weights runs/demo/train/weights/best.pt photo.jpg --out runs/report
    cardamage report --weights yolov8n.yaml photo.jpg --out runs/report-untrained --imgsz 640

    >>> from pipeline.report.page import write_report
    >>> write_report("runs/demo/train/weights/best.pt", "photo.jpg", "runs/report")
    PosixPath('runs/report/report.html')
"""



from __future__ import annotations

import copy
import gc
import html
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core import runtime
from pipeline.core.io import (
    InputError,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    expand_sources,
    file_digest,
    read_image,
)
from pipeline.data.labels import label_boxes, label_path
from pipeline.data.preprocess import model_input, tensor_to_bgr
from pipeline.data.synth import render_scene
from pipeline.lesson import activations as acts_mod
from pipeline.lesson.gradients import activation_comparison, gradient_flow, make_batch, sgd_step
from pipeline.lesson.input_scaling import pixel_outliers, scalings
from pipeline.model.load import load_model, model_stride
from pipeline.model.predict import predict_images
from pipeline.probe.channel_stats import DEAD_EPS
from pipeline.probe.fold import conv_meta, conv_params, param_counts
from pipeline.probe.layers import conv_blocks, detect_head
from pipeline.probe.recorder import LayerRecorder
from pipeline.probe.statistics import record_statistics
from pipeline.probe.trace import REL_TOL, format_trace, trace_head, trace_neuron
from pipeline.report.plots import input as pin
from pipeline.report.plots import layers as play
from pipeline.report.plots import lesson as ples

#: Section ids, in the lesson's order (the browser test checks every one).
SECTIONS = (
    ("input", "Input and preprocessing"),
    ("neurons", "Neurons: one neuron's arithmetic"),
    ("weights", "Weights"),
    ("biases", "Biases: BatchNorm folding"),
    ("activations", "Activations"),
    ("hidden", "Hidden layers: feature maps and filters"),
    ("output", "Output: logits, sigmoid scores, detections, CAM"),
    ("training", "Training: gradients, one SGD step, scaling and outliers"),
)
FILES = "report_files"
DEFAULT_NC = 6


# --- small helpers ----------------------------------------------------------------------------


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path, "sha256")


def _weights_file(weights: str) -> Path | None:
    """The file behind a weights spec: the path itself, or the YAML Ultralytics resolves a name to."""
    p = Path(weights)
    if p.is_file():
        return p
    if weights.endswith((".yaml", ".yml")):
        import re

        from ultralytics.utils.checks import check_yaml

        # Ultralytics reads yolov8n.yaml from its yolov8.yaml with scale "n" (the same rewrite as yaml_model_load)
        unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", weights)
        found = check_yaml(unified, hard=False) or check_yaml(weights, hard=False)
        return Path(found) if found else None
    return None


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _n(x, digits: int = 4) -> str:
    """A number for the page: fixed or scientific, whichever reads better."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) < 10 ** -(digits - 1) or abs(x) >= 1e6):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def _is_number(c) -> bool:
    try:
        float(str(c).replace(",", "").rstrip("%"))
        return True
    except ValueError:
        return False


def _table(headers, rows, cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{_e(c)}</td>' if _is_number(c) else f"<td>{_e(c)}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fig(path: Path, caption: str, width: str = "100%") -> str:
    rel = f"{FILES}/{path.name}"
    return (f'<figure><img src="{_e(rel)}" alt="{_e(caption)}" style="max-width:{_e(width)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _p(text: str) -> str:
    return f"<p>{_e(text)}</p>"


def _verdict(ok: bool, text: str) -> str:
    return f'<p class="{"ok" if ok else "bad"}">{_e(text)}</p>'


def _pre(text: str) -> str:
    return f"<pre>{_e(text)}</pre>"


def _stride(input_shape, output_shape) -> int:
    return int(round(input_shape[-1] / output_shape[-1]))


# --- the batch for the gradient lesson ----------------------------------------------------------


def _gradient_batch(image_bgr, image_path, n: int, imgsz: int, seed: int, nc: int):
    """The report's photo (with its YOLO labels if a label file sits beside it) plus synthetic scenes."""

    labels = label_boxes(image_path, nc)
    samples = [(image_bgr, labels)]
    sources = [f"{Path(image_path).name} ({len(labels)} labels from {label_path(image_path)})" if labels
               else f"{Path(image_path).name} (no label file found: background only)"]
    for i in range(max(0, n - 1)):
        img, inst = render_scene(seed + 1000 + i, imgsz)
        h, w = img.shape[:2]
        boxes = []
        for d in inst:
            x0, y0, x1, y1 = (float(v) for v in d.box_xyxy())
            boxes.append((d.cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
        samples.append((img, boxes))
        sources.append(f"synthetic scene seed {seed + 1000 + i} ({len(boxes)} labels)")
    return make_batch(samples, imgsz), sources


# --- the report ---------------------------------------------------------------------------------


def write_report(
    weights,
    image,
    out_dir,
    imgsz: int = 640,
    conf: float = 0.25,
    grad_imgsz: int = 320,
    grad_batch: int = 2,
    seed: int = 0,
    layercam: bool = True,
    stats_over=None,
    stats_limit: int = 200,
    trust: bool = False,
    on_error=None,
) -> Path:
    """Run the lesson on one photo with one model and write ``out_dir/report.html``; return its path.

    Args:
        weights: a checkpoint path (``best.pt``) or a model YAML (``yolov8n.yaml``: built from scratch
            with ``seed``, 6 CarDD classes).
        image: the photo.
        out_dir: folder for ``report.html`` and ``report_files/``.
        imgsz: inference size (as ``YOLO.predict(imgsz=...)``).
        conf: score threshold for the detections shown.
        grad_imgsz, grad_batch: size and number of images of the gradient-flow batch (the photo plus
            synthetic scenes); four backward passes run on it, so it is kept small.
        seed: torch seed for a YAML build and for the activation-variant models.
        layercam: also ask Ultralytics' ``visualize=True`` for its LayerCAM heatmap.
        stats_over: photos, folders or globs: also show every layer's statistics over these photos (at most
            ``stats_limit``, kept-open stats recorder, no feature map kept) beside the one photo's.
        trust: load a weights file that safe loading refuses (``--trust-weights``).
        on_error: called with each ``--stats-over`` source or photo that could not be read (the rest count).

    Raises:
        InputError: unreadable image or weights.
    """

    runtime.return_freed_memory()  # feature maps of every size come and go: keep the heap from drifting up
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    stats_files, stats_missing = [], []
    if stats_over:  # listed once, up front: fail before the heavy work if the set names nothing
        stats_over = list(stats_over) if isinstance(stats_over, (list, tuple)) else [stats_over]
        stats_files, stats_missing = expand_sources([str(s) for s in stats_over])
        if not stats_files:
            raise stats_missing[0] if stats_missing else InputError(" ".join(map(str, stats_over)), "no photos")
    out_dir = Path(out_dir)
    files = out_dir / FILES
    image = Path(image)
    image_bgr = read_image(image)  # InputError on a bad photo, before anything is written
    files.mkdir(parents=True, exist_ok=True)
    weights_spec = str(weights)
    from_yaml = weights_spec.endswith((".yaml", ".yml"))
    if from_yaml:
        torch.manual_seed(seed)
    yolo = load_model(weights_spec, nc=DEFAULT_NC if from_yaml else None, trust=trust)
    wfile = _weights_file(weights_spec)
    model = yolo.model
    names = {int(k): str(v) for k, v in model.names.items()}
    nc = len(names)
    info = {
        "image": str(image),
        "image_sha256": sha256_of(image),
        "weights": weights_spec,
        "weights_file": str(wfile) if wfile else None,
        "weights_sha256": sha256_of(wfile) if wfile else None,
        "untrained": from_yaml,
        "imgsz": imgsz,
        "conf": conf,
        "seed": seed,
        "classes": names,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    import ultralytics

    info["versions"]["ultralytics"] = ultralytics.__version__
    numbers: dict = {"info": info}
    t = time.perf_counter()

    # 1. input ------------------------------------------------------------------------------------
    stride = model_stride(model)
    x, meta = model_input(image_bgr, imgsz=imgsz, stride=stride, auto=True)  # the photo read above, not a second decode
    meta["source"] = str(image)
    scal = scalings(x)
    outl = pixel_outliers(x, meta=meta)
    f_letterbox = pin.plot_letterbox(image_bgr, x, meta, files / "01_letterbox.png", title=image.name)
    f_hist = pin.plot_scaling_histograms(scal, files / "02_scalings.png")
    f_outl = pin.plot_outlier_mask(x, outl, files / "03_outliers.png")
    numbers["input"] = {"shape": list(x.shape), "ratio": meta.get("ratio"), "pad": meta.get("pad"),
                        "orig_shape": meta.get("orig_shape"),
                        "divide255": {k: scal["divide255"][k] for k in ("min", "max", "mean", "std")},
                        "outliers": {k: outl[k] for k in ("count", "fraction", "threshold", "bright_count", "dark_count")}}
    t = lap("input", t)

    # LayerCAM first, while the process is lean: it runs autograd through the whole network (~0.35 GB),
    # and later steps leave the heap fragmented. On a copy, because Ultralytics' predict fuses Conv+BN in
    # place and the sections below need BatchNorm's own parameters.
    # A photo over 4 megapixels is let go meanwhile and read again after (183 MB at 8000x8000, held beside
    # LayerCAM's autograd, set the report's peak); a smaller one is kept, a second decode would cost more.
    f_layercam, lc = None, None
    reread = layercam and image_bgr.size > 3 * 4_000_000
    if reread:
        del image_bgr
        gc.collect()
    if layercam:
        lc = ples.ultralytics_layercam(copy.deepcopy(yolo), tensor_to_bgr(x), files / "layercam", x, imgsz=imgsz,
                                       conf=conf)
        if lc["usable"]:
            f_layercam = files / "15_layercam.jpg"
            _copy(lc["path"], f_layercam)
        gc.collect()
    if reread:
        image_bgr = read_image(image)
    t = lap("layercam", t)

    # 2. record every Conv block (pre and post SiLU) and the head's logits -------------------------
    with LayerRecorder(yolo, mode="both", head=True) as rec:
        rec(x)
    blocks = conv_blocks(yolo)
    paths = list(blocks)
    params = conv_params(yolo)
    counts = param_counts(yolo)
    hpath, detect = detect_head(yolo)
    head_inputs = [int(i) for i in getattr(detect, "f", [])]
    t = lap("record", t)

    # 3. the traced neuron: the stem's most energetic channel, where it fires most
    stem = paths[0]
    z0, a0 = rec.activations[stem]
    ch = play.top_channels(a0, 1)[0]
    yy, xx = divmod(int(a0[0, ch].argmax()), a0.shape[-1])
    tr = trace_neuron(yolo, x, stem, ch, yy, xx)
    numbers["trace"] = {k: v for k, v in tr.items() if k not in ("patch", "weights")}
    t = lap("trace", t)

    # 4. weights and biases ------------------------------------------------------------------------
    hist_layers = [p for p in (stem, "model.4.cv2", "model.9.cv2", f"{hpath}.cv3.0.1") if p in params]
    f_params = play.plot_param_histograms(
        [{"name": p, "weight": params[p]["conv.weight"], "folded_weight": params[p]["folded.weight"],
          "beta": params[p].get("bn.bias", params[p]["folded.bias"]), "folded_bias": params[p]["folded.bias"]}
         for p in hist_layers], files / "04_param_histograms.png")
    t = lap("weights", t)

    # 5. activations: gallery over a real layer's pre-activations ------------------------------------
    act_layer = "model.2.cv1" if "model.2.cv1" in rec.activations else paths[1]
    z_real = rec.activations[act_layer][0]
    f_gallery = ples.plot_activation_gallery(z_real, act_layer, files / "05_activation_gallery.png")
    gallery = acts_mod.describe_all(z_real)
    silu_x, silu_y = acts_mod.silu_minimum()
    layer_stats = {p: rec.stats[p].summary() for p in paths if p in rec.stats}
    numbers["activations"] = {"layer": act_layer, "gallery": gallery, "silu_min": [silu_x, silu_y],
                              "layer_stats": layer_stats}
    set_stats = None
    if stats_files:  # the same statistics over many photos (before predict fuses BN into the convs)

        srec, used, errs, _ = record_statistics(model, stats_files, imgsz, progress=False, limit=stats_limit)
        for e in stats_missing + errs:
            if on_error:
                on_error(e)
        set_stats = {"images": len(used), "failed": [str(e) for e in stats_missing + errs],
                     "layer_stats": {p: srec.stats[p].summary() for p in paths if p in srec.stats}}
        numbers["activations"]["dataset"] = set_stats
    t = lap("activations", t)

    # 6. hidden layers: feature maps, pre vs post, filters -----------------------------------------
    fmap_layers = [p for p in (stem, "model.2.cv2", "model.4.cv2", "model.6.cv2", "model.9.cv2") if p in rec.activations]
    f_fmaps = []
    for i, p in enumerate(fmap_layers):
        a = rec.activations[p][1]
        s = _stride(x.shape, a.shape)
        f_fmaps.append((p, a.shape, s, play.plot_feature_maps(a, files / f"06_fmap_{i}_{p}.png", p, stride=s,
                                                              k=16 if i == 0 else 8)))
    f_prepost = play.plot_pre_post(*rec.activations[act_layer], files / "07_pre_post.png", act_layer, k=3, silu_min=silu_y)
    f_stem_filters = play.plot_stem_filters(params[stem]["folded.weight"], files / "08_stem_filters.png", stem)
    deeper = paths[1]
    f_grid = play.plot_filter_grid(params[deeper]["folded.weight"], files / "09_filters_deeper.png", deeper)
    t = lap("hidden", t)

    # 7. training: gradient flow (before predict: predict fuses BN into the convs in place) -----------
    batch, batch_sources = _gradient_batch(image_bgr, image, grad_batch, grad_imgsz, seed, nc)
    real_flow = gradient_flow(model, batch)
    comparison = activation_comparison(model.yaml, nc, batch, seed=seed)
    f_flow = ples.plot_gradient_flow(comparison, files / "10_gradient_flow.png", real=real_flow,
                                     real_label="these weights (SiLU)")
    step = sgd_step(tr["patch"], tr["weights"], tr["bias"], lr=0.01)
    f_step = ples.plot_sgd_step(step, files / "11_sgd_step.png", f"{stem} ch {ch} at (y={yy}, x={xx})")
    numbers["training"] = {"batch_sources": batch_sources, "real": real_flow, "variants": comparison,
                           "sgd_step": {k: v for k, v in step.items() if not isinstance(v, list)}}
    t = lap("training", t)

    # 8. output: logits -> sigmoid, detections, CAM ------------------------------------------------
    dets = predict_images(yolo, [image_bgr], conf=conf, imgsz=imgsz)[0]
    head = trace_head(yolo, image, imgsz=imgsz, conf=conf, pixels=image_bgr)
    f_logits = ples.plot_head_logits(rec.head["cls_logits"], rec.head["strides"], files / "12_head_logits.png",
                                     head["detections"])
    f_dets = ples.plot_detections(image_bgr, dets, files / "13_detections.png")
    cam_layer = next((f"model.{i}.cv2" for i in head_inputs if f"model.{i}.cv2" in rec.activations), paths[-1])
    cam = ples.eigencam(rec.activations[cam_layer][1])
    f_eigencam = ples.plot_cam(x, cam, files / "14_eigencam.png",
                               f"EigenCAM: 1st principal component of {cam_layer} activations")
    numbers["output"] = {"detections": dets, "head_trace": head["detections"], "cam_layer": cam_layer,
                         "layercam": lc and {"usable": lc["usable"], "heat_spread": lc["heat_spread"]}}
    t = lap("output", t)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    numbers["timings_s"] = timings

    # --- the page -----------------------------------------------------------------------------------
    body = []
    add = body.append
    add(_section_input(info, meta, scal, f_letterbox, x))
    add(_section_neurons(tr, format_trace, REL_TOL))
    add(_section_weights(counts, params, hist_layers, f_params, blocks, conv_meta))
    add(_section_biases(params, stem, tr))
    add(_section_activations(gallery, act_layer, f_gallery, silu_x, silu_y, layer_stats, set_stats))
    add(_section_hidden(f_fmaps, f_prepost, act_layer, f_stem_filters, f_grid, deeper))
    add(_section_output(dets, head, f_logits, f_dets, f_eigencam, f_layercam, lc, cam_layer, conf, names))
    add(_section_training(real_flow, comparison, batch_sources, f_flow, step, f_step, stem, ch, yy, xx,
                          f_hist, f_outl, outl, scal))
    page = _page(info, body, timings)
    atomic_write_json(files / "report.json", _jsonable(numbers))
    return atomic_write_text(out_dir / "report.html", page)


def _copy(src: Path, dst: Path) -> None:

    atomic_write_bytes(dst, Path(src).read_bytes())


def _jsonable(obj):
    """Plain JSON types; inf/nan become strings (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


# --- sections -----------------------------------------------------------------------------------


def _section(sid: str, body: str) -> str:
    title = dict(SECTIONS)[sid]
    return f'<section id="{_e(sid)}"><h2>{_e(title)}</h2>{body}</section>'


def _section_input(info, meta, scal, f_letterbox, x) -> str:
    pad = meta.get("pad", {})
    rows = [[c, _n(scal["divide255"]["min"][i]), _n(scal["divide255"]["max"][i]), _n(scal["divide255"]["mean"][i]),
             _n(scal["divide255"]["std"][i])] for i, c in enumerate(scal["channels"])]
    return _section("input", "".join([
        _p(f"The photo {Path(info['image']).name} ({meta['orig_shape'][1]}x{meta['orig_shape'][0]} pixels) is "
           f"letterboxed: resized by r = {_n(meta['ratio'])} and padded with grey 114 "
           f"(top {pad.get('top')}, bottom {pad.get('bottom')}, left {pad.get('left')}, right {pad.get('right')}), "
           f"then BGR -> RGB, HWC -> CHW and divided by 255. The network's input is the tensor "
           f"{tuple(x.shape)} (float32), equal bit for bit to what Ultralytics' predictor builds."),
        _fig(f_letterbox, "the photo and the exact model input"),
        "<h3>What the first layer sees, per channel (x/255)</h3>",
        _table(["channel", "min", "max", "mean", "std"], rows),
    ]))


def _section_neurons(tr, format_trace, rel_tol) -> str:
    patch, w = np.asarray(tr["patch"]), np.asarray(tr["weights"])
    rows = []
    for i in range(patch.shape[0]):
        for u in range(patch.shape[1]):
            for v in range(patch.shape[2]):
                rows.append([f"{'RGB'[i] if patch.shape[0] == 3 else i}", u, v, _n(patch[i, u, v]), _n(w[i, u, v]),
                             _n(patch[i, u, v] * w[i, u, v])])
    ok = tr["rel_error"] <= rel_tol
    return _section("neurons", "".join([
        _p(f"A neuron is one output channel at one position. We take {tr['layer']} channel {tr['channel']} at "
           f"(y={tr['y']}, x={tr['x']}) (the strongest channel of the first layer, where it fires most). It multiplies "
           f"its {tr['n_products']} inputs (a {tr['kernel'][0]}x{tr['kernel'][1]} window of "
           f"{tr['input_channels'][1] - tr['input_channels'][0]} channels) by its weights, adds its bias and "
           f"applies SiLU. Recomputed here in float64, step by step:"),
        _pre(format_trace(tr)),
        _verdict(ok, f"hand vs framework: |difference| = {tr['abs_error']:.3g}, relative {tr['rel_error']:.3g} "
                     f"({'within' if ok else 'ABOVE'} the {rel_tol:g} tolerance)"),
        "<details><summary>all products w*x of this neuron</summary>",
        _table(["input channel", "ky", "kx", "x (input)", "w (folded)", "w*x"], rows, "small"),
        "</details>",
        _table(["sum(w*x)", "+ bias b'", "= z", "sigmoid(z)", "SiLU(z) = z*sigmoid(z)", "framework value"],
               [[_n(tr["dot"], 6), _n(tr["bias"], 6), _n(tr["z_by_hand"], 6), _n(tr["sigmoid_by_hand"], 6),
                 _n(tr["silu_by_hand"], 6), _n(tr["framework_value"], 6)]]),
    ]))


def _section_weights(counts, params, hist_layers, f_params, blocks, conv_meta) -> str:
    rows = [[L["path"], L["type"], _n(L["params"])] for L in counts["layers"]]
    stat_rows = []
    for p in hist_layers:
        w, fw = params[p]["conv.weight"].float(), params[p]["folded.weight"].float()
        m = conv_meta(blocks[p])
        stat_rows.append([p, "x".join(map(str, w.shape)), f"{m['kernel'][0]}x{m['kernel'][1]} / {m['stride'][0]}",
                          _n(float(w.mean())), _n(float(w.std())), _n(float(fw.mean())), _n(float(fw.std())),
                          _n(float(fw.abs().max()))])
    return _section("weights", "".join([
        _p(f"This model has {counts['total']:,} parameters (the same count as Ultralytics' model.info()), "
           f"{len(blocks)} Conv blocks (conv -> BatchNorm -> SiLU). A conv weight tensor is "
           f"out_channels x in_channels x k x k: one k x k x in_channels kernel per neuron of a channel."),
        _table(["layer", "raw W shape", "kernel / stride", "raw mean", "raw std", "folded mean", "folded std",
                "folded max |w|"], stat_rows),
        _fig(f_params, "raw conv weights vs BatchNorm-folded weights (left), BN beta vs folded bias (right)"),
        "<details><summary>parameters per top-level layer</summary>",
        _table(["layer", "type", "parameters"], rows + [["total", "", _n(counts["total"])]], "small"),
        "</details>",
    ]))


def _section_biases(params, stem, tr) -> str:
    P = params[stem]
    rows = []
    if "bn.weight" in P:
        gamma, beta = P["bn.weight"].double(), P["bn.bias"].double()
        mean, var = P["bn.running_mean"].double(), P["bn.running_var"].double()
        fb = P["folded.bias"].double()
        # the per-channel factor folding applied, read off the inspector's two tensors (W' = s * W)
        raw, folded = P["conv.weight"].double().flatten(1), P["folded.weight"].double().flatten(1)
        scale = (raw * folded).sum(1) / (raw * raw).sum(1).clamp(min=1e-30)
        for c in range(min(8, len(gamma))):
            rows.append([c, _n(float(gamma[c])), _n(float(beta[c])), _n(float(mean[c])), _n(float(var[c])),
                         _n(float(scale[c])), _n(float(fb[c]))])
    u = tr.get("unfolded")
    extra = ""
    if u:
        extra = _pre(
            f"{tr['layer']} channel {tr['channel']}, unfolded route:\n"
            f"  conv = sum(W * x)                       = {u['conv_sum']:.9g}\n"
            f"  z = (conv - mean) / sqrt(var + eps) * gamma + beta\n"
            f"    = ({u['conv_sum']:.6g} - {u['running_mean']:.6g}) / sqrt({u['running_var']:.6g} + {u['eps']:g})"
            f" * {u['gamma']:.6g} + {u['beta']:.6g} = {u['z']:.9g}\n"
            f"folded route: z = sum(W' * x) + b'        = {tr['z_by_hand']:.9g}\n"
            f"difference                                = {abs(u['z'] - tr['z_by_hand']):.3g}")
    return _section("biases", "".join([
        _p("YOLOv8's convolutions have no bias of their own (bias=False): each neuron's bias lives in the "
           "BatchNorm that follows. At inference BatchNorm is a fixed affine map per channel, so it folds into "
           "the conv: W' = W * gamma / sqrt(var + eps) and b' = beta - mean * gamma / sqrt(var + eps). "
           "That folded pair (W', b') is what a neuron really computes with."),
        _table(["channel", "gamma", "beta", "running mean", "running var", "scale gamma/sqrt(var+eps)", "folded bias b'"],
               rows) if rows else _p("This checkpoint is already fused (no BatchNorm left): its conv bias is b'."),
        extra,
    ]))


def _stats_rows(layer_stats: dict) -> list[list]:
    return [[p, _n(s["mean"], 3), _n(s["std"], 3), _n(s["min"], 3), _n(s["max"], 3), f"{100 * s['frac_negative']:.1f}%",
             f"{100 * s['frac_dead']:.1f}%", _n(s["post_mean"], 3)] for p, s in layer_stats.items()]


STATS_HEADER = ["layer", "mean z", "std z", "min z", "max z", "z < 0", "|a| ~ 0 (dead)", "mean SiLU(z)"]


def _dataset_paragraph(layer_stats: dict, set_stats: dict) -> str:
    """Whole-network shares on this photo vs over the set: how typical this photo's numbers are."""

    def pooled(stats):
        n = sum(s["count"] for s in stats.values())
        return {k: sum(s[k] * s["count"] for s in stats.values()) / n for k in ("frac_negative", "frac_dead", "post_mean")}

    one, many = pooled(layer_stats), pooled(set_stats["layer_stats"])
    failed = f" ({len(set_stats['failed'])} could not be read)" if set_stats["failed"] else ""
    centred = ("above zero: SiLU's outputs are not zero-centred" if many["post_mean"] > 0.01 else
               "close to zero" if abs(many["post_mean"]) <= 0.01 else "below zero")
    return _p(f"Over {set_stats['images']} photos{failed}, pooled over every value of every Conv block: "
              f"{100 * many['frac_negative']:.1f}% of z are negative (this photo {100 * one['frac_negative']:.1f}%), so "
              f"ReLU would output exactly 0 (and pass no gradient) for that share, while "
              f"{100 * many['frac_dead']:.2f}% of SiLU outputs are ~0 (|a| < {DEAD_EPS:g}; this photo "
              f"{100 * one['frac_dead']:.2f}%). The mean SiLU output is {many['post_mean']:.3f} (this photo "
              f"{one['post_mean']:.3f}), {centred}.")


def _section_activations(gallery, layer, f_gallery, sx, sy, layer_stats, set_stats=None) -> str:
    def bound(v):
        return _n(v, 3) if math.isinf(v) else f"{v:.3f}"

    rows = [[g["name"], g["formula"], f"[{bound(g['min'])}, {bound(g['max'])}]", _n(g["f0"], 3), _n(g["max_slope"], 3),
             "yes" if g["zero_centred"] else "no", _n(g["mean_on_normal"], 3), _n(g["mean_on_layer"], 3),
             f"{100 * g['small_grad_fraction_on_layer']:.1f}%", g["note"]] for g in gallery]
    srows = _stats_rows(layer_stats)
    dataset = [] if not set_stats else [
        _dataset_paragraph(layer_stats, set_stats),
        f"<details><summary>per-layer statistics over {set_stats['images']} photos, every Conv block</summary>",
        _table(STATS_HEADER, _stats_rows(set_stats["layer_stats"]), "small"),
        "</details>",
    ]
    return _section("activations", "".join([
        _p(f"The activation bends z into the neuron's output. YOLOv8 uses SiLU(z) = z * sigmoid(z). Solving "
           f"SiLU'(z) = 0 numerically gives its minimum {sy:.6f} at z = {sx:.6f}: SiLU lets small negative values "
           f"through but never below that. Each panel draws a function over the real pre-activations z of {layer} "
           f"recorded on this photo (grey histogram)."),
        _fig(f_gallery, f"activation functions and derivatives over the pre-activations of {layer}"),
        _table(["function", "formula", "range", "f(0)", "max slope", "zero-centred", "mean f on N(0,1)",
                f"mean f on {layer}", f"|f'| < 0.01 on {layer}", "note"], rows),
        "<details><summary>per-layer statistics of z (pre-SiLU) and mean of SiLU(z), every Conv block</summary>",
        _table(STATS_HEADER, srows, "small"),
        "</details>",
        *dataset,
    ]))


def _section_hidden(f_fmaps, f_prepost, act_layer, f_stem, f_grid, deeper) -> str:
    parts = [_p("Hidden layers are stacks of feature maps: each channel is one neuron's output at every position. "
                "Early layers keep resolution (stride 2, 4) and respond to colours and edges; deeper layers trade "
                "resolution (stride 16, 32) for many more channels and larger receptive fields.")]
    for p, shape, s, f in f_fmaps:
        parts.append(_fig(f, f"{p}: output {tuple(shape)}, stride {s}, top channels by energy, shared colour scale"))
    parts.append(_fig(f_prepost, f"{act_layer}: z before SiLU and SiLU(z) after, same scale"))
    parts.append("<h3>Filters</h3>")
    parts.append(_fig(f_stem, "stem kernels as RGB patches (folded weights)", "80%"))
    parts.append(_fig(f_grid, f"{deeper} kernels as a grayscale grid", "70%"))
    return _section("hidden", "".join(parts))


def _section_output(dets, head, f_logits, f_dets, f_eigen, f_layercam, lc, cam_layer, conf, names) -> str:
    rows = [[d["index"], d["class_name"], f"{d['scale']} (stride {d['stride']:g})", f"({d['grid_y']}, {d['grid_x']})",
             _n(d["logit"], 5), _n(d["sigmoid_by_hand"], 6), _n(d["ultralytics_conf"], 6), f"{d['abs_error']:.1e}"]
            for d in head["detections"][:20]]
    drows = [[d["class_name"], _n(d["score"], 4), _n(d["logit"], 4), ", ".join(f"{v:.1f}" for v in d["box_xyxy"])]
             for d in dets[:20]]
    parts = [
        _p(f"The Detect head ends, per scale, in a 1x1 conv whose {len(names)} outputs per anchor are class logits "
           f"({', '.join(names.values())}). YOLOv8 has no objectness and no softmax: each class score is "
           f"sigmoid(logit), and non-maximum suppression keeps the boxes whose best score passes conf = {conf:g}."),
        _fig(f_logits, "class logits per scale and the sigmoid that turns them into scores"),
    ]
    if rows:
        parts.append(_table(["box", "class", "scale", "grid cell (y, x)", "logit", "sigmoid(logit) by hand",
                             "Ultralytics conf", "|diff|"], rows))
    else:
        parts.append(_p(f"No box passes conf = {conf:g} on this photo with these weights (an untrained model's "
                        f"class logits start very negative: sigmoid of them is near 0)."))
    parts.append(_fig(f_dets, "detections: class, sigmoid score and logit", "75%"))
    if drows:
        parts.append(_table(["class", "score", "logit", "box x0, y0, x1, y1 (pixels)"], drows))
    parts.append("<h3>Where the model looks (CAM)</h3>")
    if f_layercam is not None:
        parts.append(_fig(f_layercam, "Ultralytics' own LayerCAM (predict visualize=True): where the evidence for the "
                                      "predicted classes sits", "60%"))
    elif lc is not None:
        parts.append(_p(f"Ultralytics' own LayerCAM (predict visualize=True) came back flat for this model (heat "
                        f"spread {lc['heat_spread']:.1f} of 255: nothing to explain), so only the EigenCAM below is shown."))
    parts.append(_p(f"EigenCAM needs no gradient: it projects every position's {cam_layer} activation vector on the "
                    "direction in which positions differ most (the first principal component) and shows where that "
                    "component is large."))
    parts.append(_fig(f_eigen, f"EigenCAM from the recorded activations of {cam_layer}", "60%"))
    return _section("output", "".join(parts))


def _section_training(real, comp, sources, f_flow, step, f_step, stem, ch, yy, xx, f_hist, f_outl, outl, scal) -> str:
    first, last = real["layers"][0], real["layers"][-1]
    rows = []
    silu0 = comp["silu"]["mean_abs_grad"][0] if "silu" in comp else None
    for name, fl in [("these weights (SiLU)", real)] + [(f"fresh init, {k}", v) for k, v in comp.items()]:
        g = fl["mean_abs_grad"]
        rows.append([name, _n(fl["loss"]), ", ".join(f"{n} {_n(v)}" for n, v in zip(fl["loss_names"], fl["loss_items"])),
                     _n(g[0]), _n(float(np.mean(g))), _n(g[-1]),
                     _n(g[0] / silu0, 3) if silu0 and name.startswith("fresh") else ""])
    s = step
    arithmetic = (
        f"neuron {stem} channel {ch} at (y={yy}, x={xx}), its real input patch x and folded weights w, b\n"
        f"forward : z = sum(w*x) + b = {s['z']:.6f};  a = SiLU(z) = {s['a']:.6f}\n"
        f"target  : t = a + 1 = {s['target']:.6f}  (we ask the neuron to fire one unit more)\n"
        f"loss    : L = 0.5 (a - t)^2 = {s['loss']:.6f}\n"
        f"backward: dL/da = a - t = {s['dL_da']:.6f};  da/dz = SiLU'(z) = {s['da_dz']:.6f}\n"
        f"          dL/dz = {s['dL_dz']:.6f};  dL/dw = dL/dz * x  (one number per weight);  dL/db = {s['dL_db']:.6f}\n"
        f"update  : w <- w - lr * dL/dw,  b <- b - lr * dL/db,  lr = {s['lr']:g}\n"
        f"after   : z = {s['z_new']:.6f};  a = {s['a_new']:.6f};  L = {s['loss_new']:.6f}  "
        f"({'dropped' if s['loss_new'] < s['loss'] else 'did NOT drop'} by {s['loss'] - s['loss_new']:.6f})\n"
        f"autograd: max |hand - autograd| over dL/dw and dL/db = {s['max_abs_grad_diff']:.2e}")
    orows = [[c, _n(scal["zscore"]["mean_used"][i]), _n(scal["zscore"]["std_used"][i]),
              f"{100 * scal['zscore']['frac_abs_z_gt_3'][i]:.2f}%"] for i, c in enumerate(scal["channels"])]
    return _section("training", "".join([
        _p(f"Training moves every weight against the gradient of the loss. One backward pass of YOLOv8's own "
           f"detection loss (Ultralytics' v8DetectionLoss: box + class + DFL) in float32, no AMP, on a batch of "
           f"{real['batch_size']} images at {real['imgsz']}px ({real['num_labels']} labelled boxes; smaller than "
           f"inference to keep the report fast): "
           + "; ".join(sources) + ". Then the same architecture, built with the same seed (same initial weights), "
           "with SiLU swapped for sigmoid, tanh and ReLU, on the same batch."),
        _fig(f_flow, "mean |dL/dW| per conv layer, stem to head, log scale"),
        _table(["model", "loss", "loss terms", f"stem {first}", "mean over layers", f"last {last}",
                "stem vs fresh SiLU"], rows),
        _p("Reading it: sigmoid's derivative is at most 0.25, so each layer on the way back multiplies the "
           "gradient by a small factor and the stem receives far less than with SiLU (the vanishing gradient). "
           "A box-branch layer with no gradient (a gap) is a scale where no target was assigned."),
        "<h3>Backprop made concrete: one SGD step on the traced neuron</h3>",
        _pre(arithmetic),
        _fig(f_step, "one SGD step: input, kernel, gradient, updated kernel, and the loss before and after"),
        "<h3>Input scaling and outliers</h3>",
        _p("YOLOv8 scales pixels by x/255 only. Min-max and z-score scaling are affine per channel: they move and "
           "stretch the histogram without changing its shape. Pixels with |z| > 3 are outliers (glare, deep "
           f"shadow, padding): {outl['count']:,} of {outl['pixels']:,} here ({100 * outl['fraction']:.2f}%; "
           f"{outl['bright_count']:,} bright, {outl['dark_count']:,} dark)."),
        _fig(f_hist, "three scalings of the same pixels"),
        _table(["channel", "mean used for z", "std used for z", "|z| > 3"], orows),
        _fig(f_outl, "pixels with |z| > 3", "70%"),
    ]))


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa;line-height:1.45}
header{background:#16324f;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px 0;font-size:1.5em}
header p{margin:2px 0;font-size:.9em;color:#d6e2ee}
header code{color:#fff}
nav{position:sticky;top:0;background:#24496f;padding:6px 28px;z-index:1}
nav a{color:#fff;margin-right:14px;text-decoration:none;font-size:.9em}
main{max-width:1150px;margin:0 auto;padding:10px 24px 40px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:6px 22px 16px;margin:18px 0;scroll-margin-top:44px}
h2{border-bottom:2px solid #16324f;padding-bottom:4px}
figure{margin:12px 0;text-align:center}
figure img{border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
table{border-collapse:collapse;margin:10px 0;font-size:.85em}
th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef2f6}
td.n{text-align:right;font-variant-numeric:tabular-nums}
table.small{font-size:.75em}
pre{background:#f3f5f7;border:1px solid #e1e4e8;padding:10px;overflow-x:auto;font-size:.8em}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
details{margin:8px 0}
footer{font-size:.8em;color:#666;text-align:center;padding:10px}
"""


def _page(info, body, timings) -> str:
    nav = "".join(f'<a href="#{_e(sid)}">{_e(title.split(":")[0])}</a>' for sid, title in SECTIONS)
    wsha = info["weights_sha256"][:12] if info["weights_sha256"] else "n/a"
    kind = (f"untrained: built from {info['weights']} with seed {info['seed']} (random weights)" if info["untrained"]
            else "trained checkpoint")
    t = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e('YOLOv8 inside: ' + Path(info['image']).name)}</title><style>{CSS}</style></head><body>",
        "<header><h1>YOLOv8, from pixels to detections, with this run's numbers</h1>",
        f"<p>image: <code>{_e(info['image'])}</code> (sha256 {_e(info['image_sha256'][:12])})</p>",
        f"<p>weights: <code>{_e(info['weights'])}</code> (sha256 {_e(wsha)}; {_e(kind)})</p>",
        f"<p>inference size {_e(info['imgsz'])}, conf {_e(info['conf'])}; ultralytics {_e(info['versions']['ultralytics'])}, "
        f"torch {_e(info['versions']['torch'])}</p></header>",
        f"<nav>{nav}</nav><main>",
        *body,
        "</main>",
        f"<footer>{_e('computed in this run: ' + t)}</footer>",
        "</body></html>\n",
    ])
