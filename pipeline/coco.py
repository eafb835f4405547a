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

The JSON is checked before anything is written, and every message names its place
(``images[3]: missing 'id'``, ``annotations[12].bbox: expected 4 finite numbers ..., got 'abc'``):

- fatal (one ``error:`` line, nothing written): not JSON, not a COCO object, a wrong container type,
  a bad category, any bad ``images`` entry (id, ``file_name``, ``width``/``height`` that is not a
  positive finite number), two images that would share a label file, a ``file_name`` that leaves
  IMAGES_DIR, an annotation that is not an object or whose ``image_id`` is not an integer;
- the image is skipped (one line per problem, exit status 1): any bad annotation on it (non-numeric,
  NaN or non-positive bbox, bad polygon, unknown ``category_id``, RLE without bbox, no area inside
  the image), because converting it without that instance would label the damage as background;
- one line, nothing else lost: an annotation whose ``image_id`` names no image;
- absent ``width``/``height`` fall back to the image file's own size.

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
import math
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


class SchemaError(ValueError):
    """One problem at one place in the COCO JSON; the message starts with the place, e.g. ``images[3].id``."""


def _show(value) -> str:
    """A short rendering of a bad value for a one-line message: 'abc', [1, 2], nan, an object."""
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    if isinstance(value, list) and len(text) > 60:
        return f"a list of {len(value)} items"
    return text if len(text) <= 60 else text[:57] + "..."


def _finite(value) -> bool:
    """A finite JSON number; true/false are not numbers here, and NaN, Infinity or 1e400 are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _int_id(value) -> int | None:
    """An id as int (3 or 3.0), or None for anything else ('3', true, 3.5, NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def category_map(categories: list[dict], names: list[str] = CLASS_NAMES) -> dict[int, int]:
    """COCO category id -> our class id, matched by normalised name.

    Raises:
        SchemaError: (a ValueError) a category is malformed, repeats an id, or is not one of ``names``.

    Examples:
        >>> category_map([{"id": 1, "name": "dent"}, {"id": 3, "name": "crack"}])
        {1: 1, 3: 0}
    """
    if not isinstance(categories, list):
        raise SchemaError(f"categories: expected a list, got {_show(categories)}")
    ours = {normalise_name(n): i for i, n in enumerate(names)}
    mapping: dict[int, int] = {}
    where: dict[int, int] = {}
    for i, c in enumerate(categories):
        at = f"categories[{i}]"
        if not isinstance(c, dict):
            raise SchemaError(f"{at}: expected an object, got {_show(c)}")
        for key in ("id", "name"):
            if key not in c:
                raise SchemaError(f"{at}: missing {key!r}")
        cid = _int_id(c["id"])
        if cid is None:
            raise SchemaError(f"{at}.id: expected an integer, got {_show(c['id'])}")
        if cid in mapping:  # which of the two names would annotations mean?
            raise SchemaError(f"{at}.id: {cid} is also the id of categories[{where[cid]}]")
        if not isinstance(c["name"], str) or normalise_name(c["name"]) not in ours:
            raise SchemaError(f"{at}: category {c['name']!r} (id {cid}) is not one of {names}")
        mapping[cid], where[cid] = ours[normalise_name(c["name"])], i
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


def _bbox(ann: dict, at: str) -> list[float] | None:
    """The annotation's [x, y, w, h] as floats, None when absent; refuses non-numbers, NaN and w or h <= 0."""
    box = ann.get("bbox")
    if box is None:
        return None
    if not (isinstance(box, list) and len(box) == 4 and all(_finite(v) for v in box)):
        raise SchemaError(f"{at}.bbox: expected 4 finite numbers [x, y, width, height], got {_show(box)}")
    if box[2] <= 0 or box[3] <= 0:  # a negative size would silently become a box on the other side
        raise SchemaError(f"{at}.bbox: width and height must be positive, got {_show(box)}")
    return [float(v) for v in box]


def _box_polygon(bbox: list[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


def instance_polygon(ann: dict, at: str = "annotation") -> tuple[np.ndarray, str]:
    """One (K, 2) polygon in pixels for a COCO instance, and how it was made: 'polygon'|'multi'|'bbox'.

    Several parts are joined into one closed walk: part 1, back to its first point, part 2, back to
    its first point, ..., then back along the bridges to part 1's first point. Each bridge is walked
    there and back, so it encloses no area, and the points' bounding box is the union of the parts'.

    Args:
        ann: one COCO annotation.
        at: where it is in the JSON (``annotations[12]``), for messages.

    Raises:
        SchemaError: a malformed bbox or polygon, or no polygon of 3+ points and no bbox to fall back on.
    """
    seg = ann.get("segmentation")
    box = _bbox(ann, at)  # checked even when a polygon is used: a broken bbox means a broken annotation
    parts = []
    if isinstance(seg, list):
        for k, p in enumerate(seg):
            if not (isinstance(p, list) and all(_finite(v) for v in p)):
                raise SchemaError(f"{at}.segmentation[{k}]: expected a list of finite numbers, got {_show(p)}")
            if len(p) % 2:
                raise SchemaError(f"{at}.segmentation[{k}]: odd number of coordinates ({len(p)})")
            if len(p) >= 6:  # fewer than 3 points outline nothing; documented to fall back to the bbox
                parts.append(np.asarray(p, dtype=np.float64).reshape(-1, 2))
    elif seg is not None and not isinstance(seg, dict):
        raise SchemaError(f"{at}.segmentation: expected polygons (a list) or RLE (an object), got {_show(seg)}")
    if not parts:  # RLE dict, empty, or too few points: the box is the outline we have
        if box is None:
            what = "RLE segmentation" if isinstance(seg, dict) else "no polygon of 3+ points"
            raise SchemaError(f"{at}: {what} and no bbox to fall back on")
        return _box_polygon(box), "bbox"
    if len(parts) == 1:
        return parts[0], "polygon"
    walk = []
    for part in parts:
        walk += [part, part[:1]]  # the part, closed back at its first point
    walk += [p[:1] for p in parts[-2::-1]]  # return over the bridges to part 1's first point
    return np.concatenate(walk), "multi"


def _check_file_name(name, at: str) -> str:
    """``file_name`` normalised ('a/./b.jpg' -> 'a/b.jpg'); refuses names that leave IMAGES_DIR or name no file."""
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"{at}.file_name: expected a file name, got {_show(name)}")
    if "\x00" in name:
        raise SchemaError(f"{at}.file_name: {name!r} contains a NUL character")
    norm = os.path.normpath(name)
    if os.path.isabs(norm) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise SchemaError(f"{at}.file_name: {name!r} is outside IMAGES_DIR (names must be relative to it)")
    if Path(norm).name in ("", ".", ".."):
        raise SchemaError(f"{at}.file_name: {name!r} names no file")
    return norm


def _ann_suffix(ann: dict) -> str:
    return f" (annotation id {_show(ann['id'])})" if "id" in ann else ""


def parse_coco(coco, json_path: Path) -> tuple[dict[int, int], dict[int, dict], dict[int, list], list[str]]:
    """Check a loaded COCO file's structure and index it.

    Whatever makes the file itself untrustworthy is fatal: a wrong container, a bad category, any bad
    ``images`` entry (id, file name, size), two images sharing an output name, an annotation that is
    not an object or whose ``image_id`` is not an integer (it might belong to any image, which would
    then be converted with an instance missing). Problems inside one annotation are not fatal here:
    ``convert_coco`` reports them and skips that annotation's image.

    Args:
        coco: the parsed JSON.
        json_path: its path, for the lines about dangling annotations.

    Returns:
        (category id -> class id, image id -> {index, name, size}, image id -> [(index, annotation)],
        one line per annotation whose image_id names no image).

    Raises:
        SchemaError: with the place, e.g. ``images[3]: missing 'id'``.
    """
    if not isinstance(coco, dict):
        raise SchemaError(f"expected a COCO object at the top level, got {_show(coco)}")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise SchemaError(f"missing {key!r} (a COCO instances file has images, annotations and categories)")
        if not isinstance(coco[key], list):
            raise SchemaError(f"{key}: expected a list, got {_show(coco[key])}")
    cat_to_cls = category_map(coco["categories"])

    images: dict[int, dict] = {}
    label_of: dict[str, int] = {}  # case-folded label stem -> image index: one label file per image
    for i, im in enumerate(coco["images"]):
        at = f"images[{i}]"
        if not isinstance(im, dict):
            raise SchemaError(f"{at}: expected an object, got {_show(im)}")
        for key in ("id", "file_name"):
            if key not in im:
                raise SchemaError(f"{at}: missing {key!r}")
        iid = _int_id(im["id"])
        if iid is None:
            raise SchemaError(f"{at}.id: expected an integer, got {_show(im['id'])}")
        if iid in images:
            raise SchemaError(f"{at}.id: {iid} is also the id of images[{images[iid]['index']}]")
        name = _check_file_name(im["file_name"], at)
        stem = Path(name).stem
        if stem.casefold() in label_of:  # also x.jpg vs x.png, and X.jpg vs x.jpg on case-blind disks
            j = label_of[stem.casefold()]
            raise SchemaError(f"{at}.file_name: {im['file_name']!r} and images[{j}].file_name "
                              f"{coco['images'][j]['file_name']!r} would write the same label file {stem}.txt")  # fmt: skip
        size = []
        for key in ("width", "height"):
            v = im.get(key)  # absent or null: the file's own size is used
            if v is not None and not (_finite(v) and v > 0):
                raise SchemaError(f"{at}.{key}: expected a positive number, got {_show(v)}")
            size.append(v)
        label_of[stem.casefold()] = i
        images[iid] = {"index": i, "name": name, "size": size}

    by_image: dict[int, list] = {iid: [] for iid in images}
    dangling = []
    for i, ann in enumerate(coco["annotations"]):
        at = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise SchemaError(f"{at}: expected an object, got {_show(ann)}")
        if "image_id" not in ann:
            raise SchemaError(f"{at}: missing 'image_id'")
        iid = _int_id(ann["image_id"])
        if iid is None:
            raise SchemaError(f"{at}.image_id: expected an integer, got {_show(ann['image_id'])}")
        if iid in by_image:
            by_image[iid].append((i, ann))
        else:
            dangling.append(f"{json_path}: {at}.image_id: no image has id {iid}{_ann_suffix(ann)}")
    return cat_to_cls, images, by_image, dangling


def _instance_row(ann: dict, at: str, cat_to_cls: dict[int, int], w: float, h: float) -> tuple[int, np.ndarray, str, int]:
    """(class id, normalised (K, 2) polygon clipped to the image, kind, points clipped) for one annotation."""
    if "category_id" not in ann:
        raise SchemaError(f"{at}: missing 'category_id'")
    cid = _int_id(ann["category_id"])
    if cid is None:
        raise SchemaError(f"{at}.category_id: expected an integer, got {_show(ann['category_id'])}")
    if cid not in cat_to_cls:
        raise SchemaError(f"{at}.category_id: {cid} is not in categories")
    poly, kind = instance_polygon(ann, at)
    xy = poly / np.array([w, h])
    clipped = int(((xy < 0) | (xy > 1)).any(axis=1).sum())
    xy = np.clip(xy, 0.0, 1.0)
    if (np.ptp(xy, axis=0) <= 0).any():  # would train as a zero-size box
        raise SchemaError(f"{at}: has no area inside the {w:g}x{h:g} image")
    return cat_to_cls[cid], xy, kind, clipped


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
        raise InputError(annotations_json, "is a folder, expected a JSON file" if annotations_json.is_dir() else "file not found")
    if not images_dir.is_dir():
        raise InputError(images_dir, "not a folder" if images_dir.exists() else "images folder not found")
    try:
        coco = json.loads(annotations_json.read_text(encoding="utf-8-sig"))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit numbers, [[[[... nested
        raise InputError(annotations_json, f"not valid JSON ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    try:
        cat_to_cls, images, by_image, errors = parse_coco(coco, annotations_json)
    except SchemaError as e:
        raise InputError(annotations_json, str(e)) from None

    split = split or split_from_name(annotations_json)
    img_out, lbl_out = out_dir / "images" / split, out_dir / "labels" / split
    img_out.mkdir(parents=True, exist_ok=True)
    lbl_out.mkdir(parents=True, exist_ok=True)

    counts: Counter = Counter()
    kinds: Counter = Counter()
    summary = {"split": split, "images": len(images), "written": 0, "empty_images": 0, "crowd_skipped": 0,
               "clipped_points": 0, "size_mismatch": []}  # fmt: skip
    for image_id, im in TQDM(sorted(images.items()), desc=f"converting {split}", disable=not progress):
        name = im["name"]
        src = images_dir / name
        if not src.is_file():
            src = images_dir / Path(name).name  # file_name may carry a folder prefix
        if not src.is_file():
            errors.append(f"{images_dir / name}: image file not found (image id {image_id})")
            continue
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            errors.append(f"{src}: not an image file type ({src.suffix or 'no suffix'})")
            continue
        actual = _image_size(src)
        if actual is None:
            errors.append(f"{src}: not an image or corrupt (cannot read its size)")
            continue
        w, h = (s if s is not None else a for s, a in zip(im["size"], actual))
        if (w, h) != actual:
            summary["size_mismatch"].append(f"{src}: JSON says {w:g}x{h:g}, file is {actual[0]}x{actual[1]}")

        # A bad annotation skips its whole image: dropping just the instance would teach the model
        # that the damage it outlined is background.
        rows, problems, crowd, clipped = [], [], 0, 0
        for i, ann in by_image[image_id]:
            at = f"annotations[{i}]"
            try:
                if ann.get("iscrowd") not in (None, 0, 1):  # 0/1 (false/true); "0" would read as crowd
                    raise SchemaError(f"{at}.iscrowd: expected 0 or 1, got {_show(ann['iscrowd'])}")
                if ann.get("iscrowd"):
                    crowd += 1
                    continue
                cls, xy, kind, n_out = _instance_row(ann, at, cat_to_cls, w, h)
            except SchemaError as e:
                problems.append(f"{annotations_json}: {e}{_ann_suffix(ann)}; image {name!r} not converted")
                continue
            rows.append((cls, " ".join(f"{v:.6f}" for v in xy.reshape(-1)), kind))
            clipped += n_out
        if problems:
            errors += problems
            continue
        _place_image(src, img_out / src.name, copy)
        atomic_write_text(lbl_out / f"{src.stem}.txt", "".join(f"{c} {xy}\n" for c, xy, _ in rows))
        counts.update(c for c, _, _ in rows)
        kinds.update(k for _, _, k in rows)
        summary["crowd_skipped"] += crowd
        summary["clipped_points"] += clipped
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
