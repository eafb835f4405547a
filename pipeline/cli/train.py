"""Train YOLOv8 on a YOLO dataset and write ``OUT/weights/best.pt`` and ``OUT/metrics.json``.

Training is Ultralytics' own trainer; this stage adds what a user of this project needs around it:
a recipe from ``configs/*.yaml`` (command-line flags win over the file), offline-safe defaults,
from-scratch training from ``yolov8n.yaml`` unless a weights path is given, a run folder that is
exactly ``--out``, resume, and a ``metrics.json`` with the numbers the report and the docs quote.

``--resume`` continues the interrupted run in ``--out`` from its ``weights/last.pt`` and writes only there,
also when the folder is a copy or was moved (the checkpoint's own folder is never written). A resume keeps
the run's recipe: epochs, data, model, config and every other setting come from ``last.pt``; only
``--device``, ``--batch``, ``--imgsz`` and ``--time`` may be given with it (what Ultralytics lets a resume
change). Any other option is refused with one line: to change the recipe, start a new run.

Examples:
    cardamage train --data datasets/synth/data.yaml --epochs 30 --imgsz 320 --out runs/synth
    cardamage train --data cardd/data.yaml --config configs/cardd.yaml --device 0 --out runs/cardd
    cardamage train --data cardd/data.yaml --model path/to/yolov8n.pt --out runs/finetune
    cardamage train --out runs/synth --resume
    cardamage train --data datasets/synth/data.yaml --epochs 3 --imgsz 128 --watch --out runs/watched

``--watch`` (or ``watch: true`` in the recipe) films every Conv block while it trains into
``OUT/watch.jsonl`` (``pipeline.probe.watch``; ``cardamage film OUT`` draws it); a resumed run goes on
filming when its folder holds a ``watch.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.options import add_trust_weights, device, image_size, positive_float, positive_int
from pipeline.core.io import InputError, one_line
from pipeline.model.load import DEFAULT_MODEL
from pipeline.model.recipe import load_recipe
from pipeline.model.train import RESUME_MAY_CHANGE, train
from pipeline.probe.watch import WATCH_FILE, TrainingWatch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset YAML (YOLO box or polygon rows)")
    p.add_argument("--model", default=None, help=f"model YAML (from scratch) or weights path (default {DEFAULT_MODEL})")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: config, else 100)")
    p.add_argument("--imgsz", type=image_size, help="training image size (default: config, else 640)")
    p.add_argument("--batch", type=positive_int, help="batch size (default: config, else 16)")
    p.add_argument("--device", type=device, help="cpu, 0, 0,1 ... (default cpu)")
    p.add_argument("--out", required=True, help="run folder; gets weights/best.pt and metrics.json")
    p.add_argument("--config", help="recipe YAML from configs/ (flags win over it)")
    p.add_argument("--time", type=positive_float, help="time budget in hours (Ultralytics' time=)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out, writing only there; it keeps the run's recipe "
                        f"(epochs, data, model, config): only --{', --'.join(RESUME_MAY_CHANGE)} may change")
    p.add_argument("--overwrite", action="store_true",
                   help="train even if --out holds an earlier run (its weights and metrics are replaced)")
    p.add_argument("--watch", action="store_true",
                   help="film every Conv block while training: OUT/watch.jsonl (see `cardamage film`)")
    add_trust_weights(p)


def _watch(args) -> TrainingWatch | None:
    """The training watch when asked for: ``--watch``, the recipe's ``watch``, or a resumed watched run."""
    if args.resume:
        wanted = args.watch or (Path(args.out) / WATCH_FILE).is_file()
    else:
        wanted = args.watch or bool(load_recipe(args.config).get("watch", False))
    return TrainingWatch() if wanted else None


def run(args) -> int:
    if not args.resume and not args.data:
        raise InputError("--data", "a dataset YAML is required unless --resume is given")
    watch = _watch(args)  # its hooks come off when training ends
    m = train(
        args.data,
        args.out,
        model=args.model,
        config=args.config,
        resume=args.resume,
        overwrite=args.overwrite,
        trust=args.trust_weights,
        on_error=lambda e: print(f"error: {e} (left out of training)", file=sys.stderr, flush=True),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        time=args.time,
        callbacks=watch.callbacks() if watch else None,
    )
    per = ", ".join(f"{k} {v:.3f}" for k, v in m.get("per_class", {}).items())
    print(f"mAP50 {m.get('mAP50', float('nan')):.3f}  mAP50-95 {m.get('mAP50-95', float('nan')):.3f}  ({per})")
    print(f"weights: {one_line(m['weights'])}\nmetrics: {one_line(Path(args.out).resolve() / 'metrics.json')}")
    if watch:
        records = f"{watch.records} record{'' if watch.records == 1 else 's'}"
        print(f"watch: {one_line(watch.path)} ({records} this run, {watch.seconds:.1f}s taking them; "
              f"`cardamage film {one_line(args.out)}` draws them)")
    return 1 if m["left_out"] else 0
