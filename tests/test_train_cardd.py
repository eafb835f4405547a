"""The CarDD benchmark tooling on the CPU: the tiny row, staging, copy-paste, AMP.

Every piece a training row relies on runs for real on the 100-photo sample: ``scripts/train_cardd.py
--tiny`` end to end (a smoke run, not a score), the staging that keeps ``test/`` out, the claim in
``configs/cardd.yaml`` that copy-paste works for a *detect* dataset with polygon labels, and the offline
AMP check that replaces Ultralytics' downloading one.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import InputError
from pipeline.data.labels import dataset_splits
from pipeline.model.load import load_model
from pipeline.model.recipe import OWN_KEYS
from pipeline.model.train import train
from ultralytics.data.utils import img2label_paths

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
train_cardd = importlib.import_module("train_cardd")
stage_cardd = importlib.import_module("stage_cardd")


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def _roboflow_layout(sample_dir: Path, root: Path, n=(6, 4, 3)) -> Path:
    """A small Roboflow-style export (train/valid/test) made of links to real sample photos and labels."""
    images = sorted((sample_dir / "images").glob("*.jpg"))
    start = 0
    for split, k in zip(("train", "valid", "test"), n):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True)
        for im in images[start : start + k]:
            (root / split / "images" / im.name).symlink_to(im)
            (root / split / "labels" / f"{im.stem}.txt").symlink_to(sample_dir / "labels" / f"{im.stem}.txt")
        start += k
    return root


# --------------------------------------------------------------------------------------------- tiny row


def test_tiny_row_has_every_key_and_sane_values(sample_dir, tmp_path):
    before = _tree(sample_dir)
    out = tmp_path / "run"
    argv = ["--tiny", "--out", str(out), "--json", str(tmp_path / "row.json"), "--set", "fraction=0.5"]
    row = train_cardd.main(argv)

    assert set(train_cardd.ROW_KEYS) <= set(row), set(train_cardd.ROW_KEYS) - set(row)
    assert json.loads((tmp_path / "row.json").read_text()) == row == json.loads((out / "row.json").read_text())
    assert row["tiny"] is True and row["recipe"] == "cardd-tiny" and row["model"] == "yolov8n.yaml"
    assert (row["imgsz"], row["batch"], row["epochs"]) == (160, 8, 1)
    n_staged, n_val = train_cardd.TINY_IMAGES
    assert (row["n_train"], row["n_val"]) == (n_staged // 2, n_val)  # fraction=0.5 halves train, never val
    assert row["overrides"]["fraction"] == 0.5
    assert row["budget_minutes"] is None  # the smoke run has no time budget
    assert 0 < row["gpu_minutes"] < 5 and row["val_seconds"] >= 0
    assert row["mAP50-95"] <= row["mAP50"]
    # the per-class tables name exactly the classes in the staged val labels (Ultralytics scores only those),
    # read here straight from the label files Ultralytics pairs with each val image, and the mAPs are their means
    val_labels = img2label_paths([str(p) for p in dataset_splits(out / "data" / "data.yaml")["val"]])
    val_ids = {int(line.split()[0]) for f in val_labels for line in Path(f).read_text().splitlines() if line.strip()}
    for per, key in ((row["per_class"], "mAP50"), (row["per_class_map50_95"], "mAP50-95")):
        assert set(per) == {CLASS_NAMES[c] for c in val_ids}
        assert row[key] == pytest.approx(np.mean(list(per.values())), abs=1e-5)
    assert row["device"] == "cpu" and row["amp"]["amp"] is False  # the trainer asked our check, not Ultralytics'
    assert Path(row["weights"]).is_file()
    assert shlex.split(row["command"])[2:] == argv  # the row says how to reproduce itself
    assert train_cardd.table_row(row).count("|") == 10  # 9 columns

    # the recipe reached Ultralytics, with the tiny overrides on top
    args = yaml.safe_load((out / "train" / "args.yaml").read_text())
    recipe = yaml.safe_load((REPO / "configs" / "cardd.yaml").read_text())
    for key in ("copy_paste", "copy_paste_mode", "optimizer", "lr0", "val", "deterministic"):
        assert args[key] == recipe[key], key
    assert (args["imgsz"], args["batch"], args["nbs"], args["epochs"], args["time"]) == (160, 8, 8, 1, 0)
    assert args["fraction"] == 0.5

    # the sample stayed untouched: no labels.cache or anything else written into ../shared
    assert _tree(sample_dir) == before
    from ultralytics.data.utils import load_dataset_cache_file

    cache = load_dataset_cache_file(out / "train" / "dataset" / "train" / "labels.cache")  # what Ultralytics really trained on
    assert len(cache["labels"]) == row["n_train"]


def test_recipes_are_valid_ultralytics_arguments():
    from ultralytics.cfg import get_cfg

    stock = yaml.safe_load((REPO / "configs" / "cardd_stock.yaml").read_text())
    assert {k: stock[k] for k in ("imgsz", "batch", "epochs", "time", "workers", "cache")} == dict(
        imgsz=640, batch=64, epochs=200, time=0.105, workers=14, cache="ram"
    )  # the anchor call quoted in issue 6
    for name in ("cardd_stock.yaml", "cardd.yaml"):
        recipe = yaml.safe_load((REPO / "configs" / name).read_text())
        assert recipe.pop("model") == "yolov8n.yaml"
        get_cfg(overrides=recipe)  # raises on an unknown key or a bad value


def test_set_flags_are_yaml_typed_and_checked():
    assert train_cardd.parse_sets(["copy_paste=0", "cos_lr=true", "scale=0.3", "optimizer=SGD"]) == {
        "copy_paste": 0, "cos_lr": True, "scale": 0.3, "optimizer": "SGD"}
    with pytest.raises(InputError, match="KEY=VALUE"):
        train_cardd.parse_sets(["copy_paste"])


# ---------------------------------------------------------------------------------------------- staging


def test_stage_keeps_test_out_and_writes_nothing_into_the_source(sample_dir, tmp_path):
    src = _roboflow_layout(sample_dir, tmp_path / "export")
    before = _tree(src)
    data = stage_cardd.stage_dataset(src, tmp_path / "staged")
    info = yaml.safe_load(data.read_text())
    assert "test" not in info and info["names"] == list(CLASS_NAMES)

    splits = dataset_splits(data)  # resolved by Ultralytics' own rules
    assert sorted(splits) == ["train", "val"]
    for split, folder, n in (("train", "train", 6), ("val", "valid", 4)):
        assert len(splits[split]) == n
        targets = {p.resolve() for p in splits[split]}
        assert targets == {p.resolve() for p in (src / folder / "images").iterdir()}
    test_targets = {p.resolve() for p in (src / "test" / "images").iterdir()}
    assert not test_targets & {p.resolve() for s in splits.values() for p in s}

    # a subset restage leaves no stale links, and staging onto the source itself is refused, harmlessly
    stage_cardd.stage_dataset(src, tmp_path / "staged", n_train=2, n_val=1)
    assert len(list((tmp_path / "staged" / "train" / "images").iterdir())) == 2
    assert stage_cardd.main([str(src), "--out", str(src)]) == 1
    assert _tree(src) == before


# ---------------------------------------------------------------------------------------- copy-paste


def _items(data_yaml: Path, copy_paste: float, imgsz: int = 320) -> list[dict]:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml), autodownload=False)
    off = dict(mosaic=0.0, fliplr=0.0, translate=0.0, scale=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    cfg = get_cfg(overrides=dict(task="detect", imgsz=imgsz, copy_paste=copy_paste, **off))
    ds = build_yolo_dataset(cfg, data["train"], batch=8, data=data, mode="train")
    assert ds.use_segments is False  # a detect dataset: no masks in the batch...
    assert sum(len(lb["segments"]) for lb in ds.labels) == sum(len(lb["cls"]) for lb in ds.labels)  # ...polygons kept
    return [ds[i] for i in range(len(ds))]


def test_copy_paste_pastes_mirrored_polygons_in_a_detect_dataset(sample_dir, tmp_path):
    """The configs/cardd.yaml lever: every extra box is a mirrored copy (x -> 1 - x) of an original, same class."""
    data = stage_cardd.stage_dataset(sample_dir, tmp_path / "staged", n_train=24, n_val=4)
    plain, pasted = _items(data, 0.0), _items(data, 1.0)
    gained = 0
    for a, b in zip(plain, pasted):
        n = len(a["cls"])
        boxes_a, boxes_b = a["bboxes"].numpy(), b["bboxes"].numpy()
        assert torch.equal(b["cls"][:n], a["cls"]) and np.allclose(boxes_b[:n], boxes_a, atol=1e-5)
        mirrored = boxes_a.copy()
        mirrored[:, 0] = 1.0 - mirrored[:, 0]
        for cls, box in zip(b["cls"][n:].numpy().ravel(), boxes_b[n:]):
            match = np.isclose(mirrored, box, atol=2e-3).all(1) & (a["cls"].numpy().ravel() == cls)
            assert match.any(), (b["im_file"], box)
        gained += len(b["cls"]) - n
    assert gained >= 10  # 24 real photos: copy-paste really adds instances (hand count on this sample: dozens)


# ------------------------------------------------------------------------------------------------- AMP


def test_offline_amp_check_decides_without_weights_or_network():
    import ultralytics.engine.trainer as trainer

    train_cardd.install_offline_amp_check()
    assert trainer.check_amp is train_cardd.offline_check_amp

    model = load_model("yolov8n.yaml", nc=6).model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert train_cardd.offline_check_amp(model) is False  # CPU: fp32, as Ultralytics decides
    assert train_cardd.AMP_DECISIONS[-1]["device"] == "cpu"

    ok, rel = train_cardd.amp_forward_agrees(model, "cpu", torch.float16)  # the GPU path's numerics, on CPU
    assert ok and rel < 1e-2
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the check ran on a copy
    assert model.training  # and left the model being trained in train mode

    with torch.no_grad():
        model.model[0].conv.weight.mul_(1e5)  # activations past fp16's 65504: the forward overflows
    ok, _ = train_cardd.amp_forward_agrees(model, "cpu", torch.float16)
    assert not ok


class _Terminal:
    """A stand-in stdout that says it is a terminal."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True


def _bar_output(monkeypatch, stdout) -> str:
    from ultralytics.utils import TQDM

    monkeypatch.setattr(sys, "stdout", stdout)
    bar = TQDM(total=50, desc="epoch", mininterval=0)
    for _ in range(50):
        bar.update()
        bar.last_print_t -= 1  # as if time passed between updates: every update may redraw
    bar.close()
    return stdout.text if isinstance(stdout, _Terminal) else stdout.getvalue()


def test_progress_bars_write_plain_lines_off_a_terminal(monkeypatch):
    import io

    from pipeline.core import runtime

    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    runtime.ultralytics_settings()
    runtime.ultralytics_settings()  # idempotent: wrapping twice would still be one decision
    in_log = _bar_output(monkeypatch, io.StringIO())
    assert "\r" not in in_log and "\033[K" not in in_log
    assert in_log.count("\n") == 1 and in_log.startswith("epoch:") and "50/50" in in_log  # the final line, once
    on_terminal = _bar_output(monkeypatch, _Terminal())
    assert on_terminal.count("\r") > 10 and "50/50" in on_terminal  # a terminal still redraws in place


def test_own_progress_bars_write_plain_lines_off_a_terminal(tmp_path, capsys):
    """The project's own loops (here the synthetic generator) use the same bar: a log gets each bar's last line."""
    from pipeline.data.synth import write_dataset

    write_dataset(tmp_path / "synth", 3, 2, imgsz=64, seed=0, progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "\r" not in text and "synth train" in text and "3/3" in text and "2/2" in text


def test_a_fresh_checkout_gets_no_settings_banner_and_keeps_other_logs(tmp_path):
    """Ultralytics' first-run banner points at `yolo settings` and ~/.config, which do not apply here: dropped.
    The settings file is still created (in our config dir), and every other Ultralytics log line still prints."""
    code = ("import pipeline, ultralytics; from pipeline.core import runtime; runtime.ultralytics_settings(); "
            "from ultralytics.utils import LOGGER; LOGGER.info('other lines still print')")
    env = {k: v for k, v in os.environ.items() if k != "YOLO_CONFIG_DIR"}
    env["CARDAMAGE_CACHE"] = str(tmp_path / "cache")  # a new checkout: no settings file yet
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    settings = tmp_path / "cache" / "ultralytics" / "Ultralytics" / "settings.json"
    assert settings.is_file() and json.loads(settings.read_text())["sync"] is False  # created, then set
    assert "Creating new Ultralytics Settings" not in text and "yolo settings" not in text
    assert "other lines still print" in text


# ------------------------------------------------------------------------------- the CPU recipe (issue 16)

bench = importlib.import_module("bench")
benchrows = importlib.import_module("benchrows")


def test_cpu_anchor_is_the_issue_call_and_the_recipe_changes_only_named_levers():
    from ultralytics.cfg import get_cfg

    stock = yaml.safe_load((REPO / "configs" / "cardd_cpu_stock.yaml").read_text())
    recipe = yaml.safe_load((REPO / "configs" / "cardd_cpu.yaml").read_text())
    # issue 16's anchor: Ultralytics' defaults at imgsz 320, batch 16, time 0.5 h, val false, on the CPU
    assert {k: stock[k] for k in ("model", "imgsz", "batch", "time", "val", "device")} == dict(
        model="yolov8n.yaml", imgsz=320, batch=16, time=0.5, val=False, device="cpu")
    defaults = get_cfg()
    for key in ("nbs", "optimizer", "lr0", "warmup_epochs", "close_mosaic", "cache", "mosaic"):
        assert key not in stock, key  # stock leaves them at Ultralytics' defaults
    assert (defaults.nbs, defaults.warmup_epochs, defaults.close_mosaic) == (64, 3.0, 10)  # what the issue found
    # the recipe: same model, size, batch and budget; one optimizer step per batch
    assert {k: recipe[k] for k in ("model", "imgsz", "batch", "time", "val", "device")} == {
        k: stock[k] for k in ("model", "imgsz", "batch", "time", "val", "device")}
    assert recipe["nbs"] == recipe["batch"]
    lines = (REPO / "configs" / "cardd_cpu.yaml").read_text().splitlines()
    for key in recipe:  # every choice sits under a comment that says why (keys of one lever share it)
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{key}:"))
        while i > 0 and re.match(r"\w+:", lines[i - 1]):
            i -= 1
        assert i > 0 and lines[i - 1].startswith("# "), key
    assert "cpu_channels_last" not in stock and recipe["cpu_channels_last"] is True
    for cfg in (stock, recipe):
        cfg = {k: v for k, v in cfg.items() if k not in OWN_KEYS}  # the project's keys, read by pipeline.model.train
        get_cfg(overrides=cfg)  # raises on an unknown key or a bad value


@pytest.mark.parametrize("channels_last", [True, False])
def test_cpu_channels_last_trains_the_model_and_its_ema_in_nhwc(sample_dir, tmp_path, channels_last):
    """The recipe's ``cpu_channels_last`` reaches the trainer: the model and its EMA are NHWC at every step
    (Ultralytics alone keeps NCHW on a CPU), and the checkpoint is still saved NCHW."""

    data = stage_cardd.stage_dataset(sample_dir, tmp_path / "data", 16, 8)
    seen = []

    def layout(trainer):
        for net in (trainer.model, trainer.ema.ema):
            w = net.model[1].conv.weight  # a 3x3 conv (16 -> 32 channels): NCHW and NHWC strides differ
            seen.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())

    train(data, tmp_path / "run", config=REPO / "configs" / "cardd_cpu.yaml", callbacks={"on_train_batch_end": layout},
          cpu_channels_last=channels_last, epochs=1, imgsz=64, batch=8, nbs=8, time=0, cache=False, workers=0)
    assert len(seen) == 4 and set(seen) == {channels_last}  # 2 batches x (model, EMA)
    saved = torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=False)["model"]  # the EMA, stripped
    assert saved.model[1].conv.weight.is_contiguous()


def test_step_counter_agrees_with_the_optimizers_own_count(sample_dir, tmp_path):
    """Optimizer steps as AdamW itself counts them (torch's per-parameter ``step`` state), with nbs > batch."""

    data = stage_cardd.stage_dataset(sample_dir, tmp_path / "data", 24, 8)
    counter = train_cardd.StepCounter()
    train(data, tmp_path / "run", callbacks=counter.callbacks, epochs=1, imgsz=96, batch=4, nbs=8,
          optimizer="AdamW", warmup_epochs=0, workers=0, val=False, device="cpu")
    adam_steps = {int(s["step"]) for s in counter.trainer.optimizer.state.values()}
    assert adam_steps == {counter.steps}
    assert counter.steps == 3  # 6 batches of 4, two accumulated per step (nbs 8)


def test_bench_cardd_cpu_tiny_runs_both_rows_in_order_and_resumes(sample_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["cardd-cpu", "--tiny", "--out", str(out), "--record", str(tmp_path / "rows.jsonl")]) == 0
    rows = [json.loads((out / f"{n}-tiny" / "row.json").read_text()) for n in ("stock", "recipe")]
    recorded = benchrows.read_rows(tmp_path / "rows.jsonl")
    assert [r["id"] for r in recorded] == ["stock-tiny", "recipe-tiny"]
    assert [r["numbers"]["mAP50"] for r in recorded] == [round(r["mAP50"], 3) for r in rows]
    for r, rec in zip(rows, recorded):
        assert r["tiny"] and r["validated_by"].startswith("trainer") and r["steps"] >= 1
        assert (out / f"{r['recipe']}-tiny" / "row.json").is_file() and (out / f"{r['recipe']}-tiny.log").is_file()
        assert b"\r" not in (out / f"{r['recipe']}-tiny.log").read_bytes()  # a log holds lines, not redraw frames
        assert rec["command"].endswith(f"scripts/bench.py cardd-cpu --tiny --rows {r['recipe']}")
        args = yaml.safe_load((out / f"{r['recipe']}-tiny" / "train" / "args.yaml").read_text())
        assert args["close_mosaic"] == (2 if r["recipe"] == "recipe" else 10)  # each row's config reached the trainer
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("[", "| "))]
    assert [line.split("]")[0] for line in printed[:2]] == ["[stock, tiny", "[recipe, tiny"]  # one at a time, in order
    table = printed[2:]
    assert len(table) == 3 and table[1].startswith("| stock | NCHW |  |") and table[2].startswith("| recipe | NHWC |  |")
    # the scores are the trainer's final validation of best.pt: Ultralytics' validator again is the oracle
    r = rows[1]
    val = load_model(r["weights"]).val(data=str(out / "recipe-tiny" / "data" / "data.yaml"), imgsz=160, batch=16,
                                       device="cpu", plots=False, verbose=False, project=str(tmp_path), name="v")
    assert r["mAP50"] == pytest.approx(float(val.box.map50), abs=1e-4)
    # a second call trains nothing: the rows are read back
    mtimes = [(out / f"{n}-tiny" / "row.json").stat().st_mtime_ns for n in ("stock", "recipe")]
    assert bench.main(["cardd-cpu", "--table", "--tiny", "--out", str(out), "--record", str(tmp_path / "rows.jsonl")]) == 0
    assert mtimes == [(out / f"{n}-tiny" / "row.json").stat().st_mtime_ns for n in ("stock", "recipe")]
    assert len(benchrows.read_rows(tmp_path / "rows.jsonl")) == 2  # rows read back are not recorded again
    with pytest.raises(SystemExit, match="unknown row"):
        bench.main(["cardd-cpu", "--tiny", "--out", str(out), "--rows", "nope"])
    with pytest.raises(SystemExit, match="synth-weights"):
        bench.main(["cardd-cpu", "--tiny", "--out", str(out), "--rows", "r-synth"])
