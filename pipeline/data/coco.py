"""CarDD's COCO annotations turned into YOLO polygon rows: the conversion ``cardamage convert-coco`` runs.

What it holds:

- ``convert_coco``: one ``instances_*.json`` split -> ``OUT/images/SPLIT`` (hard links, or copies),
  ``OUT/labels/SPLIT`` and ``OUT/data.yaml``; returns a summary (instances per class, skipped images,
  one error line per problem).
- ``instance_polygon``: one annotation -> one normalisable polygon. Several parts become one row that
  goes out to each part and back along the same edge (the box is their union, the bridges add no
  area); an RLE mask or a polygon under 3 points falls back to the ``bbox`` rectangle.
- ``split_from_name``: the split a JSON's file name implies (``valid`` counts as ``val``; default ``train``).
- ``data_yaml_text``: the relative ``data.yaml`` (no ``path:`` key) over every split already in OUT.

Class ids come from category *names* (``coco_schema.category_map``), never from CarDD's ids, which
order the classes differently from this project's alphabetical ``CLASS_NAMES``. ``coco_schema.parse_coco``
vets the whole JSON before anything is written: a problem with the file itself (not a COCO object, a bad
``images`` entry, a ``file_name`` that escapes IMAGES_DIR, two images sharing one label file) raises
``InputError``; a bad annotation drops its image, since leaving the instance out would teach the model
that the damage is background; crowd regions are skipped. A split is assembled in a hidden staging
folder and renamed into place, so a failed run leaves OUT as it was and a good one leaves no stale files.

Examples:
    >>> from pathlib import Path
    >>> from pipeline.data.coco import convert_coco, split_from_name
    >>> split_from_name(Path("instances_val2017.json"))
    'val'
    >>> s = convert_coco("CarDD_COCO/annotations/instances_val2017.json", "CarDD_COCO/val2017", "datasets/cardd")
    >>> s["split"], s["errors"]
    ('val', [])
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.io import IMAGE_SUFFIXES, InputError, check_regular_file, is_ours, ledger_for, note_written
from pipeline.core.runtime import progress_bar
from pipeline.data.labels import too_many_boxes
from pipeline.data.coco_schema import (
    CLASS_NAMES,
    SchemaError,
    ann_class,
    ann_suffix,
    bbox,
    is_crowd,
    parse_coco,
    polygon_parts,
)

_YAML_HEADER = "# YOLO dataset written by `cardamage convert-coco`"
#: The JSON objects and lists a COCO file may hold, counted before it is parsed: an annotation is a few (itself,
#: its bbox, its polygons), an image one; a file of ``{},{},...`` ended in a MemoryError traceback
#: (docs/robustness.md, seventh hostile retest). Sixteen million is some three million annotations.
MAX_COCO_CONTAINERS = 16_000_000
_SPLIT_WORDS = (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test"))


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
    box = bbox(ann, at)  # checked even when a polygon is used: a broken bbox means a broken annotation
    parts = polygon_parts(ann, at)
    if not parts:  # RLE dict, empty, or too few points: the box is the outline we have
        if box is None:
            what = "RLE segmentation" if isinstance(ann.get("segmentation"), dict) else "no polygon of 3+ points"
            raise SchemaError(f"{at}: {what} and no bbox to fall back on")
        return _box_polygon(box), "bbox"
    if len(parts) == 1:
        return parts[0], "polygon"
    walk = []
    for part in parts:
        walk += [part, part[:1]]  # the part, closed back at its first point
    walk += [p[:1] for p in parts[-2::-1]]  # return over the bridges to part 1's first point
    return np.concatenate(walk), "multi"


def _instance_row(ann: dict, at: str, cat_to_cls: dict[int, int], w: float, h: float) -> tuple[int, np.ndarray, str, int]:
    """(class id, normalised (K, 2) polygon clipped to the image, kind, points clipped) for one annotation."""
    cls = ann_class(ann, at, cat_to_cls)
    poly, kind = instance_polygon(ann, at)
    xy = poly / np.array([w, h])
    clipped = int(((xy < 0) | (xy > 1)).any(axis=1).sum())
    xy = np.clip(xy, 0.0, 1.0)
    if (np.ptp(xy, axis=0) <= 0).any():  # would train as a zero-size box
        raise SchemaError(f"{at}: has no area inside the {w:g}x{h:g} image")
    return cls, xy, kind, clipped


def _place_image(src: Path, dst: Path, copy: bool) -> None:
    """Hard-link ``src`` at the new path ``dst``, or copy it when asked or when linking is impossible.

    A link cannot change the input: this module only ever creates new files and renames folders,
    it never opens an existing output file for writing.
    """
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:  # across devices, or no hard links on this file system
            pass
    try:
        shutil.copyfile(src, dst)  # a new file: mode 0o666 & ~umask
    except OSError as e:  # a full disk is the output's: the error names it (copyfile's may name the photo)
        dst.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(dst)) from None


def _find_image(images_dir: Path, root: Path, name: str) -> tuple[Path | None, str]:
    """The resolved file for ``file_name`` (tried as given, then by base name for a folder prefix), else why not.

    Raises:
        InputError: the file resolves outside IMAGES_DIR (a symlink leading out): never link it in.
    """
    why = "image file not found"
    for cand in (images_dir / name, images_dir / Path(name).name):
        try:
            real = cand.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, RuntimeError) as e:  # permission denied, name too long, symlink loop
            why = f"cannot open ({_os_reason(e) if isinstance(e, OSError) else e})"
            continue
        if not real.is_relative_to(root):
            raise InputError(cand, f"leads to {real}, outside IMAGES_DIR {root}")
        if real.is_file():
            return real, ""
    return None, why


def _image_size(path: Path) -> tuple[tuple[int, int] | None, str]:
    """((width, height) after EXIF rotation, as Ultralytics sees it, ''), or (None, why not)."""
    from PIL import Image
    from ultralytics.data.utils import exif_size

    try:
        with Image.open(path) as im:
            return tuple(exif_size(im)), ""
    except PermissionError as e:
        return None, f"cannot read ({_os_reason(e)})"
    except Exception:
        return None, "not an image or corrupt (cannot read its size)"


def _os_reason(e: OSError) -> str:
    """'permission denied', 'no space left on device', ... (lower-case, as this project's messages)."""
    reason = e.strerror or type(e).__name__
    reason = reason[:1].lower() + reason[1:]
    return f"{reason} (with {e.filename2})" if e.filename2 else reason


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` (it must not exist, so nothing is written through a link); mode 0o666 & ~umask."""
    with open(path, "x", encoding="utf-8", newline="\n") as f:
        f.write(text)


def data_yaml_text(root: Path, names: Sequence[str] = CLASS_NAMES) -> str:
    """The data.yaml for the dataset at ``root``, listing every split folder under root/images."""
    present = [s for s in ("train", "val", "test") if (root / "images" / s).is_dir()]
    present += sorted(p.name for p in (root / "images").iterdir()
                      if p.is_dir() and p.name not in present and not p.name.startswith("."))  # fmt: skip
    train = "train" if "train" in present else present[0]
    lines = [f"{_YAML_HEADER} (polygon rows; paths relative to this file)", f"train: images/{train}"]
    if "val" in present:
        lines.append("val: images/val")
    else:
        lines.append(f"val: images/{train}  # no val split converted yet: convert the val JSON into this folder")
    lines += [f"{s}: images/{s}" for s in present if s not in {"train", "val"}]
    lines += [f"nc: {len(names)}", f"names: {json.dumps(list(names))}", ""]
    return "\n".join(lines)


def _check_out(out_dir: Path, split: str, inputs: tuple[Path, ...], overwrite: bool = False) -> None:
    """Refuse, before any work, an OUT that cannot take ``split`` or whose split must not be replaced.

    Under ``core.io.output_folder`` (the command line), the split is replaced whole only if every file in it and
    the data.yaml are the ones a conversion wrote, unchanged since (the folder's list): a label edited or a photo
    added there, or a line added to data.yaml, is the user's, kept unless ``overwrite``."""
    live = (out_dir / "images" / split, out_dir / "labels" / split)
    nearest = next((p for p in out_dir.parents if p.exists()), None)  # OUT will be made in it
    for p in (nearest, out_dir, out_dir / "images", out_dir / "labels", *live):
        if p is not None and p.exists() and not p.is_dir():
            raise InputError(p, "not a folder")
    for p in live:
        for src in inputs:  # replacing the split would delete the input
            if src.resolve().is_relative_to(p.resolve()):
                raise InputError(src, f"is inside {p}, which this conversion replaces: choose another --out")
    yaml = out_dir / "data.yaml"
    if any(p.exists() for p in live) and not (yaml.is_file() and yaml.read_text(encoding="utf-8", errors="replace").startswith(_YAML_HEADER)):
        raise InputError(out_dir, f"its {split} split was not written by convert-coco (no data.yaml of ours): "
                                  "refusing to replace it, choose another --out")  # fmt: skip
    if overwrite or ledger_for(yaml) is None:
        return
    for path in [yaml] * yaml.exists() + [Path(d) / n for p in live for d, _, files in os.walk(p) for n in sorted(files)]:
        if not is_ours(path):
            raise InputError(path, f"is a file cardamage did not write (or changed since), and this conversion replaces "
                                   f"the {split} split and data.yaml: move it, or pass --overwrite")


def _staging(out_dir: Path, split: str) -> Path:
    """A new private folder on OUT's file system: inside OUT when it exists (renames into OUT/images
    then cannot cross devices, and need no right beyond OUT's), else beside OUT."""
    parent = out_dir if out_dir.is_dir() else out_dir.parent
    prefix = f".convert-coco-{split}-" if parent == out_dir else f".{out_dir.name}.convert-coco-{split}-"
    parent.mkdir(parents=True, exist_ok=True)
    try:  # the OSError would name the random folder, not where the user has to look
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as e:
        raise InputError(parent, f"cannot write here ({_os_reason(e)})") from None


class _RestoreFailed(InputError):
    """Swapping in failed and the previous split could not be put back: it stays in the staging folder."""


def _swap_in(stage: Path, out_dir: Path, split: str) -> None:
    """Move the split built in stage/new into OUT and rewrite OUT/data.yaml.

    The old split folders are renamed into the stage (deleted with it). If any step fails, the
    renames done so far are undone, so OUT keeps its previous split and data.yaml.
    """
    new = stage / "new"
    if not out_dir.exists():  # the first split into OUT: the whole dataset appears in one rename
        _write_new(new / "data.yaml", data_yaml_text(new))
        os.rename(new, out_dir)
        return
    done: list[tuple[Path, Path]] = []
    try:
        for kind in ("images", "labels"):
            live = out_dir / kind / split
            live.parent.mkdir(exist_ok=True)
            for src, dst in ((live, stage / f"old-{kind}"), (new / kind / split, live)):
                if os.path.lexists(src):
                    os.rename(src, dst)
                    done.append((src, dst))
        _write_new(stage / "data.yaml", data_yaml_text(out_dir))
        os.replace(stage / "data.yaml", out_dir / "data.yaml")
    except BaseException:  # also Ctrl-C: never leave OUT half swapped
        for src, dst in reversed(done):
            try:
                os.rename(dst, src)
            except OSError as e:
                raise _RestoreFailed(src, f"could not be restored ({_os_reason(e)}); the previous {split} "
                                          f"split is in {stage}") from None  # fmt: skip
        raise


def convert_coco(
    annotations_json: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    copy: bool = False,
    progress: bool = False,
    overwrite: bool = False,
) -> dict:
    """Convert one COCO instances JSON (one split) into OUT/images/SPLIT, OUT/labels/SPLIT and OUT/data.yaml.

    Args:
        annotations_json: COCO file with ``images``, ``annotations`` and ``categories``.
        images_dir: folder holding the images named by ``file_name``.
        out_dir: dataset root to write (created; other splits already there are kept, this split's
            folders are replaced as a whole).
        split: split name; default from the JSON file name (train/val/test), else 'train'.
        copy: copy images instead of hard-linking them.
        progress: show a progress bar.
        overwrite: replace the split even where its files or data.yaml are not the ones a conversion wrote.

    Returns:
        summary {split, images, written, instances, class_counts, empty_images, from_bbox, multi_part,
        crowd_skipped, clipped_points, size_mismatch, errors, data_yaml}; ``errors`` holds one line per
        missing/unreadable image or dangling annotation (those images are skipped, the rest converted).

    Raises:
        InputError: the JSON is missing, not JSON or not trustworthy COCO (see the module notes), a
            ``file_name`` leads outside ``images_dir``, ``out_dir`` cannot take the split, or any OS
            error (the path it names, and the reason). OUT is then as it was before.

    Examples:
        >>> s = convert_coco("annotations/instances_val2017.json", "val2017", "datasets/cardd")
        >>> s["split"], s["class_counts"]["scratch"] > 0, s["errors"]
        ('val', True, [])
    """
    annotations_json, images_dir, out_dir = Path(annotations_json), Path(images_dir), Path(out_dir)
    try:
        return _convert(annotations_json, images_dir, out_dir, split, copy, progress, overwrite)
    except OSError as e:  # permission denied, read-only or full disk, a file where a folder should be
        raise InputError(e.filename or out_dir, _os_reason(e)) from None


def _read_coco(annotations_json: Path) -> tuple[dict[int, int], dict[int, dict], dict[int, list], list[str]]:
    """Load and check the JSON (see ``parse_coco``); every problem is an InputError naming the file."""
    if annotations_json.is_dir() or not (annotations_json.exists() or annotations_json.is_symlink()):
        raise InputError(annotations_json, "is a folder, expected a JSON file" if annotations_json.is_dir() else "file not found")
    check_regular_file(annotations_json, "a COCO JSON file")  # a FIFO or /dev/zero would hang the read
    try:
        text = annotations_json.read_text(encoding="utf-8-sig")
        containers = text.count("{") + text.count("[")
        if containers > MAX_COCO_CONTAINERS:  # counted before the parse: each costs ~60 bytes parsed
            raise InputError(annotations_json, f"holds {containers:,} JSON objects and lists, over the "
                                               f"{MAX_COCO_CONTAINERS:,} a COCO file's images and annotations need "
                                               "(a handful per annotation)")
        coco = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit numbers, [[[[... nested
        raise InputError(annotations_json, f"not valid JSON ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except MemoryError:
        raise InputError(annotations_json, "too large to read into this machine's memory") from None
    try:
        return parse_coco(coco, annotations_json)
    except SchemaError as e:
        raise InputError(annotations_json, str(e)) from None


def _convert(annotations_json: Path, images_dir: Path, out_dir: Path, split: str | None, copy: bool, progress: bool,
             overwrite: bool = False) -> dict:
    if not images_dir.is_dir():
        raise InputError(images_dir, "not a folder" if images_dir.exists() else "images folder not found")
    cat_to_cls, images, by_image, errors = _read_coco(annotations_json)
    if split is not None and not split:
        raise InputError("--split", "is empty: name a split such as train or val, or leave --split out")
    split = split or split_from_name(annotations_json)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", split):  # it becomes a folder name under OUT
        raise InputError("--split", f"expected a folder name such as train or val, got {split!r}")
    if split.lower() in ("images", "labels"):  # OUT/images/images/x.jpg: YOLO would look in OUT/images/labels/
        raise InputError("--split", f"{split!r} is a folder name YOLO reads labels by (images/ -> labels/): "
                                    "choose another split name, such as train or val")
    _check_out(out_dir, split, (images_dir, annotations_json), overwrite)

    stage = _staging(out_dir, split)
    try:
        summary = _convert_images(annotations_json, images_dir, stage / "new", split, copy, progress,
                                  cat_to_cls, images, by_image, errors)  # fmt: skip
        _swap_in(stage, out_dir, split)
        for kind in ("images", "labels"):  # the split's files, noted as ours so a rerun may replace them
            for d, _, files in os.walk(out_dir / kind / split):
                for n in files:
                    note_written(Path(d) / n, digest=kind == "labels")  # photos: linked, known by inode
        note_written(out_dir / "data.yaml")
    except OSError as e:  # name the path in OUT the user knows, not the staging folder about to vanish
        if e.filename and Path(e.filename).is_relative_to(stage):
            parts = Path(e.filename).relative_to(stage).parts
            e.filename = str(out_dir.joinpath(*(parts[1:] if parts[0] == "new" else parts)))
        if e.filename2 and Path(e.filename2).is_relative_to(stage):
            e.filename2 = None
        raise
    except _RestoreFailed:
        stage = None  # it holds the previous split now: keep it
        raise
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
    summary["data_yaml"] = str(out_dir / "data.yaml")
    return summary


def _convert_images(annotations_json: Path, images_dir: Path, new_root: Path, split: str, copy: bool, progress: bool,
                    cat_to_cls: dict[int, int], images: dict[int, dict], by_image: dict[int, list], errors: list[str]) -> dict:  # fmt: skip
    """Write the split's images and labels under ``new_root`` (a fresh folder); returns the summary."""
    img_out, lbl_out = new_root / "images" / split, new_root / "labels" / split
    img_out.mkdir(parents=True)
    lbl_out.mkdir(parents=True)
    root = images_dir.resolve()
    counts: Counter = Counter()
    kinds: Counter = Counter()
    summary = {"split": split, "images": len(images), "written": 0, "empty_images": 0, "crowd_skipped": 0,
               "clipped_points": 0, "size_mismatch": []}  # fmt: skip
    for image_id, im in progress_bar(sorted(images.items()), desc=f"converting {split}", disable=not progress):
        name = im["name"]
        src, why = _find_image(images_dir, root, name)
        if src is None:
            errors.append(f"{images_dir / name}: {why} (image id {image_id})")
            continue
        out_name = Path(name).name  # not src.name: a symlink's target may be named otherwise
        if Path(out_name).suffix.lower() not in IMAGE_SUFFIXES:
            errors.append(f"{images_dir / name}: not an image file type ({Path(out_name).suffix or 'no suffix'})")
            continue
        actual, why = _image_size(src)
        if actual is None:
            errors.append(f"{images_dir / name}: {why}")
            continue
        w, h = (s if s is not None else a for s, a in zip(im["size"], actual))
        if (w, h) != actual:
            summary["size_mismatch"].append(f"{images_dir / name}: JSON says {w:g}x{h:g}, file is {actual[0]}x{actual[1]}")

        # A bad annotation skips its whole image: dropping just the instance would teach the model
        # that the damage it outlined is background.
        rows, problems, crowd, clipped = [], [], 0, 0
        for i, ann in by_image[image_id]:
            at = f"annotations[{i}]"
            try:
                if is_crowd(ann, at):
                    crowd += 1
                    continue
                cls, xy, kind, n_out = _instance_row(ann, at, cat_to_cls, w, h)
            except SchemaError as e:
                problems.append(f"{annotations_json}: {e}{ann_suffix(ann)}; image {name!r} not converted")
                continue
            rows.append((cls, " ".join(f"{v:.6f}" for v in xy.reshape(-1)), kind))
            clipped += n_out
        if problems:
            errors += problems
            continue
        if many := too_many_boxes(rows):  # check and train would leave the photo out: so does the conversion
            errors.append(f"{images_dir / name}: {many}; image not converted")
            continue
        _place_image(src, img_out / out_name, copy)
        _write_new(lbl_out / f"{Path(out_name).stem}.txt", "".join(f"{c} {xy}\n" for c, xy, _ in rows))
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
    )
    return summary
