"""Check a YOLO dataset: class counts, box sizes, label errors and images leaking across splits.

Reads a ``data.yaml`` exactly as Ultralytics training will (box rows or polygon rows, Roboflow exports
with their ``../train/images`` paths), then looks at every image and label file:

- counts: images, labelled / empty / missing label files, instances per class, instances per image;
- box sizes in pixels of the original image, in CarDD's buckets: small < 128^2, medium < 256^2, large;
- errors, each on its own line ``error: <file>[:line]: <reason>``: corrupt images, bad label lines
  (wrong number of values, non-numeric, odd polygon coordinates, < 3 points), class ids out of range,
  coordinates outside [0, 1], images Ultralytics would drop, a split without a single label file;
- warnings, each on its own line ``warning: <file>[:line]: <reason>``: missing label files (background
  images), rows Ultralytics fixes while loading, and leakage between splits: splits that list the same
  files (``split_overlap``, e.g. ``train`` and ``val`` both ``images/``), exact (same bytes,
  ``exact_duplicate``) and near (perceptual hash, ``near_duplicate``) duplicates across splits. A leak
  makes the later split's scores optimistic, but the data still trains (Ultralytics' coco128 uses
  train == val on purpose), so it is reported loudly, with a ``LEAKAGE train -> val: ...`` summary
  line per pair of splits, not failed.

Exit status 1 when there is any error, 0 otherwise; with ``--strict`` any warning fails too. Polygons
count as their bounding box, which is what Ultralytics trains a detector on.

The report (``--json``) holds:

- ``splits`` / ``total``: the statistics of ``check_dataset``;
- ``errors`` and ``warnings``: lists of {file, line, kind, reason, split}; warning kinds are
  ``missing_label``, ``ultralytics`` and the leak kinds ``split_overlap``, ``exact_duplicate``,
  ``near_duplicate`` (``LEAK_KINDS``);
- ``leaks``: per pair of splits that share images, {split_a, split_b, images, of, same_file, exact,
  near}: ``images`` of the ``of`` images of ``split_b`` are also in ``split_a``, each counted once
  under its strongest link (listed by both splits > same bytes > near duplicate);
- ``split_overlaps`` and ``duplicates``: the raw findings of ``pipeline.duplicates``;
- ``ok``: no errors (exit 0 without ``--strict``); ``strict_ok``: no errors and no warnings (exit 0
  with ``--strict``).

Examples:
    cardamage check datasets/cardd/data.yaml
    cardamage check datasets/cardd/data.yaml --strict    # leaks and other warnings fail too
    cardamage check "car damage detection.v1i.yolov8/data.yaml" --json runs/check.json
    cardamage check ../shared/data/cardd-sample/data.yaml --near 6
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import pipeline  # noqa: F401  (offline Ultralytics environment first)
from pipeline.io import InputError, atomic_write_json, check_output_file, read_image
from pipeline.options import int_range, positive_int

SPLITS = ("train", "val", "test", "minival")
SMALL, LARGE = 128**2, 256**2  # CarDD's box-area buckets in original-image pixels
COORD_TOL = 1e-6  # float printing noise; anything beyond is outside [0, 1]
LEAK_KINDS = ("split_overlap", "exact_duplicate", "near_duplicate")  # warning kinds that are leakage


# ----------------------------------------------------------------------------------------------- yaml


def _one_line(e: BaseException) -> str:
    """The first meaningful line of an exception, without Ultralytics' emoji decoration."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.replace("❌", "").replace("⚠️", "").strip()


def _read_yaml(data_yaml: str | Path) -> dict:
    from ultralytics.utils import YAML

    path = Path(data_yaml)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a data.yaml file")
    try:
        data = YAML.load(path)
    except Exception as e:
        raise InputError(path, f"not a valid YAML file: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a dataset YAML (expected keys train, val, names)")
    return data


def load_names(data_yaml: str | Path) -> list[str]:
    """Class names in class-id order, read the way Ultralytics reads them (list, dict or only ``nc``).

    Examples:
        >>> load_names("../shared/data/cardd-sample/data.yaml")
        ['crack', 'dent', 'glass shatter', 'lamp broken', 'scratch', 'tire flat']
    """
    from ultralytics.nn.autobackend import check_class_names

    data = _read_yaml(data_yaml)
    names = data.get("names")
    if names is None:
        nc = data.get("nc")
        if not isinstance(nc, int) or nc < 1:
            raise InputError(data_yaml, "has neither 'names' nor an integer 'nc'")
        return [f"class_{i}" for i in range(nc)]
    try:
        names = check_class_names(names)
    except Exception as e:
        raise InputError(data_yaml, f"bad 'names': {_one_line(e)}") from None
    return [names[i] for i in range(len(names))]


def _resolve(data_yaml: Path) -> dict:
    """Ultralytics' own data.yaml resolution, with every failure turned into one line and no downloads."""
    from ultralytics.data.utils import check_det_dataset

    data = _read_yaml(data_yaml)
    if data_yaml.suffix.lower() not in {".yaml", ".yml"}:
        raise InputError(data_yaml, "expected a .yaml or .yml dataset file")
    try:
        # autodownload=False: a missing path raises instead of running the yaml's `download:` script/URL
        return check_det_dataset(str(data_yaml), autodownload=False)
    except FileNotFoundError as e:
        msg = _one_line(e)
        missing = msg.split("missing path")[-1].strip(" '") if "missing path" in msg else msg
        raise InputError(data_yaml, f"'val' images not found, missing path {missing}") from None
    except Exception as e:
        raise InputError(data_yaml, _one_line(e)) from None


def _list_images(split_path: str) -> list[Path]:
    """The image files Ultralytics' datasets load for one split entry (folder, list file or image)."""
    from ultralytics.data.base import BaseDataset

    # get_img_files only needs a prefix and a fraction from its dataset; using it keeps our file list
    # identical to training's (recursive folder glob, *.txt lists with ./ paths, IMG_FORMATS suffixes)
    try:
        return [Path(f) for f in BaseDataset.get_img_files(SimpleNamespace(prefix="", fraction=1.0), split_path)]
    except FileNotFoundError:
        return []


def dataset_splits(data_yaml: str | Path) -> dict[str, list[Path]]:
    """Split name -> sorted image paths of a YOLO data.yaml, resolved exactly as Ultralytics resolves it.

    Paths are relative to ``path:`` when given, otherwise to the yaml's folder; Roboflow's ``../train/images``
    falls back to ``train/images`` beside the yaml. Splits are ``train``, ``val`` and, when present,
    ``test`` (and ``minival``).

    Raises:
        InputError: the yaml is missing or malformed, or a split's path is missing or holds no images
            (one line naming the yaml, the split and the path). Nothing is ever downloaded.

    Examples:
        >>> splits = dataset_splits("../shared/data/cardd-sample/data.yaml")
        >>> {k: len(v) for k, v in splits.items()}
        {'train': 100, 'val': 100}
    """
    data_yaml = Path(data_yaml)
    data = _resolve(data_yaml)
    splits: dict[str, list[Path]] = {}
    for split in SPLITS:
        entry = data.get(split)
        if not entry:
            continue
        entries = entry if isinstance(entry, list) else [entry]
        for p in entries:
            if not Path(p).exists():
                raise InputError(data_yaml, f"'{split}' images not found, missing path {p}")
        files = sorted({f for p in entries for f in _list_images(str(p))})
        if not files:
            raise InputError(data_yaml, f"'{split}' holds no images: {', '.join(map(str, entries))}")
        splits[split] = files
    return splits


def dataset_folders(data_yaml: str | Path) -> list[Path]:
    """The yaml and every folder that holds a split's images or labels: what no output may be, hold, or enter
    (training scans image folders recursively; a stray PNG or .txt there becomes data)."""
    images = [f for files in dataset_splits(data_yaml).values() for f in files]
    folders = {f.parent for f in images} | {label_path(f).parent for f in images}
    return [Path(data_yaml), *sorted(folders)]


# ----------------------------------------------------------------------------------------------- labels


def label_path(image: str | Path) -> Path:
    """The label file Ultralytics reads for an image (last ``/images/`` -> ``/labels/``, suffix -> .txt)."""
    from ultralytics.data.utils import img2label_paths

    return Path(img2label_paths([str(image)])[0])


def parse_label_text(text: str, nc: int, coord_tol: float = COORD_TOL) -> tuple[np.ndarray, list[tuple[int, str, str]], dict]:
    """Parse a YOLO label file line by line: valid boxes plus one (line, kind, reason) per bad line.

    A row is ``cls x y w h`` (box) or ``cls x1 y1 x2 y2 x3 y3 ...`` (polygon, >= 3 points); all
    coordinates are normalised to [0, 1] (within ``coord_tol``; training passes Ultralytics' own 0.01,
    which keeps such rows). A polygon becomes the bounding box of its points
    (Ultralytics' ``segments2boxes``). Only valid rows are returned.

    Returns:
        boxes: (N, 5) float64 [cls, x_center, y_center, w, h] normalised;
        errors: [(line_number, kind, reason)];
        info: {"box_rows": n, "polygon_rows": n}.

    Examples:
        >>> boxes, errors, _ = parse_label_text("0 0.5 0.5 0.2 0.2\\n7 0.5 0.5 0.1 0.1\\n", nc=6)
        >>> boxes.shape, errors
        ((1, 5), [(2, 'class_out_of_range', 'class id 7 out of range 0..5')])
    """
    from ultralytics.utils.ops import segments2boxes

    rows, errors = [], []
    info = {"box_rows": 0, "polygon_rows": 0}
    for n, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = np.array([float(t) for t in tokens], dtype=np.float64)
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            errors.append((n, "bad_label_line", f"non-numeric value {bad!r}"))
            continue
        if not np.isfinite(values).all():
            errors.append((n, "bad_label_line", "non-finite value (nan or inf)"))
            continue
        cls, coords = values[0], values[1:]
        k = len(coords)
        if k == 4:
            kind = "box_rows"
        elif k >= 6 and k % 2 == 0:
            kind = "polygon_rows"
        elif k == 0:
            errors.append((n, "bad_label_line", "class id only, no coordinates"))
            continue
        elif k % 2:
            errors.append((n, "bad_label_line", f"{k} coordinates: a polygon needs an even count (x y pairs)"))
            continue
        else:
            errors.append((n, "bad_label_line", f"polygon with {k // 2} point(s), needs at least 3"))
            continue
        if cls != int(cls):
            errors.append((n, "bad_label_line", f"non-integer class id {tokens[0]}"))
            continue
        if not 0 <= cls < nc:
            errors.append((n, "class_out_of_range", f"class id {int(cls)} out of range 0..{nc - 1}"))
            continue
        outside = coords[(coords < -coord_tol) | (coords > 1 + coord_tol)]
        if outside.size:
            errors.append((n, "coordinate_out_of_range", f"coordinate {outside[0]:g} outside [0, 1]"))
            continue
        if kind == "box_rows":
            box = coords
            if box[2] <= 0 or box[3] <= 0:
                errors.append((n, "bad_label_line", f"box width/height must be > 0, got {box[2]:g} {box[3]:g}"))
                continue
        else:
            box = segments2boxes([coords.reshape(-1, 2)])[0]
        info[kind] += 1
        rows.append([cls, *box])
    return np.array(rows, dtype=np.float64).reshape(-1, 5), errors, info


def label_boxes(image: str | Path, nc: int) -> list[tuple[int, float, float, float, float]]:
    """The valid rows of an image's label file as ``(class, xc, yc, w, h)`` boxes (polygons as their bounding
    box, as Ultralytics trains on them); ``[]`` when the image has no label file."""
    label = label_path(image)
    if not label.is_file():
        return []
    boxes, _, _ = parse_label_text(label.read_text(encoding="utf-8-sig"), nc)
    return [(int(b[0]), *(float(v) for v in b[1:])) for b in boxes]


def _is_float(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def scan_pair(image: Path, label: Path, nc: int) -> dict:
    """Check one image and its label file; everything ``check_dataset`` needs about them.

    The image is decoded in full (``read_image``), then the pair goes through Ultralytics'
    ``verify_image_label`` to learn what training will do with it (drop it, remove duplicate rows).
    Truncated JPEGs are reported and never handed to Ultralytics, which would rewrite them in place.
    """
    from ultralytics.data.utils import verify_image_label

    from pipeline.duplicates import phash_of, sha1_of_file

    rec = {
        "image": image,
        "label": label,
        "shape": None,
        "errors": [],  # (file, line, kind, reason)
        "warnings": [],
        "label_status": "missing",
        "boxes": np.zeros((0, 5)),
        "sha1": sha1_of_file(image),
        "phash": None,
        "dropped": False,
    }
    if label.is_file():
        try:
            text = label.read_text(encoding="utf-8-sig")
        except (UnicodeDecodeError, OSError) as e:
            rec["errors"].append((str(label), None, "bad_label_file", f"unreadable label file ({type(e).__name__})"))
            text = None
        if text is not None:
            boxes, line_errors, info = parse_label_text(text, nc)
            rec["boxes"] = boxes
            rec["label_status"] = "labelled" if text.strip() else "empty"
            rec["errors"] += [(str(label), n, kind, reason) for n, kind, reason in line_errors]
            if info["box_rows"] and info["polygon_rows"]:
                rec["errors"].append(
                    (str(label), None, "bad_label_file", "mixes box rows and polygon rows (Ultralytics drops the image)")
                )

    try:
        pixels = read_image(image)
    except InputError as e:
        rec["errors"].insert(0, (str(image), None, "corrupt_image", e.reason))
        rec["dropped"] = True
        return rec
    rec["shape"] = pixels.shape[:2]
    rec["phash"] = phash_of(pixels)

    # what training will do with this pair. Through a link: Ultralytics "restores" (re-encodes) a JPEG
    # whose last bytes are not the end marker, and its os.replace then swaps the link, not the user's file.
    with tempfile.TemporaryDirectory(prefix="cardamage-check-") as tmp:
        link = Path(tmp) / image.name
        os.symlink(image.resolve(), link)
        out = verify_image_label((str(link), str(label), "", False, nc, 0, 0, False))
    msg = out[-1]
    if out[0] is None:  # Ultralytics drops the image
        rec["dropped"] = True
        if not rec["errors"]:
            reason = msg.split("ignoring corrupt image/label:")[-1].strip()
            rec["errors"].append((str(image), None, "rejected_by_ultralytics", f"Ultralytics drops it: {reason}"))
    elif msg and "corrupt JPEG restored" not in msg:  # it "restored" the link; the file itself is a valid JPEG
        rec["warnings"].append((str(label), None, "ultralytics", msg.split(f"{link}:")[-1].strip()))
    return rec


# ----------------------------------------------------------------------------------------------- stats


def _stats(records: list[dict], names: list[str]) -> dict:
    """Counts, instances per image and CarDD box-size buckets over a list of scanned pairs."""
    per_image = []
    classes: Counter = Counter()
    areas = []
    status = Counter(r["label_status"] for r in records)
    for r in records:
        if r["shape"] is None:  # corrupt image: nothing trains on it
            continue
        h, w = r["shape"]
        b = r["boxes"]
        per_image.append(len(b))
        classes.update(int(c) for c in b[:, 0])
        areas += list(b[:, 3] * w * b[:, 4] * h)
    areas = np.array(areas)
    hist = Counter(per_image)
    return {
        "images": len(records),
        "labelled": status["labelled"],
        "empty_labels": status["empty"],
        "missing_labels": status["missing"],
        "corrupt_images": sum(r["shape"] is None for r in records),
        "dropped_by_ultralytics": sum(r["dropped"] for r in records),
        "instances": int(sum(per_image)),
        "class_counts": {name: classes[i] for i, name in enumerate(names)},
        "instances_per_image": {
            "histogram": {str(k): hist[k] for k in sorted(hist)},
            "mean": round(float(np.mean(per_image)), 4) if per_image else 0.0,
            "max": int(max(per_image)) if per_image else 0,
        },
        "box_sizes": {
            "small": int((areas < SMALL).sum()),
            "medium": int(((areas >= SMALL) & (areas < LARGE)).sum()),
            "large": int((areas >= LARGE).sum()),
        },
        "box_area_px": {
            "min": round(float(areas.min()), 1) if areas.size else None,
            "median": round(float(np.median(areas)), 1) if areas.size else None,
            "max": round(float(areas.max()), 1) if areas.size else None,
        },
    }


def check_dataset(data_yaml: str | Path, near_threshold: int = 4, progress: bool = False) -> dict:
    """Look at every image and label of a YOLO dataset and return the report ``cardamage check`` prints.

    Args:
        data_yaml: the dataset's data.yaml.
        near_threshold: perceptual-hash Hamming distance that counts as a near duplicate.
        progress: show a progress bar.

    Leakage (split overlaps, exact and near duplicates across splits) goes to ``warnings``, not
    ``errors``: it makes scores optimistic but leaves a dataset that trains.

    Returns:
        {data_yaml, names, splits: {split: stats}, total: stats over unique files, errors: [{file, line,
        kind, reason, split}], warnings: [same keys], leaks: [see ``leak_summary``], split_overlaps: [...],
        duplicates: [...], ok: no errors, strict_ok: no errors and no warnings}.
        ``stats`` holds images, labelled / empty_labels / missing_labels, corrupt_images, instances,
        class_counts (name -> instances), instances_per_image {histogram, mean, max}, box_sizes
        {small, medium, large} and box_area_px. Statistics count valid label rows of decodable images.

    Raises:
        InputError: the yaml is missing or broken, or a split path is missing (see ``dataset_splits``).

    Examples:
        >>> report = check_dataset("../shared/data/cardd-sample/data.yaml")
        >>> report["total"]["class_counts"]["scratch"], report["ok"], report["strict_ok"]
        (100, True, False)
        >>> [w["kind"] for w in report["warnings"]]  # train and val are one folder there, on purpose
        ['split_overlap']
    """
    from ultralytics.utils import TQDM

    from pipeline.duplicates import find_duplicates, split_overlaps

    data_yaml = Path(data_yaml)
    splits = dataset_splits(data_yaml)
    names = load_names(data_yaml)
    unique = sorted({p.resolve(): p for ps in splits.values() for p in ps}.items())
    scanned = {}
    for real, p in TQDM(unique, desc="checking images", disable=not progress):
        scanned[real] = scan_pair(p, label_path(p), len(names))
    split_of = {}
    for s, ps in splits.items():
        for p in ps:
            split_of.setdefault(p.resolve(), s)

    errors, warnings = [], []
    for real, r in scanned.items():
        for f, line, kind, reason in r["errors"]:
            errors.append({"file": f, "line": line, "kind": kind, "reason": reason, "split": split_of[real]})
        for f, line, kind, reason in r["warnings"]:
            warnings.append({"file": f, "line": line, "kind": kind, "reason": reason, "split": split_of[real]})
        if r["label_status"] == "missing":
            warnings.append(
                {
                    "file": str(r["label"]),
                    "line": None,
                    "kind": "missing_label",
                    "reason": "no label file (Ultralytics treats the image as background)",
                    "split": split_of[real],
                }
            )

    per_split = {s: _stats([scanned[p.resolve()] for p in ps], names) for s, ps in splits.items()}
    for s, st in per_split.items():
        if st["missing_labels"] == st["images"]:
            errors.append(
                {
                    "file": str(label_path(splits[s][0]).parent),
                    "line": None,
                    "kind": "missing_labels",
                    "reason": f"no label file for any of the {st['images']} '{s}' images",
                    "split": s,
                }
            )

    overlaps = split_overlaps(splits)
    for o in overlaps:
        a, b = o["split_a"], o["split_b"]
        shared = {p.resolve() for p in splits[a]} & {p.resolve() for p in splits[b]}
        folders = ", ".join(sorted({str(f.parent) for f in shared}))
        reason = (
            f"{a} and {b} are the same folder ({folders}): all {o['shared']} images are in both splits"
            if o["same_list"]
            else f"{o['shared']} images are listed in both {a} and {b} (in {folders})"
        )
        warnings.append({"file": str(data_yaml), "line": None, "kind": "split_overlap", "reason": reason, "split": b})

    hashes = {p: (scanned[p.resolve()]["sha1"], scanned[p.resolve()]["phash"]) for ps in splits.values() for p in ps}
    duplicates = find_duplicates(splits, near_threshold, hashes=hashes)
    for d in duplicates:
        what = "same bytes" if d["kind"] == "exact" else f"perceptual hash distance {d['distance']}"
        warnings.append(
            {
                "file": d["path_b"],
                "line": None,
                "kind": f"{d['kind']}_duplicate",
                "reason": f"{d['split_b']} image duplicates {d['split_a']} image {d['path_a']} ({what})",
                "split": d["split_b"],
            }
        )

    return {
        "data_yaml": str(data_yaml),
        "names": names,
        "splits": per_split,
        "total": _stats(list(scanned.values()), names),
        "errors": errors,
        "warnings": warnings,
        "leaks": leak_summary(splits, duplicates),
        "split_overlaps": overlaps,
        "duplicates": duplicates,
        "ok": not errors,
        "strict_ok": not errors and not warnings,
    }


def leak_summary(splits: dict[str, list[Path]], duplicates: list[dict]) -> list[dict]:
    """How many images of each split are also in an earlier split, per pair of splits that share any.

    Each leaked image of ``split_b`` is counted once, under its strongest link to ``split_a``: the same
    file listed by both splits, else a file with the same bytes, else a near duplicate.

    Args:
        splits: split name -> image paths, in the order of ``dataset_splits``.
        duplicates: ``pipeline.duplicates.find_duplicates`` output for those splits.

    Returns:
        list of {split_a, split_b, images, of, same_file, exact, near}: ``images`` of the ``of`` images
        of ``split_b`` leak from ``split_a``; ``same_file + exact + near == images``.

    Examples:
        >>> leak_summary({"train": [Path("a.jpg")], "val": [Path("a.jpg"), Path("b.jpg")]}, [])
        [{'split_a': 'train', 'split_b': 'val', 'images': 1, 'of': 2, 'same_file': 1, 'exact': 0, 'near': 0}]
    """
    strength = {"same_file": 0, "exact": 1, "near": 2}  # lower is stronger
    resolved = {s: {p.resolve() for p in ps} for s, ps in splits.items()}
    names = list(splits)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            link = {p: "same_file" for p in resolved[a] & resolved[b]}
            for d in duplicates:
                if (d["split_a"], d["split_b"]) != (a, b):
                    continue
                p = Path(d["path_b"]).resolve()
                if p not in link or strength[d["kind"]] < strength[link[p]]:
                    link[p] = d["kind"]
            if link:
                kinds = Counter(link.values())
                out.append(
                    {
                        "split_a": a,
                        "split_b": b,
                        "images": len(link),
                        "of": len(resolved[b]),
                        **{k: kinds[k] for k in strength},
                    }
                )
    return out


# ----------------------------------------------------------------------------------------------- CLI


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def leak_line(leak: dict) -> str:
    """One loud summary line for a pair of splits that share images (an item of ``leak_summary``).

    Examples:
        >>> leak_line({"split_a": "train", "split_b": "val", "images": 100, "of": 100, "same_file": 100,
        ...            "exact": 0, "near": 0})
        'LEAKAGE train -> val: 100 of 100 val images (100%) are also in train (100 shared files): val scores will be optimistic'
    """
    a, b = leak["split_a"], leak["split_b"]
    counts = (
        (leak["same_file"], "shared file", "shared files"),
        (leak["exact"], "exact copy", "exact copies"),
        (leak["near"], "near duplicate", "near duplicates"),
    )
    parts = [f"{n} {one if n == 1 else many}" for n, one, many in counts if n]
    # a train leak grades the model on pictures it trained on; between evaluation splits the harm is
    # milder (val picks best.pt, so test is no longer independent of it)
    effect = f"{b} scores will be optimistic" if a == "train" else f"{b} is not independent of {a}"
    share = f"{100 * leak['images'] / leak['of']:.3g}%"
    return (
        f"LEAKAGE {a} -> {b}: {leak['images']} of {leak['of']} {b} images ({share}) are also in {a} "
        f"({', '.join(parts)}): {effect}"
    )


def format_report(report: dict, strict: bool = False) -> str:
    """The human-readable summary: tables of counts, classes and box sizes, leakage, then the verdict.

    Args:
        report: ``check_dataset`` output.
        strict: the verdict counts warnings as failures (``--strict``).
    """
    cols = list(report["splits"]) + ["total"]
    st = {**report["splits"], "total": report["total"]}
    out = [f"dataset {report['data_yaml']}", ""]
    keys = [
        ("images", "images"),
        ("labelled", "labelled"),
        ("empty labels", "empty_labels"),
        ("missing labels", "missing_labels"),
        ("corrupt images", "corrupt_images"),
        ("dropped in training", "dropped_by_ultralytics"),
        ("instances", "instances"),
    ]
    rows = [[label] + [st[c][k] for c in cols] for label, k in keys]
    rows.append(["instances/image mean"] + [st[c]["instances_per_image"]["mean"] for c in cols])
    rows.append(["instances/image max"] + [st[c]["instances_per_image"]["max"] for c in cols])
    out += [_table([""] + cols, rows), ""]
    out += [_table(["class"] + cols, [[n] + [st[c]["class_counts"][n] for c in cols] for n in report["names"]]), ""]
    bucket_rows = [
        ["small  (< 128^2 px)"] + [st[c]["box_sizes"]["small"] for c in cols],
        ["medium (128^2-256^2)"] + [st[c]["box_sizes"]["medium"] for c in cols],
        ["large  (>= 256^2 px)"] + [st[c]["box_sizes"]["large"] for c in cols],
    ]
    out += [_table(["box area (original px)"] + cols, bucket_rows), ""]
    hist = report["total"]["instances_per_image"]["histogram"]
    out.append("instances per image (all): " + ", ".join(f"{k}: {v}" for k, v in hist.items()))
    n_exact = sum(d["kind"] == "exact" for d in report["duplicates"])
    out.append(f"cross-split duplicates: {n_exact} exact, {len(report['duplicates']) - n_exact} near")
    out += [leak_line(leak) for leak in report["leaks"]]
    n_err, n_warn = len(report["errors"]), len(report["warnings"])
    n_leak = sum(w["kind"] in LEAK_KINDS for w in report["warnings"])
    out.append(f"{n_err} error(s), {n_warn} warning(s)" + (f", {n_leak} of them leakage" if n_leak else ""))
    if n_err:
        out.append("FAILED: see the errors above (stderr)")
    elif n_warn and strict:
        out.append(f"FAILED (--strict): no errors, but {n_warn} warning(s) count as failures (stderr)")
    elif n_warn:
        out.append(f"OK: no errors; {n_warn} warning(s) above (stderr), which --strict would fail")
    else:
        out.append("OK")
    return "\n".join(out)


def _line(item: dict) -> str:
    where = f"{item['file']}:{item['line']}" if item["line"] else item["file"]
    return f"{where}: {item['reason']}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_yaml", metavar="DATA_YAML", help="the dataset's data.yaml (YOLO boxes or polygons)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON (atomically)")
    p.add_argument("--near", type=int_range(0, 64), default=4, metavar="BITS", help="perceptual-hash distance for near duplicates")
    p.add_argument("--max-lines", type=positive_int, default=50, help="print at most this many error/warning lines (JSON has all)")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too (leakage, missing label files)")


def run(args: argparse.Namespace) -> int:
    """Run ``cardamage check``: 1 when there are errors (with ``--strict``, errors or warnings), else 0."""
    # before the scan, which takes minutes on CarDD: not a folder, not the dataset's own yaml
    json_path = check_output_file(args.json, [args.data_yaml]) if args.json else None
    report = check_dataset(args.data_yaml, near_threshold=args.near, progress=True)
    for kind, items in (("error", report["errors"]), ("warning", report["warnings"])):
        for item in items[: args.max_lines]:
            print(f"{kind}: {_line(item)}", file=sys.stderr)
        if len(items) > args.max_lines:
            print(f"{kind}: ... {len(items) - args.max_lines} more {kind}s (all in --json)", file=sys.stderr)
    print(format_report(report, strict=args.strict))
    if json_path is not None:
        atomic_write_json(json_path, report)
        print(f"report written to {json_path}")
    return 0 if report["strict_ok" if args.strict else "ok"] else 1
