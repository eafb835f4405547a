"""The offline HTML atlas: an index of layers with the lesson, and one page per layer with every channel.

``index.html`` lists the layers in model order (channels, never/rarely active, mean best-class IoU, the
layer's most class-selective channels) and the lesson measured on this atlas (``lesson``). ``layer-<path>.html``
shows each channel (anchor ``#c<channel>``), sorted by its best class IoU (by its top value when the photos
have no labels): its top-k crop strip with each neuron's value, z and photo, its selectivity bars (mean SiLU
inside each class's boxes against outside all boxes, and the Dissection IoU), its activity and its folded
filter (first input channels, one small grid each). Every number comes from ``atlas.json``; the pages need
nothing but the folder (no script, no font, no request).

Examples:
    >>> write_pages(doc, "runs/atlas")     # doc: atlas.json's content
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from pipeline.analysis.atlas_format import layer_file
from pipeline.core.io import atomic_write_text

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}
.ch{border:1px solid #ccc;border-radius:6px;padding:8px;margin:10px 0}.ch:target{outline:3px solid #d33}
.strip{image-rendering:pixelated;display:block}.tops{font-size:11px;color:#555}
.bar{display:inline-block;height:10px;background:#36c;vertical-align:middle}.bar.out{background:#999}.bar.neg{background:#c33}
.filt{display:inline-block;margin-right:6px}.filt td{width:12px;height:12px;padding:0;border:1px solid #fff}
.muted{color:#777}.lesson{background:#f6f6f0;padding:8px 14px;border-radius:6px}
"""



def _depth_sentence(early: float, middle: float, deep: float) -> str:
    """What the three thirds' mean best-class IoU say about the textbook picture (edges early, damage deep),
    in words that match their order: a rise, a rise with a dip, or no rise."""
    if early < middle < deep:
        return "The IoU rises with depth, as the textbook picture of edges early and parts deep predicts."
    if early < deep:
        return ("The IoU is higher deep than early, as the textbook picture of edges early and damage deep predicts, "
                f"but not step by step: the middle third is {'below the early one' if middle < early else 'above the deep one'}.")
    return ("So the textbook picture (edges early, damage deep) does not hold here: the deep third's IoU is not "
            "above the early third's.")


def lesson(doc: dict) -> dict:
    """The lesson's numbers, measured on this atlas: mean best-class IoU and the share of class-selective
    channels (best IoU >= the floor) per depth, and which third of the network scores highest.

    Returns:
        ``{"rows": [{"layer", "depth", "mean_best_iou", "selective_share", "best_class_counts"}],
        "thirds": [mean of each third], "text": [sentences]}``; without labels ``rows`` hold ``None`` scores.
    """
    rows = []
    for path, layer in doc["layers"].items():
        ious = [c["best_iou"] for c in layer["channels"] if c["best_iou"] is not None]
        counts: dict[str, int] = {}
        for c in layer["channels"]:
            if c["best_class"]:
                counts[c["best_class"]] = counts.get(c["best_class"], 0) + 1
        rows.append({"layer": path, "depth": layer["depth"], "mean_best_iou": float(np.mean(ious)) if ious else None,
                     "selective_share": (sum(i >= doc["iou_floor"] for i in ious) / len(ious)) if ious else None,
                     "best_class_counts": counts})
    text = []
    thirds = []
    scored = [r for r in rows if r["mean_best_iou"] is not None]
    if scored:
        parts = np.array_split(np.array([r["mean_best_iou"] for r in scored]), min(3, len(scored)))
        thirds = [float(p.mean()) for p in parts]
        names = ["early", "middle", "deep"][-len(thirds):] if len(thirds) < 3 else ["early", "middle", "deep"]
        top = names[int(np.argmax(thirds))]
        text.append(f"On this model and these {len(doc['photos'])} photos, the mean best-class IoU is "
                    + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, thirds))
                    + f": the {top} blocks line up with the labelled damage most.")
        if len(thirds) == 3:
            text.append(_depth_sentence(*thirds))
        best = max(scored, key=lambda r: r["mean_best_iou"])
        text.append(f"Highest: {best['layer']} (mean {best['mean_best_iou']:.3f}, "
                    f"{best['selective_share']:.0%} of its channels at or above the floor {doc['iou_floor']}).")
    else:
        text.append("These photos have no label files, so no channel can be scored against damage classes: the "
                    "atlas shows what each channel fires on, not which class it follows.")
    text.append(f"What dataset examples cannot prove: a top-{doc['k']} is a selection of the strongest cases, not "
                "what the channel does on the typical photo; the IoU (a thresholded map against boxes) and the "
                "inside/outside means can rank the same channel differently; boxes are coarse masks (a channel "
                "following car edges overlaps damage boxes too); and a correlation with a class is not a cause "
                "(the explorer's activation x gradient asks what a box's score needed).")
    return {"rows": rows, "thirds": thirds, "text": text}


def _esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _head(title: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_esc(title)}</title>"
            f"<link rel=icon href='data:,'><style>{CSS}</style></head><body>")  # no favicon request


def _filter_html(filt) -> str:
    """Folded weights as grids: blue negative, red positive, scaled by the largest |w| of the channel."""
    arr = np.array(filt, dtype=float)
    m = float(np.abs(arr).max()) or 1.0
    out = []
    for i, grid in enumerate(arr):
        cells = "".join("<tr>" + "".join(
            f"<td title='{v:.4g}' style='background:rgb({255 - int(max(0, -v) / m * 200)},"
            f"{255 - int(abs(v) / m * 200)},{255 - int(max(0, v) / m * 200)})'></td>" for v in row) + "</tr>"
            for row in grid)
        out.append(f"<table class=filt title='input channel {i}'>{cells}</table>")
    return "".join(out)


def _channel_html(doc: dict, path: str, ch: dict) -> str:
    c = ch["channel"]
    best = (f"best class <b>{_esc(ch['best_class'])}</b>" if ch["best_class"] else "no class") + (
        f", IoU {_fmt(ch['best_iou'])}" if ch["best_iou"] is not None else "")
    tops = " | ".join(f"{t['value']:.3f} (z {t['z']:.2f}, photo {t['photo']} y{t['y']} x{t['x']})" for t in ch["top"])
    strip = (f"<img class=strip src='crops/{_esc(path)}/c{c}.jpg' alt='top crops of channel {c}'>"
             if ch.get("crops") else "<span class=muted>no crops</span>")
    bars = ""
    if ch["classes"]:
        vals = [v["inside_mean"] for v in ch["classes"].values() if v["inside_mean"] is not None]
        scale = max([abs(v) for v in vals] + [abs(ch["outside_mean"] or 0), 1e-9])
        def bar(v, cls="bar"):  # a negative mean (SiLU below 0: the channel held off there) is drawn red
            kind = f"{cls} neg" if (v or 0) < 0 else cls
            return f"<span class='{kind}' style='width:{int(abs(v or 0) / scale * 120)}px'></span> {_fmt(v)}"

        rows = "".join(f"<tr><td>{_esc(n)}</td><td>{bar(v['inside_mean'])}</td><td>{_fmt(v['iou'])}</td></tr>"
                       for n, v in ch["classes"].items())
        rows += f"<tr><td>outside boxes</td><td>{bar(ch['outside_mean'], 'bar out')}</td><td></td></tr>"
        bars = (f"<table class=sel><tr><th>class</th><th>mean SiLU inside boxes</th><th>IoU</th></tr>{rows}</table>"
                "<div class=muted>bar length: the mean's size; red: a negative mean, the channel held off inside "
                "those boxes (not a class it follows)</div>")
    return (f"<div class=ch id=c{c} data-channel={c} data-best-iou='{_fmt(ch['best_iou'], 6)}'>"
            f"<b>channel {c}</b> &middot; {best} &middot; active on {ch['active_fraction']:.1%} of cells "
            f"({_esc(ch['activity'])}) &middot; top-quantile threshold {_fmt(ch['threshold'])}"
            f"{strip}<div class=tops>{tops}</div>{bars}<div>folded filter (first inputs): {_filter_html(ch['filter'])}</div>"
            f"</div>")


def _sorted_channels(layer: dict) -> list[dict]:
    """Best class IoU first; without labels the strongest top value first."""
    def key(ch):
        return ch["best_iou"] if ch["best_iou"] is not None else (ch["top"][0]["value"] if ch["top"] else float("-inf"))

    return sorted(layer["channels"], key=key, reverse=True)


def layer_page(doc: dict, path: str) -> str:
    """One layer's page: every channel, sorted by its best class IoU."""
    layer = doc["layers"][path]
    chans = "".join(_channel_html(doc, path, ch) for ch in _sorted_channels(layer))
    note = "" if doc["selectivity"] else "<p class=muted>No labels: channels sorted by their strongest value.</p>"
    return (_head(f"atlas: {path}") + f"<p><a href='index.html'>atlas index</a></p><h1>{_esc(path)}</h1>"
            f"<p>{layer['channels_count']} channels, {layer['cell_stride']:g} input pixels per cell, kernel "
            f"{layer['kernel']}, {layer['never_active']} never active, {layer['rarely_active']} rarely active "
            f"(SiLU(z) &ge; 0 on under {doc['rare']:.0%} of cells).</p>{note}{chans}</body></html>")


def index_page(doc: dict, lesson_doc: dict) -> str:
    """The index: the lesson, then the layers with their most selective channels."""
    rows = []
    for path, layer in doc["layers"].items():
        best = _sorted_channels(layer)[:5]
        links = " ".join(f"<a href='{_esc(layer_file(path))}#c{c['channel']}'>{c['channel']}"
                         f"{' ' + _esc(c['best_class']) if c['best_class'] else ''}</a>" for c in best)
        rows.append(f"<tr><td>{layer['depth']}</td><td><a href='{_esc(layer_file(path))}'>{_esc(path)}</a></td>"
                    f"<td>{layer['channels_count']}</td><td>{layer['never_active']}</td><td>{layer['rarely_active']}</td>"
                    f"<td>{_fmt(layer['mean_best_iou'])}</td><td>{links}</td></tr>")
    chart = ""
    scored = [r for r in lesson_doc["rows"] if r["mean_best_iou"] is not None]
    if scored:
        top = max(r["mean_best_iou"] for r in scored) or 1.0
        bars = "".join(f"<rect x='{i * 12}' y='{100 - r['mean_best_iou'] / top * 100:.1f}' width='10' "
                       f"height='{r['mean_best_iou'] / top * 100:.1f}' fill='#36c'><title>{_esc(r['layer'])}: "
                       f"{r['mean_best_iou']:.4f}</title></rect>" for i, r in enumerate(scored))
        chart = (f"<svg width='{len(scored) * 12}' height='104' role=img aria-label='mean best-class IoU per depth'>"
                 f"{bars}</svg><div class=muted>mean best-class IoU per block, stem (left) to head (right); "
                 f"highest {top:.4f}</div>")
    no_labels = "" if doc["selectivity"] else (
        "<p id=no-labels><b>No labels:</b> none of the photos has a YOLO label file, so this atlas has no class "
        "selectivity and no IoU; it shows top crops, activity and filters only.</p>")
    text = "".join(f"<p>{_esc(t)}</p>" for t in lesson_doc["text"])
    return (_head("channel atlas") + f"<h1>Channel atlas</h1><p>{_esc(doc['weights'])} at imgsz {doc['imgsz']}, "
            f"{len(doc['photos'])} photos, top {doc['k']} per channel, {len(doc.get('errors', []))} unreadable.</p>"
            f"{no_labels}<section class=lesson id=lesson><h2>What the atlas shows about depth</h2>{chart}{text}</section>"
            "<h2>Layers</h2><table><tr><th>depth</th><th>block</th><th>channels</th><th>never active</th>"
            "<th>rarely active</th><th>mean best IoU</th><th>most selective channels</th></tr>"
            + "".join(rows) + "</table>"
            "<p class=muted>Never active: SiLU(z) &ge; 0 nowhere on these photos. The channel is not dead as a ReLU "
            "would be: SiLU(z) is between -0.28 and 0 there and its slope is not 0, so it still passes a small "
            "negative signal and still learns. Rarely active: z &ge; 0 on under "
            f"{doc['rare']:.0%} of cells.</p></body></html>")


def write_pages(doc: dict, out_dir) -> list[Path]:
    """Write ``index.html`` and one page per layer into ``out_dir`` (atomically); return their paths."""
    out = Path(out_dir)
    les = lesson(doc)
    doc["lesson"] = les
    paths = [atomic_write_text(out / "index.html", index_page(doc, les))]
    for path in doc["layers"]:
        paths.append(atomic_write_text(out / layer_file(path), layer_page(doc, path)))
    return paths
