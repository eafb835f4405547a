"""The whole pipeline in one offline command: synth -> train (CPU) -> predict -> report.

On a fresh machine with no dataset and no pretrained weights, this draws a synthetic car-damage
dataset, trains YOLOv8n from ``yolov8n.yaml`` on the CPU with the short-budget recipe in
``configs/demo.yaml``, predicts on synthetic validation images and on real CarDD photos when
``../shared/data/cardd-sample`` (or ``--real``) is there, writes the HTML report that walks the
lesson with this model's numbers, and prints a summary. Run folder layout::

    OUT/data/            synthetic dataset (data.yaml, train/, val/)
    OUT/train/           weights/best.pt, results.csv, metrics.json, watch.jsonl (the training watch)
    OUT/film.html        the film of that training (``cardamage film``), linked from the report
    OUT/predict-synth/   overlays + detections.json on synthetic val images
    OUT/predict-real/    overlays + detections.json on real photos (if any)
    OUT/atlas/           the channel atlas of the model over the synthetic val set (index.html, atlas.json)
    OUT/report/          report.html (its worked neuron's channel linked to the atlas)
    OUT/summary.json     every number printed at the end

With ``--data DATA.yaml`` the same steps run on a real dataset instead of the synthetic one: no
synthesis, training with the CPU recipe ``configs/cardd_cpu.yaml`` (30 minutes on 2 cores; ``--minutes``
changes the budget), predictions on the first ``--n-real`` photos of the dataset's ``val`` split
(``OUT/predict-val/``), and the report on the first of them with a detection. The ``test`` split is
never read.

Examples:
    cardamage demo --out runs/demo
    cardamage demo --out runs/demo --config configs/demo.yaml --real ../shared/data/cardd-sample/images
    cardamage demo --data datasets/cardd-staged/data.yaml --out runs/demo-cardd
    cardamage demo --data datasets/cardd-staged/data.yaml --minutes 60 --out runs/demo-cardd-60
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml
from ultralytics.cfg import DEFAULT_CFG_DICT

from pipeline.atlas.build import build_atlas
from pipeline.cli.options import non_negative_int, positive_float
from pipeline.core.io import atomic_write_json, atomic_write_text, check_inside, expand_sources, one_line, output_folder
from pipeline.core.runtime import PROJECT_ROOT
from pipeline.data import synth
from pipeline.data.labels import dataset_splits
from pipeline.model.load import load_model
from pipeline.model.predict import predict_paths
from pipeline.model.recipe import load_recipe
from pipeline.model.train import check_fresh, train
from pipeline.probe.watch import TrainingWatch
from pipeline.report.film import write_film
from pipeline.report.page import write_report

DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
REAL_CONFIG = PROJECT_ROOT / "configs" / "cardd_cpu.yaml"  # the CPU recipe for a real dataset (--data)
REAL_CONF = 0.25  # predict's own default: a model trained on real damage is shown as predict would show it
SYNTH_MODEL_REAL_CONF = 0.05  # the synthetic demo model on real photos: low, to show what it scores at all
DEFAULT_REAL = PROJECT_ROOT.parent / "shared" / "data" / "cardd-sample" / "images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--data", default=None,
                   help="a real YOLO dataset's data.yaml: train on it (CPU recipe) instead of synthetic data")
    p.add_argument("--config", default=None,
                   help="training recipe (default configs/demo.yaml; with --data, configs/cardd_cpu.yaml)")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="training budget in wall-clock minutes (Ultralytics time=); default: the recipe's")
    p.add_argument("--real", default=str(DEFAULT_REAL), help="folder of real photos to predict on (skipped if absent)")
    p.add_argument("--n-real", type=non_negative_int, default=8, help="how many real photos to predict on (default 8)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-atlas", action="store_true", help="skip the channel atlas of the synthetic val set")
    p.add_argument("--overwrite", action="store_true",
                   help="run even if --out holds an earlier demo (its model is replaced; `make demo` passes this)")


#: The folders the demo's steps write into: a link among them leading out of --out is refused before step 1.
STEP_FOLDERS = ("data", "train", "predict-val", "predict-synth", "predict-real", "atlas", "report")


def run(args) -> int:
    real_dir = Path(args.real)
    args.config = args.config or str(REAL_CONFIG if args.data else DEFAULT_CONFIG)
    if args.data:
        splits = dataset_splits(args.data)  # one error line for a missing or empty split, before any work
        with output_folder(args.out, inputs=[args.config, args.data, *splits["train"][:1], *splits["val"][:1]],
                           overwrite=args.overwrite):
            check_fresh(Path(args.out) / "train", args.overwrite)  # under the lock, before anything is written
            check_inside(args.out, STEP_FOLDERS)
            return _run_real(args, Path(args.out).resolve(), splits["val"])
    with output_folder(args.out, inputs=[args.config, *([real_dir] if real_dir.is_dir() else [])], overwrite=args.overwrite):
        check_fresh(Path(args.out) / "train", args.overwrite)  # under the lock, before anything is written
        check_inside(args.out, STEP_FOLDERS)
        return _run(args, Path(args.out).resolve(), real_dir)


def _recipe(args, out: Path) -> tuple[dict, dict, Path]:
    """The recipe with ``--minutes`` applied, its ``demo`` keys apart, and the copy the trainer reads."""
    recipe = load_recipe(args.config)
    demo = recipe.pop("demo", {})  # our own keys: dataset size; the rest goes to the trainer
    if args.minutes:
        recipe["time"] = args.minutes / 60  # Ultralytics' time= is in hours and wins over epochs
    cfg = atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    return recipe, demo, cfg


def _train(data, out: Path, cfg: Path, recipe: dict, timings: dict) -> dict:
    """Step 2 of both demos: train into ``out/train`` with the recipe copy, timed and reported."""
    t = time.perf_counter()
    with TrainingWatch() as watch:  # the recipe's watch key (default on): film every layer while it learns
        callbacks = watch.callbacks() if recipe.get("watch", True) else None
        metrics = train(data, out / "train", config=cfg, overwrite=True, callbacks=callbacks)  # run() checked --overwrite
    timings["train_s"] = round(time.perf_counter() - t, 1)
    if callbacks:
        # overwrite: this folder's own output_folder already refuses a film.html no cardamage run wrote
        metrics["film"] = str(write_film(out / "train", out / "film.html", overwrite=True))
    else:  # an earlier demo's film in this folder is not this model's
        (out / "film.html").unlink(missing_ok=True)
    print(f"[2/4] trained {_epochs_told(metrics)} in {timings['train_s']}s (validation included): "
          f"val mAP50 {metrics['mAP50']:.3f}")
    if metrics.get("film"):
        print(f"      training film ({watch.records} record{'' if watch.records == 1 else 's'} of every layer, {watch.seconds:.1f}s taking them): "
              f"{metrics['film']}")
    warmup = float(recipe.get("warmup_epochs", DEFAULT_CFG_DICT["warmup_epochs"]))  # a silent recipe: Ultralytics'
    done = metrics.get("epochs_done")
    if recipe.get("time") and done is not None and done < warmup:  # a budget, not an epoch count, ended it
        print(f"      training ended inside the {warmup:g}-epoch warmup, before the learning rate reached its "
              f"full value: expect a model that finds little; give it more --minutes")
    return metrics


def _epochs_told(metrics: dict) -> str:
    """'10 epochs', or for a time budget that cut the last one: '0.44 epochs (77 of 175 batches of epoch 1)'."""
    per, last = metrics.get("batches_per_epoch"), metrics.get("last_epoch_batches")
    if not per or last >= per:
        return f"{metrics.get('epochs')} epoch{'' if metrics.get('epochs') == 1 else 's'}"
    return f"{metrics['epochs_done']:.2f} epochs ({last} of {per} batches of epoch {metrics['epochs']})"


def _run_real(args, out: Path, val_images: list[Path]) -> int:
    """The demo on a real dataset: train with the CPU recipe -> predict on val photos -> report."""
    t_start = time.perf_counter()
    recipe, _, cfg = _recipe(args, out)
    timings = {}
    budget = f"{recipe['time'] * 60:g} min budget" if recipe.get("time") else f"{recipe.get('epochs')} epochs"
    print(f"[1/4] dataset: {one_line(args.data)} ({len(val_images)} val photos); "
          f"recipe {one_line(args.config)} ({budget})")

    metrics = _train(args.data, out, cfg, recipe, timings)

    t = time.perf_counter()
    yolo = load_model(metrics["weights"])
    imgsz = int(recipe.get("imgsz", 640))
    photos = val_images[: max(args.n_real, 1)]
    records, _ = predict_paths(yolo, photos, out / "predict-val", conf=REAL_CONF, imgsz=imgsz, progress=False)
    timings["predict_s"] = round(time.perf_counter() - t, 1)
    n_det = sum(len(r["detections"]) for r in records)
    print(f"[3/4] predicted {len(records)} val photos ({n_det} boxes at conf {REAL_CONF:g})")
    if not n_det:  # the report then explains the first photo's strongest score, not a box
        print(f"      no box passed conf {REAL_CONF:g}: the report explains {one_line(photos[0].name)}'s "
              f"strongest score instead; train longer (--minutes) or look lower (`cardamage report --conf 0.05 ...`)")

    # the report explains a detection when there is one: the first val photo the model finds damage on
    shown = next((Path(r["image"]) for r in records if r["detections"]), photos[0])
    report = _report(args, metrics["weights"], shown, out, imgsz, list(val_images), timings)

    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    summary = {
        "metrics": metrics,
        "timings": timings,
        "data": str(Path(args.data).resolve()),
        "recipe": str(cfg),
        "weights": metrics["weights"],
        "predict_val": str(out / "predict-val" / "detections.json"),
        "report": str(report) if report else None,
    }
    return _finish(out, summary, metrics, "val", timings)


def _atlas(args, weights, data_yaml: Path, out: Path, imgsz: int, timings: dict, layers=None) -> Path | None:
    """The channel atlas of the trained model over the val split (``OUT/atlas``; ``None`` with ``--no-atlas``).
    ``layers``: a Conv block selection (the demo maps every block)."""
    if getattr(args, "no_atlas", False):
        return None
    t = time.perf_counter()
    res = build_atlas(load_model(weights), [str(data_yaml)], out / "atlas", imgsz=imgsz, layers=layers,
                      progress=False)
    timings["atlas_s"] = round(time.perf_counter() - t, 1)
    print(f"      channel atlas over {res['photos']} val photos: {res['index']} ({timings['atlas_s']}s)")
    return out / "atlas"


def _report(args, weights, photo: Path, out: Path, imgsz: int, stats_over: list, timings: dict, atlas=None):
    """Step 4: the lesson report on ``photo`` (``None`` with ``--no-report``); its seconds go into ``timings``.
    With ``atlas`` (a folder) the worked neuron's channel shows its atlas crops and links to the atlas."""
    if args.no_report:
        return None
    t = time.perf_counter()
    film = "../film.html" if (out / "film.html").is_file() else None  # the demo's training film, beside report/
    report = write_report(weights, photo, out / "report", imgsz=imgsz, stats_over=stats_over, film=film,
                          atlas=atlas)
    timings["report_s"] = round(time.perf_counter() - t, 1)
    print(f"[4/4] report on {one_line(photo.name)}: {one_line(report)} ({timings['report_s']}s)")
    return report


def _finish(out: Path, summary: dict, metrics: dict, split: str, timings: dict) -> int:
    atomic_write_json(out / "summary.json", summary)
    per = ", ".join(f"{k} {v:.2f}" for k, v in metrics["per_class"].items())
    print(f"\n{split} mAP50 {metrics['mAP50']:.3f}  mAP50-95 {metrics['mAP50-95']:.3f}  ({per})")
    print(f"demo finished in {timings['total_s']:.0f}s -> {one_line(out)}")
    return 0


def _run(args, out: Path, real_dir: Path) -> int:
    t_start = time.perf_counter()
    recipe, demo, cfg = _recipe(args, out)
    timings = {}

    t = time.perf_counter()
    data_yaml = synth.write_dataset(out / "data", demo.get("train_images", 800), demo.get("val_images", 100), demo.get("synth_imgsz", 256), demo.get("seed", 0))
    timings["synth_s"] = round(time.perf_counter() - t, 1)
    print(f"[1/4] synthetic data: {one_line(data_yaml)} ({timings['synth_s']}s)")

    metrics = _train(data_yaml, out, cfg, recipe, timings)

    t = time.perf_counter()
    yolo = load_model(metrics["weights"])
    imgsz = int(recipe.get("imgsz", 256))
    val_images = sorted((out / "data" / "val" / "images").glob("*.jpg"))[:8]
    synth_records, _ = predict_paths(yolo, val_images, out / "predict-synth", imgsz=imgsz, progress=False)
    real_records = []
    if real_dir.is_dir():
        real_images = expand_sources([str(real_dir)])[0][: args.n_real]
        real_records, _ = predict_paths(yolo, real_images, out / "predict-real", conf=SYNTH_MODEL_REAL_CONF,
                                        imgsz=640, progress=False)
    timings["predict_s"] = round(time.perf_counter() - t, 1)
    n_det = sum(len(r["detections"]) for r in synth_records)
    n_real = sum(len(r["detections"]) for r in real_records)
    print(f"[3/4] predicted {len(synth_records)} synthetic photos ({n_det} boxes) and {len(real_records)} real photos "
          f"({n_real} boxes at conf {SYNTH_MODEL_REAL_CONF:g}: a synthetic-damage model, many of them false)")

    atlas = _atlas(args, metrics["weights"], data_yaml, out, imgsz, timings)
    # every layer's statistics over the whole synthetic val split beside the one photo's
    report = _report(args, metrics["weights"], val_images[0], out, imgsz, [str(out / "data" / "val" / "images")],
                     timings, atlas=atlas)

    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    summary = {
        "metrics": metrics,
        "timings": timings,
        "data": str(data_yaml),
        "weights": metrics["weights"],
        "predict_synth": str(out / "predict-synth" / "detections.json"),
        "predict_real": str(out / "predict-real" / "detections.json") if real_records else None,
        "report": str(report) if report else None,
        "atlas": str(atlas / "index.html") if atlas else None,
    }
    return _finish(out, summary, metrics, "synthetic val", timings)
