"""The report's per-photo run: one decode, one forward pass for every section that needs no gradient, the
caller's model left as it was, and ``run.neuron`` equal to what ``cardamage trace`` computes.

Decodes and passes are counted by wrapping the functions that do them (OpenCV's decoders, the Detect
head's forward), not by asking the run.
"""

from __future__ import annotations

import json
import logging
import os

import cv2
import pytest
import torch
from checkpoints import save_checkpoint
from ultralytics.utils import LOGGER

from pipeline.core import io as core_io
from pipeline.core.io import atomic_write_image
from pipeline.data.preprocess import model_input
from pipeline.data.synth import render_scene
from pipeline.model.load import load_model, model_stride
from pipeline.probe.layers import conv_blocks, is_fused
from pipeline.probe.trace import trace_neuron
from pipeline.report import page
from pipeline.analysis.run import PhotoRun
from pipeline.report.sections import BUILDERS, Options

IMGSZ = 160
NO_GRADIENT = ("map", "input", "neurons", "weights", "biases", "activations", "hidden", "output")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trained-looking checkpoint: its BatchNorm is not the identity, so a fused copy differs from it."""
    return save_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", seed=3, imgsz=IMGSZ)


@pytest.fixture
def counters(monkeypatch):
    """Count photo decodes (OpenCV's decoders, which Ultralytics' reader and ours call) and Detect-head forwards."""
    from ultralytics.nn.modules.head import Detect

    counts = {"decode": 0, "forward": 0}

    def counting(f):
        def wrapped(*args, **kwargs):
            counts["decode"] += 1
            return f(*args, **kwargs)

        return wrapped

    for name in ("imread", "imdecode"):
        monkeypatch.setattr(cv2, name, counting(getattr(cv2, name)))
    real_forward = Detect.forward

    def forward(self, x, *args, **kwargs):
        # a pass over the photo; the meta-device check of the model's shapes (load.check_forward) holds no pixel
        counts["forward"] += x[0].device.type != "meta"
        return real_forward(self, x, *args, **kwargs)

    monkeypatch.setattr(Detect, "forward", forward)
    return counts


def test_one_decode_one_recorded_pass_and_the_named_effect_passes_for_the_sections_without_gradient(checkpoint, sample_images, tmp_path,
                                                                            counters):
    yolo = load_model(checkpoint)
    assert counters == {"decode": 0, "forward": 0}
    run = PhotoRun(yolo, sample_images[0], imgsz=IMGSZ)
    opts = Options(layercam=False)
    for sid in NO_GRADIENT:
        BUILDERS[sid](run, tmp_path, opts)
    run.neuron("model.2.cv1", 1, 3, 4)  # one more neuron afterwards: read off the record
    run.neuron("model.8.cv2", 7, 1, 2)
    # the recorded pass, and the worked neuron's effect on the top box (named passes from model.4 on): one to
    # take the gradient, one to zero the shortlist (the chosen neuron's own change among them), one to zero the
    # layer's top channels at its cell
    assert run.detections and run.effect_passes == 3
    assert counters["decode"] == 1 and counters["forward"] == 1 + run.effect_passes, counters
    assert (tmp_path / "13_detections.png").stat().st_size > 1000


def test_gradient_and_layercam_are_named_extra_passes(checkpoint, sample_images, tmp_path, counters):
    run = PhotoRun(load_model(checkpoint), sample_images[0], imgsz=IMGSZ)
    assert counters["forward"] == 1
    g = run.gradients(imgsz=64, batch=2)
    assert counters["forward"] > 1 and set(g["variants"]) == {"silu", "sigmoid", "tanh", "relu"}
    n = counters["forward"]
    assert run.gradients(imgsz=64, batch=2) is g and counters["forward"] == n  # kept, not run again
    said, before = [], LOGGER.level
    assert before <= logging.INFO  # Ultralytics' own default: its info lines would reach the terminal
    listener = logging.Handler(logging.DEBUG)
    listener.emit = said.append
    LOGGER.addHandler(listener)
    try:
        run.layercam(tmp_path / "cam")
    finally:
        LOGGER.removeHandler(listener)
    assert LOGGER.level == before  # restored after
    assert not [r for r in said if "LayerCAM" in r.getMessage()]  # Ultralytics' "Saving ... (LayerCAM)" line: not ours
    assert counters["forward"] > n
    assert counters["decode"] == 1 + 1  # the photo once; LayerCAM's overlay JPEG read back once


def test_layercam_states_how_many_anchors_it_explained(checkpoint, sample_images, tmp_path):
    """The count of anchors passing conf is Ultralytics' own (its warning when it explains only the top 16)."""
    import re

    from ultralytics.nn.autobackend import AutoBackend
    from ultralytics.utils.plotting import class_activation_map

    yolo = load_model(checkpoint)
    x, _ = model_input(cv2.imread(str(sample_images[0])), imgsz=IMGSZ, stride=model_stride(yolo.model), auto=True)
    with torch.no_grad():
        scores = yolo.model.eval()(x)[0][0, 4:].amax(0).sort(descending=True).values  # sigmoid scores, per anchor
    assert len(scores) > 40
    conf = float(scores[29] + scores[30]) / 2  # 30 anchors above it, none on it
    said = []
    listener = logging.Handler(logging.DEBUG)
    listener.emit = said.append
    LOGGER.addHandler(listener)
    try:
        backend = AutoBackend(model=load_model(checkpoint).model, device=torch.device("cpu"), fuse=True, verbose=False)
        class_activation_map(backend, x, ["oracle"], tmp_path / "oracle", conf=conf)
        ultralytics_count = int(re.search(r"out of (\d+)", [r.getMessage() for r in said if "Explaining" in r.getMessage()][0])[1])
        said.clear()
        lc = PhotoRun(yolo, sample_images[0], imgsz=IMGSZ, conf=conf).layercam(tmp_path / "cam")
    finally:
        LOGGER.removeHandler(listener)
    assert ultralytics_count == 30
    assert (lc["candidates"], lc["explained"], lc["topk"]) == (30, 16, 16)
    assert not [r for r in said if "Explaining" in r.getMessage()]  # the report says it; the terminal stays quiet
    assert not any(isinstance(f, logging.Filter) and type(f).__name__ == "_DropTopkWarning" for f in LOGGER.filters)


def test_callers_model_is_left_unfused_and_unchanged(checkpoint, sample_images, tmp_path):
    yolo = load_model(checkpoint)
    net = yolo.model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    training, threads = net.training, torch.get_num_threads()
    grads = [p.requires_grad for p in net.parameters()]
    run = PhotoRun(yolo, sample_images[1], imgsz=IMGSZ)
    for sid in BUILDERS:
        BUILDERS[sid](run, tmp_path, Options(grad_imgsz=64, grad_batch=1))
    assert all(is_fused(b) for b in conv_blocks(run.net).values())  # the run's own copy is fused ...
    assert not any(is_fused(b) for b in conv_blocks(net).values())  # ... the caller's is not
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training == training and torch.get_num_threads() == threads
    assert getattr(yolo, "predictor", None) is None  # predict never ran on the caller's wrapper
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == grads


@pytest.mark.parametrize("layer, channel, y, x", [("model.0", 3, 10, 12), ("model.2.cv1", 5, 0, 39),
                                                  ("model.15.cv2", 9, 19, 0), ("model.22.cv3.0.1", 2, 7, 9)])
def test_neuron_is_what_cardamage_trace_computes(checkpoint, sample_images, layer, channel, y, x):
    yolo = load_model(checkpoint)
    run = PhotoRun(yolo, sample_images[2], imgsz=IMGSZ)
    got = run.neuron(layer, channel, y, x)
    xin, _ = model_input(core_io.read_image(sample_images[2]), IMGSZ, stride=model_stride(yolo))
    want = trace_neuron(yolo, xin, layer, channel, y, x)  # what `cardamage trace` runs
    assert torch.equal(xin, run.x)
    assert {k for k in want} == {k for k in got}
    for k in ("layer", "channel", "y", "x", "kernel", "stride", "groups", "input_channels", "patch_origin", "fused"):
        assert got[k] == want[k], k
    # a fused pass and an unfused one round float32 differently: equal to well within the trace's tolerance
    for k in ("dot", "z_by_hand", "silu_by_hand", "framework_pre", "framework_value"):
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-5), k
    assert got["rel_error"] <= 1e-5
    with pytest.raises(ValueError):
        run.neuron("model.0", 10_000, 0, 0)
    with pytest.raises(ValueError):
        run.neuron("model.99", 0, 0, 0)


@pytest.mark.slow
def test_detections_are_predicts_in_a_fresh_process(tmp_path):
    """In a process where nothing imported torchvision or set torch's threads yet (both change Ultralytics'
    numbers: its NMS kernel and float32 sums), the run's detections equal predict's to the bit."""
    import subprocess
    import sys


    checkpoint = save_checkpoint(tmp_path / "best.pt", seed=1, imgsz=320)  # test_report's: ~300 boxes, near ties
    scene = atomic_write_image(tmp_path / "scene.png", render_scene(7, 320)[0])
    code = (
        "import json, sys\n"
        "from pipeline.core.io import read_image\n"
        "from pipeline.model.load import load_model\n"
        "from pipeline.model.predict import predict_images\n"
        "from pipeline.analysis.run import PhotoRun\n"
        "run = PhotoRun(load_model(sys.argv[1]), sys.argv[2], imgsz=320, conf=0.25)\n"
        "mine = run.detections\n"
        "theirs = predict_images(load_model(sys.argv[1]), [read_image(sys.argv[2])], conf=0.25, imgsz=320)[0]\n"
        "print(json.dumps([mine, theirs]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint), str(scene)], capture_output=True, text=True,
                          timeout=300, check=True)
    mine, theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert theirs and mine == theirs


def _pid_marking(monkeypatch, sid: str, fail_outside: int | None = None):
    """Wrap section ``sid`` so its numbers say which process built it (and, optionally, fail outside one pid)."""

    real = page.BUILDERS[sid]

    def marked(run, files, opts):
        if fail_outside is not None and os.getpid() != fail_outside:
            raise RuntimeError("a failure in the side process")
        section = real(run, files, opts)
        section.numbers["built_by_pid"] = os.getpid()
        return section

    monkeypatch.setitem(page.BUILDERS, sid, marked)


def _figures(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _build(run, folder, opts, side=None, monkeypatch=None):

    if side is not None:
        monkeypatch.setattr(page, "SIDE_SECTIONS", side)
    folder.mkdir()
    timings = {}
    sections = page.build_sections(run, folder, opts, timings)
    assert [s.id for s in sections] == [sid for sid, _ in page.SECTIONS]
    assert set(timings) >= set(page.BUILDERS)
    return {s.id: s for s in sections}


needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the side process needs fork")


@pytest.fixture
def one_thread():
    """Torch on one thread, as the report on 2 cores (and its side process): float64 sums then agree to the bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_fork
def test_side_process_builds_the_same_sections_as_one_process(checkpoint, sample_images, tmp_path, monkeypatch,
                                                               one_thread):
    """Sections drawn by the forked side process equal, numbers and figure bytes, those built in one process."""

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    _pid_marking(monkeypatch, "weights")
    _pid_marking(monkeypatch, "training")
    opts = Options(grad_imgsz=64, grad_batch=1, layercam=False)
    run = PhotoRun(load_model(checkpoint), sample_images[0], imgsz=IMGSZ)
    two = _build(run, tmp_path / "two", opts)
    one = _build(run, tmp_path / "one", opts, side=(), monkeypatch=monkeypatch)
    assert two["weights"].numbers.pop("built_by_pid") != os.getpid()  # drawn by the side process ...
    assert two["training"].numbers.pop("built_by_pid") == os.getpid()  # ... while this one ran the gradients
    assert one["weights"].numbers.pop("built_by_pid") == one["training"].numbers.pop("built_by_pid") == os.getpid()
    for sid in page.BUILDERS:
        assert json.dumps(page._jsonable(two[sid].numbers)) == json.dumps(page._jsonable(one[sid].numbers)), sid
    assert len(_figures(tmp_path / "two")) >= 10
    assert _figures(tmp_path / "two") == _figures(tmp_path / "one")


@needs_fork
def test_a_failing_side_process_leaves_the_sections_to_this_one(checkpoint, sample_images, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    _pid_marking(monkeypatch, "hidden", fail_outside=os.getpid())
    run = PhotoRun(load_model(checkpoint), sample_images[0], imgsz=IMGSZ)
    built = _build(run, tmp_path / "out", Options(grad_imgsz=64, grad_batch=1, layercam=False))
    assert built["hidden"].numbers["built_by_pid"] == os.getpid()
    assert (tmp_path / "out" / "07_pre_post.png").stat().st_size > 1000


def test_one_core_builds_every_section_here(checkpoint, sample_images, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    _pid_marking(monkeypatch, "input")
    run = PhotoRun(load_model(checkpoint), sample_images[0], imgsz=IMGSZ)
    built = _build(run, tmp_path / "out", Options(grad_imgsz=64, grad_batch=1, layercam=False))
    assert built["input"].numbers["built_by_pid"] == os.getpid()
