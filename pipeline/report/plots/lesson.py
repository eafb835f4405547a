"""Plots of the lesson: activation functions on real data, gradient flow, one SGD step, detections, CAM.

- ``plot_activation_gallery``: each activation of ``pipeline.lesson.activations.GALLERY`` with its derivative,
  over a histogram of the real pre-activations z of one YOLOv8 layer (what the function is applied to);
  SiLU's minimum is marked where ``silu_minimum`` found it.
- ``plot_gradient_flow``: mean |dL/dW| per conv layer, stem -> head, log scale, one line per activation
  variant (from ``pipeline.lesson.gradients``).
- ``plot_sgd_step``: one neuron's patch, kernel, gradient and updated kernel, the SiLU curve with the
  neuron's z before and after the step, and the loss before and after.
- ``plot_detections``: boxes with class name, sigmoid score and the logit it came from; labelled damage dashed.
- ``plot_cam``: a class activation map (``pipeline.analysis.cam``) upsampled over the model input.

Nothing here runs the model: every function draws numbers computed elsewhere (the run, ``lesson``, ``cam``).

Examples:
    >>> from pipeline.report.plots.lesson import plot_activation_gallery, plot_gradient_flow
    >>> gallery = describe_all(z)
    >>> plot_activation_gallery(z, "model.2.cv1", "gallery.png", silu_minimum(),
    ...                         {g["name"]: g["mean_on_layer"] for g in gallery})
    >>> plot_gradient_flow(activation_comparison("yolov8n.yaml", 6, batch), "flow.png")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch

from pipeline.core.io import atomic_write_image, shrink
from pipeline.lesson.activations import GALLERY  # noqa: E402
from pipeline.lesson.activations import silu as silu_f
from pipeline.report.plots import imshow_photo, photo_figsize, save_png  # noqa: E402

VARIANT_COLORS = {"silu": "tab:green", "sigmoid": "tab:red", "tanh": "tab:orange", "relu": "tab:blue"}


_save = save_png


# --- activation functions ------------------------------------------------------------------------


def plot_activation_gallery(z_sample, layer: str, path, silu_min: tuple[float, float], layer_means: dict) -> Path:
    """Seven activations with derivatives, each over the real pre-activation histogram of ``layer``.

    Every value of the layer is drawn (no subsampling): the histograms and the numbers in the titles are the
    ones the page's table reports.

    ``silu_min`` is ``(z*, SiLU(z*))`` (``lesson.activations.silu_minimum``), marked on the SiLU panel;
    ``layer_means`` the mean output of each activation on the layer (``describe_all``'s ``mean_on_layer``).
    """
    z = torch.as_tensor(z_sample).detach().double().flatten()
    lo, hi = np.percentile(z.numpy(), [0.5, 99.5])
    lo, hi = min(lo, -5.0), max(hi, 5.0)
    x = torch.linspace(lo, hi, 801, dtype=torch.float64)
    x_min, y_min = silu_min
    names = list(GALLERY)
    counts, edges = np.histogram(z.numpy(), bins=160, range=(lo, hi))
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.4))
    for ax, name in zip(axes.flat, names):
        act = GALLERY[name]
        ax2 = ax.twinx()
        ax2.stairs(counts, edges, fill=True, color="0.8")
        ax2.set_yticks([])
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(x, act.f(x), color="tab:blue", lw=2, label="f(z)")
        ax.plot(x, act.df(x), color="tab:red", lw=1.2, ls="--", label="f'(z)")
        ax.axhline(0, color="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_title(f"{name}: {act.formula}\nmean f(z) on this layer = {layer_means[name]:.3f}", fontsize=8)
        ax.set_ylim(-1.5, 3.0)
        if name == "silu":
            ax.plot([x_min], [y_min], "ko")
            ax.annotate(f"min {y_min:.4f}\nat z = {x_min:.4f}", (x_min, y_min), (x_min - 0.5, -1.3), fontsize=7,
                        arrowprops=dict(arrowstyle="->", lw=0.6))
        ax.legend(fontsize=7, loc="upper left")
    ax = axes.flat[-1]  # the same values on their own range, so a narrow distribution shows its shape
    own = np.percentile(z.numpy(), [0.1, 99.9])
    own = own if own[1] > own[0] else (own[0] - 1e-6, own[1] + 1e-6)
    c2, e2 = np.histogram(z.numpy(), bins=120, range=tuple(own))
    ax.stairs(c2, e2, fill=True, color="0.6")
    ax.axvline(0, color="k", lw=0.5)
    neg = float((z < 0).double().mean())
    ax.set_title(f"real z of {layer}: {z.numel()} values\nmean {float(z.mean()):.3f}, std {float(z.std()):.3f}, "
                 f"{100 * neg:.1f}% negative", fontsize=8)
    ax.set_xlabel("pre-activation z (central 99.8%)")
    fig.suptitle(f"Activation functions (blue) and derivatives (red dashed) over the pre-activations of {layer} (grey)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path, tight=False)


# --- gradient flow ------------------------------------------------------------------------------


def _positive(values) -> np.ndarray:
    """Zeros (a box branch with no assigned target gets no gradient) become gaps on a log axis."""
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)


def relative_to_output(mean_abs_grad) -> np.ndarray:
    """Each layer's mean |dL/dW| divided by the output side's: the last layer with a nonzero gradient."""
    g = np.asarray(mean_abs_grad, dtype=float)
    ref = next((v for v in g[::-1] if v > 0), 1.0)
    return g / ref


def plot_gradient_flow(comparison: dict, path, real: dict | None = None, real_label: str = "loaded weights (SiLU)") -> Path:
    """Each conv layer's mean |dL/dW| relative to the output layer's, stem (left) to head (right), log scale.

    A layer with exactly zero gradient (a box branch at a scale where no target was assigned) is a gap.
    """
    fig, ax = plt.subplots(figsize=(12, 4.6))
    layers = None
    for name, flow in comparison.items():
        layers = flow["layers"]
        ax.semilogy(range(len(layers)), _positive(relative_to_output(flow["mean_abs_grad"])), "-o", ms=2.5, lw=1.4,
                    color=VARIANT_COLORS.get(name), label=f"{name} (fresh init, loss {flow['loss']:.2f})")
    if real is not None:
        layers = layers or real["layers"]
        ax.semilogy(range(len(real["layers"])), _positive(relative_to_output(real["mean_abs_grad"])), "k:", lw=1.6,
                    label=f"{real_label}, loss {real['loss']:.2f}")
    ax.axhline(1, color="k", lw=0.6)
    head = [i for i, n in enumerate(layers) if n.startswith(f"model.{max(int(n.split('.')[1]) for n in layers)}.")]
    if head:
        ax.axvspan(head[0] - 0.5, len(layers) - 0.5, color="0.93", zorder=0)
        ax.text(head[0], ax.get_ylim()[1], " Detect head", va="top", fontsize=8)
    step = max(1, len(layers) // 24)
    ax.set_xticks(range(0, len(layers), step))
    ax.set_xticklabels([layers[i] for i in range(0, len(layers), step)], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mean |dL/dW| / the output layer's (log)")
    ax.set_xlabel("conv layer, stem (input side) -> head (loss side); backprop runs right to left")
    any_flow = next(iter(comparison.values()), real)
    ax.set_title(f"Gradient flow: one fp32 backward pass of YOLOv8's detection loss "
                 f"(batch {any_flow['batch_size']} at {any_flow['imgsz']}px, {any_flow['num_labels']} boxes)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, tight=False)


# --- one SGD step -------------------------------------------------------------------------------


def _kernel_image(t: np.ndarray) -> np.ndarray:
    """C x k x k -> a row of k x k tiles (at most 8 input channels) separated by NaN gaps."""
    t = t[:8]
    c, kh, kw = t.shape
    out = np.full((kh, c * (kw + 1) - 1), np.nan)
    for i in range(c):
        out[:, i * (kw + 1) : i * (kw + 1) + kw] = t[i]
    return out


def plot_sgd_step(step: dict, path, layer: str = "") -> Path:
    """The numbers of ``pipeline.lesson.gradients.sgd_step`` as pictures: x, w, dL/dw, w - lr*dL/dw; SiLU; loss."""

    x, w = np.asarray(step["patch"]), np.asarray(step["weight"])
    g, w_new = np.asarray(step["dL_dw"]), np.asarray(step["weight_new"])
    fig = plt.figure(figsize=(13, 5.2))
    gs = fig.add_gridspec(4, 3, width_ratios=[2.4, 1.2, 1.0])
    titles = [("input patch x", x), ("kernel w (folded)", w), ("dL/dw = (a - t) SiLU'(z) x", g),
              (f"w - lr dL/dw  (lr = {step['lr']:g})", w_new)]
    for r, (title, t) in enumerate(titles):
        ax = fig.add_subplot(gs[r, 0])
        lim = float(np.nanmax(np.abs(t))) or 1.0
        im = ax.imshow(np.ma.masked_invalid(_kernel_image(t)), cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"{title}   (first {min(8, t.shape[0])} of {t.shape[0]} input channels)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.03)
    ax = fig.add_subplot(gs[:, 1])
    zs = np.linspace(min(step["z"], step["z_new"], -3) - 1, max(step["z"], step["z_new"], 3) + 1, 400)
    ax.plot(zs, silu_f(torch.as_tensor(zs)).numpy(), color="tab:blue", label="SiLU(z)")
    ax.axhline(step["target"], color="tab:green", ls="--", lw=1, label=f"target t = {step['target']:.3f}")
    ax.plot([step["z"]], [step["a"]], "o", color="tab:red", label=f"before: z={step['z']:.3f}, a={step['a']:.3f}")
    ax.plot([step["z_new"]], [step["a_new"]], "s", color="tab:purple",
            label=f"after: z={step['z_new']:.3f}, a={step['a_new']:.3f}")
    ax.annotate("", (step["z_new"], step["a_new"]), (step["z"], step["a"]), arrowprops=dict(arrowstyle="->"))
    ax.set_xlabel("z")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("the neuron moves along SiLU", fontsize=9)
    ax = fig.add_subplot(gs[:, 2])
    bars = ax.bar(["before", "after"], [step["loss"], step["loss_new"]], color=["tab:red", "tab:purple"])
    for b, v in zip(bars, [step["loss"], step["loss_new"]]):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_title("loss 0.5 (a - t)^2", fontsize=9)
    fig.suptitle(f"One SGD step on neuron {layer}: autograd agrees to {step['max_abs_grad_diff']:.1e}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path, tight=False)


# --- detections and CAM -------------------------------------------------------------------------


def separate_tags(ax, tags: list, pad_px: float = 2.0, tries: int = 12) -> None:
    """Move each text tag by whole tag heights (down, up, twice down, ...) until it overlaps no tag before it.

    Boxes on a crowded photo nearly coincide, and their tags would print over each other. A tag that
    finds no free place within ``tries`` moves keeps its own place.
    """
    if not tags:
        return
    renderer = ax.figure.canvas.get_renderer()
    to_data = ax.transData.inverted()
    top, bottom = sorted(ax.get_ylim())
    placed = []
    for tag in tags:
        x, y = tag.get_position()
        box = tag.get_window_extent(renderer).padded(pad_px)
        (_, ya), (_, yb) = to_data.transform([[box.x0, box.y0], [box.x0, box.y1]])
        step = abs(yb - ya)  # one tag height in data units (the image's y grows downward)
        for k in [0] + [s * m for m in range(1, tries // 2 + 1) for s in (1, -1)]:
            if not top <= y + k * step <= bottom:
                continue
            tag.set_position((x, y + k * step))
            box = tag.get_window_extent(renderer).padded(pad_px)
            if not any(box.overlaps(p) for p in placed):
                break
        else:
            tag.set_position((x, y))
            box = tag.get_window_extent(renderer).padded(pad_px)
        placed.append(box)


def plot_detections(image_bgr: np.ndarray, detections: list[dict], path, max_boxes: int = 30,
                    labels: list[dict] | None = None, verdicts: list[str] | None = None, shape=None) -> Path:
    """The photo with each box labelled ``class score (logit)``: score = sigmoid(logit); ``labels`` (the photo's
    labelled damage, if any) are drawn under them as dashed white-on-black boxes named ``label: class``, and
    ``verdicts`` (``match_labels``'s, one per detection) end each box's tag with ``found`` or ``FP``. ``shape``:
    the full photo's HxW when ``image_bgr`` is a smaller copy of it (boxes are in full-photo pixels)."""
    h, w = (image_bgr.shape if shape is None else shape)[:2]
    fig, ax = plt.subplots(figsize=photo_figsize((h, w), 7))
    imshow_photo(ax, image_bgr, shape=(h, w))
    label_tags, box_tags = [], []
    for g in labels or []:
        x0, y0, x1, y1 = g["box_xyxy"]
        for lw, ls, color in ((2.5, "-", "black"), (1.5, "--", "white")):  # dark under light: seen on any paint
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=lw, ls=ls, color=color))
        label_tags.append(ax.text(x0, y1, f"label: {g['class_name']}", fontsize=7, color="black", va="top",
                                  bbox=dict(facecolor="white", alpha=0.8, pad=1, lw=0)))
    cmap = plt.get_cmap("tab10")
    order = sorted(range(len(detections)), key=lambda i: -detections[i]["score"])[:max_boxes]
    for i in order:
        d = detections[i]
        x0, y0, x1, y1 = d["box_xyxy"]
        color = cmap(int(d["class_id"]) % 10)
        said = "" if verdicts is None else (" found" if verdicts[i] == "hit" else " FP")
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2, color=color))
        box_tags.append(ax.text(x0, y0, f"{d['class_name']} {d['score']:.2f} (logit {d['logit']:+.2f}){said}",
                                fontsize=7, color="white", va="bottom",
                                bbox=dict(facecolor=color, alpha=0.8, pad=1, lw=0)))
    separate_tags(ax, box_tags + label_tags)  # highest score first: it keeps its place
    n = len(detections)
    title = (f"{n} detection{'' if n == 1 else 's'}; score = sigmoid(logit)" if detections else
             "no detection above the confidence threshold")
    if labels is not None:
        title += f"; {len(labels)} label{'' if len(labels) == 1 else 's'} (dashed); FP = false positive"
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def plot_neuron_on_photo(image_bgr: np.ndarray, box, field, path, side: int = 640, shape=None) -> Path:
    """The photo (at most ``side`` px) with the top box (red, if any) and the worked neuron's receptive field
    (yellow, filled at 30%) and centre (+), all given in photo pixels; drawn with OpenCV (no matplotlib:
    a few milliseconds), written as JPEG. ``shape``: the full photo's HxW when ``image_bgr`` is a smaller copy."""
    import cv2

    h, w = (image_bgr.shape if shape is None else shape)[:2]
    img = shrink(image_bgr, side).copy()
    r = img.shape[1] / w

    def px(xyxy):
        return [int(round(float(v) * r)) for v in xyxy]

    x0, y0, x1, y1 = px(field)
    over = img.copy()
    cv2.rectangle(over, (x0, y0), (x1, y1), (0, 230, 255), -1)
    img = cv2.addWeighted(over, 0.3, img, 0.7, 0)
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 230, 255), 2)
    cv2.drawMarker(img, ((x0 + x1) // 2, (y0 + y1) // 2), (0, 0, 0), cv2.MARKER_CROSS, 14, 2)
    if box is not None:
        bx0, by0, bx1, by1 = px(box)
        cv2.rectangle(img, (bx0, by0), (bx1, by1), (40, 40, 220), 2)
    return atomic_write_image(path, img)


def plot_cam(input_tensor, cam: np.ndarray, path, title: str) -> Path:
    """A HxW map in [0, 1] upsampled (bilinear) over the model input, with a colorbar."""
    import cv2

    x = torch.as_tensor(input_tensor)
    x = x[0] if x.ndim == 4 else x
    rgb = x.permute(1, 2, 0).float().numpy().clip(0, 1)
    H, W = rgb.shape[:2]
    up = cv2.resize(cam.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    fig, ax = plt.subplots(figsize=photo_figsize((H, W), 6))
    ax.imshow(rgb)
    im = ax.imshow(up, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return _save(fig, path)


def plot_head_logits(cls_logits: list, strides: list, path, detections: list[dict] | None = None) -> Path:
    """The Detect head's class logits per scale (histogram) and the sigmoid that turns them into scores.

    Args:
        cls_logits: per-scale ``1 x nc x H x W`` raw class outputs recorded by the inspector.
        strides: the scale strides (8, 16, 32).
        detections: head-trace detections (``logit``, ``sigmoid_by_hand``) marked on the sigmoid.
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    all_logits = []
    for t, s in zip(cls_logits, strides):
        v = torch.as_tensor(t).detach().double().flatten()
        all_logits.append(v)
        c, e = np.histogram(v.numpy(), bins=100)
        a1.stairs(c, e, lw=1.5, label=f"stride {s:g}: {v.numel()} logits, max {float(v.max()):.2f}")
    a1.set_yscale("log")
    a1.set_xlabel("class logit (raw output of the head's last 1x1 conv)")
    a1.set_title("every class logit at every anchor", fontsize=9)
    a1.legend(fontsize=7)
    v = torch.cat(all_logits)
    lo, hi = min(float(v.min()), -8.0), max(float(v.max()), 8.0)
    zs = torch.linspace(lo, hi, 400, dtype=torch.float64)
    a2.plot(zs, torch.sigmoid(zs), color="tab:blue", label="score = sigmoid(logit)")
    if detections:  # one artist for every box: up to max_det markers, drawn as one line of points
        n = len(detections)
        a2.plot([d["logit"] for d in detections], [d["sigmoid_by_hand"] for d in detections], "o", ls="none",
                color="tab:red", ms=4, label=f"{n} reported box{'' if n == 1 else 'es'}")
    a2.set_xlabel("logit")
    a2.set_ylabel("score")
    a2.set_title("logit -> sigmoid -> score (no softmax over classes: one sigmoid per class)", fontsize=9)
    a2.legend(fontsize=7)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, tight=False)
