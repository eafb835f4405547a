"""The score's own arithmetic and how much a neuron mattered, each against an oracle independent of the code.

Oracles: Ultralytics' ``predict`` (its ``conf`` and boxes) with a plain forward hook on its own network's
final head convs (the raw logits), torch autograd on a fresh unfused Ultralytics model (gradient x
activation), and a fresh forward pass with the activation zeroed by a forward hook (the zeroing effect).
"""

from __future__ import annotations

import math

import pytest
import torch
from checkpoints import save_checkpoint

from pipeline.analysis.run import PhotoRun
from pipeline.data.preprocess import model_input
from pipeline.model.load import load_model, model_stride

IMGSZ = 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_images):
    ckpt = save_checkpoint(tmp_path_factory.mktemp("score") / "best.pt", seed=3, imgsz=IMGSZ)
    run = PhotoRun(load_model(str(ckpt)), sample_images[0], imgsz=IMGSZ)
    assert run.detections, "the checkpoint must report a box on this photo for the thread to follow"
    return {"ckpt": ckpt, "photo": sample_images[0], "run": run}


def predict_with_hooks(ckpt, photo, paths, imgsz: int = IMGSZ):
    """Ultralytics' predict, with plain forward hooks on the named modules of its own (fused) network."""
    yolo = load_model(str(ckpt))
    yolo.predict(str(photo), imgsz=imgsz, conf=0.25, verbose=False, save=False)
    net = yolo.predictor.model.model
    mods = dict(net.named_modules())
    seen = {}
    hooks = [mods[p].register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, o.detach().clone()))
             for p in paths]
    try:
        result = yolo.predict(str(photo), imgsz=imgsz, conf=0.25, verbose=False, save=False)[0]
    finally:
        for h in hooks:
            h.remove()
    return result, seen


def fresh_model(ckpt):
    """A fresh, unfused Ultralytics model from the checkpoint, with the letterboxed input of the photo."""
    net = load_model(str(ckpt)).model.float().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def test_class_logit_by_hand_is_ultralytics_raw_head_output_and_its_sigmoid_predicts_conf(setup):
    run, t = setup["run"], setup["run"].logit_trace
    box_path = t["dfl"]["layer"]
    result, seen = predict_with_hooks(setup["ckpt"], setup["photo"], [t["layer"], box_path])
    raw = float(seen[t["layer"]][0, t["class_id"], t["y"], t["x"]])
    assert abs(t["logit"] - raw) <= 1e-5
    assert abs(t["dot"] + t["bias"] - t["logit"]) <= 1e-12
    mags = [abs(term["product"]) for term in t["top_terms"]]
    assert mags == sorted(mags, reverse=True) and all(term["product"] == term["w"] * term["x"] for term in t["top_terms"])
    assert abs(1 / (1 + math.exp(-t["logit"])) - float(result.boxes.conf[0])) <= 1e-6
    assert t["class_id"] == int(result.boxes.cls[0])
    # the largest terms are w * x of the conv's own weight and input
    w = run.final_convs[t["layer"]]["conv"].weight
    assert t["top_terms"][0]["w"] == pytest.approx(float(w[t["class_id"], t["top_terms"][0]["channel"]].detach()), abs=0)
    assert t["batchnorm"] is False and t["activation"] is None
    # the 16 DFL logits of the left side are Ultralytics' raw box outputs; their softmax's expected bin is the edge
    d = t["dfl"]
    want = seen[box_path][0, :16, t["y"], t["x"]].double()
    assert max(abs(a - float(b)) for a, b in zip(d["logits"], want)) <= 1e-5
    soft = torch.softmax(want, 0)
    dist = float((soft * torch.arange(16, dtype=torch.float64)).sum())
    assert d["distance_cells"] == pytest.approx(dist, abs=1e-5)
    # predict's box, mapped back into model-input pixels (before Ultralytics clips it to the photo)
    x, meta = model_input(run.pixels, imgsz=IMGSZ, stride=model_stride(run.net), auto=True)
    assert d["edge"] == pytest.approx((t["x"] + 0.5 - dist) * t["stride"], abs=1e-3)
    x0 = float(result.boxes.xyxy[0, 0]) * meta["ratio"] + meta["pad"]["left"]
    if x0 > meta["pad"]["left"] + 1e-3:  # unclipped: predict's left edge is the DFL edge
        assert d["edge"] == pytest.approx(x0, abs=1e-2)


def _target(run):
    t = run.logit_trace
    return t["layer"], t["class_id"], t["y"], t["x"]


def test_gradient_times_activation_is_autograd_on_a_fresh_model(setup):
    run = setup["run"]
    f = run.focus_info
    layer, ch, y, x = f["layer"], f["channel"], f["y"], f["x"]
    net = fresh_model(setup["ckpt"])
    mods = dict(net.named_modules())
    held = {}

    def keep(m, i, o):
        o = o.detach().requires_grad_(True)
        held["a"] = o
        return o

    hp, hc, hy, hx = _target(run)
    hooks = [mods[layer].register_forward_hook(keep),
             mods[hp].register_forward_hook(lambda m, i, o: held.__setitem__("logits", o))]
    try:
        net(run.x)
    finally:
        for h in hooks:
            h.remove()
    logit = held["logits"][0, hc, hy, hx]
    logit.backward()
    want = float(held["a"].grad[0, ch, y, x] * held["a"][0, ch, y, x].detach())
    e = f["effect"]
    assert e["grad_x_act"] == pytest.approx(want, rel=2e-3, abs=1e-7)
    assert e["logit"] == pytest.approx(float(logit), abs=1e-4)
    # the layer's top channels at that cell: the same autograd, channel by channel
    for row in f["top_channels"]:
        c = row["channel"]
        assert row["grad_x_act"] == pytest.approx(float(held["a"].grad[0, c, y, x] * held["a"][0, c, y, x]),
                                                  rel=2e-3, abs=1e-7)


def test_zeroing_effect_is_a_fresh_forward_with_the_activation_zeroed(setup):
    run = setup["run"]
    f = run.focus_info
    layer, ch, y, x = f["layer"], f["channel"], f["y"], f["x"]
    net = fresh_model(setup["ckpt"])
    mods = dict(net.named_modules())
    hp, hc, hy, hx = _target(run)
    out = {}
    grab = mods[hp].register_forward_hook(lambda m, i, o: out.__setitem__("logit", float(o[0, hc, hy, hx])))

    def zero(m, i, o):
        o = o.clone()
        o[0, ch, y, x] = 0
        return o

    with torch.no_grad():
        net(run.x)
        base = out["logit"]
        h = mods[layer].register_forward_hook(zero)
        try:
            net(run.x)
        finally:
            h.remove()
    grab.remove()
    assert f["effect"]["zeroed_delta"] == pytest.approx(out["logit"] - base, abs=2e-5)
    assert f["effect"]["zeroed_delta"] != 0


def test_the_worked_neuron_moves_the_logit_at_least_as_much_as_the_first_order_favourite(setup):
    """The worked neuron is chosen by measured effect: no bending neuron in the box whose gradient x activation
    is largest (fresh autograd here) moves the logit more when zeroed (fresh forward here)."""
    run = setup["run"]
    f = run.focus_info
    layer, stride = f["layer"], f["stride"]
    assert f["chosen_by"] == "effect" and f["inside_box"]
    assert abs(f["z"]) <= 3 and f["silu_slope"] <= 0.8
    net = fresh_model(setup["ckpt"])
    mods = dict(net.named_modules())
    hp, hc, hy, hx = _target(run)
    held = {}

    def keep(m, i, o):
        o = o.detach().requires_grad_(True)
        held["a"] = o
        return o

    hooks = [mods[layer].bn.register_forward_hook(lambda m, i, o: held.__setitem__("z", o.detach().clone())),
             mods[layer].register_forward_hook(keep),
             mods[hp].register_forward_hook(lambda m, i, o: held.__setitem__("logits", o))]
    try:
        net(run.x)
    finally:
        for h in hooks:
            h.remove()
    base = held["logits"][0, hc, hy, hx]
    base.backward()
    z, a = held["z"][0].double(), held["a"][0].detach().double()
    gxa = (held["a"].grad[0].double() * a).abs()
    _, h, w = z.shape
    box = run.head_trace[0]["box_xyxy"]  # photo pixels: back to input pixels with the letterbox numbers
    r, pad = run.meta["ratio"], run.meta["pad"]
    x0, y0, x1, y1 = box[0] * r + pad["left"], box[1] * r + pad["top"], box[2] * r + pad["left"], box[3] * r + pad["top"]
    cy = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
    cx = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
    cells = ((cy >= y0 - 1e-3) & (cy <= y1 + 1e-3))[:, None] & ((cx >= x0 - 1e-3) & (cx <= x1 + 1e-3))[None, :]
    slope = torch.sigmoid(z) * (1 + z * (1 - torch.sigmoid(z)))
    bend = (z.abs() <= 3) & (slope <= 0.8) & cells
    k = int(torch.where(bend, gxa, torch.full_like(gxa, -1)).flatten().argmax())
    c, rest = divmod(k, h * w)
    yy, xx = divmod(rest, w)

    def zero(m, i, o):
        o = o.clone()
        o[0, c, yy, xx] = 0
        return o

    out = {}
    with torch.no_grad():
        hk = [mods[layer].register_forward_hook(zero),
              mods[hp].register_forward_hook(lambda m, i, o: out.__setitem__("logit", float(o[0, hc, hy, hx])))]
        try:
            net(run.x)
        finally:
            for hh in hk:
                hh.remove()
    assert abs(f["effect"]["zeroed_delta"]) >= abs(out["logit"] - float(base)) - 2e-5


def test_when_no_zeroing_moves_the_logit_the_choice_says_first_order(setup, monkeypatch):
    """Zeroing changes below float32 rounding are not a ranking: the choice falls back to |grad x act| and says so."""
    run = setup["run"]
    layer = run.neuron_layer
    fx = run._effects
    real = fx.measure(layer, [])

    def flat(lyr, neurons):
        out = dict(real)
        out["zeroed_delta"] = [0.0] * len(neurons)  # as on a weak checkpoint: nothing measurable
        return out

    monkeypatch.setattr(fx, "measure", flat)
    box = run._kept[0][0, :4].tolist()
    c, y, x, n, basis = run.choose_by_effect(layer, box, run.focus_info["stride"])
    assert basis == "first-order" and n >= 1
    z = run.activation(layer)[0][0].double()
    assert abs(float(z[c, y, x])) <= 3
    # the largest |grad x act| among the bending cells whose centre lies in the box, found here by brute force
    stride = run.focus_info["stride"]
    _, h, w = z.shape
    best, pick = -1.0, None
    for yy in range(h):
        for xx in range(w):
            if not (box[0] <= (xx + 0.5) * stride <= box[2] and box[1] <= (yy + 0.5) * stride <= box[3]):
                continue
            for cc in range(z.shape[0]):
                v = float(z[cc, yy, xx])
                slope = 1 / (1 + math.exp(-v)) * (1 + v * (1 - 1 / (1 + math.exp(-v))))
                if abs(v) <= 3 and slope <= 0.8 and abs(float(real["grad_x_act"][cc, yy, xx])) > best:
                    best, pick = abs(float(real["grad_x_act"][cc, yy, xx])), (cc, yy, xx)
    assert (c, y, x) == pick


def test_the_page_says_so_when_no_neuron_matters_measurably(setup, tmp_path):
    from pipeline.report.render import environment
    from pipeline.report.sections import BUILDERS, Options

    run = setup["run"]
    s = BUILDERS["neurons"](run, tmp_path, Options())
    env = environment()
    measured = env.get_template("sections/neurons.html").render(section=s, **s.context)
    assert "the one that moved that logit most when set to 0" in measured and "matters measurably" not in measured
    assert "matters most" not in measured  # only a shortlist was measured: the page must not claim the layer's best
    flat = dict(s.context, f=dict(s.context["f"], chosen_on="first-order"))
    said = env.get_template("sections/neurons.html").render(section=s, **flat)
    assert "the one with the largest gradient x activation" in said
    assert f"setting each of the {run.focus_info['measured']} largest to 0 moved the logit by no more than float32 rounding" in said
    assert "moved that logit most" not in said


def test_a_layer_on_another_scales_branch_has_no_effect_and_says_so(setup):
    """model.16 feeds only the stride-16 and stride-32 heads: a stride-8 class logit does not depend on it at all.
    Oracles: torch autograd on a fresh model finds no path (grad is None) and a fresh forward with the whole layer
    zeroed leaves the logit bit for bit the same. Asking for it must not fail (the explorer answered 500)."""
    from pipeline.analysis.effect import LogitEffects

    run = setup["run"]
    head = run.net.model[-1]
    target = (f"model.{head.i}.cv3.0.2", 0, 1, 2)  # class 0's logit at a stride-8 cell
    fx = LogitEffects(run.net, run.x, target)
    m = fx.measure("model.16", [(3, 1, 1)])
    assert m["reaches"] is False and m["zeroed_delta"] == [0.0] and float(m["grad"].abs().max()) == 0.0

    net = fresh_model(setup["ckpt"])
    mods = dict(net.named_modules())
    seen = {}
    grab = mods[target[0]].register_forward_hook(lambda mod, i, o: seen.__setitem__("logit", o[0, 0, 1, 2]))
    held = {}

    def keep(mod, i, o):
        held["a"] = o.requires_grad_(True) if not o.requires_grad else o
        return held["a"]

    h = mods["model.16"].register_forward_hook(keep)
    net(run.x)
    h.remove()
    assert not seen["logit"].requires_grad  # no graph joins model.16 to this logit
    base = float(seen["logit"])
    h = mods["model.16"].register_forward_hook(lambda mod, i, o: torch.zeros_like(o))
    with torch.no_grad():
        net(run.x)
    h.remove()
    grab.remove()
    assert float(seen["logit"]) == base
    assert m["logit"] == pytest.approx(base, abs=1e-4)

    scale = int(run.logit_trace["layer"].split(".")[3])  # this run's own box, through its explorer-facing call
    assert scale < 2, "every layer reaches a stride-32 box: the fixture's top box must be a finer one"
    later = {0: "model.16", 1: "model.19"}[scale]  # the first Conv after the head input that box's branch reads
    e = run.effect(later, 3, 1, 1)
    assert e["reaches"] is False and e["zeroed_delta"] == 0.0 and e["grad_x_act"] == 0.0
    assert "never flows into" in e["words"]
