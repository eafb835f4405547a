"""Record what every conv layer computes: a full dump for one photo, or per-channel statistics over many.

For one photo: every layer's pre/post-SiLU activations, weights and folded biases. For a folder, several
photos or a glob: the per-channel statistics of every layer over all of them.

One forward pass of the exact predictor input with ``LayerRecorder`` hooked on the chosen Conv blocks
writes five files into ``--out``:

- ``input.safetensors``: key ``input``, the model input (1x3xHxW float32, RGB, [0, 1]).
- ``activations.safetensors``: ``<block>.pre`` (z = bn(conv(x))) and ``<block>.post`` (SiLU(z)) for every
  recorded Conv block, plus the Detect head's ``<head>.cls_logits.<scale>`` (class logits before the
  sigmoid), ``<head>.box.<scale>`` (raw box distributions) and ``<head>.decoded`` (1 x (4+nc) x anchors:
  xywh boxes in input pixels, then sigmoid class scores). ``--dtype float16`` halves this file.
- ``params.safetensors``: ``<block>.conv.weight``, ``<block>.bn.weight|bias|running_mean|running_var``
  (unfused models), ``<block>.folded.weight|bias`` (BN folded in, as ``model.fuse()`` does), and the head's
  final ``Conv2d`` weights and biases (``model.22.cv3.0.2.weight`` ...). Always float32.
- ``index.json``: per recorded block its path, type, input/output shapes, kernel, stride, padding,
  groups, BN eps, parameter count and layer-level statistics; the head's strides and grids; per
  top-level layer parameter counts; model name, image size, letterbox, totals.
- ``stats.csv``: one row per (block, channel): count, mean, std, min, max of z, fraction z < 0,
  fraction |SiLU(z)| < dead_eps ("dead"), mean of SiLU(z).

Given several photos, a folder or a glob (or ``--stats-only``), ``inspect`` keeps no feature map: one
stats-mode recorder runs over all photos and writes ``stats.csv`` (per channel over the whole set) and
``index.json`` (see ``inspect_dataset``).

Examples:
    cardamage inspect --weights runs/demo/train/weights/best.pt photo.jpg --out runs/inspect
    cardamage inspect --weights runs/demo/train/weights/best.pt datasets/cardd-roboflow-check/valid/images --out runs/inspect-valid
    cardamage inspect --weights yolov8n.yaml photo.jpg --out runs/inspect --layers 0 1 model.2.cv1 SPPF --dtype float16
    cardamage inspect photos/ --weights best.pt --out runs/inspect --stats-only --ray --workers 2  # docs/scale.md

    >>> from pipeline.probe.statistics import inspect_image
    >>> paths = inspect_image("best.pt", "photo.jpg", "runs/inspect", imgsz=640)
    >>> from safetensors.torch import load_file
    >>> load_file(paths["activations"])["model.0.post"].shape
    torch.Size([1, 16, 320, 320])
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.files import is_folder, is_present
from pipeline.cli.options import add_overwrite, add_ray_arguments, add_trust_weights, image_size, positive_float
from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import InputError, input_paths, one_line, output_folder
from pipeline.model.load import load_model, trained_imgsz
from pipeline.probe.channel_stats import DEAD_EPS
from pipeline.probe.statistics import DTYPES, FILES, inspect_dataset, inspect_image
from pipeline.scale.stats import ray_inspect


def _single_photo(sources: list[str]) -> bool:
    """One photo named on its own gets the full dump; folders, globs, .txt lists and several photos get statistics."""
    s = sources[0] if len(sources) == 1 else None
    if s is None or Path(s).suffix.lower() == ".txt":
        return False
    return not is_folder(s) and (is_present(s) or not any(c in s for c in "*?["))


def add_arguments(parser) -> None:
    parser.add_argument("image", nargs="+",
                        help="one photo (full dump: five files), or several photos / folders / globs / .txt lists (statistics over all)")
    parser.add_argument("--stats-only", action="store_true",
                        help="write only stats.csv and index.json (the default for several photos or a folder)")
    parser.add_argument("--weights", default="yolov8n.yaml", help="weights .pt or a model YAML (default yolov8n.yaml)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="which Conv blocks: indices (2), paths (model.2.cv1, model.4), types (C2f, SPPF); default all")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="activation dump dtype")
    parser.add_argument("--imgsz", type=image_size, default=None, help="inference size (default: the size the weights were trained at, else 640)")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the convs first (model.fuse())")
    parser.add_argument("--dead-eps", type=positive_float, default=DEAD_EPS, help=f"|SiLU| below this is 'dead' (default {DEAD_EPS:g})")
    add_ray_arguments(parser)
    add_trust_weights(parser)
    add_overwrite(parser)


def run(args) -> int:
    weights = [args.weights] if Path(args.weights).is_file() else []
    if args.ray is None and (args.gpus_per_worker or args.workers):
        raise InputError("--workers" if args.workers else "--gpus-per-worker", "applies to Ray workers: add --ray")
    if args.ray is not None and _single_photo(args.image) and not args.stats_only:
        raise InputError("--ray", "computes statistics over many photos: add --stats-only (one photo's dump runs here)")
    yolo = load_model(args.weights, nc=len(CLASS_NAMES), trust=args.trust_weights)  # nc only matters for a YAML
    args.imgsz = trained_imgsz(yolo, args.imgsz)
    if args.ray is not None:
        result = ray_inspect(yolo, args.image, args.out, layers=args.layers, imgsz=args.imgsz, fuse=args.fuse,
                             dead_eps=args.dead_eps, address=args.ray, workers=args.workers,
                             gpus_per_worker=args.gpus_per_worker, overwrite=args.overwrite,
                             on_error=lambda e: print(f"error: {e}", file=sys.stderr, flush=True))
        n, secs = result["images"], result["seconds"]
        print(f"statistics over {n} images on Ray ({n / secs:.1f} img/s), {len(result['errors'])} errors -> "
              f"{one_line(result['stats'])}, {one_line(result['index'].name)}", file=sys.stderr)
        return 1 if result["errors"] else 0
    with output_folder(args.out, inputs=[*input_paths(args.image), *weights], overwrite=args.overwrite):
        if _single_photo(args.image) and not args.stats_only:
            result = inspect_image(yolo, args.image[0], args.out, layers=args.layers, dtype=args.dtype,
                                   imgsz=args.imgsz, fuse=args.fuse, dead_eps=args.dead_eps)
            sizes = ", ".join(f"{result[k].name} {result['bytes'][k] / 1e6:.1f} MB" for k in FILES)
            print(f"wrote {one_line(args.out)}: {one_line(sizes)} in {result['seconds']:.2f} s", file=sys.stderr)
            return 0
        result = inspect_dataset(yolo, args.image, args.out, layers=args.layers, imgsz=args.imgsz,
                                 fuse=args.fuse, dead_eps=args.dead_eps,
                                 on_error=lambda e: print(f"error: {e}", file=sys.stderr, flush=True))
    n, secs = result["images"], result["seconds"]
    print(f"statistics over {n} images ({n / secs:.1f} img/s), {len(result['errors'])} errors -> "
          f"{one_line(result['stats'])}, {one_line(result['index'].name)}", file=sys.stderr)
    return 1 if result["errors"] else 0
