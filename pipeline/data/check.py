"""``cardamage check``'s work: every image and label of a dataset scanned, counted and judged.

One pass per split gives counts per class, box sizes in CarDD's small/medium/large buckets, label errors
(with Ultralytics' own ``verify_image_label`` as the second opinion) and leakage across splits (exact and
near-duplicate photos, ``duplicates``). ``format_report`` prints it; the CLI adapter is ``cli/check.py``.

Examples:
    >>> from pipeline.data.check import check_dataset, format_report
    >>> print(format_report(check_dataset("datasets/synth/data.yaml")))
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.core.errors import listen_warnings, one_line
from pipeline.core.files import real_path
from pipeline.core.io import InputError, read_image
from pipeline.core.runtime import progress_bar
from pipeline.data.duplicates import find_duplicates, phash_of, sha1_of_file, split_overlaps
from pipeline.data.labels import dataset_splits, label_path, load_names, parse_label_text, read_label_text, too_many_boxes

SMALL, LARGE = 128**2, 256**2  # CarDD's box-area buckets in original-image pixels
LEAK_KINDS = ("split_overlap", "exact_duplicate", "near_duplicate")  # warning kinds that are leakage


def scan_pair(image: Path, label: Path, nc: int) -> dict:
    """Check one image and its label file; everything ``check_dataset`` needs about them.

    The image is decoded in full (``read_image``), then the pair goes through Ultralytics'
    ``verify_image_label`` to learn what training will do with it (drop it, remove duplicate rows).
    Truncated JPEGs are reported and never handed to Ultralytics, which would rewrite them in place.
    """
    from ultralytics.data.utils import verify_image_label

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
    too_large = False
    if not label.is_file() and (label.is_symlink() or label.exists()):  # a device, FIFO, folder or dangling link
        what = ("a link to nothing" if not label.exists() else "a folder" if label.is_dir()
                else "a device, FIFO or socket, not a regular file")
        rec["errors"].append((str(label), None, "bad_label_file",
                              f"is {what}: Ultralytics reads no labels from it and treats the image as background"))
        rec["label_status"] = "unreadable"
    if label.is_file():
        try:
            text = read_label_text(label)
        except InputError as e:  # over the label size limit: never read, by us or by Ultralytics below
            rec["errors"].append((str(label), None, "bad_label_file", e.reason))
            rec["label_status"] = "unreadable"
            text, too_large = None, True
        except (UnicodeDecodeError, OSError) as e:
            rec["errors"].append((str(label), None, "bad_label_file", f"unreadable label file ({type(e).__name__})"))
            rec["label_status"] = "unreadable"  # reported once, as the error above, not also as "missing"
            text = None
        if text is not None:
            boxes, line_errors, info = parse_label_text(text, nc)
            if too_many_boxes(boxes):  # training leaves the photo out (dataset_view): so does the report
                rec["errors"].append((str(label), None, "bad_label_file", too_many_boxes(boxes)))
                too_large = True
            rec["boxes"] = boxes
            rec["label_status"] = "labelled" if text.strip() else "empty"
            rec["errors"] += [(str(label), n, kind, reason) for n, kind, reason in line_errors]
            if info["box_rows"] and info["polygon_rows"]:
                rec["errors"].append(
                    (str(label), None, "bad_label_file", "mixes box rows and polygon rows (Ultralytics drops the image)")
                )

    # a JPEG libjpeg repaired while decoding is a warning of this report (kind ``repaired_jpeg``, in --json and
    # in the count), caught here rather than printed by the command line's own listener, which the summary
    # and the JSON never saw
    def repaired(w):
        rec["warnings"].append((w.path, None, "repaired_jpeg", w.reason))

    try:
        with listen_warnings(repaired):
            pixels = read_image(image)
    except InputError as e:
        rec["errors"].insert(0, (str(image), None, "corrupt_image", e.reason))
        rec["dropped"] = True
        return rec
    rec["shape"] = pixels.shape[:2]
    rec["phash"] = phash_of(pixels)
    if too_large:  # Ultralytics' verify_image_label reads the label whole; training leaves the photo out
        rec["dropped"] = True
        return rec

    # what training will do with this pair. Through a link: Ultralytics "restores" (re-encodes) a JPEG
    # whose last bytes are not the end marker, and its os.replace then swaps the link, not the user's file.
    with tempfile.TemporaryDirectory(prefix="cardamage-check-") as tmp:
        link = Path(tmp) / image.name
        os.symlink(real_path(image), link)
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
    data_yaml = Path(data_yaml)
    splits = dataset_splits(data_yaml)
    names = load_names(data_yaml)
    unique = sorted({real_path(p): p for ps in splits.values() for p in ps}.items())
    scanned = {}
    for real, p in progress_bar(unique, desc="checking images", disable=not progress):
        scanned[real] = scan_pair(p, label_path(p), len(names))
    split_of = {}
    for s, ps in splits.items():
        for p in ps:
            split_of.setdefault(real_path(p), s)

    errors, warnings = _scan_issues(scanned, split_of)
    per_split = {s: _stats([scanned[real_path(p)] for p in ps], names) for s, ps in splits.items()}
    errors += [_issue(label_path(splits[s][0]).parent, None, "missing_labels",
                      f"no label file for any of the {st['images']} '{s}' images", s)
               for s, st in per_split.items() if st["missing_labels"] == st["images"]]
    overlaps = split_overlaps(splits)
    warnings += [_overlap_warning(o, splits, data_yaml) for o in overlaps]
    hashes = {p: (scanned[real_path(p)]["sha1"], scanned[real_path(p)]["phash"])
              for ps in splits.values() for p in ps}
    duplicates = find_duplicates(splits, near_threshold, hashes=hashes)
    for d in duplicates:
        what = "same bytes" if d["kind"] == "exact" else f"perceptual hash distance {d['distance']}"
        warnings.append(_issue(d["path_b"], None, f"{d['kind']}_duplicate",
                               f"{d['split_b']} image duplicates {d['split_a']} image {d['path_a']} ({what})",
                               d["split_b"]))

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


def _issue(file, line, kind: str, reason: str, split: str) -> dict:
    """One row of the report's ``errors`` or ``warnings``."""
    return {"file": str(file), "line": line, "kind": kind, "reason": reason, "split": split}


def _scan_issues(scanned: dict, split_of: dict) -> tuple[list[dict], list[dict]]:
    """Each scanned image's own errors and warnings, and a warning for each image without a label file."""
    errors, warnings = [], []
    for real, r in scanned.items():
        split = split_of[real]
        errors += [_issue(f, line, kind, reason, split) for f, line, kind, reason in r["errors"]]
        warnings += [_issue(f, line, kind, reason, split) for f, line, kind, reason in r["warnings"]]
        if r["label_status"] == "missing":
            warnings.append(_issue(r["label"], None, "missing_label",
                                   "no label file (Ultralytics treats the image as background)", split))
    return errors, warnings


def _overlap_warning(o: dict, splits: dict, data_yaml: Path) -> dict:
    """Two splits that share images: the same folder named twice, or some files listed in both."""
    a, b = o["split_a"], o["split_b"]
    shared = {real_path(p) for p in splits[a]} & {real_path(p) for p in splits[b]}
    folders = ", ".join(sorted({str(f.parent) for f in shared}))
    reason = (f"{a} and {b} are the same folder ({folders}): all {o['shared']} images are in both splits"
              if o["same_list"] else f"{o['shared']} images are listed in both {a} and {b} (in {folders})")
    return _issue(data_yaml, None, "split_overlap", reason, b)


def leak_summary(splits: dict[str, list[Path]], duplicates: list[dict]) -> list[dict]:
    """How many images of each split are also in an earlier split, per pair of splits that share any.

    Each leaked image of ``split_b`` is counted once, under its strongest link to ``split_a``: the same
    file listed by both splits, else a file with the same bytes, else a near duplicate.

    Args:
        splits: split name -> image paths, in the order of ``dataset_splits``.
        duplicates: ``pipeline.data.duplicates.find_duplicates`` output for those splits.

    Returns:
        list of {split_a, split_b, images, of, same_file, exact, near}: ``images`` of the ``of`` images
        of ``split_b`` leak from ``split_a``; ``same_file + exact + near == images``.

    Examples:
        >>> leak_summary({"train": [Path("a.jpg")], "val": [Path("a.jpg"), Path("b.jpg")]}, [])
        [{'split_a': 'train', 'split_b': 'val', 'images': 1, 'of': 2, 'same_file': 1, 'exact': 0, 'near': 0}]
    """
    strength = {"same_file": 0, "exact": 1, "near": 2}  # lower is stronger
    resolved = {s: {real_path(p) for p in ps} for s, ps in splits.items()}
    names = list(splits)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            link = {p: "same_file" for p in resolved[a] & resolved[b]}
            for d in duplicates:
                if (d["split_a"], d["split_b"]) != (a, b):
                    continue
                p = real_path(d["path_b"])
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
    out = [f"dataset {one_line(report['data_yaml'])}", ""]  # names are the user's: one line each, whatever they hold
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
    class_rows = [[one_line(n)] + [st[c]["class_counts"][n] for c in cols] for n in report["names"]]
    out += [_table(["class"] + cols, class_rows), ""]
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


def issue_line(item: dict) -> str:
    """One error or warning of the report as ``file[:line]: reason``, the form every command prints.

    One line whatever the file is called: control characters are escaped (``one_line``).
    """
    where = f"{item['file']}:{item['line']}" if item["line"] else item["file"]
    return f"{one_line(where)}: {one_line(item['reason'])}"
