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

The split is built in a hidden staging folder (inside OUT, or beside it on the first run) and swapped
in at the end: a run that fails leaves OUT as it was, and a run that succeeds replaces the split's
folders whole (no stale files from an earlier JSON). Other splits in OUT are kept; a split folder
that OUT's data.yaml does not show to be ours is never replaced. Image files reached through a
symlink that leads outside IMAGES_DIR are refused. Files are created with the user's umask, and
the inputs are never written (outputs are new files and renames, so a hard link cannot pass a
write back to the input). OS errors are one ``error:`` line naming the path.

Examples:
    cardamage convert-coco CarDD_COCO/annotations/instances_train2017.json CarDD_COCO/train2017 --out datasets/cardd
    cardamage convert-coco CarDD_COCO/annotations/instances_val2017.json CarDD_COCO/val2017 --out datasets/cardd
    cardamage check datasets/cardd/data.yaml
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.options import add_overwrite
from pipeline.core.io import one_line, output_folder
from pipeline.data.coco import convert_coco


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("annotations_json", metavar="ANNOTATIONS_JSON", help="COCO instances JSON (e.g. instances_train2017.json)")
    p.add_argument("images_dir", metavar="IMAGES_DIR", help="folder with the images the JSON names")
    p.add_argument("--out", required=True, metavar="DIR", help="YOLO dataset root to write (data.yaml, images/, labels/)")
    p.add_argument("--split", help="split name (default: from the JSON file name: train, val or test)")
    p.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them")
    add_overwrite(p)


def run(args: argparse.Namespace) -> int:
    with output_folder(args.out, inputs=[args.annotations_json, args.images_dir]):  # one writer at a time
        s = convert_coco(args.annotations_json, args.images_dir, args.out, split=args.split, copy=args.copy,
                         progress=True, overwrite=args.overwrite)
    for line in s["errors"]:
        print(f"error: {one_line(line)}", file=sys.stderr)  # names come from the JSON: any text
    for line in s["size_mismatch"]:
        print(f"warning: {one_line(line)}", file=sys.stderr)
    print(f"{s['split']}: {s['written']}/{s['images']} images, {s['instances']} instances, {s['empty_images']} without any")
    for name, n in s["class_counts"].items():
        print(f"  {name:<14}{n:>6}")
    notes = [f"{s['from_bbox']} from bbox (RLE or < 3 points)", f"{s['multi_part']} multi-part joined",
             f"{s['crowd_skipped']} crowd skipped", f"{s['clipped_points']} points clipped to the image"]  # fmt: skip
    print("  " + ", ".join(notes))
    print(f"data.yaml: {one_line(s['data_yaml'])}")
    return 1 if s["errors"] else 0
