"""The film of a training run: ``OUT/watch.jsonl`` (``pipeline.probe.watch``) drawn as one offline page.

- ``film_numbers``: the records as layer x record matrices (gradient norm, update ratio, nearly-off share,
  BatchNorm gamma), the probe photo's top-box logit and sigmoid per record, per-class AP per validation.
- ``lesson``: the sentences a learner reads, each computed from those numbers: whether the gradient
  *vanished* (only when the first block's gradient norm is below ``VANISH_RATIO`` of the last block's, the
  threshold stated in the sentence), where it was smallest, which blocks stopped moving, how many
  pre-activations sat nearly off, whether a BatchNorm scale collapsed, how the probe box's score moved.
- ``write_film``: the page (inline SVG, the probe photo as a ``data:`` URI; no network, one file), written
  atomically. Every cell carries its number (``data-v`` and a tooltip) exactly as watch.jsonl holds it.

Examples:
    >>> from pipeline.report.film import write_film
    >>> write_film("runs/w")                     # reads runs/w/watch.jsonl, writes runs/w/film.html
    PosixPath('runs/w/film.html')
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import cv2
import numpy as np
from markupsafe import Markup
from matplotlib import colormaps

from pipeline.core.io import InputError, atomic_write_text, check_output_file
from pipeline.data.preprocess import letterbox
from pipeline.probe.watch import BEND_Z, OFF_Z, SMALL_GAMMA, WATCH_FILE
from pipeline.probe.watch_records import read_records
from pipeline.report.render import environment, num

#: The gradient "vanished" when the first block's norm is below this share of the last block's.
VANISH_RATIO = 1e-2
#: A block "stopped moving" when its update ratio since the record before is below this.
STILL_RATIO = 1e-3
#: The heatmaps: record key, title, log colour scale.
QUANTITIES = (
    ("grad_norm", "gradient norm ||dL/dW|| (mean over the batches since the record before)", True),
    ("update_ratio", "update ratio ||W_t - W_t-1|| / ||W_t-1|| since the record before", True),
    ("frac_off", f"nearly off: share of z < {OFF_Z:g} on the probe photos (SiLU(z) ~ 0)", False),
    ("gamma_mean", "BatchNorm scale gamma, mean over the block's channels", False),
)
#: Colours of the probe boxes, one per shown record (SVG colours).
BOX_COLOURS = ("#e41a1c", "#ff7f00", "#4daf4a", "#377eb8")


def record_label(r: dict) -> str:
    """``e1 b12`` : the record's epoch (1-based, as Ultralytics prints it) and its batch count."""
    return f"e{r['epoch'] + 1} b{r['batch']}" + ("" if r["kind"] == "epoch" else "*")


def film_numbers(records: list[dict]) -> dict:
    """The records as matrices and curves (``None`` where a record has no value), blocks in model order.

    Examples:
        >>> n = film_numbers(read_watch("runs/w/watch.jsonl"))
        >>> n["matrices"]["grad_norm"][0][0] == records[0]["blocks"]["model.0"]["grad_norm"]
        True
    """
    if not records:
        raise ValueError("no records")
    blocks = list(records[-1]["blocks"])
    matrices = {q: [[r["blocks"].get(b, {}).get(q) for r in records] for b in blocks] for q, _, _ in QUANTITIES}
    val = [r for r in records if r.get("ap50")]
    classes = sorted({c for r in val for c in r["ap50"]})
    return {
        "blocks": blocks,
        "labels": [record_label(r) for r in records],
        "matrices": matrices,
        "logit": [r["probe"]["logit"] for r in records],
        "sigmoid": [r["probe"]["sigmoid"] for r in records],
        "ap": {c: [(r["epoch_progress"], r["ap50"].get(c)) for r in val] for c in classes},
        "ratio": [r.get("grad_first_last") for r in records],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def lesson(records: list[dict]) -> list[str]:
    """The sentences of the film's lesson, every number in them read from ``records``.

    Examples:
        >>> lesson(records)[0]  # doctest: +SKIP
        'The gradient did not vanish: ...'
    """
    last = records[-1]
    blocks = last["blocks"]
    first_b, last_b = last["first_block"], last["last_block"]
    out = []
    grads = [r for r in records if r.get("grad_first_last") is not None]
    if grads:
        g = grads[-1]
        ratio = g["grad_first_last"]
        where = f"at {record_label(g)}, the first block ({first_b}) had a gradient norm {num(ratio)} times the last block's ({last_b})"
        if ratio < VANISH_RATIO:
            out.append(f"The gradient vanished on its way back to the stem: {where}, below the {num(VANISH_RATIO)} "
                       f"we call vanishing.")
        else:
            out.append(f"The gradient did not vanish: {where}; vanishing would take a ratio below {num(VANISH_RATIO)}.")
        lo, hi = min(r["grad_first_last"] for r in grads), max(r["grad_first_last"] for r in grads)
        out.append(f"Over the {len(grads)} records with gradients the ratio ranged from {num(lo)} to {num(hi)}.")
        means = {}
        for b in blocks:
            vals = [r["blocks"][b]["grad_norm"] for r in grads if r["blocks"].get(b, {}).get("grad_norm") is not None]
            if vals:
                means[b] = float(np.mean(vals))
        if means:  # none when every block's grad_norm is null (a ratio with no norms: an edited file)
            small = min(means, key=means.get)
            big = max(means, key=means.get)
            out.append(f"The smallest gradients reached {small} (mean norm {num(means[small])} over the records), "
                       f"the largest {big} ({num(means[big])}).")
    ratios = {b: v["update_ratio"] for b, v in blocks.items() if v.get("update_ratio") is not None}
    if ratios:
        still = [b for b, v in ratios.items() if v < STILL_RATIO]
        if still:
            shown = ", ".join(still[:3]) + (f" and {len(still) - 3} more" if len(still) > 3 else "")
            out.append(f"At the last record {len(still)} of {len(ratios)} blocks had nearly stopped moving (update "
                       f"ratio below {num(STILL_RATIO)} since the record before): {shown}.")
        else:
            slowest = min(ratios, key=ratios.get)
            out.append(f"At the last record every block still moved: the slowest, {slowest}, by {_pct(ratios[slowest])} "
                       f"of its weight norm since the record before (we say stopped below {_pct(STILL_RATIO)}).")
    offs = {b: v["frac_off"] for b, v in blocks.items() if v.get("frac_off") is not None}
    if offs:
        worst = max(offs, key=offs.get)
        if offs[worst] > 0:
            out.append(f"On the probe photos {worst} had the most nearly-off pre-activations: {_pct(offs[worst])} of "
                       f"its z below {OFF_Z:g}, where SiLU passes almost nothing.")
        else:
            out.append(f"No block had a pre-activation below {OFF_Z:g} on the probe photos: no unit was nearly off.")
        bends = [v["frac_bend"] for v in blocks.values() if v.get("frac_bend") is not None]
        if bends:
            out.append(f"On average {_pct(float(np.mean(bends)))} of the pre-activations sat in SiLU's bend "
                       f"(|z| < {BEND_Z:g}).")
    small = {b: v["gamma_small"] for b, v in blocks.items() if v.get("gamma_small")}
    if small:
        b = max(small, key=small.get)
        out.append(f"BatchNorm scaled some channels to nearly nothing: in {len(small)} blocks some |gamma| fell below "
                   f"{num(SMALL_GAMMA)}, most in {b} ({_pct(small[b])} of its channels).")
    elif any("gamma_small" in v for v in blocks.values()):
        out.append(f"No BatchNorm scale collapsed: every |gamma| stayed at or above {num(SMALL_GAMMA)}.")
    p0, p1 = records[0]["probe"], last["probe"]
    if p0.get("logit") is not None and p1.get("logit") is not None:
        change = "rose" if p1["sigmoid"] > p0["sigmoid"] else "fell" if p1["sigmoid"] < p0["sigmoid"] else "stayed"
        out.append(f"The probe photo's top box: {p0['class_name']} at logit {num(p0['logit'])} (score "
                   f"{num(p0['sigmoid'])}) at the first record, {p1['class_name']} at logit {num(p1['logit'])} "
                   f"(score {num(p1['sigmoid'])}) at the last: its score {change}.")
    val = [r for r in records if r.get("ap50")]
    if val:
        ap = val[-1]["ap50"]
        best = max(ap, key=ap.get)
        worst = min(ap, key=ap.get)
        if ap[best] == ap[worst]:  # one class, or all alike: no highest and lowest to name
            out.append(f"At the last validation ({record_label(val[-1])}) AP50 was {num(ap[best])} for every class.")
        else:
            out.append(f"At the last validation ({record_label(val[-1])}) AP50 was highest for {best} "
                       f"({num(ap[best])}) and lowest for {worst} ({num(ap[worst])}).")
    return out


def _colour(t: float) -> str:
    r, g, b, _ = colormaps["viridis"](min(max(t, 0.0), 1.0))
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def _scale(values, log: bool):
    finite = [v for row in values for v in row if v is not None and (v > 0 if log else True)]
    if not finite:
        return lambda v: None, (None, None)
    lo, hi = min(finite), max(finite)
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    a, b = f(lo), f(hi)
    span = (b - a) or 1.0
    return (lambda v: None if v is None or (log and v <= 0) else (f(v) - a) / span), (lo, hi)


def _esc(s) -> str:
    return str(Markup.escape(s))


def heatmap_svg(key: str, blocks: list[str], labels: list[str], values: list[list], log: bool, cell: int = 14) -> Markup:
    """A block x record heatmap: one ``rect`` per value, its exact number in ``data-v`` and its tooltip."""
    scale, (lo, hi) = _scale(values, log)
    # room for what is drawn outside the grid (~6 px a character at font-size 10): the column labels, turned
    # by 60 degrees, reach up by 0.87 and right by 0.5 of their length; the colour caption is two lines
    longest = 6 * max((len(str(lab)) for lab in labels), default=0)
    caption = ([f'colour: {"log10 " if log else ""}scale from {num(lo)} (dark)', f"to {num(hi)} (yellow); grey: no value"]
               if lo is not None else [""])
    left, top = 130, max(70, int(0.87 * longest) + 10)
    w = max(left + cell * len(labels) + int(0.5 * longest) + 10, 6 * max(len(c) for c in caption) + 10)
    h = top + cell * len(blocks) + 42
    parts = [f'<svg class="heat" data-q="{_esc(key)}" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" '
             f'font-size="10" font-family="sans-serif">']
    for j, lab in enumerate(labels):
        x = left + j * cell + cell / 2
        parts.append(f'<text transform="translate({x:.1f},{top - 4}) rotate(-60)">{_esc(lab)}</text>')
    for i, b in enumerate(blocks):
        y = top + i * cell
        parts.append(f'<text x="{left - 4}" y="{y + cell - 3}" text-anchor="end">{_esc(b)}</text>')
        for j, v in enumerate(values[i]):
            t = scale(v)
            fill = "#dddddd" if t is None else _colour(t)
            shown = "none" if v is None else repr(float(v))
            parts.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" '
                         f'data-block="{_esc(b)}" data-rec="{j}" data-v="{shown}"><title>{_esc(b)} {_esc(labels[j])}: '
                         f'{shown}</title></rect>')
    if lo is not None:
        parts.append(f'<text x="4" y="{h - 20}">{_esc(caption[0])}</text><text x="4" y="{h - 6}">{_esc(caption[1])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def curve_svg(key: str, series: dict[str, list[tuple[float, float | None]]], y_label: str, width: int = 520,
              height: int = 220, log: bool = False, x_label: str = "epoch") -> Markup:
    """Line chart of ``{name: [(x, y), ...]}``; each point a circle carrying its exact ``data-v``.

    ``log``: a log10 y axis (points with y <= 0 are left out).
    """
    keep = (lambda y: y is not None and y > 0) if log else (lambda y: y is not None)
    series = {name: [(x, y) for x, y in s if keep(y)] for name, s in series.items()}
    pts = [(x, y) for s in series.values() for x, y in s]
    if not pts:
        return Markup("")
    fy = math.log10 if log else (lambda y: y)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1 = x1 if x1 > x0 else x0 + 1
    ly0, ly1 = fy(y0), fy(y1)
    ly1 = ly1 if ly1 > ly0 else ly0 + 1
    left, right, top, bottom = 60, 150, 10, 30

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                top + (1 - (fy(y) - ly0) / (ly1 - ly0)) * (height - top - bottom))

    parts = [f'<svg class="curve" data-q="{_esc(key)}" width="{width}" height="{height}" '
             f'xmlns="http://www.w3.org/2000/svg" font-size="10" font-family="sans-serif">',
             f'<text x="4" y="{top + 8}">{_esc(num(y1))}</text><text x="4" y="{height - bottom}">{_esc(num(y0))}</text>',
             f'<text x="{left}" y="{height - 6}">{_esc(y_label)}{" (log scale)" if log else ""} vs {_esc(x_label)} '
             f'({_esc(num(x0))} to {_esc(num(x1))})</text>']
    for k, (name, s) in enumerate(series.items()):
        colour = BOX_COLOURS[k % len(BOX_COLOURS)] if len(series) > 1 else "#377eb8"
        xy = [px(x, y) for x, y in s]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in xy) + '"/>')
        for (x, y), (a, b) in zip(s, xy):
            parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{colour}" data-series="{_esc(name)}" '
                         f'data-v="{float(y)!r}"><title>{_esc(name)} at {_esc(num(x))}: {float(y)!r}</title></circle>')
        # style, not the fill attribute: the page's stylesheet colours svg text, and a style attribute wins over it
        parts.append(f'<text x="{width - right + 8}" y="{top + 12 + 14 * k}" style="fill:{colour}">{_esc(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def probe_svg(records: list[dict], shown: int = 4) -> tuple[Markup, list[dict]]:
    """The probe photo as the model saw it (letterboxed square) with its top box at up to ``shown`` records."""
    probe = records[0]["probe"]
    path = Path(probe.get("path", ""))
    if not path.is_file():
        return Markup(""), []
    image = cv2.imread(str(path))
    if image is None:
        return Markup(""), []
    h, w = probe["imgsz"]
    boxed, _ = letterbox(image, [h, w], auto=False)  # as the watch fed it (model_input, auto=False)
    ok, buf = cv2.imencode(".jpg", boxed)
    if not ok:
        return Markup(""), []
    src = "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
    count = min(shown, len(records))  # first and last record, the rest evenly between
    idx = sorted({round(k * (len(records) - 1) / max(count - 1, 1)) for k in range(count)})
    side = 320
    s = side / max(h, w)
    parts = [f'<svg class="probe" width="{w * s:.0f}" height="{h * s:.0f}" xmlns="http://www.w3.org/2000/svg">',
             f'<image href="{src}" width="{w * s:.0f}" height="{h * s:.0f}"/>']
    legend = []
    for k, j in enumerate(idx):
        r, colour = records[j], BOX_COLOURS[k % len(BOX_COLOURS)]
        x1, y1, x2, y2 = (v * s for v in r["probe"]["box"])
        parts.append(f'<rect x="{x1:.1f}" y="{y1:.1f}" width="{x2 - x1:.1f}" height="{y2 - y1:.1f}" fill="none" '
                     f'stroke="{colour}" stroke-width="2" data-rec="{j}"/>')
        legend.append({"colour": colour, "label": record_label(r), "class_name": r["probe"]["class_name"],
                       "sigmoid": r["probe"]["sigmoid"]})
    parts.append("</svg>")
    return Markup("".join(parts)), legend


def render_film(records: list[dict], run: str) -> str:
    """The film page's HTML for these records."""
    n = film_numbers(records)
    heatmaps = [{"key": q, "title": title, "svg": heatmap_svg(q, n["blocks"], n["labels"], n["matrices"][q], log)}
                for q, title, log in QUANTITIES]
    xs = [r["epoch_progress"] for r in records]
    probe_curves = [curve_svg("logit", {"logit": list(zip(xs, n["logit"]))}, "top-box class logit"),
                    curve_svg("sigmoid", {"sigmoid = score": list(zip(xs, n["sigmoid"]))}, "its sigmoid (score)")]
    photo, legend = probe_svg(records)
    ap = curve_svg("ap50", n["ap"], "AP50 per class") if n["ap"] else Markup("")
    neuron = records[-1]["probe"].get("neuron") or {}
    neuron_curve = curve_svg("neuron_z", {f"z of {neuron.get('block')} channel {neuron.get('channel')}":
                                          list(zip(xs, [r["probe"].get("neuron", {}).get("z") for r in records]))},
                             "one neuron's z") if neuron else Markup("")
    return environment().get_template("film.html").render(
        run=run, records=records, labels=n["labels"], lesson=lesson(records), heatmaps=heatmaps,
        probe_curves=probe_curves, photo=photo, legend=legend, ap=ap, neuron_curve=neuron_curve,
        vanish=VANISH_RATIO, still=STILL_RATIO, off=OFF_Z, bend=BEND_Z, small=SMALL_GAMMA)


#: The mark in the pages' ``<meta name="generator">``: a page there without it is not replaced (``written_by``).
GENERATOR = "cardamage film"


def write_film(run_dir, out=None, overwrite: bool = False) -> Path:
    """Read ``run_dir/watch.jsonl`` and write the film page (default ``run_dir/film.html``); return its path.

    ``out`` must end in ``.html`` and may replace only an earlier film or compare page (or anything, with
    ``overwrite``): a page of the user's, the run's own files and the watch.jsonl read are kept.

    Raises:
        InputError: no ``watch.jsonl`` (the run was not trained with ``--watch``) or no record in it; ``out``
            refused (``check_output_file``).
    """
    run_dir = Path(run_dir)
    path = run_dir / WATCH_FILE if run_dir.is_dir() else run_dir
    if not (path.exists() or path.is_symlink()):  # a FIFO or folder there is named for what it is when read
        raise InputError(path, "no watch.jsonl here: train with --watch to film a run")
    out = check_output_file(Path(out) if out else path.parent / "film.html", [path], ".html", GENERATOR, overwrite)
    records = read_records(path)
    if not records:
        raise InputError(path, "holds no record yet")
    page = render_film(records, str(path.parent))
    check_output_file(out, [path], ".html", GENERATOR, overwrite)  # again: rendering a long run takes a while
    return atomic_write_text(out, page)


# ------------------------------------------------------------------------------------------------
# The activations compared: the same training with SiLU, sigmoid, ReLU (lesson.compare)
# ------------------------------------------------------------------------------------------------


def total_loss(record: dict) -> float | None:
    """The record's training loss as Ultralytics sums it for backward: box + cls + dfl (running means)."""
    loss = record.get("loss") or {}
    return float(sum(loss.values())) if loss and all(v is not None for v in loss.values()) else None


def compare_numbers(runs: dict[str, list[dict]]) -> dict:
    """Per variant: the mean gradient norm of each block over its records (depth order), and the loss curve.

    Examples:
        >>> compare_numbers({"silu": records})["grad"]["silu"][0]   # (depth 0, mean grad norm of model.0)
        (0, 0.83)
    """
    grad, loss, ratio = {}, {}, {}
    for name, records in runs.items():
        blocks = list(records[-1]["blocks"])
        rows = []
        for i, b in enumerate(blocks):
            vals = [r["blocks"][b]["grad_norm"] for r in records if r["blocks"].get(b, {}).get("grad_norm") is not None]
            rows.append((i, float(np.mean(vals)) if vals else None))
        grad[name] = rows
        loss[name] = [(r["epoch_progress"], total_loss(r)) for r in records]
        with_ratio = [r for r in records if r.get("grad_first_last") is not None]
        ratio[name] = with_ratio[-1]["grad_first_last"] if with_ratio else None
    return {"grad": grad, "loss": loss, "ratio": ratio}


def compare_lesson(runs: dict[str, list[dict]]) -> list[str]:
    """Sentences on the variants, every number read from their records."""
    n = compare_numbers(runs)
    out = []
    for name, r in n["ratio"].items():
        if r is None:
            continue
        verdict = (f"it vanished (below {num(VANISH_RATIO)})" if r < VANISH_RATIO
                   else f"it did not vanish (that takes a ratio below {num(VANISH_RATIO)})")
        out.append(f"With {name}, at the last record the first block's gradient norm was {num(r)} times the last "
                   f"block's: {verdict}.")
    stems = {name: rows[0][1] for name, rows in n["grad"].items() if rows and rows[0][1] is not None}
    if "silu" in stems and stems["silu"] > 0:
        for name, g in stems.items():
            if name != "silu":
                out.append(f"The stem's mean gradient norm with {name} was {num(g / stems['silu'])} times SiLU's "
                           f"({num(g)} against {num(stems['silu'])}).")
    final = {name: next((y for _, y in reversed(c) if y is not None), None) for name, c in n["loss"].items()}
    final = {k: v for k, v in final.items() if v is not None}
    if final:
        low = min(final.values())
        best = [k for k, v in final.items() if v == low]
        listed = ", ".join(f"{num(v)} with {k}" for k, v in final.items())
        epochs = max(r[-1]["epoch"] + 1 for r in runs.values())
        who = best[0] if len(best) == 1 else " and ".join(best) + " alike"
        out.append(f"After {epochs} epoch{'s' if epochs != 1 else ''} the training loss (box + cls + dfl) was "
                   f"{listed}: lowest with {who}.")
    return out


def render_compare(runs: dict[str, list[dict]], folder: str) -> str:
    """The comparison page's HTML: gradient norm per depth and loss curves, one line per activation."""
    n = compare_numbers(runs)
    grad = curve_svg("grad_depth", n["grad"], "mean gradient norm", width=760, log=True,
                     x_label="Conv block, stem (0) to head")
    loss = curve_svg("loss", n["loss"], "training loss (box + cls + dfl)", width=760)
    return environment().get_template("compare.html").render(
        folder=folder, variants=list(runs), lesson=compare_lesson(runs), grad=grad, loss=loss,
        blocks=list(next(iter(runs.values()))[-1]["blocks"]))


def write_compare(folder, runs: dict[str, list[dict]] | None = None, out=None, overwrite: bool = False) -> Path:
    """Write ``folder/compare.html`` from the variant runs' ``watch.jsonl`` (``folder/<variant>/``); return it.

    ``out`` is checked as ``write_film``'s is.

    Raises:
        InputError: no variant folder with a ``watch.jsonl`` holding records.
    """
    folder = Path(folder)
    out = check_output_file(Path(out) if out else folder / "compare.html", [], ".html", GENERATOR, overwrite)
    if runs is None:
        runs = {p.parent.name: read_records(p) for p in sorted(folder.glob(f"*/{WATCH_FILE}"))}
        runs = {k: v for k, v in runs.items() if v}
    if not runs:
        raise InputError(folder, "no variant runs with watch.jsonl here (train them with --compare-activations)")
    return atomic_write_text(out, render_compare(runs, str(folder)))
