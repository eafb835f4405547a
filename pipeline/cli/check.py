"""Check a YOLO dataset: class counts, box sizes, label errors and images leaking across splits.

Reads a ``data.yaml`` exactly as Ultralytics training will (box rows or polygon rows, Roboflow exports
with their ``../train/images`` paths), then looks at every image and label file:

- counts: images, labelled / empty / missing label files, instances per class, instances per image;
- box sizes in pixels of the original image, in CarDD's buckets: small < 128^2, medium < 256^2, large;
- errors, each on its own line ``error: <file>[:line]: <reason>``: corrupt images, bad label lines
  (wrong number of values, non-numeric, odd polygon coordinates, < 3 points), class ids out of range,
  coordinates outside [0, 1], images Ultralytics would drop, a split without a single label file;
- warnings, each on its own line ``warning: <file>[:line]: <reason>``: missing label files (background
  images), JPEGs libjpeg repairs while decoding (``repaired_jpeg``), rows Ultralytics fixes while
  loading, and leakage between splits: splits that list the same files (``split_overlap``, e.g.
  ``train`` and ``val`` both ``images/``), exact (same bytes, ``exact_duplicate``) and near
  (perceptual hash, ``near_duplicate``) duplicates across splits. A leak makes the later split's
  scores optimistic, but the data still trains (Ultralytics' coco128 uses train == val on purpose),
  so it is reported loudly, with a ``LEAKAGE train -> val: ...`` summary
  line per pair of splits, not failed.

Exit status 1 when there is any error, 0 otherwise; with ``--strict`` any warning fails too. Polygons
count as their bounding box, which is what Ultralytics trains a detector on.

The report (``--json``) holds:

- ``splits`` / ``total``: the statistics of ``check_dataset``;
- ``errors`` and ``warnings``: lists of {file, line, kind, reason, split}; warning kinds are
  ``missing_label``, ``repaired_jpeg``, ``ultralytics`` and the leak kinds ``split_overlap``, ``exact_duplicate``,
  ``near_duplicate`` (``LEAK_KINDS``);
- ``leaks``: per pair of splits that share images, {split_a, split_b, images, of, same_file, exact,
  near}: ``images`` of the ``of`` images of ``split_b`` are also in ``split_a``, each counted once
  under its strongest link (listed by both splits > same bytes > near duplicate);
- ``split_overlaps`` and ``duplicates``: the raw findings of ``pipeline.data.duplicates``;
- ``ok``: no errors (exit 0 without ``--strict``); ``strict_ok``: no errors and no warnings (exit 0
  with ``--strict``);
- ``generator``: ``"cardamage check"``, first: a later ``--json`` to the same name replaces a file marked so,
  and refuses any other existing file unless ``--overwrite`` is given.

Examples:
    cardamage check datasets/cardd/data.yaml
    cardamage check datasets/cardd/data.yaml --strict    # leaks and other warnings fail too
    cardamage check "car damage detection.v1i.yolov8/data.yaml" --json runs/check.json
    cardamage check ../shared/data/cardd-sample/data.yaml --near 6
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.options import int_range, positive_int
from pipeline.core.io import atomic_write_json, check_output_file, one_line, stamp
from pipeline.data.check import check_dataset, format_report, issue_line

GENERATOR = "cardamage check"  # the stamp on --json (pipeline.core.io.stamp)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_yaml", metavar="DATA_YAML", help="the dataset's data.yaml (YOLO boxes or polygons)")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON (atomically); an existing "
                   "FILE is replaced only if an earlier check wrote it")
    p.add_argument("--overwrite", action="store_true", help="let --json replace an existing file check did not write")
    p.add_argument("--near", type=int_range(0, 64), default=4, metavar="BITS", help="perceptual-hash distance for near duplicates")
    p.add_argument("--max-lines", type=positive_int, default=50, help="print at most this many error/warning lines (JSON has all)")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too (leakage, missing label files)")


def run(args: argparse.Namespace) -> int:
    """Run ``cardamage check``: 1 when there are errors (with ``--strict``, errors or warnings), else 0."""
    # before the scan, which takes minutes on CarDD: not a folder, not the dataset's own yaml
    # and not a file of the user's: only an earlier check's report may be replaced without --overwrite
    json_path = check_output_file(args.json, [args.data_yaml], generator=GENERATOR, overwrite=args.overwrite) \
        if args.json else None
    report = check_dataset(args.data_yaml, near_threshold=args.near, progress=True)
    for kind, items in (("error", report["errors"]), ("warning", report["warnings"])):
        for item in items[: args.max_lines]:
            print(f"{kind}: {issue_line(item)}", file=sys.stderr)
        if len(items) > args.max_lines:
            print(f"{kind}: ... {len(items) - args.max_lines} more {kind}s (all in --json)", file=sys.stderr)
    print(format_report(report, strict=args.strict))
    if json_path is not None:
        check_output_file(json_path, generator=GENERATOR, overwrite=args.overwrite)  # again: the scan took minutes
        atomic_write_json(json_path, stamp(report, GENERATOR))
        print(f"report written to {one_line(json_path)}")
    return 0 if report["strict_ok" if args.strict else "ok"] else 1
