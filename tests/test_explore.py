"""``cardamage explore``'s JSON API, each answer checked against an independent oracle.

Oracles: our own forward hooks on the unfused model (shapes, feature maps), ``cardamage trace`` run as a
subprocess and ``probe.trace.trace_neuron`` (neurons), ``torch.sigmoid`` and Ultralytics' ``predict``
(detections), and an input gradient taken here (receptive fields). Bad parameters must be a 400 with
``{"error"}`` for every endpoint, never a 500.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from checkpoints import save_checkpoint
from starlette.testclient import TestClient

from pipeline.core.io import atomic_write_image
from pipeline.data.preprocess import model_input
from pipeline.data.synth import render_scene
from pipeline.explore import session as session_mod
from pipeline.explore.app import create_app
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model, model_stride
from pipeline.probe.trace import trace_neuron

IMGSZ = 320
REPO = Path(__file__).resolve().parent.parent
HAND = ("z_by_hand", "sigmoid_by_hand", "silu_by_hand", "dot", "bias")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_images):
    root = tmp_path_factory.mktemp("explore")
    ckpt = save_checkpoint(root / "best.pt", seed=2, imgsz=IMGSZ)
    scene, _ = render_scene(5, 416)
    synth = atomic_write_image(root / "scene.png", scene[:300])  # not square: the letterbox pads
    photos = [sample_images[0], synth]
    ex = Explorer(load_model(str(ckpt)), photos, imgsz=IMGSZ)
    return {"ckpt": ckpt, "photos": photos, "ex": ex, "client": TestClient(create_app(ex)), "root": root}


def own_hooks(ckpt, photo) -> dict:
    """Independent of the recorder: hooks of our own on every Ultralytics Conv (BN output = z, block output = a)
    and on the Detect head, in a plain forward pass of the unfused model on the letterboxed input."""
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.nn.modules.head import Detect

    net = load_model(str(ckpt)).model.float().eval()
    x, _ = model_input(photo, imgsz=IMGSZ, stride=model_stride(net), auto=True)
    seen, handles = {}, []
    for name, m in net.named_modules():
        if isinstance(m, Conv):
            handles.append(m.bn.register_forward_hook(
                lambda mod, i, o, n=name: seen.setdefault(n, {}).update(z=o.detach().clone())))
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: seen.setdefault(n, {}).update(i=list(i[0].shape), a=o.detach())))
        elif isinstance(m, Detect):
            handles.append(m.register_forward_hook(
                lambda mod, i, o, n=name: seen.setdefault(n, {}).update(i=[list(t.shape) for t in i[0]])))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return {"net": net, "x": x, "seen": seen}


def test_model_table_shapes_are_the_real_ones(setup):
    rows = setup["client"].get("/api/model", params={"photo": 1}).json()
    oracle = own_hooks(setup["ckpt"], setup["photos"][1])
    seen, modules = oracle["seen"], dict(oracle["net"].named_modules())
    convs = [r for r in rows if r["type"] == "Conv"]
    assert sorted(r["path"] for r in convs) == sorted(n for n in seen if "z" in seen[n])
    for r in convs:
        assert r["in_shape"] == seen[r["path"]]["i"] and r["out_shape"] == list(seen[r["path"]]["a"].shape)
        conv = modules[r["path"]].conv
        assert r["kernel"] == list(conv.kernel_size) and r["stride"] == list(conv.stride)
        assert r["params"] == sum(p.numel() for p in modules[r["path"]].parameters())
    head = rows[-1]
    assert head["type"] == "Detect" and head["in_shape"] == seen[head["path"]]["i"]
    assert head["params"] == sum(p.numel() for p in modules[head["path"]].parameters())
    assert oracle["x"].shape[2] != oracle["x"].shape[3]  # the photo is not square: shapes are this photo's
    assert rows == setup["client"].get("/api/model", params={"photo": "1"}).json()


def test_detections_are_predicts_with_all_logits(setup):
    from ultralytics import YOLO

    for i, photo in enumerate(setup["photos"]):
        dets = setup["client"].get("/api/detections", params={"photo": i}).json()
        result = YOLO(str(setup["ckpt"])).predict(str(photo), imgsz=IMGSZ, conf=0.25, verbose=False, device="cpu")[0]
        conf = sorted(result.boxes.conf.tolist(), reverse=True)
        assert len(dets) == len(conf) > 0
        assert sorted((d["score"] for d in dets), reverse=True) == pytest.approx(conf, abs=1e-5)
        for d in dets:
            logits = torch.tensor(d["logits"], dtype=torch.float64)
            assert d["sigmoids"] == pytest.approx(torch.sigmoid(logits).tolist(), abs=1e-12)
            assert d["logit"] == pytest.approx(d["logits"][d["class_id"]], abs=1e-6)
            assert d["score"] == pytest.approx(d["sigmoids"][d["class_id"]], abs=1e-6)
            assert d["score"] == pytest.approx(max(d["sigmoids"]), abs=1e-6)
            a = d["anchor"]
            assert set(a) >= {"scale", "y", "x"} and a["stride"] == [8.0, 16.0, 32.0][a["scale"]]


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_labels_are_the_label_files_boxes_matched_at_iou_half(setup):
    """Oracle: the label file read here with numpy (polygons -> their bounding box in photo pixels), IoU by hand."""
    photo = Path(setup["photos"][0])
    rows = [np.array(line.split(), dtype=np.float64)
            for line in (photo.parent.parent / "labels" / f"{photo.stem}.txt").read_text().splitlines() if line.strip()]
    h, w = cv2.imread(str(photo)).shape[:2]
    got = setup["client"].get("/api/labels", params={"photo": 0}).json()
    dets = setup["client"].get("/api/detections", params={"photo": 0}).json()
    assert got["iou_min"] == 0.5 and got["problem"] is None and len(got["labels"]) == len(rows) > 0
    for g, r in zip(got["labels"], rows):
        xy = r[1:].reshape(-1, 2) * [w, h]
        assert g["class_id"] == int(r[0])
        assert g["box_xyxy"] == pytest.approx([*xy.min(0), *xy.max(0)], abs=0.01)
        ious = [_iou(d["box_xyxy"], g["box_xyxy"]) for d in dets]
        assert g["best_iou"] == pytest.approx(max(ious, default=0.0), abs=1e-4)
        if g["found_by"] is not None:  # a box of its class at IoU >= 0.5, which says so in its own row
            d = dets[g["found_by"]]
            assert d["class_id"] == g["class_id"] and ious[g["found_by"]] >= 0.5
            assert d["label_match"].startswith(f"found labelled {g['class_name']}")
        else:  # no box of its class overlaps it enough, unless that box found another label
            takers = {x["found_by"] for x in got["labels"]}
            assert all(d["class_id"] != g["class_id"] or iou < 0.5 or k in takers for k, (d, iou) in enumerate(zip(dets, ious)))
    assert got["missed"] == sum(g["found_by"] is None for g in got["labels"])
    # the synthetic scene has no label file
    assert setup["client"].get("/api/labels", params={"photo": 1}).json() == {
        "labels": None, "missed": None, "iou_min": None, "problem": None}


def test_featuremap_png_is_the_map(setup):
    oracle = own_hooks(setup["ckpt"], setup["photos"][0])
    for layer, channel in [("model.0", 3), ("model.6.m.0.cv2", 17), ("model.22.cv3.1.0", 5)]:
        for stage, key in (("pre", "z"), ("post", "a")):
            r = setup["client"].get("/api/featuremap", params={"photo": 0, "layer": layer, "channel": channel,
                                                               "stage": stage})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
            m = oracle["seen"][layer][key][0, channel].double()
            assert img.shape[:2] == tuple(m.shape)
            assert float(r.headers["x-scale-max"]) == pytest.approx(float(m.max()), rel=1e-4, abs=1e-5)
            assert float(r.headers["x-scale-min"]) == pytest.approx(float(m.min()), rel=1e-4, abs=1e-5)
            y, x = divmod(int(m.abs().argmax()), m.shape[1])  # the strongest value is fully coloured
            b, g, red = (int(v) for v in img[y, x])
            assert g == 0 and ((red, b) == (255, 0) if m[y, x] > 0 else (red, b) == (0, 255))


def test_neuron_is_what_cardamage_trace_writes(setup):
    photo, layer, channel, y, x = setup["photos"][0], "model.4.m.0.cv2", 7, 9, 14
    out = setup["root"] / "trace.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "trace", "--weights", str(setup["ckpt"]), str(photo), "--layer", layer,
           "--channel", str(channel), "--y", str(y), "--x", str(x), "--imgsz", str(IMGSZ), "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    cli = json.loads(out.read_text())
    assert cli.pop("generator") == "cardamage trace"  # the file's own stamp and seal, not properties of the neuron
    assert cli.pop("seal").startswith("sealed-by-cardamage:")
    got = setup["client"].get("/api/neuron", params={"photo": 0, "layer": layer, "channel": channel, "y": y,
                                                     "x": x}).json()
    assert set(cli) <= set(got) and {"receptive_field_xyxy", "receptive_field_input_xyxy"} <= set(got)
    exact = ("layer", "type", "channel", "y", "x", "kernel", "stride", "padding", "dilation", "groups",
             "input_channels", "input_shape", "output_shape", "patch_origin", "n_products", "fused", "weights", "bias")
    assert {k: got[k] for k in exact} == {k: cli[k] for k in exact}
    # the server reads the neuron's input off a fused pass, the CLI off an unfused one: same to float32 rounding
    assert np.allclose(got["patch"], cli["patch"], rtol=1e-4, atol=1e-5)
    for k in ("z_by_hand", "sigmoid_by_hand", "silu_by_hand", "framework_pre", "framework_value"):
        assert got[k] == pytest.approx(cli[k], rel=1e-4, abs=1e-5), k
    assert got["rel_error"] <= 1e-5 and got["unfolded"]["z"] == pytest.approx(got["z_by_hand"], abs=1e-9)


def test_neuron_matches_trace_neuron_and_its_receptive_field(setup):
    """In process against ``trace_neuron`` for the stem (identical input: equal to the bit) and a deep layer; the
    receptive field against the bounding box of an input gradient taken here on the real input."""
    from ultralytics.utils.ops import scale_boxes

    oracle = own_hooks(setup["ckpt"], setup["photos"][1])
    net, x_in = oracle["net"], oracle["x"]
    photo_hw = cv2.imread(str(setup["photos"][1])).shape[:2]
    for layer, channel, y, x in [("model.0", 4, 0, 5), ("model.0", 2, 60, 90), ("model.15.cv2", 11, 12, 20),
                                 ("model.9.cv2", 3, 2, 3)]:
        got = setup["client"].get("/api/neuron", params={"photo": 1, "layer": layer, "channel": channel, "y": y,
                                                         "x": x}).json()
        ref = trace_neuron(net, x_in, layer, channel, y, x)
        for k in HAND:
            assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6) if layer != "model.0" else got[k] == ref[k]
        # receptive field: where d(sum of channels at (y, x))/d(input) is nonzero, in input then photo pixels
        inp = x_in.clone().requires_grad_(True)
        block = dict(net.named_modules())[layer]
        cap = {}
        h = block.register_forward_hook(lambda m, i, o, cap=cap: cap.update(a=o))
        try:
            with torch.enable_grad():
                net(inp)
                (g,) = torch.autograd.grad(cap["a"][0, :, y, x].sum(), inp)
        finally:
            h.remove()
        seen = g[0].abs().sum(0) > 0
        rows, cols = torch.nonzero(seen.any(1)).flatten(), torch.nonzero(seen.any(0)).flatten()
        box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        assert got["receptive_field_input_xyxy"] == box, layer
        on_photo = scale_boxes(tuple(x_in.shape[2:]), torch.tensor([box], dtype=torch.float32), photo_hw)[0]
        assert got["receptive_field_xyxy"] == pytest.approx(on_photo.tolist(), abs=0.01)


BAD = {
    "/api/detections": [{}, {"photo": 2}, {"photo": -1}, {"photo": "x"}, {"photo": "1.5"}],
    "/api/featuremap": [{"photo": 0, "layer": "model.99", "channel": 0},
                        {"photo": 0, "layer": "model.22", "channel": 0},
                        {"photo": 0, "layer": "model.0", "channel": 16},
                        {"photo": 0, "layer": "model.0", "channel": -1},
                        {"photo": 0, "layer": "model.0", "channel": "a"},
                        {"photo": 0, "layer": "model.0", "channel": "\uff11"},  # a fullwidth 1: int() reads it
                        {"photo": 0, "layer": "model.0", "channel": "1_0"},
                        {"photo": 0, "layer": "model.0", "channel": "9" * 5000},
                        {"photo": 0, "layer": "model.0", "channel": 0, "stage": "mid"},
                        {"photo": 9, "layer": "model.0", "channel": 0}, {"photo": 0, "channel": 0}],
    "/api/neuron": [{"photo": 0, "layer": "model.0", "channel": 0, "y": 160, "x": 0},
                    {"photo": 0, "layer": "model.0", "channel": 0, "y": 0, "x": 160},
                    {"photo": 0, "layer": "model.0", "channel": 0, "y": -1, "x": 0},
                    {"photo": 0, "layer": "model.0", "channel": 0, "y": "1e2", "x": 0},
                    {"photo": 0, "layer": "model.0", "channel": 0, "y": 1},
                    {"photo": 0, "layer": "model.0", "channel": 99, "y": 0, "x": 0},
                    {"photo": 0, "layer": "<script>", "channel": 0, "y": 0, "x": 0},
                    {"photo": 3, "layer": "model.0", "channel": 0, "y": 0, "x": 0}],
    "/api/model": [{"photo": 5}, {"photo": "zero"}],
    "/api/image": [{"photo": 2}, {}], "/api/cam": [{"photo": -3}], "/api/summary": [{"photo": "0x1"}],
    "/api/labels": [{"photo": 9}, {"photo": "a"}],
}


@pytest.mark.parametrize("url,params", [(u, p) for u, ps in BAD.items() for p in ps])
def test_bad_parameters_are_400_with_a_reason(setup, url, params, caplog):
    r = setup["client"].get(url, params=params)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error"} and 0 < len(r.json()["error"]) < 200
    assert "Traceback" not in caplog.text


def test_unknown_paths_and_the_page(setup):
    c = setup["client"]
    assert c.get("/nothing").status_code == 404 and "error" in c.get("/nothing").json()
    page = c.get("/")
    assert page.status_code == 200 and "explore.js" in page.text
    for f in ("explore.js", "explore.css"):
        assert c.get(f"/static/{f}").status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert c.get("/api/photos").json() == [{"index": i, "name": p.name} for i, p in enumerate(setup["photos"])]


def test_two_requests_at_once_build_one_run(setup, monkeypatch):
    built = []

    class Counting(session_mod.PhotoRun):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(session_mod, "PhotoRun", Counting)
    ex = Explorer(setup["ex"].yolo, setup["photos"], imgsz=IMGSZ)
    client = TestClient(create_app(ex))
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(client.get("/api/detections", params={"photo": 1})))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and [r.status_code for r in answers] == [200] * 3
    assert answers[0].json() == answers[1].json() == answers[2].json()


def test_cli_rejects_a_missing_photo_and_defaults_to_loopback(setup, capsys):
    from pipeline.cli import build_parser, main

    assert main(["explore", "--weights", str(setup["ckpt"]), str(setup["root"] / "nope.jpg"), "--no-browser"]) == 1
    assert "nope.jpg" in capsys.readouterr().err
    args = build_parser(only="explore").parse_args(["explore", "--weights", "w.pt", "a.jpg"])
    assert args.host == "127.0.0.1" and args.port == 8765 and not args.no_browser


def test_cli_on_a_busy_port_is_one_line_and_announces_nothing(setup, capsys):
    """The port is bound before the 'serving on' line: a taken port is one error line and exit code 1."""
    import socket

    from pipeline.cli import main

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        rc = main(["explore", "--weights", str(setup["ckpt"]), str(setup["photos"][0]), "--no-browser",
                   "--port", str(port)])
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert rc == 1
    assert [line for line in err.splitlines() if line.startswith(("error", "cardamage explore"))] == [
        f"error: 127.0.0.1:{port}: Address already in use"]
