"""The whole pipeline in one offline command: synth -> train (CPU) -> predict -> report.

On a fresh machine with no dataset and no pretrained weights, this draws a synthetic car-damage
dataset, trains YOLOv8n from ``yolov8n.yaml`` on the CPU with the short-budget recipe in
``configs/demo.yaml``, predicts on synthetic validation images and on real CarDD photos when
``../shared/data/cardd-sample`` (or ``--real``) is there, writes the HTML report that walks the
lesson with this model's numbers, and prints a summary. Run folder layout::

    OUT/data/            synthetic dataset (data.yaml, train/, val/)
    OUT/train/           weights/best.pt, results.csv, metrics.json
    OUT/predict-synth/   overlays + detections.json on synthetic val images
    OUT/predict-real/    overlays + detections.json on real photos (if any)
    OUT/report/          report.html
    OUT/summary.json     every number printed at the end

Examples:
    cardamage demo --out runs/demo
    cardamage demo --out runs/demo --config configs/demo.yaml --real ../shared/data/cardd-sample/images
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from pipeline.cli.options import non_negative_int
from pipeline.core.io import atomic_write_json, atomic_write_text, expand_sources, output_folder
from pipeline.core.runtime import PROJECT_ROOT
from pipeline.data import synth
from pipeline.model.load import load_model
from pipeline.model.predict import predict_paths
from pipeline.model.train import load_recipe, train
from pipeline.report.page import write_report

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
DEFAULT_REAL = PROJECT_ROOT.parent / "shared" / "data" / "cardd-sample" / "images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo recipe (default configs/demo.yaml)")
    p.add_argument("--real", default=str(DEFAULT_REAL), help="folder of real photos to predict on (skipped if absent)")
    p.add_argument("--n-real", type=non_negative_int, default=8, help="how many real photos to predict on (default 8)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")


def run(args) -> int:
    real_dir = Path(args.real)
    with output_folder(args.out, inputs=[args.config, *([real_dir] if real_dir.is_dir() else [])]):
        return _run(args, Path(args.out).resolve(), real_dir)


def _run(args, out: Path, real_dir: Path) -> int:
    t_start = time.perf_counter()
    recipe = load_recipe(args.config)
    demo = recipe.pop("demo", {})  # our own keys: dataset size; the rest goes to the trainer
    timings = {}

    t = time.perf_counter()
    data_yaml = synth.write_dataset(out / "data", demo.get("train_images", 800), demo.get("val_images", 100), demo.get("synth_imgsz", 256), demo.get("seed", 0))
    timings["synth_s"] = round(time.perf_counter() - t, 1)
    print(f"[1/4] synthetic data: {data_yaml} ({timings['synth_s']}s)")

    t = time.perf_counter()
    cfg = atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    metrics = train(data_yaml, out / "train", config=cfg)
    timings["train_s"] = round(time.perf_counter() - t, 1)
    print(f"[2/4] trained {metrics.get('epochs')} epochs in {timings['train_s']}s: val mAP50 {metrics['mAP50']:.3f}")

    t = time.perf_counter()
    yolo = load_model(metrics["weights"])
    imgsz = int(recipe.get("imgsz", 256))
    val_images = sorted((out / "data" / "val" / "images").glob("*.jpg"))[:8]
    synth_records, _ = predict_paths(yolo, val_images, out / "predict-synth", imgsz=imgsz, progress=False)
    real_records = []
    if real_dir.is_dir():
        real_images = expand_sources([str(real_dir)])[0][: args.n_real]
        real_records, _ = predict_paths(yolo, real_images, out / "predict-real", conf=0.05, imgsz=640, progress=False)
    timings["predict_s"] = round(time.perf_counter() - t, 1)
    n_det = sum(len(r["detections"]) for r in synth_records)
    print(f"[3/4] predicted {len(synth_records)} synthetic ({n_det} boxes) and {len(real_records)} real photos")

    report = None
    if not args.no_report:
        t = time.perf_counter()
        # every layer's statistics over the whole synthetic val split beside the one photo's
        report = write_report(metrics["weights"], val_images[0], out / "report", imgsz=imgsz,
                              stats_over=[str(out / "data" / "val" / "images")])
        timings["report_s"] = round(time.perf_counter() - t, 1)
        print(f"[4/4] report: {report} ({timings['report_s']}s)")

    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    summary = {
        "metrics": metrics,
        "timings": timings,
        "data": str(data_yaml),
        "weights": metrics["weights"],
        "predict_synth": str(out / "predict-synth" / "detections.json"),
        "predict_real": str(out / "predict-real" / "detections.json") if real_records else None,
        "report": str(report) if report else None,
    }
    atomic_write_json(out / "summary.json", summary)
    per = ", ".join(f"{k} {v:.2f}" for k, v in metrics["per_class"].items())
    print(f"\nsynthetic val mAP50 {metrics['mAP50']:.3f}  mAP50-95 {metrics['mAP50-95']:.3f}  ({per})")
    print(f"demo finished in {timings['total_s']:.0f}s -> {out}")
    return 0
