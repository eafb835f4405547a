"""``/api/neuron`` on the head's final convs (the logits' own arithmetic) and a clicked neuron's effect on the
followed box, each against an oracle of its own: a plain hook on ``predict``'s network and its ``conf``,
autograd and a zeroing hook on a fresh unfused Ultralytics model."""

from __future__ import annotations

import pytest
import torch
from checkpoints import save_checkpoint
from starlette.testclient import TestClient
from test_score import fresh_model, predict_with_hooks

from pipeline.explore.app import create_app
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model

IMGSZ = 160


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_images):
    ckpt = save_checkpoint(tmp_path_factory.mktemp("xscore") / "best.pt", seed=3, imgsz=IMGSZ)
    ex = Explorer(load_model(str(ckpt)), [sample_images[0]], imgsz=IMGSZ)
    client = TestClient(create_app(ex))
    dets = client.get("/api/detections", params={"photo": 0}).json()
    assert dets, "the checkpoint must report a box on this photo"
    return {"ckpt": ckpt, "photo": sample_images[0], "client": client, "top": dets[0]}


def test_model_lists_the_final_head_convs_without_batchnorm_or_silu(setup):
    rows = {r["path"]: r for r in setup["client"].get("/api/model").json()}
    net = load_model(str(setup["ckpt"])).model
    for name, m in net.named_modules():
        if name.startswith("model.22.cv") and isinstance(m, torch.nn.Conv2d) and name.count(".") == 4 \
                and m.kernel_size == (1, 1) and m.bias is not None:
            r = rows[name]
            assert r["type"] == "Conv2d" and r["batchnorm"] is False and r["activation"] is None
            assert r["out_shape"][1] == m.out_channels and r["in_shape"][1] == m.in_channels
            assert r["params"] == m.weight.numel() + m.bias.numel()


def test_a_head_neuron_is_the_raw_logit_and_its_sigmoid_is_predicts_conf(setup):
    top, a = setup["top"], setup["top"]["anchor"]
    layer = f"model.22.cv3.{a['scale']}.2"
    r = setup["client"].get("/api/neuron", params={"photo": 0, "layer": layer, "channel": top["class_id"],
                                                   "y": a["y"], "x": a["x"]})
    assert r.status_code == 200
    t = r.json()
    result, seen = predict_with_hooks(setup["ckpt"], setup["photo"], [layer])
    assert abs(t["logit"] - float(seen[layer][0, top["class_id"], a["y"], a["x"]])) <= 1e-5
    assert abs(t["sigmoid_by_hand"] - float(result.boxes.conf[0])) <= 1e-6
    assert t["kind"] == "logit" and t["batchnorm"] is False and t["activation"] is None and t["detection"] == 0
    assert "no BatchNorm" in t["note"] and "no SiLU" in t["note"]
    assert len(t["terms"]) == t["input_channels"] == net_in_channels(setup["ckpt"], layer)
    assert sum(t["terms"]) + t["bias"] == pytest.approx(t["logit"], abs=1e-9)
    # the box branch answers too: one DFL bin, its raw output
    box = f"model.22.cv2.{a['scale']}.2"
    _, seen = predict_with_hooks(setup["ckpt"], setup["photo"], [box])
    b = setup["client"].get("/api/neuron", params={"photo": 0, "layer": box, "channel": 17, "y": a["y"],
                                                   "x": a["x"]}).json()
    assert abs(b["logit"] - float(seen[box][0, 17, a["y"], a["x"]])) <= 1e-5
    assert (b["side"], b["bin"]) == (1, 1) and b["sigmoid_by_hand"] is None
    png = setup["client"].get("/api/featuremap", params={"photo": 0, "layer": box, "channel": 17})
    assert png.status_code == 200 and float(png.headers["X-Scale-Max"]) == pytest.approx(
        float(seen[box][0, 17].max()), abs=1e-5)


@pytest.mark.parametrize("params", [{"layer": "model.22.cv3.0.2", "channel": 6, "y": 0, "x": 0},
                                    {"layer": "model.22.cv3.0.2", "channel": 0, "y": 99, "x": 0},
                                    {"layer": "model.22.cv3.0.3", "channel": 0, "y": 0, "x": 0},
                                    {"layer": "model.22.cv3.0", "channel": 0, "y": 0, "x": 0}])
def test_bad_head_requests_are_400(setup, params):
    r = setup["client"].get("/api/neuron", params={"photo": 0, **params})
    assert r.status_code == 400 and r.json()["error"]


def test_a_clicked_neuron_says_how_much_it_moved_the_top_box_logit(setup):
    top, a = setup["top"], setup["top"]["anchor"]
    layer, ch, y, x = "model.6.cv1", 5, 2, 3
    t = setup["client"].get("/api/neuron", params={"photo": 0, "layer": layer, "channel": ch, "y": y, "x": x}).json()
    e = t["effect"]
    net = fresh_model(setup["ckpt"])
    mods = dict(net.named_modules())
    target = f"model.22.cv3.{a['scale']}.2"
    held = {}

    def keep(m, i, o):
        o = o.detach().requires_grad_(True)
        held["a"] = o
        return o

    from pipeline.data.preprocess import model_input
    from pipeline.core.io import read_image
    from pipeline.model.load import model_stride

    xin, _ = model_input(read_image(setup["photo"]), imgsz=IMGSZ, stride=model_stride(net), auto=True)
    hooks = [mods[layer].register_forward_hook(keep),
             mods[target].register_forward_hook(lambda m, i, o: held.__setitem__("out", o))]
    try:
        net(xin)
    finally:
        for h in hooks:
            h.remove()
    logit = held["out"][0, top["class_id"], a["y"], a["x"]]
    logit.backward()
    assert e["grad_x_act"] == pytest.approx(float(held["a"].grad[0, ch, y, x] * held["a"][0, ch, y, x].detach()),
                                            rel=2e-3, abs=1e-7)

    def zero(m, i, o):
        o = o.clone()
        o[0, ch, y, x] = 0
        return o

    with torch.no_grad():
        hooks = [mods[layer].register_forward_hook(zero),
                 mods[target].register_forward_hook(lambda m, i, o: held.__setitem__("z", o))]
        try:
            net(xin)
        finally:
            for h in hooks:
                h.remove()
    assert e["zeroed_delta"] == pytest.approx(float(held["z"][0, top["class_id"], a["y"], a["x"]] - logit), abs=2e-5)
    assert e["words"]


def test_the_page_asks_the_effect_apart_and_gets_the_same_numbers(setup):
    """The page shows a neuron's arithmetic first (``effect=0``: no pass, no backward) and asks /api/effect next;
    both answers carry the numbers the test above checked against autograd and a zeroed forward."""
    c = setup["client"]
    q = {"photo": 0, "layer": "model.6.cv1", "channel": 5, "y": 2, "x": 3}
    full = c.get("/api/neuron", params=q).json()
    quick = c.get("/api/neuron", params={**q, "effect": 0}).json()
    assert "effect" not in quick and {k: v for k, v in full.items() if k != "effect"} == quick
    assert c.get("/api/effect", params=q).json() == {"effect": full["effect"]}
    assert c.get("/api/neuron", params={**q, "effect": "yes"}).status_code == 400
    assert c.get("/api/effect", params={**q, "channel": 10**6}).status_code == 400
    head = {"photo": 0, "layer": "model.22.cv3.0.2", "channel": 0, "y": 0, "x": 0}
    assert c.get("/api/effect", params=head).json() == {"effect": None}  # a final conv is a logit itself


def net_in_channels(ckpt, layer: str) -> int:
    """The conv's input channels, read off a fresh Ultralytics model."""
    return dict(load_model(str(ckpt)).model.named_modules())[layer].in_channels
