"""The training watch (pipeline/probe/watch.py) against independent oracles.

- the watch does not change training: same seed, bit-equal last.pt with and without it;
- a recorded gradient norm equals a separate autograd pass of Ultralytics' own loss (``model.loss``,
  ``v8DetectionLoss``) on the same batch and weights, norms taken by numpy in float64;
- an update ratio equals numpy's ||W_t - W_{t-1}|| / ||W_{t-1}|| of two weight snapshots the test saved;
- a run killed mid-epoch and resumed leaves each record once, in order;
- the probe's sigmoid is the sigmoid of its logit; AP equals what Ultralytics' validator reported.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from pipeline.model.train import train
from pipeline.probe.watch import TrainingWatch, append_line, read_watch, record_points

TINY = dict(epochs=1, imgsz=64, batch=8, nbs=8, workers=0, device="cpu", seed=0, deterministic=True,
            lr0=0.01, warmup_epochs=0, plots=False)


def chain(*dicts) -> dict:
    """Several ``{event: fn}`` dicts as one ``{event: [fn, ...]}``, as train() takes them."""
    events: dict[str, list] = {}
    for d in dicts:
        for event, fn in d.items():
            events.setdefault(event, []).append(fn)
    return events


def test_record_points_and_torn_lines(tmp_path):
    assert sorted(record_points(100)) == [1, 10, 50]
    assert sorted(record_points(4)) == [1, 2]  # 10 % of 4 rounds up to the first batch; the 4th is the epoch's
    assert record_points(1) == set()  # the epoch's own record covers a one-batch epoch
    path = tmp_path / "w.jsonl"
    append_line(path, {"epoch": 0, "step": 1})
    append_line(path, {"epoch": 0, "step": 2})
    with open(path, "a") as f:
        f.write('{"epoch": 1, "st')  # a crash mid-write
    assert [r["step"] for r in read_watch(path)] == [1, 2]


@pytest.fixture(scope="module")
def watched(synth_data, tmp_path_factory):
    """One tiny run without the watch and the same run with it (a record every batch), plus what the test saw."""
    root = tmp_path_factory.mktemp("watch")
    plain = train(synth_data, root / "plain", **TINY)
    seen = {"batches": [], "before": [], "after": [], "args": None, "yaml": None, "ap": None}

    def on_train_start(trainer):
        seen["args"], seen["yaml"] = copy.deepcopy(trainer.model.args), copy.deepcopy(trainer.model.yaml)
        own = trainer.preprocess_batch

        def grab(batch):
            batch = own(batch)
            if len(seen["batches"]) < 2:
                seen["batches"].append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            return batch

        trainer.preprocess_batch = grab

    def state(trainer):
        return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def before(trainer):
        if len(seen["before"]) < 2:
            seen["before"].append(state(trainer))

    def after(trainer):  # runs after the watch's own on_train_batch_end (its record for this batch)
        seen["after"].append(state(trainer))

    def fit_end(trainer):
        if trainer.validator is not None and seen["ap"] is None:
            m = trainer.validator.metrics
            seen["ap"] = {trainer.model.names[int(c)]: float(ap) for c, ap in zip(m.ap_class_index, m.box.ap50)}

    with TrainingWatch(every_batches=1) as watch:
        extra = {"on_train_start": on_train_start, "on_train_batch_start": before, "on_train_batch_end": after,
                 "on_fit_epoch_end": fit_end}
        m = train(synth_data, root / "watched", callbacks=chain(watch.callbacks(), extra), **TINY)
    return {"plain": plain, "watched": m, "root": root, "seen": seen,
            "records": read_watch(root / "watched" / "watch.jsonl")}


def _weights(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).state_dict()


@pytest.mark.slow
def test_watch_does_not_change_training(watched):
    a = _weights(watched["root"] / "plain" / "weights" / "last.pt")
    b = _weights(watched["root"] / "watched" / "weights" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the watch did record something that moved: a test of equal weights must not pass on a no-op
    assert any(r["blocks"]["model.0"]["update_ratio"] > 0 for r in watched["records"])


@pytest.mark.slow
def test_recorded_grad_norm_is_ultralytics_loss_autograd(watched):
    """Record 1 covers batch 1 alone: its grad norms are those of model.loss on that batch at those weights."""
    from ultralytics.nn.tasks import DetectionModel

    seen, rec = watched["seen"], watched["records"][0]
    assert rec["batch"] == 1 and rec["blocks"]["model.0"]["grad_batches"] == 1
    model = DetectionModel(copy.deepcopy(seen["yaml"]), verbose=False)
    model.load_state_dict(seen["before"][0])
    model.args = seen["args"]
    model.train()
    loss, _ = model.loss(seen["batches"][0])
    loss.sum().backward()
    checked = 0
    for path, row in rec["blocks"].items():
        grad = model.get_submodule(path).conv.weight.grad.numpy().astype(np.float64)
        assert row["grad_norm"] == pytest.approx(float(np.linalg.norm(grad)), rel=1e-4), path
        checked += 1
    assert checked == 57  # every Conv block of yolov8n
    first, last = rec["blocks"][rec["first_block"]]["grad_norm"], rec["blocks"][rec["last_block"]]["grad_norm"]
    assert rec["grad_first_last"] == pytest.approx(first / last)


@pytest.mark.slow
def test_update_ratio_is_the_difference_of_two_snapshots(watched):
    seen, records = watched["seen"], watched["records"]
    batch_records = [r for r in records if r["kind"] == "batch"]
    assert [r["batch"] for r in batch_records] == list(range(1, len(batch_records) + 1))
    for k in (1, 2):  # record k against record k-1: snapshots the test took right after each record
        prev, cur = seen["after"][k - 1], seen["after"][k]
        for path in ("model.0", "model.8.m.0.cv2", "model.22.cv3.2.1"):
            w0 = prev[f"{path}.conv.weight"].numpy().astype(np.float64)
            w1 = cur[f"{path}.conv.weight"].numpy().astype(np.float64)
            expected = np.linalg.norm(w1 - w0) / np.linalg.norm(w0)
            row = batch_records[k]["blocks"][path]
            assert expected > 0 and row["update_ratio"] == pytest.approx(expected, rel=1e-6)
            assert row["weight_norm"] == pytest.approx(np.linalg.norm(w1), rel=1e-9)
            gamma = cur[f"{path}.bn.weight"].numpy().astype(np.float64)
            assert row["gamma_mean"] == pytest.approx(gamma.mean()) and row["gamma_min"] == pytest.approx(gamma.min())


@pytest.mark.slow
def test_probe_and_ap_are_the_frameworks(watched):
    records = watched["records"]
    epoch = [r for r in records if r["kind"] == "epoch"]
    assert len(epoch) == 1 and epoch[0]["ap50"] == pytest.approx(watched["seen"]["ap"], abs=1e-5)
    assert epoch[0]["mAP50"] == pytest.approx(watched["watched"]["mAP50"], abs=1e-5)
    for r in records:
        p = r["probe"]
        assert p["sigmoid"] == pytest.approx(1 / (1 + math.exp(-p["logit"])), rel=1e-5)
        for row in r["blocks"].values():
            assert 0 <= row["frac_off"] <= 1 and 0 <= row["frac_bend"] <= 1 and row["z_std"] >= 0


@pytest.mark.slow
def test_killed_and_resumed_run_has_each_record_once(synth_data, tmp_path):
    out = tmp_path / "run"

    class Killed(Exception):
        pass

    def kill(trainer):
        if trainer.epoch == 1 and watch.records >= 6:  # two records into the second epoch, after its checkpoint
            raise Killed

    watch = TrainingWatch(every_batches=1)
    with pytest.raises(Killed):
        train(synth_data, out, callbacks=chain(watch.callbacks(), {"on_train_batch_end": kill}),
              **{**TINY, "epochs": 2})
    watch.close()
    before = read_watch(out / "watch.jsonl")
    assert [(r["epoch"], r["kind"]) for r in before][-2:] == [(1, "batch"), (1, "batch")]
    with TrainingWatch(every_batches=1) as again:
        train(None, out, resume=True, callbacks=again.callbacks())
    after = read_watch(out / "watch.jsonl")
    keys = [(r["batch"], r["kind"]) for r in after]
    nb = after[0]["batches_per_epoch"]
    expected = [(b, "batch") for b in range(1, nb + 1)] + [(nb, "epoch")]
    expected += [(b, "batch") for b in range(nb + 1, 2 * nb + 1)] + [(2 * nb, "epoch")]
    assert keys == expected
    assert after[: nb + 1] == before[: nb + 1]  # the first epoch's records were kept as they were
    assert json.loads((out / "watch.jsonl").read_text().splitlines()[-1])["epoch"] == 1


@pytest.mark.slow
def test_sigmoid_variant_trains_with_sigmoid_and_the_watch_sees_it(synth_data, tmp_path):
    """compare-activations' swap: the checkpoint's every Conv block runs sigmoid, and the watch's post-activation
    mean of the stem is torch's mean of sigmoid(z) on the probe photos, recomputed from the saved checkpoint."""
    from torch import nn
    from ultralytics.nn.modules.conv import Conv

    from pipeline.data.preprocess import model_input
    from pipeline.lesson.compare import swap_callbacks

    out = tmp_path / "sigmoid"
    with TrainingWatch() as watch:
        train(synth_data, out, callbacks=chain(swap_callbacks("sigmoid"), watch.callbacks()), **TINY)
    ckpt = torch.load(out / "weights" / "last.pt", map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    acts = [m.act for m in model.modules() if isinstance(m, Conv)]
    assert acts and all(isinstance(a, nn.Sigmoid) for a in acts)
    last = read_watch(out / "watch.jsonl")[-1]
    files = sorted((out / "dataset" / "val" / "images").iterdir())[:4]
    assert files[0].name == last["probe"]["image"]
    x = torch.cat([model_input(str(f), imgsz=64, stride=32, auto=False)[0] for f in files])
    seen = {}

    def keep(module, inputs, z):
        seen["z"] = z.detach().double()  # returns None: a forward hook's return value would replace the output

    model.model[0].bn.register_forward_hook(keep)
    with torch.no_grad():
        model(x)
    z = seen["z"]
    row = last["blocks"]["model.0"]
    # last.pt holds the EMA in float16: the recomputation agrees to about 3 digits
    assert row["post_mean"] == pytest.approx(float(torch.sigmoid(z).mean()), rel=5e-3)
    assert row["z_mean"] == pytest.approx(float(z.mean()), rel=5e-2, abs=1e-3)


@pytest.mark.slow
def test_tensorboard_histograms_are_the_recorded_tensors(watched):
    """With ``tensorboard`` installed the watch also writes event files; TensorBoard's own reader gets back
    histograms whose count and sums are numpy's of the weights the test saved and of the recorded grad norm."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import HISTOGRAMS, EventAccumulator

    acc = EventAccumulator(str(watched["root"] / "watched" / "watch_tb"), size_guidance={HISTOGRAMS: 0})
    acc.Reload()
    records, seen = watched["records"], watched["seen"]
    weights = {e.step: e.histogram_value for e in acc.Histograms("weights/model.0")}
    assert sorted(weights) == sorted({r["batch"] for r in records})
    for step in (1, 2):
        w = seen["after"][step - 1]["model.0.conv.weight"].numpy().astype(np.float64)
        h = weights[step]
        assert h.num == w.size and h.sum == pytest.approx(w.sum(), rel=1e-5, abs=1e-6)
        assert h.sum_squares == pytest.approx((w ** 2).sum(), rel=1e-5)
    grads = {e.step: e.histogram_value for e in acc.Histograms("gradients/model.22.cv3.2.1")}
    first = records[0]["blocks"]["model.22.cv3.2.1"]["grad_norm"]
    assert grads[1].sum_squares == pytest.approx(first ** 2, rel=1e-4)
    z = acc.Histograms("z/model.0")[0].histogram_value
    assert z.num == 4 * 16 * 32 * 32  # 4 probe photos at 64 px, 16 channels at stride 2
    assert acc.Scalars("probe/sigmoid")[0].value == pytest.approx(records[0]["probe"]["sigmoid"], rel=1e-6)


@pytest.mark.slow
@pytest.mark.browser
def test_tensorboard_shows_every_block_in_chromium_offline(watched):
    """``tensorboard --logdir OUT`` (TensorBoard's own server, on loopback) lists a weights, gradients and z
    histogram for every block the watch recorded, and its page draws them in Chromium without a request
    leaving the machine."""
    pytest.importorskip("tensorboard")
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx
    from playwright.sync_api import sync_playwright

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail(f"{chromium} missing: apt-get install -y chromium")
    blocks = sorted(watched["records"][0]["blocks"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(watched["root"] / "watched"),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    errors, remote = [], []
    try:
        for _ in range(300):
            try:
                httpx.get(f"{base}/data/environment", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        tags = httpx.get(f"{base}/data/plugin/histograms/tags", timeout=30).json()["watch_tb"]
        for kind in ("weights", "gradients", "z"):
            assert sorted(t.split("/", 1)[1] for t in tags if t.startswith(kind + "/")) == blocks, kind
        scalars = httpx.get(f"{base}/data/plugin/scalars/tags", timeout=30).json()["watch_tb"]
        assert "probe/sigmoid" in scalars
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:")) else remote.append(r.url))
                page.goto(f"{base}/#histograms")
                page.get_by_text("tag: gradients/model.0", exact=True).wait_for(timeout=60_000)  # a drawn card
                assert page.locator("svg path").count() > 0
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not errors and not remote, (errors, remote)
