"""Dataset files as Ultralytics reads them: the ``data.yaml`` and the one YOLO label parser.

Every part of the project that reads a dataset (``check``, training's linked view in ``dataset_view``,
``outliers``, the report's gradient batch) goes through this module, so its idea of a dataset is the one
Ultralytics trains on:

- the yaml: ``load_names`` (class names in id order, from a ``names`` list or dict, or only ``nc``),
  ``dataset_splits`` (split -> sorted image paths, resolved by Ultralytics' ``check_det_dataset`` and its
  own image listing, with downloads switched off) and ``dataset_folders`` (the yaml plus every image and
  label folder: the places no output may be written into);
- the labels: ``label_path`` (Ultralytics' rule: the last ``/images/`` becomes ``/labels/``, the suffix
  ``.txt``), ``parse_label_text`` (the one parser of YOLO rows, ``cls x y w h`` or a polygon
  ``cls x1 y1 x2 y2 ...`` taken as its bounding box, with one ``(line, kind, reason)`` per rejected row)
  and ``photo_labels`` (the valid rows of one photo's label file, when it is one: the report and explorer).

A yaml that is missing, malformed or points at nothing is one ``InputError`` line naming the file.

Examples:
    >>> from pipeline.data.labels import dataset_splits, load_names, parse_label_text
    >>> load_names("../shared/data/cardd-sample/data.yaml")
    ['crack', 'dent', 'glass shatter', 'lamp broken', 'scratch', 'tire flat']
    >>> {k: len(v) for k, v in dataset_splits("../shared/data/cardd-sample/data.yaml").items()}
    {'train': 100, 'val': 100}
    >>> boxes, errors, info = parse_label_text("4 0.5 0.5 0.2 0.1\\n9 0.5 0.5 0.1 0.1\\n", nc=6)
    >>> boxes.tolist(), errors
    ([[4.0, 0.5, 0.5, 0.2, 0.1]], [(2, 'class_out_of_range', 'class id 9 out of range 0..5')])
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.core.io import MAX_GLOB, InputError, list_lines, walks_past
from pipeline.core.yamlfile import read_yaml

SPLITS = ("train", "val", "test", "minival")
COORD_TOL = 1e-6  # float printing noise; anything beyond is outside [0, 1]
MAX_CLASSES = 10_000  # a data.yaml's classes at most: 8 times LVIS's 1,203; CarDD has 6
#: The largest label file read. A box row is under 100 bytes and CarDD's largest label file (polygons of up
#: to ~100 points) is 15 KB, so 4 MiB (some 40,000 boxes) is more than any photo's labels could be. A bigger
#: file is refused unread: a gigabyte file of zeros took fourteen times its size to read, split and quote.
MAX_LABEL_BYTES = 4 << 20
#: The most boxes one photo's label file may hold. Ultralytics' box assigner builds tables of batch x boxes x
#: anchors (8,400 at 640 px): a file of 140,000 boxes, under the byte limit, crashed training out of memory
#: (docs/robustness.md, seventh hostile retest). CarDD's busiest photo has a few dozen; COCO's a few hundred.
MAX_LABEL_BOXES = 1_000
QUOTE_CHARS = 40  # a label token quoted in an error is cut to this many characters: the line stays readable


# ----------------------------------------------------------------------------------------------- yaml


def _one_line(e: BaseException) -> str:
    """The first meaningful line of an exception, without Ultralytics' emoji decoration."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.replace("❌", "").replace("⚠️", "").strip()


def read_data_yaml(data_yaml: str | Path) -> dict:
    """The data.yaml as a dict, refused in one line naming it when hostile or malformed (``read_yaml``),
    its ``names`` and ``nc`` checked (``check_names``) before Ultralytics or any scan reads it."""
    path = Path(data_yaml)
    data = read_yaml(path, "data.yaml file")
    if not isinstance(data, dict):
        raise InputError(path, "not a dataset YAML (expected keys train, val, names)")
    check_names(data, path)
    return data


def _int_like(value) -> int | None:
    """``value`` as Ultralytics takes a count or class id (``3``, ``"3"``, ``3.0``), else None; never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (str, float)):
        try:
            f = float(value)
        except (ValueError, OverflowError):
            return None
        return int(f) if f.is_integer() else None
    return None


#: Unicode's bidirectional controls (marks, embeddings, overrides, isolates): invisible, and they reverse the
#: text after them, so "dent\u202etxt.exe" prints as something else. Other format characters (the zero-width
#: joiners some scripts and emoji need) stay allowed.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_names(data: dict, path: str | Path, yaml: bool = True) -> None:
    """Refuse class names that would pass Ultralytics' loose checks and surface later, or never.

    ``names`` is a list or an ``{id: name}`` dict with ids 0..n-1; each name a non-empty string without
    control characters (a newline would split every one-line report), all different; ``nc``, when given,
    a whole number from 1 to ``MAX_CLASSES`` equal to the count. Ultralytics turns ``names: [1, yes]``
    into ``'1'`` and ``'True'`` and builds ``nc: 10**12`` names of its own, so both are refused here.

    A checkpoint's names (``yaml=False``) pass the same rule: they are printed in the same lines.

    Raises:
        InputError: one line naming the file and the first bad name or count.
    """
    names, nc = data.get("names"), data.get("nc")
    if "nc" in data:
        n = _int_like(nc)
        if n is None or not 1 <= n <= MAX_CLASSES:
            raise InputError(path, f"'nc: {str(nc)[:40]}' must be a whole number of classes from 1 to {MAX_CLASSES:,}")
    if names is None:
        if "nc" not in data:
            raise InputError(path, "has neither 'names' nor 'nc'")
        return
    if isinstance(names, dict):
        ids = [_int_like(k) for k in names]
        if None in ids or sorted(ids) != list(range(len(names))):
            raise InputError(path, f"'names' keys must be the class ids 0..{len(names) - 1}, got {str(list(names))[:80]}")
        values = [names[k] for k in sorted(names, key=_int_like)]
    elif isinstance(names, list):
        values = names
    else:
        raise InputError(path, f"'names' must be a list or an {{id: name}} mapping, not {type(names).__name__}")
    if not values:
        raise InputError(path, "'names' is empty: at least one class is needed")
    if len(values) > MAX_CLASSES:
        raise InputError(path, f"'names' lists {len(values):,} classes, more than {MAX_CLASSES:,}")
    seen = {}
    for i, name in enumerate(values):
        if not isinstance(name, str):
            raise InputError(path, f"class {i} name {str(name)[:40]!r} ({type(name).__name__}) is not a string"
                                   + (": quote it in the YAML" if yaml else ""))
        if not name.strip():
            raise InputError(path, f"class {i} name is empty")
        if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
            raise InputError(path, f"class {i} name {name[:40]!r} holds a control character or line break")
        if any(c in BIDI_CONTROLS for c in name):
            raise InputError(path, f"class {i} name {name[:40]!r} holds a bidirectional control character, which "
                                   "reorders the text printed after it (a report line, a table cell)")
        if name in seen:
            raise InputError(path, f"class {i} name {name[:40]!r} repeats class {seen[name]}")
        seen[name] = i
    if "nc" in data and _int_like(nc) != len(values):
        raise InputError(path, f"'names' lists {len(values)} classes but 'nc' is {nc}")


def load_names(data_yaml: str | Path) -> list[str]:
    """Class names in class-id order, read the way Ultralytics reads them (list, dict or only ``nc``).

    Examples:
        >>> load_names("../shared/data/cardd-sample/data.yaml")
        ['crack', 'dent', 'glass shatter', 'lamp broken', 'scratch', 'tire flat']
    """
    from ultralytics.nn.autobackend import check_class_names

    data = read_data_yaml(data_yaml)  # check_names has vouched for names and nc
    names = data.get("names")
    if names is None:
        return [f"class_{i}" for i in range(_int_like(data["nc"]))]
    try:
        names = check_class_names(names)
    except Exception as e:
        raise InputError(data_yaml, f"bad 'names': {_one_line(e)}") from None
    return [names[i] for i in range(len(names))]


def _resolve(data_yaml: Path) -> dict:
    """Ultralytics' own data.yaml resolution, with every failure turned into one line and no downloads."""
    from ultralytics.data.utils import check_det_dataset

    read_data_yaml(data_yaml)  # a missing or malformed file gets its own one line before Ultralytics sees it
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
    from ultralytics.data import base
    from ultralytics.data.base import BaseDataset

    # get_img_files only needs a prefix and a fraction from its dataset; using it keeps our file list
    # identical to training's (recursive folder glob, *.txt lists with ./ paths, IMG_FORMATS suffixes).
    # Its disk speed check is left out: it reads five of the files whole (a FIFO named x.jpg among them
    # would block it for ever) and prints "Fast image access" lines before any check of ours has spoken
    # (train into a busy folder printed two, then "busy"); the trainer's own dataset still runs it.
    speed_check = base.check_file_speeds
    base.check_file_speeds = lambda *a, **k: None
    try:
        return [Path(f) for f in BaseDataset.get_img_files(SimpleNamespace(prefix="", fraction=1.0), split_path)]
    except FileNotFoundError:
        return []
    finally:
        base.check_file_speeds = speed_check


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
            if Path(p).is_file():  # a photo list: Ultralytics reads it whole, so it is checked first (size, lines)
                for _ in list_lines(Path(p)):
                    pass
            elif Path(p).is_dir() and walks_past(p):  # Ultralytics' scan lists the whole tree below a folder
                raise InputError(data_yaml, f"'{split}' folder {p} holds more than {MAX_GLOB:,} files and folders "
                                            "below it; not listed: name the dataset's own images folder")
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


def _cap(token: str) -> str:
    """``token`` cut to ``QUOTE_CHARS`` characters, with '…' where cut: an error never echoes a whole token."""
    return token if len(token) <= QUOTE_CHARS else token[:QUOTE_CHARS] + "…"


def read_label_text(label: str | Path) -> str:
    """A label file's text (UTF-8, a BOM dropped), refused unread when over ``MAX_LABEL_BYTES``.

    Raises:
        InputError: the file is too large (one line naming it and its size).
        OSError, UnicodeDecodeError: as ``Path.read_text`` (callers word these their own way).
    """
    label = Path(label)
    size = label.stat().st_size
    too_large = f"is too large for a label file (the limit is {MAX_LABEL_BYTES:,} bytes; a box row is under 100)"
    if size > MAX_LABEL_BYTES:
        raise InputError(label, f"{size:,} bytes {too_large}")
    with open(label, "rb") as f:
        data = f.read(MAX_LABEL_BYTES + 1)  # + 1: a file that grew since the stat is still refused
    if len(data) > MAX_LABEL_BYTES:
        raise InputError(label, too_large)
    return data.decode("utf-8-sig")


def too_many_boxes(boxes) -> str | None:
    """Why a label file with these parsed ``boxes`` is left out of training, or None (``MAX_LABEL_BOXES``)."""
    if len(boxes) > MAX_LABEL_BOXES:
        return (f"{len(boxes):,} boxes, over the {MAX_LABEL_BOXES:,} a photo's labels may hold (the trainer's box "
                "assigner makes tables of boxes x anchors): left out")
    return None


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
            errors.append((n, "bad_label_line", f"non-numeric value {_cap(bad)!r}"))
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
            errors.append((n, "bad_label_line", f"non-integer class id {_cap(tokens[0])}"))
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


def _is_float(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def photo_labels(image: str | Path, nc: int) -> tuple[list[tuple[int, float, float, float, float]] | None, str | None]:
    """The rows of a photo's YOLO label file as ``(class, xc, yc, w, h)`` boxes (normalised; polygons as their
    bounding box, as Ultralytics trains on them), when the file Ultralytics would read for it is one.

    Returns ``(rows, None)``, or ``(None, reason)`` when a file in a ``labels/`` folder cannot be used (the
    first bad line, or why it cannot be read: a typo must not hide the check silently), or ``(None, None)``
    when there is nothing to use. A photo outside a dataset may have any ``.txt`` of its name beside it
    (``img2label_paths`` looks next to the photo when there is no ``/images/`` folder), so such a file counts
    only if it reads as UTF-8, is not empty and every line is a valid row for ``nc`` classes; otherwise it is
    taken for a note and passed over in silence. An empty file in a ``labels/`` folder is a photo with no
    damage (``[]``).
    """
    label = label_path(image)
    beside = label.parent == Path(image).parent
    if not label.is_file():
        return None, None
    try:
        boxes, errors, _ = parse_label_text(read_label_text(label), nc)
    except InputError as e:  # too large to be a label file
        return None, None if beside else f"{label}: not used: {e.reason}"
    except (OSError, UnicodeDecodeError) as e:  # unreadable, or not text
        return None, None if beside else f"{label}: not used: {type(e).__name__}: {e}"
    if beside and (errors or not len(boxes)):
        return None, None
    if errors:
        line, _, reason = errors[0]
        more = f" (and {len(errors) - 1} more bad line{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
        return None, f"{label}:{line}: {reason}: the label file is not used{more}"
    return [(int(b[0]), *(float(v) for v in b[1:])) for b in boxes], None
