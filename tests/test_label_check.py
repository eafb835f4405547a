"""The report against the photo's own labels: which boxes found labelled damage, which are false positives.

Oracles: IoU by hand from the box corners (plain Python), label boxes parsed from the label file's text by
numpy (polygon rows as their min/max), and detections from a run without a label file (what predict reports).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from checkpoints import save_checkpoint

from pipeline.core.io import atomic_write_image
from pipeline.data.labels import photo_labels
from pipeline.data.synth import render_scene
from pipeline.model.detections import describe_match, match_labels
from pipeline.model.load import load_model
from pipeline.report.page import FILES, write_report
from pipeline.analysis.run import PhotoRun

IMGSZ = 160


def iou_by_hand(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def det(c, score, box):
    return {"class_id": c, "class_name": f"c{c}", "score": score, "box_xyxy": box}


def lab(c, box):
    return {"class_id": c, "class_name": f"c{c}", "box_xyxy": box}


def test_match_labels_counts_each_label_once_and_names_every_false_positive():
    labels = [lab(0, [0, 0, 10, 10]), lab(1, [50, 50, 70, 70]), lab(2, [100, 100, 110, 110])]
    dets = [
        det(0, 0.5, [1, 0, 10, 10]),  # second box on label 0 (lower score): duplicate
        det(0, 0.9, [0, 0, 10, 11]),  # label 0, best score: hit
        det(0, 0.8, [50, 50, 70, 68]),  # over label 1 but class 0: wrong class
        det(1, 0.7, [60, 60, 80, 80]),  # over label 1, IoU 1/7: below 0.5, no label
        det(3, 0.6, [200, 200, 210, 210]),  # overlaps nothing
    ]
    m = match_labels(dets, labels)
    verdicts = [v["verdict"] for v in m["detections"]]
    assert verdicts == ["duplicate", "hit", "wrong class", "no label", "no label"]
    assert [v["label"] for v in m["detections"]][:4] == [0, 0, 1, 1]
    for d, v in zip(dets, m["detections"]):
        assert v["iou"] == pytest.approx(iou_by_hand(d["box_xyxy"], labels[v["label"]]["box_xyxy"]), abs=1e-4)
    assert m["detections"][3]["iou"] == pytest.approx(100 / 700, abs=1e-4)
    assert m["detections"][4]["iou"] == 0.0
    assert [g["found_by"] for g in m["labels"]] == [1, None, None]
    assert m["labels"][1]["best_iou"] == pytest.approx(iou_by_hand([50, 50, 70, 68], [50, 50, 70, 70]), abs=1e-4)
    assert (m["hits"], m["false_positives"], m["missed"]) == (1, 4, 2)
    assert [o["label"] for o in m["own_class"]] == [0, 0, 0, 1, None]  # the best label of each box's own class
    assert [describe_match(m, i) for i in range(5)] == [
        "false positive: a second box on labelled c0 (IoU 0.90)",
        "found labelled c0 (IoU 0.91)",
        "false positive: no labelled c0 here; it overlaps a c1 label at IoU 0.90",
        "false positive: overlaps labelled c1 only at IoU 0.14 (a hit needs 0.5)",
        "false positive: it overlaps no labelled damage",
    ]


def test_match_labels_without_labels_or_without_boxes():
    m = match_labels([det(0, 0.9, [0, 0, 5, 5])], [])
    assert m["detections"] == [{"verdict": "no label", "label": None, "iou": 0.0}]
    assert (m["hits"], m["false_positives"], m["missed"]) == (0, 1, 0)
    m = match_labels([], [lab(4, [0, 0, 5, 5])])
    assert m["labels"][0]["found_by"] is None and m["labels"][0]["best_iou"] == 0.0
    assert (m["hits"], m["false_positives"], m["missed"]) == (0, 0, 1)


def label_file_boxes(label_txt, w: int, h: int) -> list[tuple[int, list[float]]]:
    """Independent parse: class + xywh rows, or class + polygon rows taken as their bounding box."""
    out = []
    for line in label_txt.read_text().split("\n"):
        v = [float(t) for t in line.split()]
        if not v:
            continue
        xy = np.array(v[1:])
        if len(xy) == 4:
            xc, yc, bw, bh = xy
            x0, y0, x1, y1 = xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2
        else:
            x0, y0, x1, y1 = xy[0::2].min(), xy[1::2].min(), xy[0::2].max(), xy[1::2].max()
        out.append((int(v[0]), [x0 * w, y0 * h, x1 * w, y1 * h]))
    return out


def test_run_reads_the_real_label_file_beside_a_cardd_photo(sample_dir, sample_images):
    photo = sample_images[0]
    run = PhotoRun(load_model("yolov8n.yaml", nc=6), photo, imgsz=IMGSZ)
    h, w = run.pixels.shape[:2]
    want = label_file_boxes(sample_dir / "labels" / f"{photo.stem}.txt", w, h)
    assert want, "the sample photo has labelled damage"
    assert [g["class_id"] for g in run.labels] == [c for c, _ in want]
    for g, (_, box) in zip(run.labels, want):
        assert g["box_xyxy"] == pytest.approx(box, abs=0.01)
    assert run.detections == [] and run.label_check["missed"] == len(want)


def test_only_a_real_label_file_counts(tmp_path):
    """Beside a loose photo any ``.txt`` of its name is looked at; only valid YOLO rows make it labels."""
    photo = tmp_path / "car.jpg"
    label = tmp_path / "car.txt"  # no images/ folder: the label file is looked for beside the photo
    assert photo_labels(photo, 6) == (None, None)  # none there
    for note in ("bought 2019, scratched in March\n", "1 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.1 0.1\n", ""):
        label.write_text(note)
        assert photo_labels(photo, 6) == (None, None)  # a note, another model's classes, empty: said nothing
    label.write_bytes(b"\xff\xfe\x00bin")
    assert photo_labels(photo, 6) == (None, None)
    label.write_text("1 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.3 0.1 0.2 0.3\n")
    rows, problem = photo_labels(photo, 6)
    assert problem is None and [r[0] for r in rows] == [1, 2]  # the polygon as its bounding box
    assert [r[1:] for r in rows] == [pytest.approx((0.5, 0.5, 0.2, 0.2)), pytest.approx((0.2, 0.2, 0.2, 0.2))]


def test_a_dataset_label_file_with_a_bad_line_is_named_not_hidden(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    photo, label = tmp_path / "images" / "car.jpg", tmp_path / "labels" / "car.txt"
    label.write_text("")
    assert photo_labels(photo, 6) == ([], None)  # in a dataset: a photo with no damage
    label.write_text("1 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.1 0.1\n2 0.5 0.5 x 0.1\n")
    rows, problem = photo_labels(photo, 6)
    assert rows is None and problem.startswith(f"{label}:3: ") and "7" in problem
    assert problem.endswith("the label file is not used (and 1 more bad line)")


def test_no_label_file_means_no_check(tmp_path):
    scene, _ = render_scene(7, IMGSZ)
    run = PhotoRun(load_model("yolov8n.yaml", nc=6), atomic_write_image(tmp_path / "scene.png", scene), imgsz=IMGSZ)
    assert run.labels is None and run.label_check is None


def test_report_says_which_boxes_found_labelled_damage(tmp_path):
    ckpt = save_checkpoint(tmp_path / "best.pt", seed=1, imgsz=IMGSZ)
    scene, _ = render_scene(7, IMGSZ)
    photo = atomic_write_image(tmp_path / "data" / "images" / "scene.png", scene)
    dets = PhotoRun(load_model(ckpt), photo, imgsz=IMGSZ).detections  # before any label file exists
    assert len(dets) >= 2, "the trained-looking checkpoint reports boxes on this scene"
    h, w = scene.shape[:2]
    top = dets[0]
    x0, y0, x1, y1 = top["box_xyxy"]
    corner = [w - 3.0, h - 3.0, w - 1.0, h - 1.0]  # a tiny label no box covers
    rows = [(top["class_id"], [x0, y0, x1, y1]), (5, corner)]
    (tmp_path / "data" / "labels").mkdir()
    (tmp_path / "data" / "labels" / "scene.txt").write_text("".join(
        f"{c} {(a + c2) / 2 / w:.6f} {(b + d) / 2 / h:.6f} {(c2 - a) / w:.6f} {(d - b) / h:.6f}\n"
        for c, (a, b, c2, d) in rows))

    html = write_report(str(ckpt), photo, tmp_path / "report", imgsz=IMGSZ, grad_imgsz=IMGSZ, grad_batch=1,
                        layercam=False).read_text(encoding="utf-8")
    check = json.loads((tmp_path / "report" / FILES / "report.json").read_text())["output"]["labels"]
    first = check["detections"][0]
    assert first["verdict"] == "hit" and first["label"] == 0 and first["iou"] > 0.99
    assert check["labels"][1]["found_by"] is None and check["missed"] == 1
    for d, v in zip(dets, check["detections"]):  # every verdict's IoU is the one by hand
        if v["label"] is not None:
            assert v["iou"] == pytest.approx(iou_by_hand(d["box_xyxy"], [r[1] for r in rows][v["label"]]), abs=2e-3)
    assert check["hits"] + check["false_positives"] == len(dets)
    said = re.search(r"<b>(\d+) of (\d+) box(?:es)? found labelled damage, (\d+) (?:is a false positive|are false "
                     r"positives), (\d+) labels? missed</b>", html)
    assert said and [int(g) for g in said.groups()] == [check["hits"], len(dets), check["false_positives"], 1]
    assert "Against the photo's label file, this box: <a href=\"#labels\">found labelled" in html
    assert "is itself a false positive" not in html


def test_explorer_says_what_each_box_is_against_the_cardd_labels(tmp_path, sample_dir, sample_images):
    """On a CarDD photo with its label file, every box's words agree with the IoU by hand against the parsed labels."""
    from pipeline.explore.session import Explorer

    ckpt = save_checkpoint(tmp_path / "best.pt", seed=2, imgsz=320)
    scene, _ = render_scene(11, 384)
    photos = [sample_images[1], atomic_write_image(tmp_path / "scene.png", scene)]
    ex = Explorer(load_model(str(ckpt)), photos, imgsz=320)
    dets = ex.detections({"photo": "0"})
    assert dets, "the checkpoint reports boxes on the CarDD photo"
    h, w = ex.run(0).pixels.shape[:2]
    labels = label_file_boxes(sample_dir / "labels" / f"{sample_images[1].stem}.txt", w, h)
    names = ex.run(0).names
    found = 0
    for d in dets:
        ious = [iou_by_hand(d["box_xyxy"], box) for _, box in labels]
        said = d["label_match"]
        if max(ious) == 0:
            assert said == "false positive: it overlaps no labelled damage"
            continue
        alt = "|".join(map(re.escape, names.values()))
        other = re.fullmatch(rf"false positive: no labelled ({alt}) here(?: \(its largest IoU with a \1 label is "
                             rf"(\d\.\d\d), a hit needs 0.5\))?; it overlaps a ({alt}) label at IoU (\d\.\d\d)", said)
        if other:  # the reason names the box's own class first, then the other class it overlaps
            assert other.group(1) == d["class_name"] and other.group(3) != d["class_name"]
            mine = [ious[j] for j, (c, _) in enumerate(labels) if names[c] == d["class_name"]]
            assert float(other.group(2) or 0) == pytest.approx(max(mine, default=0.0), abs=0.006) and max(mine, default=0) < 0.5
            assert [j for j, (c, _) in enumerate(labels) if names[c] == other.group(3)
                    and abs(ious[j] - float(other.group(4))) <= 0.006], (said, ious)
            continue
        m = re.fullmatch(rf"(.+) labelled ({alt})(?: only at)? \(?IoU "
                         rf"(\d\.\d\d)(?:\)| \(a hit needs 0.5\))", said)
        assert m, said
        hit = [j for j, (c, _) in enumerate(labels) if names[c] == m.group(2)
               and abs(ious[j] - float(m.group(3))) <= 0.006]
        assert hit, (said, ious)
        if m.group(1) == "found":
            found += 1
            assert m.group(2) == d["class_name"] and float(m.group(3)) >= 0.5
        else:
            assert m.group(1).startswith("false positive")
    assert found <= len(labels)
    assert all(d["label_match"] is None for d in ex.detections({"photo": "1"}))


def test_report_names_an_unusable_label_file(tmp_path):
    scene, _ = render_scene(7, IMGSZ)
    photo = atomic_write_image(tmp_path / "images" / "scene.png", scene)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "scene.txt").write_text("1 0.5 0.5 0.2\n")
    html = write_report("yolov8n.yaml", photo, tmp_path / "report", imgsz=IMGSZ, grad_imgsz=IMGSZ, grad_batch=1,
                        layercam=False).read_text(encoding="utf-8")
    out = json.loads((tmp_path / "report" / FILES / "report.json").read_text())["output"]
    assert out["labels"] is None and out["label_problem"].startswith(f"{tmp_path / 'labels' / 'scene.txt'}:1: ")
    assert "No check against the labels: <code>" in html and "found labelled damage" not in html


def test_a_false_positive_names_a_label_of_its_own_class_first():
    """A glass shatter box lying on a tire flat label (IoU below 0.5) is not "a poor tire flat": no glass
    shatter is labelled there, and the words say so before naming the label it overlaps."""
    labels = [{"class_id": 5, "class_name": "tire flat", "box_xyxy": [0, 0, 100, 100]},
              {"class_id": 2, "class_name": "glass shatter", "box_xyxy": [300, 300, 340, 340]}]
    box = [0, 0, 100, 46]  # IoU with the tire flat label: 46 / 100
    dets = [{"class_id": 2, "class_name": "glass shatter", "score": 0.9, "box_xyxy": box}]
    m = match_labels(dets, labels)
    assert m["detections"][0]["verdict"] == "no label"
    assert iou_by_hand(box, labels[0]["box_xyxy"]) == pytest.approx(0.46)
    assert describe_match(m, 0) == "false positive: no labelled glass shatter here; it overlaps a tire flat label at IoU 0.46"
    # a glass shatter label that it touches a little: its IoU is said too
    labels[1]["box_xyxy"] = [90, 0, 190, 46]
    m = match_labels(dets, labels)
    own = iou_by_hand(box, labels[1]["box_xyxy"])
    assert describe_match(m, 0) == (f"false positive: no labelled glass shatter here (its largest IoU with a glass "
                                    f"shatter label is {own:.2f}, a hit needs 0.5); it overlaps a tire flat label at IoU 0.46")
