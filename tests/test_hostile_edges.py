"""Edges the ninth hostile retest found: a failed write leaves no folder it made and no file it did not note,
long names, split names YOLO reads labels by, a seed past numpy's range, a checkpoint whose layers do not fit,
and a user's own Ultralytics config left as it is."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint
from test_trust import jpeg_bytes, one_error_line

from pipeline.cli import main
from pipeline.core import io as core_io
from pipeline.core.io import InputError, atomic_write_text, output_folder

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("w") / "good.pt")


def _full_disk(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_named_write_removes_the_folders_it_made(tmp_path, monkeypatch):
    """``trace --out F/tr/t.json`` on a full disk left ``F/tr`` behind, empty: the folders a write made for its
    file go again when the write fails; a folder that was there stays."""
    monkeypatch.setattr(core_io.os, "replace", _full_disk)
    with pytest.raises(InputError, match="No space left"):
        atomic_write_text(tmp_path / "tr" / "deeper" / "t.json", "{}")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(InputError):
        atomic_write_text(tmp_path / "kept" / "new" / "t.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_a_failed_run_removes_the_parents_it_made_for_its_out(tmp_path):
    """``predict --out F/a/b/x`` on a full disk left ``F/a/b``: the folders made for ``--out`` go with it."""
    with pytest.raises(RuntimeError):
        with output_folder(tmp_path / "a" / "b" / "x"):
            raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_could_not_be_noted_is_not_left(tmp_path, monkeypatch):
    """On a full disk ``synth`` left a whole photo whose note did not fit in the folder's list, said it could not
    write it, and the rerun refused that very file as not its own: written and noted, or not at all."""
    from pipeline.core.owned import _Ledger

    def add(self, path, digest=True):
        raise OSError(errno.ENOSPC, "No space left on device")

    with output_folder(tmp_path / "o") as out:
        monkeypatch.setattr(_Ledger, "add", add)
        with pytest.raises(InputError, match="No space left"):
            atomic_write_text(out / "a.txt", "x")
        monkeypatch.undo()
        assert not (out / "a.txt").exists()
        atomic_write_text(out / "a.txt", "x")  # the rerun writes it
    assert (tmp_path / "o" / "a.txt").read_text() == "x"


def test_a_photo_with_a_255_byte_name_is_predicted_with_the_rest(weights, tmp_path):
    """A legal 255-byte photo name made the overlay's temporary name too long: the batch lost detections.json."""
    folder = tmp_path / "ex"
    folder.mkdir()
    long = "x" * 251 + ".jpg"
    (folder / long).write_bytes(jpeg_bytes(1))
    (folder / "car.jpg").write_bytes(jpeg_bytes(2))
    out = tmp_path / "o"
    assert main(["predict", "--weights", str(weights), str(folder), "--out", str(out), "--imgsz", "64"]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert sorted(Path(r["image"]).name for r in records) == sorted([long, "car.jpg"])
    assert (out / long).is_file()


@pytest.mark.parametrize("split, said", [("images", "'images' is a folder name YOLO reads labels by"),
                                         ("labels", "'labels' is a folder name"), ("", "is empty")])
def test_a_split_named_as_yolos_own_folders_is_refused(split, said, tmp_path, capsys):
    """``--split images`` put the photos in images/images/, where YOLO looks for labels in images/labels/: a
    dataset that cannot find its labels, exit 0. ``--split ''`` became train silently."""
    (tmp_path / "p").mkdir()
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "dent"}]}))
    assert main(["convert-coco", str(ann), str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--split", split]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --split: ") and said in line, line
    assert not (tmp_path / "o").exists()


def test_a_seed_past_numpys_range_is_refused_before_any_work(tmp_path, capsys):
    """``report --seed 10**23`` drew 11 figures, then a traceback (numpy takes seeds below 2**32)."""
    with pytest.raises(SystemExit) as e:
        main(["report", "--weights", "yolov8n.yaml", "x.jpg", "--out", str(tmp_path / "r"), "--seed", str(10**23)])
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_whose_layers_do_not_fit_is_one_line(weights, tmp_path, capsys):
    """A conv of 8 filters before a BatchNorm of 16 gave a traceback in every command (the meta-device check ran
    it): one line naming the file and the layer."""
    ckpt = torch.load(weights, weights_only=False)
    for key in ("ema", "model"):  # whichever the loader takes
        if ckpt.get(key) is not None:
            conv = ckpt[key].model[0].conv
            conv.weight = torch.nn.Parameter(torch.zeros(8, *conv.weight.shape[1:], dtype=conv.weight.dtype))
    bad = tmp_path / "shapes.pt"
    torch.save(ckpt, bad)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(3))
    assert main(["predict", "--weights", str(bad), str(tmp_path / "a.jpg"), "--out", str(tmp_path / "o")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {bad}: its layers do not fit together at ") and "running_mean" in line, line


def test_a_users_own_ultralytics_config_is_left_as_it_is(tmp_path):
    """With ``YOLO_CONFIG_DIR`` naming the user's own Ultralytics folder, ``train`` rewrote its settings.json
    (sync off, folders in this project's cache). The project keeps its own config folder whatever the variable."""
    mine = tmp_path / "ycfg"
    (mine / "Ultralytics").mkdir(parents=True)
    settings = mine / "Ultralytics" / "settings.json"
    settings.write_text('{"datasets_dir": "/home/me/datasets", "sync": true}')
    code = "import pipeline; from pipeline.core import runtime; runtime.ultralytics_settings(); print('ok')"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "YOLO_CONFIG_DIR": str(mine)})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
    assert settings.read_text() == '{"datasets_dir": "/home/me/datasets", "sync": true}'
    assert sorted(p.name for p in mine.rglob("*")) == ["Ultralytics", "settings.json"]


def test_a_full_disk_while_copying_a_photo_names_the_output_not_the_photo(tmp_path, monkeypatch):
    """``convert-coco --copy`` on a full disk blamed the user's photo: ``error: <the photo>: no space left``."""
    from pipeline.data import coco

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_bytes(jpeg_bytes(4))
    ann = tmp_path / "instances_train.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 160, "height": 120}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                                                "area": 400.0, "iscrowd": 0}],
                               "categories": [{"id": 1, "name": "dent"}]}))

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(coco.shutil, "copyfile", full)
    with pytest.raises(InputError) as e:
        coco.convert_coco(ann, tmp_path / "p", tmp_path / "o", copy=True)
    assert str(e.value) == f"{tmp_path / 'o' / 'images' / 'train' / 'a.jpg'}: no space left on device"  # not the photo
