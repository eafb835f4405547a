"""`cardamage convert-coco`: CarDD's COCO JSON -> YOLO polygons, mapped by class name, round-tripped.

The COCO file is built here from the real sample's labels (polygons in pixels, CarDD's own category
ids and order), converted back, and compared with the original polygons. Photos go only to tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.cli import main
from pipeline.data.coco_schema import category_map, normalise_name
from pipeline.data.coco import convert_coco, instance_polygon, split_from_name
from pipeline.data.check import check_dataset
from pipeline.core.io import InputError, read_image

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


# ---------------------------------------------------------------------------------- hostile input
# Each case builds its bad JSON here from a tiny valid one: two real 64x48 JPEGs, one RLE instance each.

W, H = 64, 48
BOX_B = [8.0, 6.0, 16.0, 12.0]  # b.jpg's instance, a scratch (CarDD id 2, our class 4)


def tiny_coco(root: Path) -> tuple[dict, Path]:
    """A valid CarDD-style COCO dict for root/imgs/{a,b}.jpg (written here) and the images folder."""
    import cv2

    imgs = root / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(imgs / name), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "b.jpg", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [H, W], "counts": "x"},
             "bbox": [4.0, 4.0, 20.0, 10.0], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "segmentation": {"size": [H, W], "counts": "x"},
             "bbox": BOX_B, "iscrowd": 0},
        ],
        "categories": [dict(c) for c in CARDD_CATEGORIES],  # copies: the cases mutate them
    }  # fmt: skip
    return coco, imgs


def box_row(cls: int, bbox: list[float], w: float = W, h: float = H) -> str:
    """The label line expected for a bbox instance, computed with numpy from the pixel corners."""
    x, y, bw, bh = bbox
    corners = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]]) / np.array([w, h])
    return f"{cls} " + " ".join(f"{v:.6f}" for v in corners.reshape(-1))


def convert(tmp_path: Path, coco, imgs: Path, capsys, out: Path | None = None, raw: str | None = None):
    """Write ``coco`` (or ``raw`` text) as instances_train2017.json, run the CLI; (rc, stderr lines, json path, out)."""
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(raw if raw is not None else json.dumps(coco))  # json.dumps writes NaN/Infinity as given
    out = out or tmp_path / "yolo"
    rc = main(["convert-coco", str(ann), str(imgs), "--out", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.splitlines(), ann, out


def test_tiny_coco_converts_to_the_numpy_computed_rows(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    rc, err, _, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 0 and err == []
    assert (out / "labels" / "train" / "b.txt").read_text() == box_row(4, BOX_B) + "\n"
    assert (out / "labels" / "train" / "a.txt").read_text() == box_row(1, [4, 4, 20, 10]) + "\n"


def test_missing_width_height_use_the_image_file_size(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    del coco["images"][1]["width"]
    coco["images"][1]["height"] = None
    rc, err, _, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 0 and err == []
    assert (out / "labels" / "train" / "b.txt").read_text() == box_row(4, BOX_B, W, H) + "\n"


def _set(path: str, value):
    """A mutation that sets coco[path] (dotted, with list indices) to value; DELETE removes the key."""

    def apply(coco):
        *parents, last = path.split(".")
        obj = coco
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        key = int(last) if isinstance(obj, list) else last
        if value is DELETE:
            del obj[key]
        else:
            obj[key] = value

    return apply


DELETE = object()
FATAL = [
    (_set("images.1.id", DELETE), "images[1]: missing 'id'"),
    (lambda c: c.update(images={str(im["id"]): im for im in c["images"]}), "images: expected a list, got an object"),
    (_set("annotations", DELETE), "missing 'annotations' (a COCO instances file has images, annotations and categories)"),
    (_set("images", DELETE), "missing 'images' (a COCO instances file has images, annotations and categories)"),
    (_set("categories", DELETE), "missing 'categories' (a COCO instances file has images, annotations and categories)"),
    (_set("annotations", None), "annotations: expected a list, got None"),
    (_set("categories", "dent"), "categories: expected a list, got 'dent'"),
    (_set("categories.0.id", "1"), "categories[0].id: expected an integer, got '1'"),
    (_set("categories.1.id", 1), "categories[1].id: 1 is also the id of categories[0]"),
    (_set("images.0.id", "1"), "images[0].id: expected an integer, got '1'"),
    (_set("images.1.id", 1), "images[1].id: 1 is also the id of images[0]"),
    (_set("images.0", "a.jpg"), "images[0]: expected an object, got 'a.jpg'"),
    (_set("images.0.file_name", DELETE), "images[0]: missing 'file_name'"),
    (_set("images.0.file_name", 7), "images[0].file_name: expected a file name, got 7"),
    (_set("images.0.width", float("nan")), "images[0].width: expected a positive number, got nan"),
    (_set("images.0.width", float("inf")), "images[0].width: expected a positive number, got inf"),
    (_set("images.0.width", 0), "images[0].width: expected a positive number, got 0"),
    (_set("images.0.height", -48), "images[0].height: expected a positive number, got -48"),
    (_set("images.0.height", "48"), "images[0].height: expected a positive number, got '48'"),
    (_set("images.1.file_name", "a.jpg"),
     "images[1].file_name: 'a.jpg' and images[0].file_name 'a.jpg' would write the same label file a.txt"),
    (_set("images.1.file_name", "sub/A.png"),
     "images[1].file_name: 'sub/A.png' and images[0].file_name 'a.jpg' would write the same label file A.txt"),
    (_set("images.0.file_name", "../secret.jpg"),
     "images[0].file_name: '../secret.jpg' is outside IMAGES_DIR (names must be relative to it)"),
    (_set("images.0.file_name", "x/../../secret.jpg"),
     "images[0].file_name: 'x/../../secret.jpg' is outside IMAGES_DIR (names must be relative to it)"),
    (_set("images.0.file_name", "/etc/secret.jpg"),
     "images[0].file_name: '/etc/secret.jpg' is outside IMAGES_DIR (names must be relative to it)"),
    (_set("images.0.file_name", "sub/.."), "images[0].file_name: 'sub/..' names no file"),
    (_set("annotations.1", [1, 2]), "annotations[1]: expected an object, got [1, 2]"),
    (_set("annotations.1.image_id", DELETE), "annotations[1]: missing 'image_id'"),
    (_set("annotations.1.image_id", "2"), "annotations[1].image_id: expected an integer, got '2'"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, message", FATAL, ids=[m for _, m in FATAL])
def test_malformed_json_is_one_line_naming_the_place_and_writes_nothing(tmp_path, capsys, mutate, message):
    coco, imgs = tiny_coco(tmp_path)
    mutate(coco)
    rc, err, ann, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 1 and err == [f"error: {ann}: {message}"]
    assert not out.exists()


@pytest.mark.parametrize("raw", ["{not json", "[" * 100_000, '{"images": [{"id": ' + "1" * 5000 + "}]}", "\udcff"])
def test_text_that_is_not_json_is_one_line(tmp_path, capsys, raw):
    coco, imgs = tiny_coco(tmp_path)
    ann = tmp_path / "instances_train2017.json"
    ann.write_bytes(raw.encode("utf-8", "surrogateescape"))  # the last one is the lone byte 0xff
    rc = main(["convert-coco", str(ann), str(imgs), "--out", str(tmp_path / "yolo")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: {ann}: not valid JSON (") and err.count("\n") == 1
    assert not (tmp_path / "yolo").exists()


SKIP_IMAGE = [
    (_set("annotations.0.bbox", "abc"), "annotations[0].bbox: expected 4 finite numbers [x, y, width, height], got 'abc'"),
    (_set("annotations.0.bbox", [4, 4, 20]), "annotations[0].bbox: expected 4 finite numbers [x, y, width, height], got [4, 4, 20]"),
    (_set("annotations.0.bbox.2", float("nan")),
     "annotations[0].bbox: expected 4 finite numbers [x, y, width, height], got [4.0, 4.0, nan, 10.0]"),
    (_set("annotations.0.bbox", [30, 30, -20, -10]), "annotations[0].bbox: width and height must be positive, got [30, 30, -20, -10]"),
    (_set("annotations.0.bbox.3", 0), "annotations[0].bbox: width and height must be positive, got [4.0, 4.0, 20.0, 0]"),
    (_set("annotations.0.bbox", [100, 100, 10, 10]), "annotations[0]: has no area inside the 64x48 image"),
    (_set("annotations.0.category_id", "1"), "annotations[0].category_id: expected an integer, got '1'"),
    (_set("annotations.0.category_id", 99), "annotations[0].category_id: 99 is not in categories"),
    (_set("annotations.0.category_id", DELETE), "annotations[0]: missing 'category_id'"),
    (_set("annotations.0.bbox", DELETE), "annotations[0]: RLE segmentation and no bbox to fall back on"),
    (_set("annotations.0.segmentation", "abc"),
     "annotations[0].segmentation: expected polygons (a list) or RLE (an object), got 'abc'"),
    (_set("annotations.0.segmentation", [4, 4, 30, 4, 30, 20]),
     "annotations[0].segmentation[0]: expected a list of finite numbers, got 4"),
    (_set("annotations.0.segmentation", [[4, 4, 30, "4", 30, 20]]),
     "annotations[0].segmentation[0]: expected a list of finite numbers, got [4, 4, 30, '4', 30, 20]"),
    (_set("annotations.0.segmentation", [[4, 4, 30, float("nan"), 30, 20]]),
     "annotations[0].segmentation[0]: expected a list of finite numbers, got [4, 4, 30, nan, 30, 20]"),
    (_set("annotations.0.segmentation", [[4, 4, 30, 4, 30]]), "annotations[0].segmentation[0]: odd number of coordinates (5)"),
    (_set("annotations.0.iscrowd", "0"), "annotations[0].iscrowd: expected 0 or 1, got '0'"),
]  # fmt: skip


@pytest.mark.parametrize("mutate, message", SKIP_IMAGE, ids=[m for _, m in SKIP_IMAGE])
def test_bad_annotation_skips_its_image_with_one_line(tmp_path, capsys, mutate, message):
    coco, imgs = tiny_coco(tmp_path)
    mutate(coco)
    rc, err, ann, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 1 and err == [f"error: {ann}: {message} (annotation id 1); image 'a.jpg' not converted"]
    # a.jpg is left out whole (not converted with its instance missing); b.jpg is converted exactly
    assert sorted(p.name for p in (out / "labels" / "train").iterdir()) == ["b.txt"]
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["b.jpg"]
    assert (out / "labels" / "train" / "b.txt").read_text() == box_row(4, BOX_B) + "\n"


def test_annotation_of_an_unknown_image_is_one_line_and_the_rest_converts(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    coco["annotations"].append(dict(coco["annotations"][1], id=77, image_id=5))
    rc, err, ann, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 1 and err == [f"error: {ann}: annotations[2].image_id: no image has id 5 (annotation id 77)"]
    assert (out / "labels" / "train" / "b.txt").read_text() == box_row(4, BOX_B) + "\n"
    assert (out / "labels" / "train" / "a.txt").exists()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes): what a failed run must leave unchanged."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_symlink_leading_outside_images_dir_is_refused_and_nothing_written(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    secret = tmp_path / "secret.jpg"
    (imgs / "b.jpg").rename(secret)
    (imgs / "b.jpg").symlink_to(secret)
    rc, err, _, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 1 and err == [f"error: {imgs / 'b.jpg'}: leads to {secret}, outside IMAGES_DIR {imgs.resolve()}"]
    assert not out.exists() and secret.stat().st_nlink == 1  # not linked anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "instances_train2017.json", "secret.jpg"]


def test_symlink_inside_images_dir_is_followed(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    (imgs / "store").mkdir()
    (imgs / "b.jpg").rename(imgs / "store" / "blob")
    (imgs / "b.jpg").symlink_to(Path("store") / "blob")
    rc, err, _, out = convert(tmp_path, coco, imgs, capsys)
    assert rc == 0 and err == []
    placed = out / "images" / "train" / "b.jpg"  # named as the JSON names it, linked to the real file
    assert not placed.is_symlink() and placed.stat().st_ino == (imgs / "store" / "blob").stat().st_ino


def test_second_split_into_same_out_and_failed_reruns_keep_what_was_there(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    out = tmp_path / "yolo"
    assert convert(tmp_path, coco, imgs, capsys, out)[0] == 0
    ann_val = tmp_path / "instances_val2017.json"
    ann_val.write_text(json.dumps(coco))
    assert main(["convert-coco", str(ann_val), str(imgs), "--out", str(out)]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert "labels/train/b.txt" in before and "labels/val/b.txt" in before
    assert "train: images/train" in before["data.yaml"].decode() and "val: images/val" in before["data.yaml"].decode()

    # failures found before staging (bad JSON), and during it (a symlink out, found at the 2nd image)
    for split in ("train", "val"):
        bad = dict(coco, images=coco["images"] + [{"id": 9, "file_name": "../x.jpg"}])
        ann = tmp_path / f"instances_{split}2017.json"
        ann.write_text(json.dumps(bad))
        assert main(["convert-coco", str(ann), str(imgs), "--out", str(out)]) == 1
        (imgs / "b.jpg").rename(tmp_path / "b.jpg")
        (imgs / "b.jpg").symlink_to(tmp_path / "b.jpg")
        ann.write_text(json.dumps(coco))
        assert main(["convert-coco", str(ann), str(imgs), "--out", str(out)]) == 1
        (imgs / "b.jpg").unlink()
        (tmp_path / "b.jpg").rename(imgs / "b.jpg")
        assert snapshot(out) == before
        assert sorted(p.name for p in out.iterdir()) == [".cardamage-written", "data.yaml", "images", "labels"]  # no staging
    assert all(line.startswith("error: ") for line in capsys.readouterr().err.splitlines())


def test_rerun_replaces_the_split_whole(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    out = tmp_path / "yolo"
    assert convert(tmp_path, coco, imgs, capsys, out)[0] == 0
    coco["images"].pop(0)  # a.jpg dropped from the JSON: its old label must not linger as training data
    coco["annotations"].pop(0)
    assert convert(tmp_path, coco, imgs, capsys, out)[0] == 0
    assert sorted(p.name for p in (out / "labels" / "train").iterdir()) == ["b.txt"]
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["b.jpg"]
    assert sorted(p.name for p in out.iterdir()) == [".cardamage-written", "data.yaml", "images", "labels"]


def test_a_rerun_keeps_what_the_user_changed_in_the_split_unless_overwrite(tmp_path, capsys):
    """A rerun replaced the split whole: a label the user edited, a photo and label added to the split and a line
    added to data.yaml were lost (seventh hostile retest). Each is refused now, kept, and --overwrite replaces."""
    coco, imgs = tiny_coco(tmp_path)
    out = tmp_path / "yolo"
    assert convert(tmp_path, coco, imgs, capsys, out)[0] == 0
    label, yaml = out / "labels" / "train" / "b.txt", out / "data.yaml"
    extra = out / "labels" / "train" / "extra.txt"
    for change in ("label", "extra", "yaml"):
        before = snapshot(out)
        if change == "label":
            label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
            mine = label
        elif change == "extra":
            extra.write_text("0 0.5 0.5 0.1 0.1\n")
            mine = extra
        else:
            yaml.write_text(yaml.read_text() + "# my note\n")
            mine = yaml
        kept = snapshot(out)
        code, err, _, _ = convert(tmp_path, coco, imgs, capsys, out)
        assert code == 1 and err == [f"error: {mine}: is a file cardamage did not write (or changed since), and this "
                                     "conversion replaces the train split and data.yaml: move it, or pass --overwrite"]
        assert snapshot(out) == kept  # nothing replaced, nothing removed
        ann = tmp_path / "instances_train2017.json"
        assert main(["convert-coco", str(ann), str(imgs), "--out", str(out), "--overwrite"]) == 0
        capsys.readouterr()
        after = snapshot(out)
        assert not extra.exists() and {k: v for k, v in after.items() if k != ".cardamage-written"} == \
            {k: v for k, v in before.items() if k != ".cardamage-written"}


def test_os_error_while_building_leaves_out_unchanged(tmp_path, capsys, monkeypatch):
    import errno

    coco, imgs = tiny_coco(tmp_path)
    out = tmp_path / "yolo"
    assert convert(tmp_path, coco, imgs, capsys, out)[0] == 0
    before = snapshot(out)
    real_copy = shutil.copyfile

    def full_disk(src, dst, *a, **k):
        if Path(src).name == "b.jpg":  # the second image: the first is already in the staging folder
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    ann = tmp_path / "instances_train2017.json"
    assert main(["convert-coco", str(ann), str(imgs), "--out", str(out), "--copy"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {out / 'images' / 'train' / 'b.jpg'}: no space left on device"]
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == [".cardamage-written", "data.yaml", "images", "labels"]


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4, 5])
def test_failed_swap_is_undone(tmp_path, capsys, monkeypatch, fail_at):
    """Any of the 4 renames or the data.yaml replace fails: the renames before it are undone."""
    coco, imgs = tiny_coco(tmp_path)
    out = tmp_path / "yolo"
    assert convert(tmp_path, coco, imgs, capsys, out)[0] == 0
    before = snapshot(out)
    coco["annotations"][1]["bbox"] = [0.0, 0.0, 32.0, 24.0]  # new content, so a swap would show
    calls = []
    real_rename, real_replace = os.rename, os.replace

    def failing(real):
        def move(src, dst):
            calls.append(src)
            if len(calls) == fail_at:
                raise PermissionError(13, "Permission denied", str(src))
            return real(src, dst)

        return move

    monkeypatch.setattr(os, "rename", failing(real_rename))
    monkeypatch.setattr(os, "replace", failing(real_replace))
    rc, err, _, _ = convert(tmp_path, coco, imgs, capsys, out)
    named = {1: "images/train", 2: "images/train", 3: "labels/train", 4: "labels/train", 5: "data.yaml"}[fail_at]
    assert rc == 1 and err == [f"error: {out / named}: permission denied"]  # the path in OUT, not the staging one
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == [".cardamage-written", "data.yaml", "images", "labels"]


def test_files_follow_the_umask(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    old = os.umask(0o027)
    try:
        ann = tmp_path / "instances_train2017.json"
        ann.write_text(json.dumps(coco))
        out = tmp_path / "new" / "yolo"
        assert main(["convert-coco", str(ann), str(imgs), "--out", str(out), "--copy"]) == 0
        ann.with_name("instances_val2017.json").write_text(json.dumps(coco))  # the second run: swap into OUT
        assert main(["convert-coco", str(ann.with_name("instances_val2017.json")), str(imgs), "--out", str(out), "--copy"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in [out.parent, *out.rglob("*"), out]}
    assert modes == {k: 0o750 if (tmp_path / k).is_dir() else 0o640 for k in modes}
    assert "yolo/labels/val/b.txt" in {k[4:] for k in modes} and "new/yolo/data.yaml" in modes


def test_inputs_are_never_modified(tmp_path, capsys):
    import hashlib

    coco, imgs = tiny_coco(tmp_path)
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(coco))

    def digests():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in [ann, *imgs.iterdir()]}

    before = digests()
    out = tmp_path / "yolo"
    for _ in range(2):  # the second run replaces the split that holds links to the inputs
        assert main(["convert-coco", str(ann), str(imgs), "--out", str(out)]) == 0
    assert digests() == before
    assert (out / "images" / "train" / "a.jpg").stat().st_ino == (imgs / "a.jpg").stat().st_ino
    assert all(p.stat().st_nlink == 1 for p in [out / "data.yaml", *(out / "labels" / "train").iterdir()])
    # the inputs inside the split folder this run would replace: refused, nothing deleted
    rc = main(["convert-coco", str(ann), str(out / "images" / "train"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err == (f"error: {out}: output holds an input ({out / 'images' / 'train'}); results would mix "
                               "with or overwrite it: choose another output folder\n")
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["a.jpg", "b.jpg"]


def test_split_not_written_by_convert_coco_is_not_replaced(tmp_path, capsys):
    coco, imgs = tiny_coco(tmp_path)
    out = tmp_path / "roboflow"
    (out / "images" / "train").mkdir(parents=True)
    (out / "images" / "train" / "mine.jpg").write_bytes(b"precious")
    (out / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [x]\n")
    before = snapshot(out)
    rc, err, _, _ = convert(tmp_path, coco, imgs, capsys, out)
    assert rc == 1 and err == [f"error: {out}: its train split was not written by convert-coco (no data.yaml of ours): "
                               "refusing to replace it, choose another --out"]  # fmt: skip
    assert snapshot(out) == before


def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    coco, imgs = tiny_coco(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(["--out", str(a_file)], f"{a_file}: exists and is not a folder"),
             (["--out", str(a_file / "yolo")], f"{a_file / 'yolo'}: cannot create the output folder ({a_file} is a file, not a folder)"),
             (["--out", str(tmp_path / "o"), "--split", "../up"], "--split: expected a folder name such as train or val, got '../up'")]  # fmt: skip
    (tmp_path / "o2" / "labels").mkdir(parents=True)
    (tmp_path / "o2" / "labels" / "train").write_text("x")
    cases.append((["--out", str(tmp_path / "o2")], f"{tmp_path / 'o2' / 'labels' / 'train'}: not a folder"))
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(coco))
    for extra, message in cases:
        assert main(["convert-coco", str(ann), str(imgs), *extra]) == 1
        assert capsys.readouterr().err == f"error: {message}\n"
    assert main(["convert-coco", str(ann), str(a_file), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"error: {a_file}: not a folder\n"
    assert main(["convert-coco", str(imgs), str(imgs), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == f"error: {imgs}: is a folder, expected a JSON file\n"

    # a read-only --out (simulated: the tests may run as root, who may write anyway)
    def read_only(*a, dir=None, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".convert-coco-x"))

    monkeypatch.setattr("tempfile.mkdtemp", read_only)
    out = tmp_path / "ro"
    out.mkdir()
    assert main(["convert-coco", str(ann), str(imgs), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: cannot write here (read-only file system)\n"


def test_permission_denied_is_one_line(tmp_path):
    """Root ignores modes, so the command runs in a child without the capabilities that bypass them."""
    coco, imgs = tiny_coco(tmp_path)
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(coco))
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", sys.executable, "-m", "pipeline",
           "convert-coco", str(ann), str(imgs)]
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr == f"error: {out}: cannot write here (Permission denied)\n"
    assert list(out.iterdir()) == []
    ann.chmod(0o000)
    r = subprocess.run([*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.lower() == f"error: {ann}: permission denied\n".lower()
    assert not (tmp_path / "o").exists()


def test_an_image_with_more_boxes_than_a_label_file_may_hold_is_not_converted(sample_dir, sample_images, tmp_path):
    """convert-coco wrote a label file of 5000 boxes without a word, which its own check and train then leave
    out (``MAX_LABEL_BOXES``): the conversion leaves that image out with one line, and converts the others."""
    from pipeline.data.labels import MAX_LABEL_BOXES

    coco, _ = build_coco(sample_dir, sample_images[:2], tmp_path / "coco" / "train2017")
    crowded = coco["images"][0]
    for i in range(MAX_LABEL_BOXES + 1):
        coco["annotations"].append({"id": 900000 + i, "image_id": crowded["id"], "category_id": CAT_ID[NAMES[0]],
                                    "bbox": [1 + i % 50, 1 + i // 50, 5, 5], "area": 25.0, "iscrowd": 0})
    ann = tmp_path / "coco" / "instances_train2017.json"
    ann.write_text(json.dumps(coco))
    s = convert_coco(ann, tmp_path / "coco" / "train2017", tmp_path / "out")
    assert s["written"] == 1
    assert [e for e in s["errors"] if crowded["file_name"] in e and f"over the {MAX_LABEL_BOXES:,}" in e], s["errors"]
    assert not (tmp_path / "out" / "labels" / "train" / f"{Path(crowded['file_name']).stem}.txt").exists()
    assert check_dataset(tmp_path / "out" / "data.yaml")["errors"] == []
