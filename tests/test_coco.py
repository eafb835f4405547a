"""`cardamage convert-coco`: CarDD's COCO JSON -> YOLO polygons, mapped by class name, round-tripped.

The COCO file is built here from the real sample's labels (polygons in pixels, CarDD's own category
ids and order), converted back, and compared with the original polygons. Photos go only to tmp_path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.cli import main
from pipeline.coco import category_map, convert_coco, instance_polygon, normalise_name, split_from_name
from pipeline.data import check_dataset
from pipeline.io import InputError, read_image

NAMES = ["crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat"]
# CarDD's official categories: ids 1..6 in this order (not ours)
CARDD_CATEGORIES = [
    {"id": 1, "name": "dent", "supercategory": "damage"},
    {"id": 2, "name": "scratch", "supercategory": "damage"},
    {"id": 3, "name": "crack", "supercategory": "damage"},
    {"id": 4, "name": "glass shatter", "supercategory": "damage"},
    {"id": 5, "name": "lamp broken", "supercategory": "damage"},
    {"id": 6, "name": "tire flat", "supercategory": "damage"},
]
CAT_ID = {c["name"]: c["id"] for c in CARDD_CATEGORIES}


def sample_polygons(sample_dir: Path, image: Path) -> list[tuple[int, np.ndarray]]:
    """(our class id, (K, 2) normalised polygon) per row of a sample label file."""
    rows = []
    for line in (sample_dir / "labels" / f"{image.stem}.txt").read_text().splitlines():
        if line.strip():
            v = np.array(line.split(), dtype=np.float64)
            rows.append((int(v[0]), v[1:].reshape(-1, 2)))
    return rows


def build_coco(sample_dir: Path, images: list[Path], images_dir: Path, first_id: int = 1) -> tuple[dict, dict]:
    """A CarDD-style COCO dict from sample labels; images copied to images_dir; returns (coco, originals)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": CARDD_CATEGORIES}
    originals = {}
    ann_id = 1000 * first_id
    for k, im in enumerate(images):
        shutil.copy(im, images_dir / im.name)
        h, w = read_image(im).shape[:2]
        image_id = first_id + k
        coco["images"].append({"id": image_id, "file_name": im.name, "width": w, "height": h})
        originals[im.stem] = sample_polygons(sample_dir, im)
        for cls, poly in originals[im.stem]:
            px = poly * [w, h]
            x0, y0 = px.min(0)
            x1, y1 = px.max(0)
            ann_id += 1
            coco["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": CAT_ID[NAMES[cls]],
                    "segmentation": [px.reshape(-1).tolist()],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": 0,
                }
            )
    return coco, originals


def read_rows(path: Path) -> list[tuple[int, np.ndarray]]:
    rows = []
    for line in path.read_text().splitlines():
        v = np.array(line.split(), dtype=np.float64)
        rows.append((int(v[0]), v[1:].reshape(-1, 2)))
    return rows


def test_round_trip_polygons_and_class_names(tmp_path, sample_dir, sample_images):
    images = sample_images[:10]
    coco, originals = build_coco(sample_dir, images, tmp_path / "coco" / "train2017")
    ann = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(coco))

    out = tmp_path / "yolo"
    s = convert_coco(ann, tmp_path / "coco" / "train2017", out)
    assert s["split"] == "train" and s["errors"] == [] and s["written"] == 10
    n = sum(len(v) for v in originals.values())
    assert s["instances"] == n and s["from_bbox"] == 0 and s["multi_part"] == 0
    expected = np.bincount([c for v in originals.values() for c, _ in v], minlength=6)
    assert [s["class_counts"][k] for k in NAMES] == expected.tolist()

    for im in images:
        got = read_rows(out / "labels" / "train" / f"{im.stem}.txt")
        want = originals[im.stem]
        assert [c for c, _ in got] == [c for c, _ in want]  # crack stays 0 though CarDD calls it 3, etc.
        for (_, g), (_, w) in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)
        placed = out / "images" / "train" / im.name
        assert placed.read_bytes() == im.read_bytes()
        assert placed.stat().st_ino == (tmp_path / "coco" / "train2017" / im.name).stat().st_ino  # hard link

    # the dataset reads back as a YOLO dataset with the same counts
    copied = convert_coco(ann, tmp_path / "coco" / "train2017", tmp_path / "copied", copy=True)
    assert copied["written"] == 10
    one = tmp_path / "copied" / "images" / "train" / images[0].name
    assert one.stat().st_ino != (tmp_path / "coco" / "train2017" / images[0].name).stat().st_ino

    yaml = (out / "data.yaml").read_text()
    assert "path:" not in yaml and "train: images/train" in yaml
    report = check_dataset(out / "data.yaml")
    assert [report["splits"]["train"]["class_counts"][k] for k in NAMES] == expected.tolist()


def test_convert_train_and_val_gives_a_clean_dataset(tmp_path, sample_dir, sample_images, capsys):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split, ims, first in (("train", sample_images[:6], 1), ("val", sample_images[6:9], 100)):
        coco, _ = build_coco(sample_dir, ims, root / f"{split}2017", first_id=first)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    out = tmp_path / "yolo"
    for split in ("train", "val"):
        rc = main(["convert-coco", str(root / "annotations" / f"instances_{split}2017.json"), str(root / f"{split}2017"), "--out", str(out)])
        assert rc == 0, capsys.readouterr().err
    assert "scratch" in capsys.readouterr().out
    yaml = (out / "data.yaml").read_text()
    assert "train: images/train" in yaml and "val: images/val" in yaml
    assert main(["check", str(out / "data.yaml")]) == 0


def test_rle_crowd_multipart_empty_and_missing_images(tmp_path, sample_dir, sample_images, capsys):
    images = sample_images[:4]
    img_dir = tmp_path / "imgs"
    coco, originals = build_coco(sample_dir, images, img_dir)
    # CarDD-style names with other spellings still map by name
    coco["categories"] = [dict(c, name=c["name"].replace(" ", "_").title()) for c in coco["categories"]]
    anns = coco["annotations"]
    first = anns[0]
    rle = dict(first, id=1, segmentation={"size": [640, 640], "counts": "abc"})  # RLE: becomes the bbox
    crowd = dict(first, id=2, iscrowd=1)  # skipped
    x0, y0, bw, bh = first["bbox"]
    part2 = [x0 + bw + 5, y0, x0 + bw + 40, y0, x0 + bw + 40, y0 + 30]  # a second part to the right
    multi = dict(first, id=3, segmentation=[first["segmentation"][0], part2])
    anns += [rle, crowd, multi]
    # an image with no annotations and an image whose file is missing
    shutil.copy(sample_images[10], img_dir / "background.jpg")
    coco["images"] += [
        {"id": 900, "file_name": "background.jpg", "width": 640, "height": 640},
        {"id": 901, "file_name": "gone.jpg", "width": 640, "height": 640},
    ]
    ann = tmp_path / "instances_val2017.json"
    ann.write_text(json.dumps(coco))

    out = tmp_path / "yolo"
    rc = main(["convert-coco", str(ann), str(img_dir), "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.err
    errors = [x for x in cap.err.splitlines() if x.startswith("error:")]
    assert errors == [f"error: {img_dir / 'gone.jpg'}: image file not found (image id 901)"]
    assert (out / "labels" / "val" / "background.txt").read_text() == ""
    assert not (out / "labels" / "val" / "gone.txt").exists()

    rows = read_rows(out / "labels" / "val" / f"{images[0].stem}.txt")
    n0 = len(originals[images[0].stem])
    assert len(rows) == n0 + 2  # + RLE box and the joined multi-part instance, no crowd row
    cls0 = originals[images[0].stem][0][0]
    rle_poly, multi_poly = rows[n0][1] * 640, rows[n0 + 1][1] * 640
    assert rows[n0][0] == rows[n0 + 1][0] == cls0
    np.testing.assert_allclose(rle_poly, [[x0, y0], [x0 + bw, y0], [x0 + bw, y0 + bh], [x0, y0 + bh]], atol=1e-3)
    # multi-part: one row whose box is the union of both parts
    np.testing.assert_allclose(multi_poly.min(0), [x0, y0], atol=1e-3)
    np.testing.assert_allclose(multi_poly.max(0), [x0 + bw + 40, y0 + bh], atol=1e-3)

    # 'val' came from the JSON's name; with no train split converted, val is also written as train
    yaml = (out / "data.yaml").read_text()
    assert "train: images/val" in yaml and "val: images/val" in yaml


def test_multi_part_polygon_walk_adds_no_area():
    import cv2

    a = [10, 10, 50, 10, 50, 50, 10, 50]
    b = [100, 100, 140, 100, 140, 160]
    poly, kind = instance_polygon({"segmentation": [a, b], "bbox": [10, 10, 130, 150]})
    assert kind == "multi"
    canvas = np.zeros((200, 200), np.uint8)
    cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], 1)
    parts = np.zeros_like(canvas)
    for p in (a, b):
        cv2.fillPoly(parts, [np.array(p, np.int32).reshape(-1, 2)], 1)
    # the bridge is walked there and back: only its 1-px line is extra, never an enclosed area
    extra = int(canvas.sum()) - int(parts.sum())
    assert 0 <= extra <= 2 * 130 and (canvas >= parts).all()


def test_names_and_categories():
    assert normalise_name("Glass_Shatter") == normalise_name("glass-shatter") == "glass shatter"
    assert category_map(CARDD_CATEGORIES) == {1: 1, 2: 4, 3: 0, 4: 2, 5: 3, 6: 5}
    with pytest.raises(ValueError, match="rust"):
        category_map([{"id": 7, "name": "rust"}])
    assert split_from_name(Path("instances_val2017.json")) == "val"
    assert split_from_name(Path("instances_train2017.json")) == "train"
    assert split_from_name(Path("valid_annotations.json")) == "val"
    assert split_from_name(Path("cardd_test.json")) == "test"
    assert split_from_name(Path("annotations.json")) == "train"


def test_bad_inputs_are_one_line(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "rust"}]}))
    for path in (bad_json, not_coco, unknown, tmp_path / "missing.json"):
        assert main(["convert-coco", str(path), str(imgs), "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {path}: ")
    with pytest.raises(InputError, match="images folder not found"):
        convert_coco(unknown, tmp_path / "nope", tmp_path / "o")
