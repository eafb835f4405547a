"""The synthetic generator: deterministic bytes, valid YOLO polygon labels, every class drawn."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.facts import CLASS_NAMES
from pipeline.cli import main
from pipeline.data.synth import render_scene, write_dataset, yolo_rows


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = write_dataset(tmp_path / "a", 6, 3, imgsz=128, seed=7, progress=False).parent
    b = write_dataset(tmp_path / "b", 6, 3, imgsz=128, seed=7, progress=False).parent
    c = write_dataset(tmp_path / "c", 6, 3, imgsz=128, seed=8, progress=False).parent
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) == 2 * 9 + 1  # images + labels + data.yaml
    assert _digest(a) != _digest(c)


def test_scene_instances_are_inside_and_labelled():
    seen = set()
    for i in range(60):
        img, instances = render_scene(i, 256)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
        assert 1 <= len(instances) <= 3
        for inst in instances:
            assert inst.polygon.ndim == 2 and inst.polygon.shape[0] >= 3
            assert (inst.polygon >= 0).all() and (inst.polygon <= 255).all()
            x0, y0, x1, y1 = inst.box_xyxy()
            assert x1 - x0 > 2 and y1 - y0 > 2
            seen.add(inst.cls)
    assert seen == set(range(len(CLASS_NAMES)))


def test_yolo_rows_roundtrip_through_ultralytics(tmp_path):
    """Ultralytics' own label reader turns our polygon rows into the boxes we expect."""
    from ultralytics.utils.ops import segments2boxes

    img, inst = render_scene(3, 200)
    rows = yolo_rows(inst, 200, 200).strip().splitlines()
    assert len(rows) == len(inst)
    segs = [np.array(r.split()[1:], float).reshape(-1, 2) for r in rows]
    boxes = segments2boxes(segs)  # normalised xywh
    for box, i in zip(boxes, inst):
        x0, y0, x1, y1 = np.clip(i.box_xyxy() / 200, 0, 1)
        np.testing.assert_allclose(box, [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], atol=2e-6)
    assert [int(r.split()[0]) for r in rows] == [i.cls for i in inst]


def test_cli_synth_and_check_data_yaml(tmp_path):
    from pipeline.model.train import check_data_yaml

    assert main(["synth", "--out", str(tmp_path / "s"), "--train", "4", "--val", "2", "--imgsz", "96"]) == 0
    info = check_data_yaml(tmp_path / "s" / "data.yaml")
    assert info["nc"] == 6 and list(info["names"].values()) == list(CLASS_NAMES)
    assert len(list((tmp_path / "s" / "train" / "images").glob("*.jpg"))) == 4


def test_cli_synth_rejects_bad_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a bad option: refused by the parser, exit 2, nothing written
        main(["synth", "--out", str(tmp_path / "s"), "--imgsz", "8"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --imgsz: must be an integer in 64..4096")
    assert not (tmp_path / "s").exists()


def test_synthetic_dataset_passes_check(tmp_path, capsys):
    """Our own data is clean by our own checker: valid polygons, no leakage between train and val."""
    data = write_dataset(tmp_path / "s", 120, 30, imgsz=160, seed=0, progress=False)
    assert main(["check", str(data)]) == 0, capsys.readouterr().err


def test_a_smaller_dataset_over_a_larger_one_keeps_no_extra_images(tmp_path):
    """The folder holds exactly what was asked: the larger run's extra images and labels go, a file of the
    user's own (not named as the generator names them) stays."""
    write_dataset(tmp_path, n_train=5, n_val=3, imgsz=64, progress=False)
    own = tmp_path / "train" / "images" / "my_photo.jpg"
    own.write_bytes(b"mine")
    write_dataset(tmp_path, n_train=2, n_val=1, imgsz=64, progress=False)
    images = sorted(p.name for p in (tmp_path / "train" / "images").iterdir())
    labels = sorted(p.name for p in (tmp_path / "train" / "labels").iterdir())
    assert images == ["my_photo.jpg", "train_00000.jpg", "train_00001.jpg"]
    assert labels == ["train_00000.txt", "train_00001.txt"]
    assert sorted(p.name for p in (tmp_path / "val" / "images").iterdir()) == ["val_00000.jpg"]
    assert own.read_bytes() == b"mine"
