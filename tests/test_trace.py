"""One neuron by hand (float64) against the float32 hooks, and reported scores back to their logits.

The oracle for the neuron is the hooked framework value; the hand computation is checked to be a real
recomputation (its patch is the layer input's window, its weights are the folded BN weights, and the
unfolded route agrees). For the head, the oracle is the ``conf`` Ultralytics itself reports.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pipeline  # noqa: F401  (offline env before ultralytics)
from pipeline.cli import main
from pipeline.probe.recorder import LayerRecorder
from pipeline.data.preprocess import model_input
from pipeline.probe.layers import conv_blocks
from pipeline.probe.fold import fold_bn
from pipeline.model.load import load_model, model_stride
from pipeline.probe.trace import REL_TOL, trace_head, trace_neuron
from test_inspect import make_checkpoint

IMGSZ = 256


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", seed=3)


def _model(kind, ckpt_path):
    if kind == "yaml":
        torch.manual_seed(0)
        return load_model("yolov8n.yaml", nc=6)
    return load_model(ckpt_path)


@pytest.mark.parametrize("kind,fused", [("yaml", False), ("trained", False), ("trained", True)])
def test_neuron_by_hand_at_random_positions(kind, fused, ckpt_path, sample_images):
    yolo = _model(kind, ckpt_path)
    if fused:
        yolo.model.fuse(verbose=False)
    rng = random.Random(f"{kind}-{fused}")
    blocks = conv_blocks(yolo)
    paths = list(blocks)
    big = 0
    for image in rng.sample(sample_images, 3):
        x, _ = model_input(image, IMGSZ, stride=model_stride(yolo))
        with LayerRecorder(yolo, mode="tensors", head=False, keep_inputs=True) as rec:
            rec(x)
        for path in rng.sample(paths, 4) + ["model.0"]:
            _, c, h, w = rec.activations[path][0].shape
            ch, y, xx = rng.randrange(c), rng.randrange(h), rng.randrange(w)
            t = trace_neuron(yolo, x, path, ch, y, xx)
            # the framework value the trace compares with is the one the full recording saw
            assert t["framework_pre"] == float(rec.activations[path][0][0, ch, y, xx])
            assert t["framework_value"] == float(rec.activations[path][1][0, ch, y, xx])
            assert t["rel_error"] <= REL_TOL and t["rel_error_pre"] <= REL_TOL, (path, t["abs_error"])
            # the hand numbers are real: SiLU by formula, weights = folded BN, patch = the input window
            assert t["silu_by_hand"] == pytest.approx(t["z_by_hand"] / (1 + math.exp(-t["z_by_hand"])), rel=1e-12)
            w, b = fold_bn(blocks[path], torch.float64)
            assert torch.equal(torch.tensor(t["weights"], dtype=torch.float64), w[ch])
            assert t["bias"] == float(b[ch])
            k, s, p = t["kernel"][0], t["stride"][0], t["padding"][0]
            inp = F.pad(rec.inputs[path][0].double(), (p, p, p, p))
            window = inp[:, y * s:y * s + k, xx * s:xx * s + k]
            assert torch.equal(torch.tensor(t["patch"], dtype=torch.float64), window)
            if not fused:
                assert t["unfolded"]["z"] == pytest.approx(t["z_by_hand"], rel=1e-9, abs=1e-12)
            big += abs(t["framework_value"]) > 0.1
    if kind == "trained":
        assert big >= 5  # randomized BN keeps activations alive, so the comparison is not 0 == 0


@pytest.mark.parametrize("kind", ["yaml", "trained"])
def test_head_logit_sigmoid_equals_ultralytics_conf(kind, ckpt_path, sample_images):
    yolo = _model(kind, ckpt_path)
    conf = 0.001 if kind == "yaml" else 0.25
    h = trace_head(yolo, sample_images[5], imgsz=IMGSZ, conf=conf)
    dets = h["detections"]
    assert len(dets) == h["n_reported"] > 0
    result = yolo.predict(str(sample_images[5]), imgsz=IMGSZ, conf=conf, verbose=False, save=False)[0]
    for d, box, score, cls in zip(dets, result.boxes.xyxy, result.boxes.conf, result.boxes.cls):
        assert d["box_matches"] and d["class_id"] == int(cls)
        assert d["sigmoid_by_hand"] == pytest.approx(float(score), abs=1e-5)
        assert abs(d["sigmoid_by_hand"] - 1 / (1 + math.exp(-d["logit"]))) < 1e-12
        assert d["is_max_logit"]  # NMS keeps the best class per anchor, and sigmoid keeps the order
        gy, gx = d["grid_y"], d["grid_x"]
        assert 0 <= gy < h["grid_shapes"][d["scale"]][0] and 0 <= gx < h["grid_shapes"][d["scale"]][1]
        assert d["stride"] * h["grid_shapes"][d["scale"]][1] == IMGSZ


def test_trace_cli_json(ckpt_path, sample_images, tmp_path, capsys):
    out = tmp_path / "trace.json"
    argv = ["trace", "--weights", str(ckpt_path), str(sample_images[9]), "--layer", "model.6.m.1.cv2",
            "--channel", "17", "--y", "5", "--x", "11", "--imgsz", str(IMGSZ), "--out", str(out), "--head", "--conf", "0.05"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "SiLU(z) = z * sigmoid(z)" in printed and "Ultralytics conf" in printed
    t = json.loads(out.read_text())
    for key in ("patch", "weights", "bias", "z_by_hand", "silu_by_hand", "framework_value", "abs_error", "head"):
        assert key in t
    patch, weights = np.array(t["patch"]), np.array(t["weights"])
    assert patch.shape == weights.shape == (64, 3, 3)  # model.6 C2f bottleneck: 64 -> 64, 3x3
    z = float((patch * weights).sum() + t["bias"])
    assert z == pytest.approx(t["z_by_hand"], rel=1e-12)
    assert t["abs_error"] == pytest.approx(abs(z / (1 + math.exp(-z)) - t["framework_value"]), abs=1e-12)
    assert t["abs_error"] <= REL_TOL * max(1.0, abs(t["framework_value"]))
    assert all(d["abs_error"] <= 1e-5 for d in t["head"]["detections"])


def test_trace_cli_bad_input(ckpt_path, sample_images, tmp_path, capsys):
    image = str(sample_images[0])
    base = ["trace", "--weights", str(ckpt_path), image, "--imgsz", str(IMGSZ), "--channel", "0", "--y", "0", "--x", "0"]
    assert main(base + ["--layer", "model.4"]) == 1  # a C2f, not a Conv block
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a Conv block" in err[0]
    assert main(["trace", "--weights", str(ckpt_path), image, "--imgsz", str(IMGSZ), "--layer", "model.0",
                 "--channel", "0", "--y", "999", "--x", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside" in err[0]
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    assert main(["trace", "--weights", str(bad), image, "--layer", "model.0", "--channel", "0", "--y", "0", "--x", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}")
