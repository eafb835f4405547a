"""`cardamage check`, dataset resolution and duplicate search, on the real CarDD sample and planted faults.

Oracles: counts are recomputed here from the label files with numpy, and compared with what
Ultralytics' own ``verify_image_label`` loads; perceptual-hash distances with ``imagehash``'s own.
Photos are copied only into tmp_path.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline  # noqa: F401  (offline environment before ultralytics)
from pipeline.cli import main
from pipeline.data.check import check_dataset, leak_summary
from pipeline.data.labels import dataset_splits, label_path, load_names, parse_label_text
from pipeline.data.duplicates import find_duplicates, hamming, phash_of, split_overlaps
from pipeline.core.io import InputError, read_image

NAMES = ["crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat"]


def recount(label_files: list[Path], image_shapes: list[tuple[int, int]]):
    """Independent numpy recount: class ids, instances per image, box areas in pixels (bbox of each row)."""
    classes, per_image, areas = [], [], []
    for lf, (h, w) in zip(label_files, image_shapes):
        rows = [np.array(line.split(), dtype=np.float64) for line in lf.read_text().splitlines() if line.strip()]
        per_image.append(len(rows))
        for r in rows:
            classes.append(int(r[0]))
            xy = r[1:].reshape(-1, 2)
            if len(xy) == 2:  # box row: x y w h
                bw, bh = xy[1]
            else:
                bw, bh = xy.max(0) - xy.min(0)
            areas.append(bw * w * bh * h)
    return np.bincount(classes, minlength=6), np.array(per_image), np.array(areas)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def copy_split(sample_dir: Path, images: list[Path], root: Path) -> list[Path]:
    """Copy photos + labels into root/images, root/labels (tmp_path only)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    out = []
    for im in images:
        shutil.copy(im, root / "images" / im.name)
        shutil.copy(sample_dir / "labels" / f"{im.stem}.txt", root / "labels" / f"{im.stem}.txt")
        out.append(root / "images" / im.name)
    return out


@pytest.fixture
def roboflow_dataset(tmp_path, sample_dir, sample_images):
    """A clean Roboflow-layout export: train/ valid/ beside data.yaml, which says ../train/images."""
    train = copy_split(sample_dir, sample_images[:6], tmp_path / "train")
    val = copy_split(sample_dir, sample_images[6:9], tmp_path / "valid")
    yaml = write_yaml(
        tmp_path / "data.yaml",
        "train: ../train/images\nval: ../valid/images\n\nnc: 6\nnames: " + json.dumps(NAMES) + "\n",
    )
    return yaml, train, val


# ---------------------------------------------------------------------------------------------- sample


def test_sample_counts_match_numpy_recount_and_ultralytics(sample_dir, sample_images):
    from ultralytics.data.utils import verify_image_label

    report = check_dataset(sample_dir / "data.yaml")
    labels = [sample_dir / "labels" / f"{p.stem}.txt" for p in sample_images]
    shapes = [read_image(p).shape[:2] for p in sample_images]
    classes, per_image, _ = recount(labels, shapes)

    total = report["total"]
    assert total["images"] == len(sample_images) == 100
    assert total["labelled"] == 100 and total["empty_labels"] == 0 and total["missing_labels"] == 0
    assert [total["class_counts"][n] for n in NAMES] == classes.tolist()
    assert total["instances"] == classes.sum() == per_image.sum()
    hist = Counter(per_image.tolist())
    assert total["instances_per_image"]["histogram"] == {str(k): hist[k] for k in sorted(hist)}
    assert total["instances_per_image"]["max"] == per_image.max()
    assert total["instances_per_image"]["mean"] == pytest.approx(per_image.mean(), abs=1e-4)

    # what Ultralytics itself loads for training
    ul = Counter()
    for im, lb in zip(sample_images, labels):
        out = verify_image_label((str(im), str(lb), "", False, 6, 0, 0, False))
        assert out[0] is not None, out[-1]
        ul.update(int(c) for c in out[1][:, 0])
    assert [ul[i] for i in range(6)] == classes.tolist()
    # The sample's README lists 157 instances (28/25/4/24/73/3); those numbers come from concatenating
    # label files that lack a final newline. Every label file, read one by one, holds these:
    assert classes.tolist() == [31, 77, 14, 26, 100, 8]


def test_sample_box_size_buckets_match_recount(sample_dir, sample_images):
    report = check_dataset(sample_dir / "data.yaml")
    labels = [sample_dir / "labels" / f"{p.stem}.txt" for p in sample_images]
    shapes = [read_image(p).shape[:2] for p in sample_images]
    _, _, areas = recount(labels, shapes)
    expected = {
        "small": int((areas < 128**2).sum()),
        "medium": int(((areas >= 128**2) & (areas < 256**2)).sum()),
        "large": int((areas >= 256**2).sum()),
    }
    assert report["total"]["box_sizes"] == expected
    assert sum(expected.values()) == report["total"]["instances"]
    assert min(expected.values()) > 0  # the sample has boxes in every bucket, so the split points matter
    assert report["total"]["box_area_px"]["median"] == pytest.approx(np.median(areas), abs=0.1)


def test_sample_train_and_val_same_folder_is_one_leak_warning(sample_dir):
    splits = dataset_splits(sample_dir / "data.yaml")
    assert list(splits) == ["train", "val"] and len(splits["train"]) == len(splits["val"]) == 100
    assert load_names(sample_dir / "data.yaml") == NAMES

    report = check_dataset(sample_dir / "data.yaml")
    # train == val is leakage (val scores are optimistic), not a broken dataset: Ultralytics' coco128 does it
    assert report["ok"] is True and report["strict_ok"] is False
    assert report["errors"] == []
    assert [w["kind"] for w in report["warnings"]] == ["split_overlap"]
    warning = report["warnings"][0]
    assert warning["file"] == str(sample_dir / "data.yaml") and warning["split"] == "val"
    assert "train and val are the same folder" in warning["reason"] and "all 100 images" in warning["reason"]
    assert report["duplicates"] == []  # the same file twice is an overlap, not 100 duplicate pairs
    assert report["split_overlaps"][0]["same_list"] and report["split_overlaps"][0]["shared"] == 100
    assert report["leaks"] == [
        {"split_a": "train", "split_b": "val", "images": 100, "of": 100, "same_file": 100, "exact": 0, "near": 0}
    ]


def test_sample_cli_exit_0_with_one_warning_and_1_with_strict(sample_dir, capsys):
    yaml = sample_dir / "data.yaml"
    warning = (
        f"warning: {yaml}: train and val are the same folder ({sample_dir / 'images'}): all 100 images are in both splits"
    )
    leak = "LEAKAGE train -> val: 100 of 100 val images (100%) are also in train (100 shared files): val scores will be optimistic"

    assert main(["check", str(yaml)]) == 0
    out = capsys.readouterr()
    assert [x for x in out.err.splitlines() if x.startswith(("error: ", "warning: "))] == [warning]
    lines = out.out.splitlines()
    assert "scratch" in out.out and leak in lines
    assert lines[-2:] == [
        "0 error(s), 1 warning(s), 1 of them leakage",
        "OK: no errors; 1 warning(s) above (stderr), which --strict would fail",
    ]

    assert main(["check", str(yaml), "--strict"]) == 1
    out = capsys.readouterr()
    assert [x for x in out.err.splitlines() if x.startswith(("error: ", "warning: "))] == [warning]
    assert leak in out.out.splitlines()
    assert out.out.splitlines()[-1] == "FAILED (--strict): no errors, but 1 warning(s) count as failures (stderr)"


def test_path_key_is_honoured(tmp_path, roboflow_dataset):
    _, train, val = roboflow_dataset
    elsewhere = tmp_path / "configs" / "cardd.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(f"path: {tmp_path}\ntrain: train/images\nval: valid/images\nnames: {json.dumps(NAMES)}\n")
    assert dataset_splits(elsewhere) == {"train": sorted(train), "val": sorted(val)}


# ---------------------------------------------------------------------------------------------- faults


def test_planted_faults_each_reported_and_exit_1(tmp_path, sample_dir, sample_images, capsys):
    root = tmp_path / "ds"
    train = copy_split(sample_dir, sample_images[:8], root / "train")
    copy_split(sample_dir, sample_images[8:12], root / "val")
    lbl = lambda im: label_path(im)  # noqa: E731

    # label faults in train
    lbl(train[0]).write_text(lbl(train[0]).read_text().rstrip("\n") + "\n2 0.5 abc 0.1 0.1\n")  # non-numeric
    lbl(train[1]).write_text("4 0.1 0.1 0.2 0.2 0.3\n")  # 5 coordinates: odd
    lbl(train[2]).write_text("1 0.1 0.1\n")  # one point polygon
    lbl(train[3]).write_text("9 0.5 0.5 0.2 0.2\n")  # class id out of range
    lbl(train[4]).write_text("0 0.5 0.5 1.5 0.2\n")  # coordinate > 1
    lbl(train[5]).unlink()  # missing label
    lbl(train[6]).write_text("")  # empty label: background image, fine
    # a truncated JPEG (cut-off download) and a non-image with a .jpg name
    truncated = root / "train" / "images" / "truncated.jpg"
    truncated.write_bytes(sample_images[20].read_bytes()[:6000])
    shutil.copy(sample_dir / "labels" / f"{sample_images[20].stem}.txt", root / "train" / "labels" / "truncated.txt")
    (root / "train" / "images" / "notanimage.jpg").write_bytes(b"this is not a jpeg\n" * 10)
    # leakage: an exact copy and a re-encoded (PNG, same pixels) copy of train photos in val
    shutil.copy(train[7], root / "val" / "images" / "leak_exact.jpg")
    pixels = read_image(train[6])
    cv2.imwrite(str(root / "val" / "images" / "leak_near.png"), cv2.resize(pixels, (600, 600)))
    truncated_bytes = truncated.read_bytes()

    yaml = write_yaml(root / "data.yaml", "train: train/images\nval: val/images\nnames: " + json.dumps(NAMES) + "\n")
    out_json = tmp_path / "report.json"
    rc = main(["check", str(yaml), "--json", str(out_json)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    lines = err.splitlines()

    def reported(path: Path, *words, line: int | None = None, level: str = "error"):
        where = f"{path}:{line}" if line else f"{path}"
        hits = [x for x in lines if x.startswith(f"{level}: ") and f" {where}:" in x and all(w in x for w in words)]
        assert hits, f"no {level} reported for {where} {words}:\n{err}"

    n0 = len(lbl(train[0]).read_text().splitlines())
    reported(lbl(train[0]), "non-numeric", "'abc'", line=n0)
    reported(lbl(train[1]), "even count", line=1)
    reported(lbl(train[2]), "needs at least 3", line=1)
    reported(lbl(train[3]), "class id 9 out of range 0..5", line=1)
    reported(lbl(train[4]), "coordinate 1.5 outside [0, 1]", line=1)
    reported(truncated, "truncated")
    reported(root / "train" / "images" / "notanimage.jpg", "not an image")
    reported(root / "val" / "images" / "leak_exact.jpg", "same bytes", str(train[7]), level="warning")
    reported(root / "val" / "images" / "leak_near.png", "perceptual hash distance", str(train[6]), level="warning")
    assert any(x.startswith("warning: ") and str(lbl(train[5])) in x and "no label file" in x for x in lines)
    assert not any(str(lbl(train[6])) in x for x in lines)  # an empty label file is a background image: no message
    assert truncated.read_bytes() == truncated_bytes  # check never repairs (rewrites) the user's files

    report = json.loads(out_json.read_text())
    assert report["ok"] is False and report["strict_ok"] is False
    tr = report["splits"]["train"]
    assert tr["images"] == 10 and tr["missing_labels"] == 2 and tr["empty_labels"] == 1 and tr["corrupt_images"] == 2
    assert Counter(e["kind"] for e in report["errors"]) == {
        "bad_label_line": 3,
        "class_out_of_range": 1,
        "coordinate_out_of_range": 1,
        "corrupt_image": 2,
    }
    # missing labels: train[5] (deleted), notanimage.jpg, and the two leaked copies in val (no label copied)
    assert Counter(w["kind"] for w in report["warnings"]) == {"missing_label": 4, "exact_duplicate": 1, "near_duplicate": 1}
    near = next(d for d in report["duplicates"] if d["kind"] == "near")
    assert near["distance"] == hamming(phash_of(pixels), phash_of(read_image(root / "val" / "images" / "leak_near.png")))
    # statistics count only valid rows: train[0] keeps its good rows, the 4 one-row faulty files add nothing
    classes, _, _ = recount([lbl(p) for p in [train[7]]], [read_image(train[7]).shape[:2]])
    first = np.array([int(x.split()[0]) for x in lbl(train[0]).read_text().splitlines()[:-1]])
    assert tr["instances"] == len(first) + classes.sum()
    assert [tr["class_counts"][n] for n in NAMES] == (classes + np.bincount(first, minlength=6)).tolist()


def test_clean_roboflow_export_exit_0(roboflow_dataset, capsys, tmp_path):
    yaml, train, val = roboflow_dataset
    splits = dataset_splits(yaml)
    assert splits == {"train": sorted(train), "val": sorted(val)}  # ../train/images resolved beside the yaml
    rc = main(["check", str(yaml), "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "OK" in out.out and "class" in out.out and "small  (< 128^2 px)" in out.out
    report = json.loads((tmp_path / "r.json").read_text())
    classes, per_image, _ = recount([label_path(p) for p in train], [read_image(p).shape[:2] for p in train])
    assert [report["splits"]["train"]["class_counts"][n] for n in NAMES] == classes.tolist()
    assert report["splits"]["val"]["images"] == 3 and report["errors"] == []


# ---------------------------------------------------------------------------------------------- leakage


def leak_copy(source: Path, dest: Path, plant: str) -> Path:
    """Plant a leaked copy of a photo (with its label file, so the leak is the only warning).

    ``exact``: the same bytes. ``reencoded``: a few pixels blacked out and saved at JPEG quality 70, as a
    re-upload or a light edit would do. ``moved``: 4 px cropped off the top and left and scaled back, like
    the same scene shot again with the camera moved a little.
    """
    if plant == "exact":
        shutil.copy(source, dest)
    else:
        pixels = cv2.imread(str(source))
        if plant == "reencoded":
            pixels[:6, :6] = 0
            quality = 70
        else:
            pixels = cv2.resize(pixels[4:, 4:], pixels.shape[1::-1])
            quality = 90
        assert cv2.imwrite(str(dest), pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    shutil.copy(label_path(source), label_path(dest))
    return dest


def imagehash_distance(a: Path, b: Path) -> int:
    """Oracle: the perceptual-hash distance by imagehash on PIL's own decode (not our cv2 path)."""
    import imagehash
    from PIL import Image

    return imagehash.phash(Image.open(a).convert("RGB")) - imagehash.phash(Image.open(b).convert("RGB"))


@pytest.mark.parametrize(
    "plant, kind, distance",
    [
        ("exact", "exact", 0),
        ("reencoded", "near", 0),
        ("moved", "near", 4),  # the distance of the one CarDD leak users reported
    ],
)
def test_one_leaked_image_is_a_warning_and_fails_only_with_strict(
    plant, kind, distance, tmp_path, sample_dir, sample_images, capsys
):
    import hashlib

    root = tmp_path / "ds"
    train = copy_split(sample_dir, sample_images[:4], root / "train")
    copy_split(sample_dir, sample_images[4:6], root / "val")
    leak = leak_copy(train[1], root / "val" / "images" / "leak.jpg", plant)
    yaml = write_yaml(root / "data.yaml", "train: train/images\nval: val/images\nnames: " + json.dumps(NAMES) + "\n")

    same_bytes = hashlib.sha1(leak.read_bytes()).digest() == hashlib.sha1(train[1].read_bytes()).digest()
    assert same_bytes == (kind == "exact") and imagehash_distance(train[1], leak) == distance
    what = "same bytes" if kind == "exact" else f"perceptual hash distance {distance}"
    warning = f"warning: {leak}: val image duplicates train image {train[1]} ({what})"
    summary = (
        f"LEAKAGE train -> val: 1 of 3 val images (33.3%) are also in train "
        f"(1 {'exact copy' if kind == 'exact' else 'near duplicate'}): val scores will be optimistic"
    )

    assert main(["check", str(yaml)]) == 0
    out = capsys.readouterr()
    assert [x for x in out.err.splitlines() if x.startswith(("error: ", "warning: "))] == [warning]
    assert summary in out.out.splitlines()

    out_json = tmp_path / "report.json"
    assert main(["check", str(yaml), "--strict", "--json", str(out_json)]) == 1
    out = capsys.readouterr()
    assert [x for x in out.err.splitlines() if x.startswith(("error: ", "warning: "))] == [warning]
    assert "FAILED (--strict)" in out.out.splitlines()[-2]  # the last line says where the report went
    report = json.loads(out_json.read_text())
    assert report["ok"] is True and report["strict_ok"] is False and report["errors"] == []
    assert [(w["kind"], w["file"], w["split"]) for w in report["warnings"]] == [(f"{kind}_duplicate", str(leak), "val")]
    assert report["leaks"] == [
        {"split_a": "train", "split_b": "val", "images": 1, "of": 3, "same_file": 0,
         "exact": int(kind == "exact"), "near": int(kind == "near")}
    ]  # fmt: skip
    assert [(d["kind"], d["distance"]) for d in report["duplicates"]] == [(kind, distance)]


def test_shared_folder_and_three_splits_each_pair_summarised(tmp_path, sample_dir, sample_images, capsys):
    root = tmp_path / "ds"
    train = copy_split(sample_dir, sample_images[:4], root / "train")
    copy_split(sample_dir, sample_images[10:12], root / "extra")  # listed by train and by val
    val = copy_split(sample_dir, sample_images[4:6], root / "val")
    copy_split(sample_dir, sample_images[6:8], root / "test")
    val_leak = leak_copy(train[0], root / "val" / "images" / "from_train.jpg", "exact")
    test_near = leak_copy(train[1], root / "test" / "images" / "from_train.jpg", "moved")
    test_exact = leak_copy(val[0], root / "test" / "images" / "from_val.jpg", "exact")
    yaml = write_yaml(
        root / "data.yaml",
        "train: [train/images, extra/images]\nval: [val/images, extra/images]\ntest: test/images\n"
        "names: " + json.dumps(NAMES) + "\n",
    )

    assert main(["check", str(yaml)]) == 0
    out = capsys.readouterr()
    d = imagehash_distance(train[1], test_near)
    extra = (root / "extra" / "images").resolve()
    assert [x for x in out.err.splitlines() if x.startswith(("error: ", "warning: "))] == [
        f"warning: {yaml}: 2 images are listed in both train and val (in {extra})",
        f"warning: {val_leak}: val image duplicates train image {train[0]} (same bytes)",
        f"warning: {test_exact}: test image duplicates val image {val[0]} (same bytes)",
        f"warning: {test_near}: test image duplicates train image {train[1]} (perceptual hash distance {d})",
    ]
    lines = out.out.splitlines()
    leak_lines = [x for x in lines if x.startswith("LEAKAGE")]
    # val: 2 own photos + its copy of train[0] + the 2 shared ones = 5; test: 2 own + 2 copies = 4
    assert leak_lines == [
        "LEAKAGE train -> val: 3 of 5 val images (60%) are also in train (2 shared files, 1 exact copy): "
        "val scores will be optimistic",
        "LEAKAGE train -> test: 1 of 4 test images (25%) are also in train (1 near duplicate): test scores will be optimistic",
        "LEAKAGE val -> test: 1 of 4 test images (25%) are also in val (1 exact copy): test is not independent of val",
    ]
    assert lines[-2] == "0 error(s), 4 warning(s), 4 of them leakage"
    assert main(["check", str(yaml), "--strict"]) == 1


def test_leak_summary_counts_each_image_once_under_its_strongest_link(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.jpg", "b.jpg", "c.jpg"))
    splits = {"train": [a, tmp_path / "t.jpg"], "val": [a, b, c]}
    dup = lambda kind, pa, pb: {"kind": kind, "split_a": "train", "path_a": str(pa), "split_b": "val", "path_b": str(pb)}  # noqa: E731
    duplicates = [
        dup("near", tmp_path / "t.jpg", b),
        dup("exact", tmp_path / "t.jpg", b),  # b is both near and exact: counted once, as exact
        dup("near", tmp_path / "t.jpg", c),
        dup("near", tmp_path / "t.jpg", a),  # a is listed by both splits already
    ]
    assert leak_summary(splits, duplicates) == [
        {"split_a": "train", "split_b": "val", "images": 3, "of": 3, "same_file": 1, "exact": 1, "near": 1}
    ]
    assert leak_summary({"train": [a], "val": [b]}, []) == []


def test_json_to_a_folder_or_below_a_file_is_one_line(roboflow_dataset, tmp_path, capsys, monkeypatch):
    import errno

    import pipeline.cli.check

    yaml, _, _ = roboflow_dataset
    folder = tmp_path / "runs"
    folder.mkdir()
    assert main(["check", str(yaml), "--json", str(folder)]) == 1
    out = capsys.readouterr()
    assert out.err.splitlines() == [f"error: {folder}: is a folder; expected a file name to write"]
    assert out.out == ""  # refused before scanning the dataset
    assert list(folder.iterdir()) == []
    slashed = f"{tmp_path / 'new.json'}/"  # a folder meant, not there yet: it was written as the file new.json
    assert main(["check", str(yaml), "--json", slashed]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {slashed}: names a folder (it ends in a slash); expected a file name to write"]
    assert not (tmp_path / "new.json").exists()

    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    target = note / "check.json"
    assert main(["check", str(yaml), "--json", str(target)]) == 1
    out = capsys.readouterr()
    assert [x for x in out.err.splitlines() if x.startswith("error")] == [
        f"error: {target}: cannot write ({note} is a file, not a folder)"
    ]
    assert "Traceback" not in out.err and note.read_text() == "mine\n"

    # any other OSError while writing, e.g. a full disk, is one line naming the path too
    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline.cli.check, "atomic_write_json", disk_full)
    assert main(["check", str(yaml), "--json", str(tmp_path / "r.json")]) == 1
    assert [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")] == [
        f"error: {tmp_path / 'r.json'}: No space left on device"
    ]


def test_box_rows_give_the_same_report_as_polygon_rows(roboflow_dataset, tmp_path):
    yaml, train, val = roboflow_dataset
    before = check_dataset(yaml)
    for p in train + val:  # rewrite every polygon row as its box row: cls xc yc w h
        rows = [np.array(x.split(), dtype=np.float64) for x in label_path(p).read_text().splitlines() if x.strip()]
        out = []
        for r in rows:
            xy = r[1:].reshape(-1, 2)
            (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
            out.append(f"{int(r[0])} {(x0 + x1) / 2:.9f} {(y0 + y1) / 2:.9f} {x1 - x0:.9f} {y1 - y0:.9f}")
        label_path(p).write_text("\n".join(out) + "\n")
    after = check_dataset(yaml)
    for s in ("train", "val"):
        a, b = before["splits"][s], after["splits"][s]
        assert a["class_counts"] == b["class_counts"] and a["box_sizes"] == b["box_sizes"]
        assert a["box_area_px"]["max"] == pytest.approx(b["box_area_px"]["max"], rel=1e-6)
    assert after["ok"]


def test_data_yaml_with_missing_path_is_one_line_error(tmp_path, roboflow_dataset, capsys):
    yaml, _, _ = roboflow_dataset
    bad = write_yaml(tmp_path / "bad.yaml", "train: ../train/images\nval: nowhere/images\nnames: " + json.dumps(NAMES))
    with pytest.raises(InputError) as e:
        dataset_splits(bad)
    assert "nowhere" in str(e.value) and str(bad) in str(e.value)
    rc = main(["check", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: ") and "missing path" in err and "nowhere" in err

    # a missing train path (Ultralytics itself only checks val)
    bad_train = write_yaml(tmp_path / "bt.yaml", "train: gone/images\nval: valid/images\nnames: " + json.dumps(NAMES))
    assert main(["check", str(bad_train)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'train' images not found" in err and "gone" in err

    # `download:` keys are never followed: no network (the guard would fail the test) and no script run
    marker = tmp_path / "ran.txt"
    dl = write_yaml(
        tmp_path / "dl.yaml",
        f"train: x/images\nval: y/images\nnames: [a]\ndownload: |\n  open({str(marker)!r}, 'w').write('ran')\n",
    )
    dl_url = write_yaml(
        tmp_path / "dlu.yaml", "train: x/images\nval: y/images\nnames: [a]\ndownload: https://example.com/d.zip\n"
    )
    for y in (dl, dl_url):
        assert main(["check", str(y)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {y}: ")
    assert not marker.exists()

    # a yaml that is not there / not a dataset
    assert main(["check", str(tmp_path / "none.yaml")]) == 1
    assert "file not found" in capsys.readouterr().err
    nonsense = write_yaml(tmp_path / "n.yaml", "just a string\n")
    assert main(["check", str(nonsense)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "line, kind, words",
    [
        ("0 0.5 0.5 0.2", "bad_label_line", "even count"),
        ("0", "bad_label_line", "class id only"),
        ("0 0.1 0.2", "bad_label_line", "1 point"),
        ("x 0.5 0.5 0.2 0.2", "bad_label_line", "non-numeric"),
        ("0 0.5 nan 0.2 0.2", "bad_label_line", "non-finite"),
        ("1.5 0.5 0.5 0.2 0.2", "bad_label_line", "non-integer class"),
        ("-1 0.5 0.5 0.2 0.2", "class_out_of_range", "class id -1"),
        ("6 0.5 0.5 0.2 0.2", "class_out_of_range", "class id 6"),
        ("0 0.1 0.1 0.2 -0.2 0.3 0.3", "coordinate_out_of_range", "-0.2"),
        ("0 0.5 0.5 0 0.2", "bad_label_line", "must be > 0"),
    ],
)
def test_parse_label_text_rejects(line, kind, words):
    boxes, errors, _ = parse_label_text(f"0 0.5 0.5 0.2 0.2\n{line}\n", nc=6)
    assert len(boxes) == 1
    assert len(errors) == 1 and errors[0][0] == 2 and errors[0][1] == kind and words in errors[0][2]


def test_parse_label_text_polygon_box_matches_ultralytics():
    from ultralytics.utils.ops import segments2boxes

    poly = np.array([[0.1, 0.2], [0.4, 0.25], [0.3, 0.6], [0.15, 0.5]])
    boxes, errors, info = parse_label_text("3 " + " ".join(map(str, poly.reshape(-1))), nc=6)
    assert errors == [] and info == {"box_rows": 0, "polygon_rows": 1}
    np.testing.assert_allclose(boxes[0, 1:], segments2boxes([poly.astype(np.float32)])[0], atol=1e-6)
    np.testing.assert_allclose(boxes[0, 1:], [0.25, 0.4, 0.3, 0.4], atol=1e-9)


def test_find_duplicates_blockwise_popcount_equals_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    na, nb = 1300, 700  # > one 1024-row block
    hashes_a = rng.integers(0, 2**64, size=na, dtype=np.uint64)
    hashes_b = rng.integers(0, 2**64, size=nb, dtype=np.uint64)
    for k in range(0, nb, 7):  # plant near copies with 0..6 flipped bits
        flips = rng.choice(64, size=k % 7, replace=False)
        hashes_b[k] = hashes_a[(k * 13) % na] ^ np.uint64(sum(1 << int(f) for f in flips))
    pa = [tmp_path / f"a{i}.jpg" for i in range(na)]
    pb = [tmp_path / f"b{j}.jpg" for j in range(nb)]
    given = {p: (f"sa{i}", int(h)) for i, (p, h) in enumerate(zip(pa, hashes_a))}
    given |= {p: (f"sb{j}", int(h)) for j, (p, h) in enumerate(zip(pb, hashes_b))}
    given[pb[1]] = given[pa[5]]  # one exact (same sha1)

    found = find_duplicates({"train": pa, "val": pb}, near_threshold=4, hashes=given, confirm=False)
    got = {(d["kind"], d["path_a"], d["path_b"], d["distance"]) for d in found}
    want = {("exact", str(pa[5]), str(pb[1]), 0)}
    for i in range(na):
        for j in range(nb):
            d = hamming(int(hashes_a[i]), int(hashes_b[j]))
            if d <= 4 and (i, j) != (5, 1):
                want.add(("near", str(pa[i]), str(pb[j]), d))
    assert got == want and len(want) > 50


def test_find_duplicates_on_photos_against_imagehash(tmp_path, sample_images):
    import imagehash
    from PIL import Image

    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir(), b.mkdir()
    for p in sample_images[:5]:
        shutil.copy(p, a / p.name)
    shutil.copy(sample_images[0], b / "exact.jpg")
    pixels = read_image(sample_images[1])
    # crop 4% off the left and brighten: a near duplicate with a non-zero distance
    edited = np.clip(pixels[:, 25:].astype(np.int16) + 12, 0, 255).astype(np.uint8)
    cv2.imwrite(str(b / "edited.jpg"), edited, [cv2.IMWRITE_JPEG_QUALITY, 80])
    shutil.copy(sample_images[1], a / "dup_within.jpg")
    train, val = sorted(a.iterdir()), sorted(b.iterdir())

    d_ref = imagehash.phash(Image.open(sample_images[1]).convert("RGB")) - imagehash.phash(
        Image.open(b / "edited.jpg").convert("RGB")
    )
    assert 0 < d_ref <= 8
    found = find_duplicates({"train": train, "val": val}, near_threshold=8)
    by_b = {Path(d["path_b"]).name: d for d in found}
    assert by_b["exact.jpg"]["kind"] == "exact" and Path(by_b["exact.jpg"]["path_a"]).name == sample_images[0].name
    near = [d for d in found if Path(d["path_b"]).name == "edited.jpg"]
    assert {Path(d["path_a"]).name for d in near} == {sample_images[1].name, "dup_within.jpg"}
    assert all(d["kind"] == "near" and d["distance"] == d_ref for d in near)
    assert all(d["split_a"] != d["split_b"] for d in found)  # within-split copies are not leakage ...
    within = find_duplicates({"train": train, "val": val}, near_threshold=8, within_split=True)
    assert any(d["split_a"] == d["split_b"] == "train" and d["kind"] == "exact" for d in within)  # ... unless asked


def test_same_composition_other_colours_is_not_a_near_duplicate(tmp_path):
    """Grey structure alike (phash close), colour layout different: not leakage. Same scene: still found."""
    from pipeline.data.duplicates import NEAR_SURE
    from pipeline.data.synth import render_scene

    img, _ = render_scene(5, 256)
    swapped = img.copy()
    swapped[:128] = img[:128, :, ::-1]  # top half: blue and red swapped; grey barely moves
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cv2.imwrite(str(a / "scene.png"), img)
    cv2.imwrite(str(b / "recoloured.png"), swapped)
    cv2.imwrite(str(b / "reshot.png"), cv2.resize(img[4:, 6:], (256, 256)))  # camera moved a few pixels
    splits = {"train": [a / "scene.png"], "val": sorted(b.iterdir())}
    loose = {Path(d["path_b"]).name: d["distance"] for d in find_duplicates(splits, near_threshold=12, confirm=False)}
    assert "recoloured.png" in loose and "reshot.png" in loose  # the grey hash alone takes both
    kept = {Path(d["path_b"]).name for d in find_duplicates(splits, near_threshold=12)}
    assert loose["recoloured.png"] > NEAR_SURE and loose["reshot.png"] > NEAR_SURE  # both need the second look
    assert "reshot.png" in kept and "recoloured.png" not in kept


def test_split_overlaps_partial(sample_images):
    ov = split_overlaps({"train": sample_images[:10], "val": sample_images[8:12], "test": sample_images[50:52]})
    assert ov == [
        {
            "split_a": "train",
            "split_b": "val",
            "shared": 2,
            "same_list": False,
            "files": [str(p.resolve()) for p in sample_images[8:10]],
        }
    ]


def test_listing_a_dataset_prints_nothing(tmp_path, capfd):
    """Listing a dataset's splits ran Ultralytics' disk speed check, which printed "Fast image access" lines:
    a train into a busy folder printed two of them before its one line saying so."""
    from pipeline.data.labels import dataset_folders
    from pipeline.data.synth import write_dataset

    data = write_dataset(tmp_path / "ds", n_train=3, n_val=2, imgsz=64, seed=1, progress=False)
    capfd.readouterr()
    assert len(dataset_folders(data)) == 5  # the yaml, images and labels of both splits
    out, err = capfd.readouterr()
    assert out == "" and err == ""
