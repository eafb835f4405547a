"""Convert CarDD's official COCO JSON annotations to a YOLO polygon dataset.

CarDD ships ``instances_{train,val,test}2017.json`` with polygon ``segmentation`` and ``bbox`` per
instance and categories numbered 1..6 in the order dent, scratch, crack, glass shatter, lamp broken,
tire flat. This project's class order is alphabetical (crack 0, dent 1, glass shatter 2, lamp broken 3,
scratch 4, tire flat 5), so categories are mapped **by name** (case, ``_`` and ``-`` ignored), never
by id. Each instance becomes one YOLO polygon row ``cls x1 y1 x2 y2 ...`` normalised by the image size
in the JSON:

- an instance drawn as several polygons is written as one row that visits each part and returns
  along the same edge, so its box is the union box and the bridges add no area;
- RLE masks and polygons with fewer than 3 points become the ``bbox`` rectangle (no extra dependency);
- ``iscrowd`` regions are skipped (COCO evaluation ignores them too); images without instances get an
  empty label file (background);
- a missing image file is reported on its own line, the rest is converted, and the exit status is 1.

Images are hard-linked (copied when linking is impossible) into ``OUT/images/SPLIT/``, labels go to
``OUT/labels/SPLIT/``, and ``OUT/data.yaml`` (relative paths, no ``path:`` key) lists every split
converted into OUT so far. SPLIT comes from the JSON's name (train/val/test) unless ``--split`` says.

Examples:
    cardamage convert-coco CarDD_COCO/annotations/instances_train2017.json CarDD_COCO/train2017 --out datasets/cardd
    cardamage convert-coco CarDD_COCO/annotations/instances_val2017.json CarDD_COCO/val2017 --out datasets/cardd
    cardamage check datasets/cardd/data.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

import pipeline  # noqa: F401  (offline Ultralytics environment first)
from pipeline.io import IMAGE_SUFFIXES, InputError, atomic_path, atomic_write_text

CLASS_NAMES = ["crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat"]
_SPLIT_WORDS = (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test"))


def normalise_name(name: str) -> str:
    """'Glass_Shatter', 'glass-shatter', ' glass  shatter ' -> 'glass shatter'."""
    return " ".join(re.split(r"[\s_\-]+", str(name).strip().lower())).strip()


def category_map(categories: list[dict], names: list[str] = CLASS_NAMES) -> dict[int, int]:
    """COCO category id -> our class id, matched by normalised name.

    Examples:
        >>> category_map([{"id": 1, "name": "dent"}, {"id": 3, "name": "crack"}])
        {1: 1, 3: 0}
    """
    ours = {normalise_name(n): i for i, n in enumerate(names)}
    mapping = {}
    for c in categories:
        key = normalise_name(c.get("name", ""))
        if key not in ours:
            raise ValueError(f"category {c.get('name')!r} (id {c.get('id')}) is not one of {names}")
        mapping[int(c["id"])] = ours[key]
    return mapping


def split_from_name(json_path: Path) -> str:
    """'instances_val2017.json' -> 'val'; unknown names -> 'train'."""
    words = re.split(r"[^a-z]+", json_path.stem.lower())
    for w in words:
        for word, split in _SPLIT_WORDS:
            if w == word or re.fullmatch(rf"{word}\d*", w):
                return split
    for word, split in _SPLIT_WORDS:
        if word in json_path.stem.lower():
            return split
    return "train"


def _box_polygon(bbox: list[float]) -> np.ndarray:
    x, y, w, h = (float(v) for v in bbox)
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


def instance_polygon(ann: dict) -> tuple[np.ndarray, str]:
    """One (K, 2) polygon in pixels for a COCO instance, and how it was made: 'polygon'|'multi'|'bbox'.

    Several parts are joined into one closed walk: part 1, back to its first point, part 2, back to
    its first point, ..., then back along the bridges to part 1's first point. Each bridge is walked
    there and back, so it encloses no area, and the points' bounding box is the union of the parts'.
    """
    seg = ann.get("segmentation")
    parts = []
    if isinstance(seg, list):
        for p in seg:
            if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0:
                parts.append(np.asarray(p, dtype=np.float64).reshape(-1, 2))
    if not parts:  # RLE dict, empty, or too few points: the box is the outline we have
        return _box_polygon(ann["bbox"]), "bbox"
    if len(parts) == 1:
        return parts[0], "polygon"
    walk = []
    for part in parts:
        walk += [part, part[:1]]  # the part, closed back at its first point
    walk += [p[:1] for p in parts[-2::-1]]  # return over the bridges to part 1's first point
    return np.concatenate(walk), "multi"


def _place_image(src: Path, dst: Path, copy: bool) -> None:
    """Hard-link ``src`` at ``dst`` (copy when asked or across devices), atomically replacing ``dst``."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        if not copy:
            try:
                os.link(src, tmp)
                return
            except OSError:
                pass
        shutil.copyfile(src, tmp)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) after EXIF rotation, as Ultralytics sees it; None when unreadable."""
    from PIL import Image
    from ultralytics.data.utils import exif_size

    try:
        with Image.open(path) as im:
            return tuple(exif_size(im))
    except Exception:
        return None


def write_data_yaml(out_dir: Path, names: list[str] = CLASS_NAMES) -> Path:
    """(Re)write OUT/data.yaml listing every split folder present under OUT/images."""
    present = [s for s in ("train", "val", "test") if (out_dir / "images" / s).is_dir()]
    present += sorted(p.name for p in (out_dir / "images").iterdir() if p.is_dir() and p.name not in present)
    train = "train" if "train" in present else present[0]
    lines = [
        "# YOLO dataset written by `cardamage convert-coco` (polygon rows; paths relative to this file)",
        f"train: images/{train}",
    ]
    if "val" in present:
        lines.append("val: images/val")
    else:
        lines.append(f"val: images/{train}  # no val split converted yet: convert the val JSON into this folder")
    lines += [f"{s}: images/{s}" for s in present if s not in {"train", "val"}]
    lines += [f"nc: {len(names)}", f"names: {json.dumps(list(names))}", ""]
    return atomic_write_text(out_dir / "data.yaml", "\n".join(lines))


def convert_coco(
    annotations_json: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    copy: bool = False,
    progress: bool = False,
) -> dict:
    """Convert one COCO instances JSON (one split) into OUT/images/SPLIT, OUT/labels/SPLIT and OUT/data.yaml.

    Args:
        annotations_json: COCO file with ``images``, ``annotations`` and ``categories``.
        images_dir: folder holding the images named by ``file_name``.
        out_dir: dataset root to write (created; other splits already there are kept).
        split: split name; default from the JSON file name (train/val/test), else 'train'.
        copy: copy images instead of hard-linking them.
        progress: show a progress bar.

    Returns:
        summary {split, images, written, instances, class_counts, empty_images, from_bbox, multi_part,
        crowd_skipped, clipped_points, size_mismatch, errors, data_yaml}; ``errors`` holds one line per
        missing/unreadable image or dangling annotation (those images are skipped, the rest converted).

    Raises:
        InputError: the JSON is missing, not JSON, not COCO, or has a category that is not a CarDD class.

    Examples:
        >>> s = convert_coco("annotations/instances_val2017.json", "val2017", "datasets/cardd")
        >>> s["split"], s["class_counts"]["scratch"] > 0, s["errors"]
        ('val', True, [])
    """
    from ultralytics.utils import TQDM

    annotations_json, images_dir, out_dir = Path(annotations_json), Path(images_dir), Path(out_dir)
    if not annotations_json.is_file():
        raise InputError(annotations_json, "file not found")
    if not images_dir.is_dir():
        raise InputError(images_dir, "images folder not found")
    try:
        coco = json.loads(annotations_json.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(annotations_json, f"not valid JSON ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(coco, dict) or not all(k in coco for k in ("images", "annotations", "categories")):
        raise InputError(annotations_json, "not a COCO instances file (needs images, annotations, categories)")
    try:
        cat_to_cls = category_map(coco["categories"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(annotations_json, str(e)) from None

    split = split or split_from_name(annotations_json)
    img_out, lbl_out = out_dir / "images" / split, out_dir / "labels" / split
    img_out.mkdir(parents=True, exist_ok=True)
    lbl_out.mkdir(parents=True, exist_ok=True)

    images = {int(im["id"]): im for im in coco["images"]}
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    errors: list[str] = []
    for ann in coco["annotations"]:
        if int(ann.get("image_id", -1)) not in by_image:
            errors.append(f"{annotations_json}: annotation {ann.get('id')} refers to unknown image_id {ann.get('image_id')}")
            continue
        by_image[int(ann["image_id"])].append(ann)

    counts: Counter = Counter()
    kinds: Counter = Counter()
    summary = {"split": split, "images": len(images), "written": 0, "empty_images": 0, "crowd_skipped": 0,
               "clipped_points": 0, "size_mismatch": []}  # fmt: skip
    for image_id, im in TQDM(sorted(images.items()), desc=f"converting {split}", disable=not progress):
        name = str(im.get("file_name", ""))
        src = images_dir / name
        if not src.is_file():
            src = images_dir / Path(name).name  # file_name may carry a folder prefix
        if not name or not src.is_file():
            errors.append(f"{images_dir / name}: image file not found (image id {image_id})")
            continue
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            errors.append(f"{src}: not an image file type ({src.suffix or 'no suffix'})")
            continue
        actual = _image_size(src)
        if actual is None:
            errors.append(f"{src}: not an image or corrupt (cannot read its size)")
            continue
        w, h = int(im.get("width") or actual[0]), int(im.get("height") or actual[1])
        if (w, h) != actual:
            summary["size_mismatch"].append(f"{src}: JSON says {w}x{h}, file is {actual[0]}x{actual[1]}")

        rows = []
        for ann in by_image[image_id]:
            if ann.get("iscrowd"):
                summary["crowd_skipped"] += 1
                continue
            cls = cat_to_cls.get(int(ann.get("category_id", -1)))
            if cls is None:
                errors.append(f"{annotations_json}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}")
                continue
            poly, kind = instance_polygon(ann)
            xy = poly / np.array([w, h])
            outside = (xy < 0) | (xy > 1)
            summary["clipped_points"] += int(outside.any(axis=1).sum())
            xy = np.clip(xy, 0.0, 1.0)
            rows.append(f"{cls} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
            counts[cls] += 1
            kinds[kind] += 1
        _place_image(src, img_out / src.name, copy)
        atomic_write_text(lbl_out / f"{src.stem}.txt", "\n".join(rows) + ("\n" if rows else ""))
        summary["written"] += 1
        summary["empty_images"] += not rows

    summary.update(
        instances=sum(counts.values()),
        class_counts={n: counts[i] for i, n in enumerate(CLASS_NAMES)},
        from_bbox=kinds["bbox"],
        multi_part=kinds["multi"],
        errors=errors,
        data_yaml=str(write_data_yaml(out_dir)),
    )
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("annotations_json", metavar="ANNOTATIONS_JSON", help="COCO instances JSON (e.g. instances_train2017.json)")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder with the images the JSON names")
    p.add_argument("--out", required=True, metavar="DIR", help="YOLO dataset root to write (data.yaml, images/, labels/)")
    p.add_argument("--split", help="split name (default: from the JSON file name: train, val or test)")
    p.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")


def run(args: argparse.Namespace) -> int:
    s = convert_coco(args.annotations_json, args.images_dir, args.out, split=args.split, copy=args.copy, progress=True)
    for line in s["errors"]:
        print(f"error: {line}", file=sys.stderr)
    for line in s["size_mismatch"]:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{s['split']}: {s['written']}/{s['images']} images, {s['instances']} instances, {s['empty_images']} without any")
    for name, n in s["class_counts"].items():
        print(f"  {name:<14}{n:>6}")
    notes = [f"{s['from_bbox']} from bbox (RLE or < 3 points)", f"{s['multi_part']} multi-part joined",
             f"{s['crowd_skipped']} crowd skipped", f"{s['clipped_points']} points clipped to the image"]  # fmt: skip
    print("  " + ", ".join(notes))
    print(f"data.yaml: {s['data_yaml']}")
    return 1 if s["errors"] else 0
