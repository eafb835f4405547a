"""Build a channel atlas: what every Conv block channel fires on across a dataset, with crops and class scores.

One forward pass per photo through every Conv block (or --layers), streaming: memory does not grow with the
number of photos. Per channel: the top-k photos where it fires most (each at its strongest neuron, cut from the
photo at that neuron's receptive field, position marked), and where the photos have YOLO labels its mean SiLU
inside each damage class's boxes against outside all boxes and a Network-Dissection IoU (its map thresholded
at its dataset-wide top 0.5%, against each class's box mask, summed over the dataset); how often it is active;
its folded 3x3 filter. Writes OUT/atlas.json (docs/atlas.md), OUT/index.html (open it in a browser, offline),
one page per layer and the crops. SOURCE: a data.yaml (its val split, with labels), photos, folders, globs,
.txt lists. An unreadable photo is one error line; the rest of the atlas is still written.

Examples:
    cardamage atlas --weights runs/demo/train/weights/best.pt runs/demo/data/data.yaml --out runs/atlas
    cardamage atlas --weights best.pt ../shared/data/cardd-sample/data.yaml --out runs/atlas-cardd --imgsz 320
    cardamage atlas --weights best.pt photos/ --out runs/atlas --top 4 --limit 50 --layers 0 2 model.8
    cardamage atlas --weights best.pt photos/ --out runs/atlas --ray --workers 2   # the same atlas, on Ray workers
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.atlas.build import build_atlas
from pipeline.cli.options import add_overwrite, add_ray_arguments, add_trust_weights, image_size, int_range, positive_int
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import InputError, input_paths, output_folder
from pipeline.model.load import load_model, trained_imgsz
from pipeline.scale.atlas import ray_parts


def add_arguments(p) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a data.yaml (its val split), photos, folders, globs, .txt lists")
    p.add_argument("--weights", required=True, help="best.pt (trained) or a model YAML")
    p.add_argument("--out", required=True, help="atlas folder (atlas.json, index.html, crops/)")
    p.add_argument("--imgsz", type=image_size, default=None,
                   help="inference size (default: the weights' training size, else 640)")
    p.add_argument("--top", type=int_range(1, 64), default=9, help="top photos per channel (default 9)")
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N photos")
    p.add_argument("--layers", nargs="+", default=None,
                   help="which Conv blocks: indices (2), paths (model.2.cv1, model.4), types (C2f, SPPF); default all")
    add_ray_arguments(p)
    add_trust_weights(p)
    add_overwrite(p)


def run(args) -> int:
    if args.ray is None and (args.gpus_per_worker or args.workers):
        raise InputError("--workers" if args.workers else "--gpus-per-worker", "applies to Ray workers: add --ray")
    report = lambda e: print(f"error: {e}", file=sys.stderr, flush=True)  # noqa: E731
    parts = None if args.ray is None else ray_parts(args.ray, args.workers, args.gpus_per_worker, on_error=report)
    yolo = load_model(args.weights, nc=len(CLASS_NAMES), trust=args.trust_weights)
    imgsz = trained_imgsz(yolo, args.imgsz)
    weights = [args.weights] if Path(args.weights).is_file() else []
    # its files and its crops' folder are checked before the dataset pass, not after it
    with output_folder(args.out, inputs=[*input_paths(args.sources), *weights], overwrite=args.overwrite,
                       names=["atlas.json", "index.html"], folders=["crops"]):
        res = build_atlas(yolo, args.sources, args.out, imgsz=imgsz, k=args.top, limit=args.limit, layers=args.layers,
                          on_error=report, parts=parts)
    b = res["bytes"]
    for problem in res["label_problems"]:  # those photos count as unlabelled: say so, or a typo hides silently
        print(f"note: label file not used: {problem}", file=sys.stderr)
    if not res["selectivity"]:
        print("note: no photo has a YOLO label file: the atlas has no class selectivity (top crops, activity and "
              "filters only)", file=sys.stderr)
    print(f"atlas of {res['photos']} photos in {res['seconds']:.1f} s, {len(res['errors'])} errors -> {res['index']} "
          f"(atlas.json {b['json'] / 1e6:.1f} MB, crops {b['crops'] / 1e6:.1f} MB, pages {b['pages'] / 1e6:.1f} MB)",
          file=sys.stderr)
    return 1 if res["errors"] else 0
