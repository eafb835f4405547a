"""The command line as a user meets it: --help everywhere, resume, huge photos, clean one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.cli import COMMANDS, main
from pipeline.model.load import load_model


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"cardamage {command}" in out and "Examples:" in out
    assert "``" not in out and ">>>" not in out and "::\n" not in out  # plain text: no reST, no Python session
    assert "cardamage " in out.split("Examples:", 1)[1]  # the examples themselves survive


def test_top_level_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in COMMANDS)


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(synth_data, tmp_path):
    """Stop after the first of two epochs (as a crash would), then `train --resume` finishes the run."""
    class Interrupt(Exception):
        pass

    out = tmp_path / "run"
    yolo = load_model("yolov8n.yaml", nc=6)

    def stop(trainer):
        raise Interrupt

    yolo.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(Interrupt):
        yolo.train(data=str(synth_data), epochs=2, imgsz=96, batch=8, nbs=8, workers=0, device="cpu", plots=False,
                   project=str(tmp_path), name="run", exist_ok=True, val=False)
    assert torch.load(out / "weights" / "last.pt", weights_only=False)["epoch"] == 0
    assert main(["train", "--out", str(out), "--resume"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2
    # the resumed run's mAP50 is what Ultralytics' own validator says about the best.pt it left
    val = load_model(out / "weights" / "best.pt").val(data=str(synth_data), imgsz=96, batch=8, device="cpu", plots=False,
                                                      verbose=False, project=str(tmp_path), name="val")
    assert m["mAP50"] == pytest.approx(float(val.box.map50), abs=1e-4)
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 2  # header + both epochs


def test_resume_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0]


def test_predict_on_an_8000px_photo(trained_weights, tmp_path):
    big = tmp_path / "big.png"
    img = np.full((8000, 8000, 3), 90, np.uint8)
    cv2.rectangle(img, (1000, 3000), (7000, 6000), (30, 160, 220), -1)
    cv2.imwrite(str(big), img)
    assert main(["predict", "--weights", str(trained_weights), str(big), "--out", str(tmp_path / "o"), "--imgsz", "160"]) == 0
    rec = json.loads((tmp_path / "o" / "detections.json").read_text())[0]
    assert (rec["width"], rec["height"]) == (8000, 8000)
    for d in rec["detections"]:
        x0, y0, x1, y1 = d["box_xyxy"]
        assert 0 <= x0 <= x1 <= 8000 and 0 <= y0 <= y1 <= 8000


def test_resume_a_finished_run_is_one_line(trained_weights, capsys):
    run = trained_weights.parent.parent
    assert main(["train", "--out", str(run), "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "last.pt" in err[0]


@pytest.mark.slow
def test_demo_end_to_end_with_a_tiny_recipe(tmp_path, sample_dir):
    """`make demo`'s command on a tiny recipe: synth -> train -> predict (synthetic + real) -> report."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "demo: {train_images: 16, val_images: 8, synth_imgsz: 128, seed: 3}\n"
        "model: yolov8n.yaml\nepochs: 1\nimgsz: 128\nbatch: 8\nnbs: 8\nworkers: 0\nval: false\nplots: false\n"
    )
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--config", str(recipe), "--real", str(sample_dir / "images"), "--n-real", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["epochs"] == 1
    best = load_model(out / "train" / "weights" / "best.pt")  # Ultralytics' validator is the oracle for the mAP
    val = best.val(data=best.ckpt["train_args"]["data"], imgsz=128, batch=8, device="cpu", plots=False, verbose=False,
                   project=str(tmp_path), name="val")
    assert summary["metrics"]["mAP50"] == pytest.approx(float(val.box.map50), abs=1e-4)
    assert json.loads((out / "train" / "metrics.json").read_text())["mAP50"] == summary["metrics"]["mAP50"]
    synth = json.loads((out / "predict-synth" / "detections.json").read_text())
    real = json.loads((out / "predict-real" / "detections.json").read_text())
    assert len(synth) == 8 and len(real) == 2 and all(r["width"] == 640 for r in real)
    html = (out / "report" / "report.html").read_text()
    assert 'id="input"' in html and 'id="training"' in html and "val_00000.jpg" in html
    assert "per-layer statistics over 8 photos" in html  # the whole synthetic val split
    assert set(summary["timings"]) >= {"synth_s", "train_s", "predict_s", "report_s", "total_s"}


def test_demo_on_a_real_dataset_with_data_and_minutes(tmp_path, sample_dir, capsys):
    """`cardamage demo --data`: the demo's steps on a real dataset (CarDD photos), the test split never read."""
    import yaml
    from ultralytics.data.utils import check_det_dataset

    photos = sorted((sample_dir / "images").glob("*.jpg"))
    root = tmp_path / "cardd"
    for split, chosen in (("train", photos[:12]), ("valid", photos[12:18]), ("test", photos[18:21])):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True)
        for im in chosen:
            (root / split / "images" / im.name).symlink_to(im)
            (root / split / "labels" / f"{im.stem}.txt").symlink_to(sample_dir / "labels" / f"{im.stem}.txt")
    names = ["crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat"]
    (root / "data.yaml").write_text(yaml.safe_dump(
        {"path": str(root), "train": "train/images", "val": "valid/images", "test": "test/images", "nc": 6, "names": names}))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model: yolov8n.yaml\nepochs: 1\nimgsz: 128\nbatch: 6\nnbs: 6\nworkers: 0\nval: false\nplots: false\n")
    out = tmp_path / "demo"
    argv = ["demo", "--data", str(root / "data.yaml"), "--config", str(recipe), "--minutes", "0.5", "--n-real", "3", "--out", str(out)]
    assert main(argv) == 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == str(root / "data.yaml") and summary["metrics"]["epochs"] == 1
    args = yaml.safe_load((out / "train" / "args.yaml").read_text())  # what Ultralytics was really given
    assert args["time"] == pytest.approx(0.5 / 60) and args["imgsz"] == 128
    val_photos = sorted(Path(check_det_dataset(str(root / "data.yaml"))["val"]).glob("*.jpg"))  # Ultralytics' reading
    records = json.loads((out / "predict-val" / "detections.json").read_text())
    assert [Path(r["image"]).name for r in records] == [p.name for p in val_photos[:3]]
    html = (out / "report" / "report.html").read_text()
    assert 'id="input"' in html and f"per-layer statistics over {len(val_photos)} photos" in html
    shown = next((Path(r["image"]).name for r in records if r["detections"]), val_photos[0].name)
    assert shown in html
    # what the demo says: 12 photos at batch 6 is one whole epoch of 2 batches, inside Ultralytics' default
    # 3-epoch warmup (the tiny recipe sets none); a hint when no val photo got a box, none otherwise
    said = capsys.readouterr().out
    assert summary["metrics"]["batches"] == 2 and "[2/4] trained 1 epoch in" in said
    assert "training ended inside the 3-epoch warmup" in said
    assert ("no box passed conf 0.25" in said) == (not any(r["detections"] for r in records))
    best = load_model(out / "train" / "weights" / "best.pt")  # Ultralytics' validator is the oracle for the mAP
    val = best.val(data=str(out / "train" / "dataset" / "data.yaml"), imgsz=128, batch=6, device="cpu", plots=False,
                   verbose=False, project=str(tmp_path), name="val")
    assert summary["metrics"]["mAP50"] == pytest.approx(float(val.box.map50), abs=1e-4)
    # the test split was never trained on, predicted or shown
    test_names = {p.name for p in (root / "test" / "images").iterdir()}
    written = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    assert not [p for p in written if p.name in test_names]
    for f in (out / "summary.json", out / "predict-val" / "detections.json", out / "report" / "report.html"):
        assert not any(n in f.read_text() for n in test_names), f


def test_demo_data_errors_are_one_line(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.yaml" in err[0]
    assert not (tmp_path / "o").exists()


def test_a_command_process_freezes_its_imports_and_main_inside_a_program_does_not(tmp_path):
    """``python -m pipeline`` (``entry``) moves what the imports made into gc's permanent generation; ``main``
    called from another program leaves that program's collector as it was."""
    code = ("import gc, sys\n"
            "from pipeline.cli import main\n"
            "code = main(['synth', '--out', sys.argv[1], '--train', '1', '--val', '1', '--imgsz', '64'],"
            " freeze_imports=sys.argv[2] == 'freeze')\n"
            "print(code, gc.get_freeze_count())\n")
    counts = {}
    for mode in ("freeze", "plain"):
        done = subprocess.run([sys.executable, "-c", code, str(tmp_path / mode), mode], capture_output=True, text=True,
                              timeout=300, check=True)
        code_, counts[mode] = map(int, done.stdout.split()[-2:])
        assert code_ == 0 and (tmp_path / mode / "data.yaml").is_file()
    assert counts["plain"] == 0
    assert counts["freeze"] > 50_000  # what the imports made (torch among them: ~190,000 objects)
    entry = subprocess.run([sys.executable, "-c", "import pipeline.__main__"], capture_output=True, text=True, timeout=60)
    assert entry.returncode == 2 and "cardamage" in entry.stdout  # the module entry point runs entry(): help, exit 2
