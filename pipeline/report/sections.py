"""The report's sections, each a small function of a ``PhotoRun``: its figures, its template values, its numbers.

Every section reads what it needs from the run (computed once, or on request for the gradient passes) and
draws its own figures into ``files``; none depends on another having run first. A section returns a
``Section``: its id and title, the values its template ``templates/sections/<id>.html`` prints, and the
``report.json`` entries it owns.

Examples:
    >>> from pipeline.analysis.run import PhotoRun
    >>> from pipeline.report.sections import BUILDERS, Options
    >>> run = PhotoRun(yolo, "photo.jpg", imgsz=640)
    >>> s = BUILDERS["neurons"](run, Path("out/report_files"), Options())
    >>> s.numbers["trace"]["z_by_hand"]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.io import InputError, atomic_write_bytes
from pipeline.data.labels import label_path
from pipeline.model.detections import describe_match
from pipeline.probe.channel_stats import DEAD_EPS
from pipeline.probe.fold import conv_meta
from pipeline.probe.trace import REL_TOL, format_trace
from pipeline.lesson.gradients import step_direction
from pipeline.report.plots import input as pin
from pipeline.report.plots import layers as play
from pipeline.report.plots import lesson as ples
from pipeline.report.render import num
from pipeline.analysis.effect import noise_floor
from pipeline.analysis.run import PhotoRun

#: Section ids and titles, in the lesson's order (the browser test checks every one).
TITLES = (
    ("map", "Map: one detection, pixel to score"),
    ("input", "Input: preprocessing, scaling and outliers"),
    ("neurons", "Neurons: one neuron's arithmetic"),
    ("weights", "Weights"),
    ("biases", "Biases: BatchNorm folding"),
    ("activations", "Activations"),
    ("hidden", "Hidden layers: feature maps and filters"),
    ("output", "Output: logits, sigmoid scores, detections, CAM"),
    ("training", "Training: gradient flow and one SGD step"),
)
STATS_HEADER = ["layer", "mean z", "std z", "min z", "max z", "z < 0 (ReLU would pass 0)", "|SiLU(z)| ~ 0",
                "mean SiLU(z)"]


@dataclass
class Options:
    """What the command line adds to the run: the gradient batch, LayerCAM, the ``--stats-over`` photos."""

    grad_imgsz: int = 320
    grad_batch: int = 2
    seed: int = 0
    layercam: bool = True
    stats_files: list = field(default_factory=list)
    stats_missing: list = field(default_factory=list)  # sources that named no photo: reported, not fatal
    stats_limit: int = 200
    atlas: object = None  # an analysis.atlas_format.AtlasIndex (``--atlas``): the neuron's channel shows its top crops


@dataclass
class Section:
    """One rendered-to-be section: template values, its ``report.json`` entries, photos it could not read."""

    id: str
    context: dict
    numbers: dict = field(default_factory=dict)
    errors: list[InputError] = field(default_factory=list)
    heading: str | None = None  # a title that fits this photo better than the lesson's default

    @property
    def title(self) -> str:
        return self.heading or dict(TITLES)[self.id]


def _weights_layers(run: PhotoRun) -> list[str]:
    """The layers whose weights the page shows: stem, two backbone blocks and one head classifier conv."""
    return [p for p in (run.paths[0], "model.4.cv2", "model.9.cv2", f"{run.head_path}.cv3.0.1") if p in run.params]


def _activation_layer(run: PhotoRun) -> str:
    """The real layer whose pre-activations the activation lesson draws over."""
    return "model.2.cv1" if "model.2.cv1" in run.record.activations else run.paths[1]


def _stride(input_shape, output_shape) -> int:
    return int(round(input_shape[-1] / output_shape[-1]))


def _stage_rows(run: PhotoRun) -> list[dict]:
    """The forward map as the page lists it: each stage with its part (backbone, neck, head) and its section."""
    detect = int(run.head_path.split(".")[1]) if run.head_path else len(run.forward_map)
    sppf = next((int(r["path"].split(".")[1]) for r in run.forward_map if r["type"] == "SPPF"), detect - 1)
    rows = []
    for r in run.forward_map:
        i = int(r["path"].split(".")[1]) if r["path"] != "input" else -1
        part, link = (("input", "input") if i < 0 else ("backbone", "hidden") if i <= sppf else
                      ("neck", "hidden") if i < detect else ("head", "output"))
        shape = r["out_shape"]
        if part == "head":  # Detect: the decoded output; its branches are listed as the next stages
            shape = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], list) else shape
        feeds = f" (scale {run.head_inputs.index(i)})" if i in run.head_inputs else ""
        rows.append({"path": r["path"], "type": r["type"], "part": part, "link": link,
                     "shape": "x".join(map(str, shape)) if shape and isinstance(shape[0], int) else str(shape),
                     "feeds": feeds})
    return rows


def _neuron_numbers(run: PhotoRun) -> dict:
    """report.json's ``neuron``: the worked neuron, its z, receptive field in photo pixels, its detection."""
    f = run.focus_info
    out = {k: f[k] for k in ("layer", "channel", "y", "x", "z", "silu_slope", "inside_box", "detection_index",
                             "chosen_by", "measured", "chosen_on", "receptive_field_input", "receptive_field_xyxy", "rf_centre_in_box",
                             "rf_inside_box", "top_channels")}
    out["effect"] = f["effect"] and {k: v for k, v in f["effect"].items() if k != "words"}
    return out


def _logit_rows(lt: dict) -> list[list]:
    """The followed logit's largest terms w_c * x_c, as the page lists them."""
    return [[t["channel"], num(t["w"], 6), num(t["x"], 6), num(t["product"], 6)] for t in lt["top_terms"]]


def _logit_text(run: PhotoRun, lt: dict) -> str:
    """The followed box's score from the head's last conv, step by step (the map and output sections show it)."""
    d = lt["dfl"]
    top = ", ".join(f"ch {t['channel']}: {t['w']:.6g} * {t['x']:.6g} = {t['product']:+.6g}" for t in lt["top_terms"][:3])
    others = lt["n_classes"] - 1
    choice = ("the largest of its anchor's " + str(lt["n_classes"]) + " class logits" if lt["is_max_logit"]
              else f"{lt['class_rank']} of the other {others} class logit{'s' * (others != 1)} at this anchor are larger")
    soft = ", ".join(f"{p:.3f}" for p in d["softmax"])
    return (
        f"{lt['layer']}: a 1x1 conv with a bias, no BatchNorm and no SiLU, reading the {lt['input_channels']} channels of "
        f"{lt['input_block']} (after its SiLU) at cell (y={lt['y']}, x={lt['x']})\n"
        f"  logit = sum over {lt['input_channels']} channels of w_c * x_c + b\n"
        f"        = {lt['dot']:.9g} + ({lt['bias']:.9g}) = {lt['logit']:.9g}   (largest terms: {top})\n"
        f"  the framework's logit (float32): {lt['framework_logit']:.9g}   |difference| {lt['abs_error']:.2g}\n"
        f"  score = sigmoid(logit) = 1 / (1 + exp(-logit)) = {lt['sigmoid']:.7g}   (reported: {lt['score']:.7g})\n"
        f"  NMS: {lt['class_name']} is {choice} (NMS scores an anchor by its best class); the score passes conf "
        f"{lt['conf']:g} and is the highest of every anchor's, so no box can suppress it: box 0\n"
        f"box side '{d['side_name']}' from {d['layer']} (same cell): {len(d['logits'])} DFL logits, each w . x + b over "
        f"the same kind of input (largest |hand - framework| {d['max_abs_error']:.2g})\n"
        f"  logits  = {', '.join(f'{v:.4f}' for v in d['logits'])}\n"
        f"  softmax = {soft}\n"
        f"  distance = sum(p_i * i) = {d['distance_cells']:.6g} cells = {d['distance_px']:.6g} px\n"
        f"  edge x0 = anchor centre {d['anchor_centre']:g} - {d['distance_px']:.6g} = {d['edge']:.6g} input px "
        f"(the box's x0 before clipping: {lt['box_edge_input']:.6g})")


# --- sections -----------------------------------------------------------------------------------


def map_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """The whole forward pass at a glance, with this run's shapes, down to the top box's anchor and score."""
    head = run.record.head
    grids = [list(t.shape[2:]) for t in head["cls_logits"]]
    anchors = sum(h * w for h, w in grids)
    ta = run.top_anchor
    dfl_rows, cls_rows = [], []
    if ta:
        sides = ("left", "top", "right", "bottom")
        dfl_rows = [[sides[k]] + [f"{p:.3f}" for p in ta["dfl_softmax"][k]] +
                    [num(ta["distances"][k], 3), num(ta["distances"][k] * ta["stride"], 2)] for k in range(4)]
        cls_rows = [[run.names.get(c, str(c)) + (" (reported)" if c == ta["class_id"] else ""),
                     num(ta["class_logits"][c], 4), num(ta["class_sigmoid"][c], 4), num(ta["class_softmax"][c], 4)]
                    for c in range(len(ta["class_logits"]))]
    lt = run.logit_trace
    numbers = {"forward_map": run.forward_map, "neuron": _neuron_numbers(run), "top_anchor": ta, "logit_trace": lt}
    ctx = {"stages": _stage_rows(run), "grids": grids, "strides": head["strides"], "anchors": anchors,
           "nc": len(run.names), "reg_max": head.get("reg_max", 16), "ta": ta, "dfl_rows": dfl_rows,
           "cls_rows": cls_rows, "n_dets": len(run.detections), "neuron": run.focus_info,
           "top": run.detections[0] if run.detections else None, "conf": run.conf,
           "top_check": describe_match(run.label_check, 0) if run.label_check and run.detections else None,
           "lt": lt, "logit_text": lt and _logit_text(run, lt), "logit_rows": lt and _logit_rows(lt)}
    heading = None if run.detections else "Map: the forward pass, pixel to logits (no box on this photo)"
    return Section("map", ctx, numbers, heading=heading)




def _scaling_rows(run: PhotoRun) -> tuple[list[list], list[float]]:
    """Per channel: x/255's range, how far min-max moves it, z-score's mean/std and the largest |z| reachable."""
    x = run.x[0].double().flatten(1)
    lo, hi = x.min(1).values, x.max(1).values
    moved = ((x - lo[:, None]) / (hi - lo).clamp(min=1e-12)[:, None] - x).abs().max(1).values
    z = run.scalings["zscore"]
    rows, bounds = [], []
    for i, c in enumerate(run.scalings["channels"]):
        m, sd = z["mean_used"][i], z["std_used"][i]
        bound = max(m, 1 - m) / sd if sd > 0 else float("inf")
        bounds.append(bound)
        rows.append([c, num(float(lo[i])), num(float(hi[i])), num(float(moved[i])), num(m), num(sd), num(bound, 3),
                     f"{100 * z['frac_abs_z_gt_3'][i]:.2f}%"])
    return rows, bounds


def input_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """The letterbox and the exact model input, its per-channel numbers, the three scalings and the outliers."""
    name = run.source.name if run.source else "photo"
    d = run.scalings["divide255"]
    rows = [[c, num(d["min"][i]), num(d["max"][i]), num(d["mean"][i]), num(d["std"][i])]
            for i, c in enumerate(run.scalings["channels"])]
    fig = pin.plot_letterbox(run.pixels, run.x, run.meta, files / "01_letterbox.png", title=name)
    m, o = run.meta, run.outliers
    srows, bounds = _scaling_rows(run)
    f_hist = pin.plot_scaling_histograms(run.scalings, files / "02_scalings.png")
    content = o["count"] - o.get("in_padding", 0)
    f_outl = pin.plot_outlier_mask(run.x, o, files / "03_outliers.png") if content else None
    numbers = {"shape": list(run.x.shape), "ratio": m.get("ratio"), "pad": m.get("pad"), "orig_shape": m.get("orig_shape"),
               "divide255": {k: d[k] for k in ("min", "max", "mean", "std")}, "max_abs_z_possible": bounds,
               "outliers": {k: o[k] for k in ("count", "fraction", "threshold", "bright_count", "dark_count")} |
               {"in_padding": o.get("in_padding", 0), "in_photo": content}}
    return Section("input", {"name": name, "meta": m, "pad": m.get("pad", {}), "ratio": num(m["ratio"]),
                             "shape": tuple(run.x.shape), "rows": rows, "figure": fig, "srows": srows,
                             "bound": max(bounds), "f_hist": f_hist, "f_outl": f_outl, "outl": o, "content": content},
                   {"input": numbers})


def neurons_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """One real neuron on the top box's path, recomputed by hand: sum(w*x) + b -> SiLU, against the framework."""
    tr, f = run.traced, run.focus_info
    top = run.detections[0] if run.detections else None
    fig = ples.plot_neuron_on_photo(run.pixels, top and top["box_xyxy"], f["receptive_field_xyxy"],
                                    files / "00_neuron.jpg", shape=run.shape)
    patch, w = np.asarray(tr["patch"]), np.asarray(tr["weights"])
    rows = [[f"{'RGB'[i] if patch.shape[0] == 3 else i}", u, v, num(patch[i, u, v]), num(w[i, u, v]),
             num(patch[i, u, v] * w[i, u, v])]
            for i in range(patch.shape[0]) for u in range(patch.shape[1]) for v in range(patch.shape[2])]
    summary = [[num(tr[k], 6) for k in ("dot", "bias", "z_by_hand", "sigmoid_by_hand", "silu_by_hand", "framework_value")]]
    numbers = {k: v for k, v in tr.items() if k not in ("patch", "weights")}
    ch_rows = [[r["channel"], num(r["act"], 6), num(r["grad_x_act"], 6), num(-r["grad_x_act"], 6), num(r["zeroed_delta"], 6)]
               for r in f["top_channels"]]
    atlas = atlas_link(opts.atlas, tr["layer"], tr["channel"], files)
    return Section("neurons", {"tr": tr, "trace_text": format_trace(tr), "ok": tr["rel_error"] <= REL_TOL,
                               "rel_tol": REL_TOL, "rows": rows, "summary": summary, "f": f, "top": top,
                               "figure": fig, "effect": f["effect"], "ch_rows": ch_rows,
                               "lt": run.logit_trace, "atlas": atlas,
                               "noise": noise_floor(f["effect"]["logit"]) if f.get("effect") else None},
                   {"trace": numbers, **({"atlas": atlas} if atlas else {})})


def atlas_link(atlas, layer: str, channel: int, files: Path) -> dict | None:
    """The worked neuron's channel in the atlas (``--atlas``): its strip copied beside the figures, its numbers,
    links (relative to report.html) to its entry and to the atlas's lesson; ``None`` without an atlas.

    Examples:
        >>> atlas_link(AtlasIndex("runs/atlas"), "model.4.cv1", 7, Path("runs/report/report_files"))["best_class"]
    """
    if atlas is None:
        return None
    index = os.path.relpath(atlas.root / "index.html", files.parent)
    entry = atlas.entry(layer, channel)
    if entry is None:  # an atlas built with --layers that leave this block out
        return {"layer": layer, "channel": channel, "missing": True, "index_href": index}
    strip = None
    if entry.get("crops") and (atlas.root / entry["crops"]).is_file():
        # a str, not a Path: the link goes into report.json too
        strip = str(atomic_write_bytes(files / "00_neuron_atlas.jpg", (atlas.root / entry["crops"]).read_bytes()))
    page, _, anchor = entry["page"].partition("#")
    return {"layer": layer, "channel": channel, "missing": False, "strip": strip, "best_class": entry["best_class"],
            "best_iou": entry["best_iou"], "activity": entry["activity"], "active_fraction": entry["active_fraction"],
            "top": [{"value": t["value"], "photo": n} for t, n in zip(entry["top"], entry["photo_names"])],
            "photos": len(atlas.doc["photos"]), "href": os.path.relpath(atlas.root / page, files.parent) + "#" + anchor,
            "index_href": index}


def weights_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """Raw vs BatchNorm-folded conv weights and the parameter count per layer."""
    layers, params = _weights_layers(run), run.params
    stat_rows = []
    for p in layers:
        w, fw = params[p]["conv.weight"].float(), params[p]["folded.weight"].float()
        m = conv_meta(run.blocks[p])
        stat_rows.append([p, "x".join(map(str, w.shape)), f"{m['kernel'][0]}x{m['kernel'][1]} / {m['stride'][0]}",
                          num(float(w.mean())), num(float(w.std())), num(float(fw.mean())), num(float(fw.std())),
                          num(float(fw.abs().max()))])
    fig = play.plot_param_histograms(
        [{"name": p, "weight": params[p]["conv.weight"], "folded_weight": params[p]["folded.weight"],
          "beta": params[p].get("bn.bias", params[p]["folded.bias"]), "folded_bias": params[p]["folded.bias"]}
         for p in layers], files / "04_param_histograms.png")
    counts = run.counts
    rows = [[L["path"], L["type"], num(L["params"])] for L in counts["layers"]] + [["total", "", num(counts["total"])]]
    return Section("weights", {"total": counts["total"], "n_blocks": len(run.blocks), "stat_rows": stat_rows,
                               "figure": fig, "rows": rows})


def biases_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """Where a YOLOv8 neuron's bias lives: BatchNorm, folded into the conv."""
    P = run.params[run.paths[0]]
    rows = []
    if "bn.weight" in P:
        gamma, beta = P["bn.weight"].double(), P["bn.bias"].double()
        mean, var = P["bn.running_mean"].double(), P["bn.running_var"].double()
        fb = P["folded.bias"].double()
        # the per-channel factor folding applied, read off the two weight tensors (W' = s * W)
        raw, folded = P["conv.weight"].double().flatten(1), P["folded.weight"].double().flatten(1)
        scale = (raw * folded).sum(1) / (raw * raw).sum(1).clamp(min=1e-30)
        rows = [[c, num(float(gamma[c])), num(float(beta[c])), num(float(mean[c])), num(float(var[c])),
                 num(float(scale[c])), num(float(fb[c]))] for c in range(min(8, len(gamma)))]
    tr = run.traced
    u = tr.get("unfolded")
    unfolded = None
    if u:
        unfolded = (
            f"{tr['layer']} channel {tr['channel']}, unfolded route:\n"
            f"  conv = sum(W * x)                       = {u['conv_sum']:.9g}\n"
            f"  z = (conv - mean) / sqrt(var + eps) * gamma + beta\n"
            f"    = ({u['conv_sum']:.6g} - {u['running_mean']:.6g}) / sqrt({u['running_var']:.6g} + {u['eps']:g})"
            f" * {u['gamma']:.6g} + {u['beta']:.6g} = {u['z']:.9g}\n"
            f"folded route: z = sum(W' * x) + b'        = {tr['z_by_hand']:.9g}\n"
            f"difference                                = {abs(u['z'] - tr['z_by_hand']):.3g}")
    return Section("biases", {"rows": rows, "unfolded": unfolded, "layer": run.paths[0]})


def _stats_rows(layer_stats: dict) -> list[list]:
    return [[p, num(s["mean"], 3), num(s["std"], 3), num(s["min"], 3), num(s["max"], 3), f"{100 * s['frac_negative']:.1f}%",
             f"{100 * s['frac_dead']:.1f}%", num(s["post_mean"], 3)] for p, s in layer_stats.items()]


def _pooled(stats: dict) -> dict:
    """Shares over every value of every Conv block (each layer weighted by its number of values)."""
    n = sum(s["count"] for s in stats.values())
    return {k: sum(s[k] * s["count"] for s in stats.values()) / n for k in ("frac_negative", "frac_dead", "post_mean")}


def _dataset(run: PhotoRun, opts: Options) -> tuple[dict | None, list[InputError]]:
    """``--stats-over``: the per-layer statistics over other photos, and the photos that could not be read."""
    if not opts.stats_files:
        return None, []
    stats, used, errors = run.dataset_stats(opts.stats_files, opts.stats_limit)
    failed = list(opts.stats_missing) + list(errors)
    return {"images": len(used), "failed": [str(e) for e in failed], "layer_stats": stats}, failed


def activations_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """Seven activation functions over a real layer's pre-activations; per-layer statistics (and over a set)."""
    layer = _activation_layer(run)
    gallery = run.gallery(layer)
    sx, sy = run.silu_minimum
    fig = ples.plot_activation_gallery(run.activation(layer)[0], layer, files / "05_activation_gallery.png",
                                       silu_min=(sx, sy), layer_means={g["name"]: g["mean_on_layer"] for g in gallery})

    def bound(v):
        return num(v, 3) if math.isinf(v) else f"{v:.3f}"

    rows = [[g["name"], g["formula"], f"[{bound(g['min'])}, {bound(g['max'])}]", num(g["f0"], 3), num(g["max_slope"], 3),
             "yes" if g["zero_centred"] else "no",
             f"{num(g['mean_on_normal'], 4)} (exact {num(g['mean_on_normal_exact'], 4)})", num(g["mean_on_layer"], 3),
             f"{100 * g['small_grad_fraction_on_layer']:.1f}%", g["note"]] for g in gallery]
    dataset, errors = _dataset(run, opts)
    numbers = {"layer": layer, "gallery": gallery, "silu_min": [sx, sy], "layer_stats": run.layer_stats}
    ctx = {"layer": layer, "sx": sx, "sy": sy, "figure": fig, "rows": rows, "stats_header": STATS_HEADER,
           "normal_n": f"{gallery[0]['normal_samples']:,}",
           "stats_rows": _stats_rows(run.layer_stats), "dataset": None}
    if dataset:
        numbers["dataset"] = dataset
        many = _pooled(dataset["layer_stats"])
        ctx["dataset"] = {"images": dataset["images"], "n_failed": len(dataset["failed"]), "one": _pooled(run.layer_stats),
                          "many": many, "dead_eps": DEAD_EPS, "rows": _stats_rows(dataset["layer_stats"]),
                          "centred": ("above zero: SiLU's outputs are not zero-centred" if many["post_mean"] > 0.01 else
                                      "close to zero" if abs(many["post_mean"]) <= 0.01 else "below zero")}
    return Section("activations", ctx, {"activations": numbers}, errors)


def hidden_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """Feature maps by stride, z before and after SiLU, the filters themselves."""
    stem = run.paths[0]
    layers = [p for p in (stem, "model.2.cv2", "model.4.cv2", "model.6.cv2", "model.9.cv2") if p in run.record.activations]
    fmaps = []
    for i, p in enumerate(layers):
        a = run.activation(p)[1]
        s = _stride(run.x.shape, a.shape)
        fmaps.append((p, tuple(a.shape), s, play.plot_feature_maps(a, files / f"06_fmap_{i}_{p}.png", p, stride=s,
                                                                   k=16 if i == 0 else 8)))
    act_layer = _activation_layer(run)
    prepost = play.plot_pre_post(*run.activation(act_layer), files / "07_pre_post.png", act_layer, k=3,
                                 silu_min=run.silu_minimum[1])
    deeper = run.paths[1]
    stem_fig = play.plot_stem_filters(run.params[stem]["folded.weight"], files / "08_stem_filters.png", stem)
    grid = play.plot_filter_grid(run.params[deeper]["folded.weight"], files / "09_filters_deeper.png", deeper)
    return Section("hidden", {"fmaps": fmaps, "act_layer": act_layer, "prepost": prepost, "stem_fig": stem_fig,
                              "grid": grid, "deeper": deeper})


def output_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """Class logits -> sigmoid scores, the detections with their logits, where the model looks (CAM)."""
    head, dets = run.head_trace, run.detections
    rows = [[d["index"], d["class_name"], f"{d['scale']} (stride {d['stride']:g})", f"({d['grid_y']}, {d['grid_x']})",
             num(d["logit"], 5), num(d["sigmoid_by_hand"], 6), num(d["ultralytics_conf"], 6), f"{d['abs_error']:.1e}"]
            for d in head[:20]]
    check = run.label_check
    drows = [[d["class_name"], num(d["score"], 4), num(d["logit"], 4), ", ".join(f"{v:.1f}" for v in d["box_xyxy"])]
             + ([describe_match(check, i)] if check else []) for i, d in enumerate(dets[:20])]
    missed = [[g["class_name"], ", ".join(f"{v:.1f}" for v in g["box_xyxy"]), f"{g['best_iou']:.3f}"]
              for g in check["labels"] if g["found_by"] is None] if check else []
    f_logits = ples.plot_head_logits(run.record.head["cls_logits"], run.record.head["strides"],
                                     files / "12_head_logits.png", head)
    f_dets = ples.plot_detections(run.pixels, dets, files / "13_detections.png", labels=run.labels,
                                  verdicts=[v["verdict"] for v in check["detections"]] if check else None,
                                  shape=run.shape)
    f_eigen = ples.plot_cam(run.x, run.eigencam, files / "14_eigencam.png",
                            f"EigenCAM: 1st principal component of {run.cam_layer} activations")
    lc, f_layercam = None, None
    if opts.layercam:
        lc = run.layercam(files / "layercam")
        if lc["usable"]:
            f_layercam = atomic_write_bytes(files / "15_layercam.jpg", Path(lc["path"]).read_bytes())
    numbers = {"detections": [dict(d, logits=lg) for d, lg in zip(dets, run.detection_logits)], "head_trace": head, "cam_layer": run.cam_layer,
               "layercam": lc and {k: lc[k] for k in ("usable", "heat_spread", "candidates", "explained", "topk")}, "labels": check,
               "label_problem": run.label_problem}
    return Section("output", {"conf": run.conf, "names": run.names, "rows": rows, "drows": drows, "n_dets": len(dets), "f_logits": f_logits,
                              "f_dets": f_dets, "f_eigen": f_eigen, "f_layercam": f_layercam, "lc": lc,
                              "cam_layer": run.cam_layer, "best_score": _best_score(run), "check": check,
                              "no_box": None if dets else _no_box(run),
                              "label_file": run.source and label_path(run.source), "missed": missed,
                              "label_problem": run.label_problem, "lt": run.logit_trace,
                              "logit_rows": run.logit_trace and _logit_rows(run.logit_trace)},
                   {"output": numbers})


def _no_box(run: PhotoRun) -> dict:
    """Why no box passed conf, from what the weights are: the best anchor's class, the checkpoint's own metrics
    (``PhotoRun.checkpoint``) and the range of the class biases of the head's final convs."""
    decoded = run.record.head["decoded"][0, 4:]
    best = int(decoded.max(1).values.argmax()) if decoded.numel() else 0
    m = run.checkpoint["metrics"]
    shown = [(k.split("/")[-1].replace("(B)", ""), v) for k, v in m.items() if k.startswith("metrics/")]
    biases = [float(b) for i in run.final_convs.values() if i["branch"] == "class" for b in i["conv"].bias.detach()]
    return {"trained": run.checkpoint["trained"], "epoch": run.checkpoint["epoch"],
            "best_class": run.names.get(best, str(best)), "metrics": shown,
            "bias_range": [min(biases), max(biases)] if biases else None}


def _best_score(run: PhotoRun) -> float:
    """The highest class score of any anchor in the recorded head output (what a lower --conf would reach)."""
    decoded = run.record.head.get("decoded")
    return float(decoded[0, 4:].max()) if decoded is not None else float("nan")


def _flow_rows(real: dict, comp: dict) -> tuple[list[list], dict]:
    """The gradient table and each model's stem gradient relative to its output layer's."""
    silu0 = comp["silu"]["mean_abs_grad"][0] if "silu" in comp else None
    rows, ratio = [], {}
    for key, name, fl in [("these weights", "these weights (SiLU)", real)] + [(k, f"fresh init, {k}", v) for k, v in comp.items()]:
        gr = fl["mean_abs_grad"]
        ratio[key] = float(ples.relative_to_output(gr)[0])
        rows.append([name, num(fl["loss"]), ", ".join(f"{n} {num(v)}" for n, v in zip(fl["loss_names"], fl["loss_items"])),
                     num(gr[0]), num(gr[-1]), num(ratio[key], 3),
                     num(gr[0] / silu0, 3) if silu0 and name.startswith("fresh") else ""])
    return rows, ratio


def training_section(run: PhotoRun, files: Path, opts: Options) -> Section:
    """Gradient flow per activation (relative to the output layer's) and one SGD step on the worked neuron."""
    g = run.gradients(opts.grad_imgsz, opts.grad_batch, opts.seed)
    real, comp = g["real"], g["variants"]
    f_flow = ples.plot_gradient_flow(comp, files / "10_gradient_flow.png", real=real, real_label="these weights (SiLU)")
    step = run.sgd_step(lr=0.01)
    layer, ch, yy, xx = run.focus
    f_step = ples.plot_sgd_step(step, files / "11_sgd_step.png", f"{layer} ch {ch} at (y={yy}, x={xx})")
    rows, ratio = _flow_rows(real, comp)
    numbers = {"batch_sources": g["batch_sources"], "real": real, "variants": comp, "stem_over_output": ratio,
               "sgd_step": {k: v for k, v in step.items() if not isinstance(v, list)}}
    return Section("training", {"real": real, "sources": "; ".join(g["batch_sources"]), "f_flow": f_flow, "rows": rows,
                                "ratio": ratio, "s": step, "neuron": (layer, ch, yy, xx), "f_step": f_step,
                                "direction": step_direction(step)},
                   {"training": numbers})


#: Every section's function, in the lesson's order (ids as in ``TITLES``).
BUILDERS = {"map": map_section, "input": input_section, "neurons": neurons_section, "weights": weights_section, "biases": biases_section,
            "activations": activations_section, "hidden": hidden_section, "output": output_section,
            "training": training_section}
