"""Checks for a COCO instances JSON before ``convert-coco`` trusts it: every problem names its place.

A message starts with where the problem is, the way a reader finds it in the file:
``images[3]: missing 'id'``, ``annotations[12].bbox: expected 4 finite numbers ..., got 'abc'``.
``parse_coco`` checks what makes the whole file untrustworthy; the per-annotation checks
(``bbox``, ``ann_class``, ``is_crowd``, ``polygon_parts``) run while converting, so that a bad
annotation skips only its image.

Examples:
    >>> check_file_name("train2017/./a.jpg", "images[0]")
    'train2017/a.jpg'
    >>> try:
    ...     check_file_name("../secret.jpg", "images[0]")
    ... except SchemaError as e:
    ...     print(e)
    images[0].file_name: '../secret.jpg' is outside IMAGES_DIR (names must be relative to it)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.facts import CLASS_NAMES


def normalise_name(name: str) -> str:
    """'Glass_Shatter', 'glass-shatter', ' glass  shatter ' -> 'glass shatter'."""
    return " ".join(re.split(r"[\s_\-]+", str(name).strip().lower())).strip()


class SchemaError(ValueError):
    """One problem at one place in the COCO JSON; the message starts with the place, e.g. ``images[3].id``."""


def show(value) -> str:
    """A short rendering of a bad value for a one-line message: 'abc', [1, 2], nan, an object."""
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    if isinstance(value, list) and len(text) > 60:
        return f"a list of {len(value)} items"
    return text if len(text) <= 60 else text[:57] + "..."


def finite(value) -> bool:
    """A finite JSON number; true/false are not numbers here, and NaN, Infinity or 1e400 are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def int_id(value) -> int | None:
    """An id as int (3 or 3.0), or None for anything else ('3', true, 3.5, NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _entry_id(entry, at: str, keys: tuple[str, ...], seen: dict[int, int], table: str) -> int:
    """The integer id of one ``images``/``categories`` entry, after checking its type and keys are there."""
    if not isinstance(entry, dict):
        raise SchemaError(f"{at}: expected an object, got {show(entry)}")
    for key in keys:
        if key not in entry:
            raise SchemaError(f"{at}: missing {key!r}")
    eid = int_id(entry["id"])
    if eid is None:
        raise SchemaError(f"{at}.id: expected an integer, got {show(entry['id'])}")
    if eid in seen:
        raise SchemaError(f"{at}.id: {eid} is also the id of {table}[{seen[eid]}]")
    return eid


def category_map(categories: list[dict], names: Sequence[str] = CLASS_NAMES) -> dict[int, int]:
    """COCO category id -> our class id, matched by normalised name.

    Raises:
        SchemaError: (a ValueError) a category is malformed, repeats an id, or is not one of ``names``.

    Examples:
        >>> category_map([{"id": 1, "name": "dent"}, {"id": 3, "name": "crack"}])
        {1: 1, 3: 0}
    """
    if not isinstance(categories, list):
        raise SchemaError(f"categories: expected a list, got {show(categories)}")
    ours = {normalise_name(n): i for i, n in enumerate(names)}
    mapping: dict[int, int] = {}
    where: dict[int, int] = {}
    for i, c in enumerate(categories):
        at = f"categories[{i}]"
        cid = _entry_id(c, at, ("id", "name"), where, "categories")  # a repeated id: which name would it mean?
        if not isinstance(c["name"], str) or normalise_name(c["name"]) not in ours:
            raise SchemaError(f"{at}: category {c['name']!r} (id {cid}) is not one of {list(names)}")
        mapping[cid], where[cid] = ours[normalise_name(c["name"])], i
    return mapping


def bbox(ann: dict, at: str) -> list[float] | None:
    """The annotation's [x, y, w, h] as floats, None when absent; refuses non-numbers, NaN and w or h <= 0."""
    box = ann.get("bbox")
    if box is None:
        return None
    if not (isinstance(box, list) and len(box) == 4 and all(finite(v) for v in box)):
        raise SchemaError(f"{at}.bbox: expected 4 finite numbers [x, y, width, height], got {show(box)}")
    if box[2] <= 0 or box[3] <= 0:  # a negative size would silently become a box on the other side
        raise SchemaError(f"{at}.bbox: width and height must be positive, got {show(box)}")
    return [float(v) for v in box]


def check_file_name(name, at: str) -> str:
    """``file_name`` normalised ('a/./b.jpg' -> 'a/b.jpg'); refuses names that leave IMAGES_DIR or name no file."""
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"{at}.file_name: expected a file name, got {show(name)}")
    if "\x00" in name:
        raise SchemaError(f"{at}.file_name: {name!r} contains a NUL character")
    norm = os.path.normpath(name)
    if os.path.isabs(norm) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise SchemaError(f"{at}.file_name: {name!r} is outside IMAGES_DIR (names must be relative to it)")
    if Path(norm).name in ("", ".", ".."):
        raise SchemaError(f"{at}.file_name: {name!r} names no file")
    return norm


def ann_suffix(ann: dict) -> str:
    return f" (annotation id {show(ann['id'])})" if "id" in ann else ""


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
        raise SchemaError(f"expected a COCO object at the top level, got {show(coco)}")
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise SchemaError(f"missing {key!r} (a COCO instances file has images, annotations and categories)")
        if not isinstance(coco[key], list):
            raise SchemaError(f"{key}: expected a list, got {show(coco[key])}")
    cat_to_cls = category_map(coco["categories"])

    images: dict[int, dict] = {}
    index_of: dict[int, int] = {}  # image id -> its place in coco["images"], for duplicate-id messages
    label_of: dict[str, int] = {}  # case-folded label stem -> image index: one label file per image
    for i, im in enumerate(coco["images"]):
        at = f"images[{i}]"
        iid = _entry_id(im, at, ("id", "file_name"), index_of, "images")
        name = check_file_name(im["file_name"], at)
        stem = Path(name).stem
        if stem.casefold() in label_of:  # also x.jpg vs x.png, and X.jpg vs x.jpg on case-blind disks
            j = label_of[stem.casefold()]
            raise SchemaError(f"{at}.file_name: {im['file_name']!r} and images[{j}].file_name "
                              f"{coco['images'][j]['file_name']!r} would write the same label file {stem}.txt")  # fmt: skip
        size = []
        for key in ("width", "height"):
            v = im.get(key)  # absent or null: the file's own size is used
            if v is not None and not (finite(v) and v > 0):
                raise SchemaError(f"{at}.{key}: expected a positive number, got {show(v)}")
            size.append(v)
        label_of[stem.casefold()] = i
        images[iid] = {"index": i, "name": name, "size": size}
        index_of[iid] = i

    by_image: dict[int, list] = {iid: [] for iid in images}
    dangling = []
    for i, ann in enumerate(coco["annotations"]):
        at = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise SchemaError(f"{at}: expected an object, got {show(ann)}")
        if "image_id" not in ann:
            raise SchemaError(f"{at}: missing 'image_id'")
        iid = int_id(ann["image_id"])
        if iid is None:
            raise SchemaError(f"{at}.image_id: expected an integer, got {show(ann['image_id'])}")
        if iid in by_image:
            by_image[iid].append((i, ann))
        else:
            dangling.append(f"{json_path}: {at}.image_id: no image has id {iid}{ann_suffix(ann)}")
    return cat_to_cls, images, by_image, dangling


def is_crowd(ann: dict, at: str) -> bool:
    """COCO's ``iscrowd`` as a bool; only 0/1, false/true or absent are accepted ("0" would read as crowd)."""
    if ann.get("iscrowd") not in (None, 0, 1):
        raise SchemaError(f"{at}.iscrowd: expected 0 or 1, got {show(ann['iscrowd'])}")
    return bool(ann.get("iscrowd"))


def ann_class(ann: dict, at: str, cat_to_cls: dict[int, int]) -> int:
    """Our class id for an annotation's ``category_id``."""
    if "category_id" not in ann:
        raise SchemaError(f"{at}: missing 'category_id'")
    cid = int_id(ann["category_id"])
    if cid is None:
        raise SchemaError(f"{at}.category_id: expected an integer, got {show(ann['category_id'])}")
    if cid not in cat_to_cls:
        raise SchemaError(f"{at}.category_id: {cid} is not in categories")
    return cat_to_cls[cid]


def polygon_parts(ann: dict, at: str) -> list[np.ndarray]:
    """The (K, 2) pixel polygons of 3+ points of a polygon ``segmentation``; [] for RLE, none, or too short."""
    seg = ann.get("segmentation")
    if seg is not None and not isinstance(seg, (list, dict)):
        raise SchemaError(f"{at}.segmentation: expected polygons (a list) or RLE (an object), got {show(seg)}")
    parts = []
    for k, p in enumerate(seg if isinstance(seg, list) else []):
        if not (isinstance(p, list) and all(finite(v) for v in p)):
            raise SchemaError(f"{at}.segmentation[{k}]: expected a list of finite numbers, got {show(p)}")
        if len(p) % 2:
            raise SchemaError(f"{at}.segmentation[{k}]: odd number of coordinates ({len(p)})")
        if len(p) >= 6:  # fewer than 3 points outline nothing; documented to fall back to the bbox
            parts.append(np.asarray(p, dtype=np.float64).reshape(-1, 2))
    return parts
