"""Training writes the promised files; predict agrees with stock Ultralytics and score == sigmoid(logit)."""

import json
import math

import cv2
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import WRITTEN_LIST
from pipeline.model.load import load_model
from pipeline.model.predict import predict_paths


def test_train_writes_weights_and_metrics(trained_weights, synth_data):
    run = trained_weights.parent.parent
    assert trained_weights.is_file() and (run / "weights" / "last.pt").is_file()
    m = json.loads((run / "metrics.json").read_text())
    for key in ("mAP50", "mAP50-95", "precision", "recall", "per_class"):
        assert key in m
    assert m["mAP50-95"] <= m["mAP50"] + 1e-9
    # per_class names exactly the classes the val labels hold (Ultralytics scores only those), and mAP50 is their mean
    val_ids = {int(line.split()[0]) for f in (synth_data.parent / "val" / "labels").glob("*.txt")
               for line in f.read_text().splitlines() if line.strip()}
    assert set(m["per_class"]) == {CLASS_NAMES[c] for c in val_ids}
    assert m["mAP50"] == pytest.approx(np.mean(list(m["per_class"].values())), abs=1e-5)
    # metrics.json repeats what Ultralytics' own validator says about best.pt
    yolo = load_model(trained_weights)
    val = yolo.val(data=yolo.ckpt["train_args"]["data"], imgsz=160, batch=8, device="cpu", plots=False, verbose=False, project=str(run.parent), name="val")
    assert val.box.map50 == pytest.approx(m["mAP50"], abs=1e-4)
    # one whole epoch at batch 8 over the 24 train images: 3 batches, counted as they ran
    n_train = len(list((synth_data.parent / "train" / "images").glob("*.jpg")))
    assert (m["batches"], m["batches_per_epoch"], m["last_epoch_batches"]) == (math.ceil(n_train / 8),) * 3
    assert m["epochs"] == 1 and m["epochs_done"] == 1.0


def test_a_time_budget_that_cuts_an_epoch_is_told_as_its_fraction(synth_data, tmp_path, capsys):
    """Ultralytics' time= stops after the first optimizer step past the budget and still counts that epoch as
    one; metrics.json and the demo's line say how much of it ran."""
    from pipeline.cli.demo import _epochs_told
    from pipeline.model.train import train

    # 3.6 ms: over after the first step; nbs = batch, so that step is the first batch
    m = train(synth_data, tmp_path / "run", epochs=3, imgsz=64, batch=4, nbs=4, workers=0, device="cpu",
              val=False, plots=False, time=1e-6)
    per = math.ceil(len(list((synth_data.parent / "train" / "images").glob("*.jpg"))) / 4)
    assert m["epochs"] == 1  # Ultralytics' own count: the cut epoch is one
    assert (m["batches"], m["batches_per_epoch"], m["last_epoch_batches"]) == (1, per, 1)
    assert m["epochs_done"] == round(1 / per, 3)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_done"] == m["epochs_done"]
    assert _epochs_told(m) == f"{1 / per:.2f} epochs (1 of {per} batches of epoch 1)"


def test_predict_matches_stock_and_logits(trained_weights, sample_images, tmp_path):
    yolo = load_model(trained_weights)
    files = sample_images[:4]
    records, errors = predict_paths(yolo, files, tmp_path / "out", conf=0.001, imgsz=320, progress=False)
    assert not errors and len(records) == 4
    stock = load_model(trained_weights)
    for rec, res in zip(records, stock.predict([str(f) for f in files], conf=0.001, imgsz=320, device="cpu", verbose=False)):
        boxes = res.boxes
        assert len(rec["detections"]) == len(boxes) > 0
        ours = np.array([d["box_xyxy"] for d in rec["detections"]])
        np.testing.assert_allclose(ours, boxes.xyxy.numpy(), atol=0.01)
        np.testing.assert_allclose([d["score"] for d in rec["detections"]], boxes.conf.numpy(), rtol=1e-6)
        assert [d["class_id"] for d in rec["detections"]] == boxes.cls.int().tolist()
        for d in rec["detections"]:
            assert 1 / (1 + math.exp(-d["logit"])) == pytest.approx(d["score"], rel=1e-5)
        assert (rec["width"], rec["height"]) == res.orig_shape[::-1]
    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert saved == json.loads(json.dumps(records))
    assert all((tmp_path / "out" / r["overlay"]).is_file() for r in records)


def test_logit_is_the_head_output_at_the_kept_anchor(trained_weights, sample_images):
    """Recompute the head by hand: the logit equals the raw cls conv output somewhere in the grid."""
    yolo = load_model(trained_weights)
    rec = predict_paths(yolo, sample_images[:1], None, conf=0.001, imgsz=320, progress=False)[0][0]
    model = yolo.model.eval()
    x = yolo.predictor.preprocess([cv2.imread(str(sample_images[0]))])
    with torch.no_grad():
        _, raw = model(x)
    logits = raw["scores"][0]  # (nc, anchors)
    for d in rec["detections"][:20]:
        assert torch.isclose(logits[d["class_id"]], torch.tensor(d["logit"]), atol=1e-5).any()


def test_predict_bad_inputs_rest_of_batch_runs(trained_weights, sample_images, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.jpg").write_text("not an image")
    data = sample_images[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(bad / "gray16.png"), (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20))
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 3] = 255
    cv2.imwrite(str(bad / "rgba.png"), rgba)
    cv2.imwrite(str(bad / "tiny.png"), np.full((1, 1, 3), 128, np.uint8))
    (tmp_path / "empty").mkdir()
    rc = main(["predict", "--weights", str(trained_weights), str(bad), str(sample_images[0]), str(tmp_path / "empty"),
               "--out", str(tmp_path / "o"), "--imgsz", "160"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert any("notes.jpg" in line for line in err) and any("truncated.jpg" in line for line in err)
    assert any("empty" in line for line in err)
    assert all(line.startswith("error: ") for line in err) and not any("Traceback" in l for l in err)
    done = {json.loads(json.dumps(r))["image"].split("/")[-1] for r in json.loads((tmp_path / "o" / "detections.json").read_text())}
    assert done == {"gray16.png", "rgba.png", "tiny.png", sample_images[0].name}
    # no half-written temp files: the one hidden file is the list of what cardamage wrote there
    assert [p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")] == [WRITTEN_LIST]


def test_corrupt_and_missing_weights(tmp_path, sample_images, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    assert main(["predict", "--weights", str(junk), str(sample_images[0]), "--out", str(tmp_path / "o")]) == 1
    assert main(["predict", "--weights", "yolov8n.pt", str(sample_images[0]), "--out", str(tmp_path / "o")]) == 1
    # a mistyped path to one's own run (the demo's weights are in train/weights/): where runs keep them
    mistyped = tmp_path / "demo" / "weights" / "best.pt"
    assert main(["predict", "--weights", str(mistyped), str(sample_images[0]), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "junk.pt" in err[0] and "yolov8n.pt" in err[1] and "download" in err[1]
    assert str(mistyped) in err[2] and "download" not in err[2] and "OUT/train/weights/" in err[2]


def test_train_bad_data_yaml(tmp_path, capsys):
    y = tmp_path / "data.yaml"
    y.write_text("train: nowhere/images\nval: nowhere/images\nnames: ['a']\n")
    assert main(["train", "--data", str(y), "--out", str(tmp_path / "r"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.yaml" in err[0]


def test_folder_without_onnxruntime_runs_stock(trained_weights, sample_images, tmp_path, monkeypatch):
    """On a CPU without onnxruntime the engine would be no faster than stock: a folder goes photo by photo."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for f in sample_images[:2]:
        shutil.copy(f, folder)
    monkeypatch.setattr("pipeline.model.predict.onnx_available", lambda: False)
    monkeypatch.setattr("pipeline.model.predict._predict_batched", lambda *a, **k: pytest.fail("the engine ran"))
    records, errors = predict_paths(load_model(trained_weights), [folder], tmp_path / "out", imgsz=160, overlays=False, progress=False)
    assert not errors and len(records) == 2
    assert all(set(d) == {"class_id", "class_name", "score", "logit", "box_xyxy"} for r in records for d in r["detections"])


class _Stop(Exception):
    """Raised from a callback: the test has what it needs before the first optimizer step."""


@pytest.mark.parametrize("start", ["weights", "yaml"])
def test_training_from_a_weights_file_starts_from_its_weights(trained_weights, synth_data, tmp_path, start):
    # Oracle: the checkpoint file read with torch.load, independent of the loader under test.
    ckpt = torch.load(trained_weights, map_location="cpu", weights_only=False)["model"].float().state_dict()
    seen = {}

    def grab(trainer):
        seen.update({k: v.detach().float().clone() for k, v in trainer.model.state_dict().items()})
        raise _Stop

    from pipeline.model.train import train

    with pytest.raises(_Stop):
        train(synth_data, tmp_path / "run", model=str(trained_weights) if start == "weights" else "yolov8n.yaml",
              epochs=1, imgsz=96, batch=8, nbs=8, workers=0, device="cpu", val=False,
              callbacks={"on_pretrain_routine_end": grab})
    # every learned conv kernel (the DFL's is a fixed 0..15 ramp in every model)
    params = [k for k in ckpt if k.endswith(".weight") and ckpt[k].ndim == 4 and ".dfl." not in k]
    same = [k for k in params if torch.equal(seen[k], ckpt[k])]
    if start == "weights":  # fine-tuning: every conv kernel is the file's, bit for bit
        assert same == params
    else:  # from the YAML: random init, nothing of the file's
        assert same == []


def test_commands_run_at_the_trained_size_unless_told(trained_weights, sample_images, tmp_path, capsys):
    # Oracle: the size in the checkpoint (torch.load), and stock Ultralytics' predict, which reads it too.
    trained = torch.load(trained_weights, map_location="cpu", weights_only=False)["train_args"]["imgsz"]
    assert trained == 160  # the fixture's size, far from Ultralytics' 640 default
    files = [str(f) for f in sample_images[:2]]
    assert main(["predict", "--weights", str(trained_weights), *files, "--out", str(tmp_path / "p"), "--conf", "0.001"]) == 0
    ours = json.loads((tmp_path / "p" / "detections.json").read_text())
    stock = load_model(trained_weights).predict(files, conf=0.001, device="cpu", verbose=False)
    at_640 = load_model(trained_weights).predict(files, conf=0.001, imgsz=640, device="cpu", verbose=False)
    for rec, res, big in zip(ours, stock, at_640):
        np.testing.assert_allclose([d["score"] for d in rec["detections"]], res.boxes.conf.numpy(), rtol=1e-6)
        assert len(big.boxes) != len(res.boxes) or not np.allclose(big.boxes.conf.numpy(), res.boxes.conf.numpy())
    # --imgsz still wins
    assert main(["predict", "--weights", str(trained_weights), files[0], "--out", str(tmp_path / "q"),
                 "--conf", "0.001", "--imgsz", "640"]) == 0
    told = json.loads((tmp_path / "q" / "detections.json").read_text())[0]
    np.testing.assert_allclose([d["score"] for d in told["detections"]], at_640[0].boxes.conf.numpy(), rtol=1e-6)
    # the report states the size it ran at, and its input tensor has it
    assert main(["report", "--weights", str(trained_weights), files[0], "--out", str(tmp_path / "r"),
                 "--no-layercam"]) == 0
    info = json.loads((tmp_path / "r" / "report_files" / "report.json").read_text())
    assert info["info"]["imgsz"] == trained


def test_library_calls_run_at_the_trained_size_unless_told(trained_weights, sample_images, tmp_path):
    """The Python API resolves the size as the CLI does: PhotoRun, Explorer, trace_head, the engine, predict_paths."""
    from pipeline.explore.session import Explorer
    from pipeline.model.engine import Engine
    from pipeline.model.predict import predict_paths
    from pipeline.probe.trace import trace_head
    from pipeline.analysis.run import PhotoRun

    files = [str(f) for f in sample_images[:2]]
    stock = [r.boxes.conf.numpy() for r in load_model(trained_weights).predict(files, conf=0.001, verbose=False)]
    at_640 = load_model(trained_weights).predict(files[0], conf=0.001, imgsz=640, verbose=False)[0].boxes.conf.numpy()
    assert len(at_640) != len(stock[0]) or not np.allclose(at_640, stock[0])  # the size changes the answer
    yolo = load_model(trained_weights)
    run = PhotoRun(yolo, files[0], conf=0.001)
    assert run.imgsz == 160 and max(run.x.shape[2:]) == 160
    np.testing.assert_allclose([d["score"] for d in run.detections], stock[0], rtol=1e-5)
    ex = Explorer(yolo, files, conf=0.001)
    np.testing.assert_allclose([d["score"] for d in ex.detections({"photo": "1"})], stock[1], rtol=1e-5)
    np.testing.assert_allclose([d["ultralytics_conf"] for d in trace_head(load_model(trained_weights), files[0],
                                                                          conf=0.001)["detections"]], stock[0], rtol=1e-6)
    assert Engine(yolo, backend="torch").letterbox.size == [160, 160]  # LetterBox's new_shape, auto-padded per photo
    records, errors = predict_paths(yolo, files, None, conf=0.001, progress=False)
    assert not errors
    for rec, conf in zip(records, stock):
        np.testing.assert_allclose([d["score"] for d in rec["detections"]], conf, rtol=1e-5)
    # an explicit size still wins
    assert PhotoRun(yolo, files[0], imgsz=640).imgsz == 640 and Explorer(yolo, files, imgsz=320).imgsz == 320


def test_training_never_silently_replaces_an_earlier_run(trained_weights, synth_data, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    old = trained_weights.read_bytes()
    (run / "weights" / "best.pt").write_bytes(old)
    cmd = ["train", "--data", str(synth_data), "--out", str(run), "--epochs", "1", "--imgsz", "96", "--batch", "8"]
    assert main(cmd) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "earlier training run (weights/best.pt)" in err[0]
    assert (run / "weights" / "best.pt").read_bytes() == old and sorted(p.name for p in run.rglob("*")) == ["best.pt", "weights"]
    # the demo checks its train/ folder before it writes anything (recipe.yaml, the synthetic data)
    demo = tmp_path / "demo"
    (demo / "train" / "weights").mkdir(parents=True)
    (demo / "train" / "metrics.json").write_text("{}")
    assert main(["demo", "--out", str(demo), "--no-report"]) == 1
    assert "earlier training run (metrics.json)" in capsys.readouterr().err
    assert sorted(p.name for p in demo.rglob("*")) == ["metrics.json", "train", "weights"]
    # --overwrite never deletes the files of a run still writing there: the folder's lock is taken first
    from pipeline.core.io import output_folder

    with output_folder(run):
        assert main([*cmd, "--overwrite"]) == 1
    assert "busy" in capsys.readouterr().err and (run / "weights" / "best.pt").read_bytes() == old
    # --overwrite trains over it: a new best.pt, not the old bytes
    assert main([*cmd, "--overwrite"]) == 0
    assert (run / "weights" / "best.pt").read_bytes() != old and (run / "metrics.json").is_file()
