"""Reproduce one CarDD benchmark row: train from scratch under a time budget, validate best.pt on valid/.

One command = one CarDD training row (``benchmarks/rows/``, docs/benchmarks.md): it runs
``pipeline.model.train.train`` with a recipe from ``configs/`` (flags win over the file), then Ultralytics'
own validator on the dataset's ``val`` split (CarDD ``valid/``, 799 images; never ``test/``) with
``best.pt``, and prints and writes a JSON row: recipe, model, imgsz, wall minutes of the training call,
epochs, mAP50, mAP50-95 and per-class mAP50, plus what is needed to trust it (device, AMP, versions,
image counts, the command itself).

Offline and AMP: ``import pipeline`` sets ``YOLO_OFFLINE`` and friends before Ultralytics loads. On a
GPU, Ultralytics' AMP check would load ``yolo26n.pt`` and, without the file, try to download it; this
script swaps in ``offline_check_amp``, which makes the same decision with no weights and no network
(off on CPU/MPS and on the GPUs Ultralytics lists as fp16-unsafe, else on when an fp16 forward of the
model being trained is finite and agrees with fp32), so AMP stays on on a GPU that supports it.

``--tiny`` is the CI smoke run: the recipe itself on 16 + 8 photos of the CarDD sample the tests read,
1 epoch at 160 px on the CPU, no time budget. It checks that the pipeline runs end to end, not a score.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_cardd.py --tiny --out /tmp/cardd-tiny
    python3 scripts/train_cardd.py --data datasets/cardd-staged/data.yaml --config configs/cardd_stock.yaml \\
        --device 0 --out runs/cardd-gpu/stock --json stock.json
    python3 scripts/train_cardd.py --data datasets/cardd-staged/data.yaml --config configs/cardd.yaml \\
        --device 0 --out runs/cardd-gpu/cardd --json cardd.json
    python3 scripts/train_cardd.py --data ... --config configs/cardd.yaml --model yolov8s.yaml --recipe cardd-s ...
    python3 scripts/train_cardd.py --data ... --config configs/cardd.yaml --set copy_paste=0 --recipe cardd-no-cp ...

Examples:
    >>> row = main(["--tiny", "--out", "/tmp/cardd-tiny"])
    >>> sorted(row["per_class"])[:2]
    ['crack', 'dent']
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "scripts"):  # a plain checkout works too, without installing the project
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from pipeline.core.io import InputError, atomic_write_json  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "cardd-sample"
DEFAULT_CONFIG = ROOT / "configs" / "cardd.yaml"

#: The smoke run's settings: small enough for CI on one core, and no time budget (``time: 0`` is off).
TINY = dict(epochs=1, imgsz=160, batch=8, nbs=8, workers=0, cache=False, time=0, device="cpu", plots=False)
TINY_IMAGES = (16, 8)  # train, val photos taken from the sample (disjoint)

#: Keys every row has; the test and docs/benchmarks.md rely on them.
ROW_KEYS = (
    "recipe", "config", "model", "imgsz", "batch", "gpu_minutes", "budget_minutes", "epochs",
    "mAP50", "mAP50-95", "precision", "recall", "per_class", "per_class_map50_95",
    "device", "amp", "n_train", "n_val", "val_seconds", "ultralytics", "torch", "weights", "command", "tiny", "overrides",
    "steps", "train_minutes", "cpus", "validated_by",
)

# The offline AMP check lives with the rest of the network guards, in pipeline/runtime.py.
from pipeline.core.amp import AMP_DECISIONS, amp_forward_agrees, install_offline_amp_check, offline_check_amp  # noqa: E402,F401


# ----------------------------------------------------------------------------------------------- the row


def validate(weights: Path, data: Path, imgsz: int, device, out: Path, batch: int = 32, workers: int = 8) -> tuple[dict, float]:
    """Ultralytics' validator on the data's ``val`` split; (metrics dict as in metrics.json, seconds)."""
    from pipeline.model.load import load_model

    yolo = load_model(weights)
    t0 = time.time()
    res = yolo.val(
        data=str(data), split="val", imgsz=imgsz, batch=batch, device=device, workers=workers,
        plots=False, verbose=False, project=str(out), name="val", exist_ok=True,
    )
    seconds = time.time() - t0
    return scores(res, yolo.names), seconds


def scores(res, names: dict) -> dict:
    """Ultralytics' ``DetMetrics`` as a row's scores: ``metrics.json``'s keys plus mAP50-95 per class."""
    from pipeline.model.train import metrics_dict

    metrics = metrics_dict(res, names)
    metrics["per_class_map50_95"] = {names[int(c)]: round(float(ap), 5) for c, ap in zip(res.ap_class_index, res.box.ap)}
    return metrics


class StepCounter:
    """Counts the optimizer steps of a run (``trainer.optimizer_step`` calls): with gradient accumulation
    (``nbs`` > ``batch``) a step is not a batch, and from scratch the steps are what a budget buys.

    Examples:
        >>> counter = StepCounter()
        >>> train(data, out, callbacks=counter.callbacks)  # doctest: +SKIP
        >>> counter.steps  # doctest: +SKIP
        1748
    """

    def __init__(self):
        self.steps = 0
        self.trainer = None
        self.callbacks = {"on_train_start": self._wrap, "on_train_end": self._keep}

    def _wrap(self, trainer) -> None:
        step = trainer.optimizer_step  # the bound method the training loop calls as self.optimizer_step()

        def counted():
            self.steps += 1
            return step()

        trainer.optimizer_step = counted

    def _keep(self, trainer) -> None:
        self.trainer = trainer


def table_row(row: dict) -> str:
    """One markdown table line for a training row: recipe | model | imgsz | GPU min | epochs | mAP50 | mAP50-95 |
    per-class mAP50 | the command that made it."""
    per = ", ".join(f"{k} {v:.2f}" for k, v in row["per_class"].items())
    return (
        f"| {row['recipe']} | {Path(row['model']).stem} | {row['imgsz']} | {row['gpu_minutes']:.1f} | {row['epochs']} "
        f"| {row['mAP50']:.3f} | {row['mAP50-95']:.3f} | {per} | `{row['command']}` |"
    )


def train_count(n: int, fraction=1.0) -> int:
    """How many of ``n`` train images Ultralytics trains on for its ``fraction`` argument (ratio or count)."""
    from ultralytics.data.utils import get_split_fraction

    f = get_split_fraction(fraction, "train")
    count = f if isinstance(f, int) else max(1, round(n * f))  # Ultralytics' BaseDataset.get_img_files rule
    return min(count, n)


def parse_sets(items: list[str]) -> dict:
    """``["copy_paste=0", "cos_lr=true"]`` -> ``{"copy_paste": 0, "cos_lr": True}`` (values read as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError("--set", f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="staged data.yaml (scripts/stage_cardd.py): train + val only")
    p.add_argument("--config", default=None, help=f"recipe YAML (default {DEFAULT_CONFIG.relative_to(ROOT)})")
    p.add_argument("--recipe", default=None, help="row name in the table (default: the config's file stem)")
    p.add_argument("--model", default=None, help="model YAML, overrides the recipe's (e.g. yolov8s.yaml)")
    p.add_argument("--imgsz", type=int, default=None, help="train and val image size (default: recipe)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: recipe)")
    p.add_argument("--epochs", type=int, default=None, help="epoch cap (default: recipe; the time budget wins)")
    p.add_argument("--minutes", type=float, default=None, help="time budget in minutes (Ultralytics time=, hours)")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (default: recipe)")
    p.add_argument("--device", default=None, help="0 for the first GPU, cpu (default: recipe, else cpu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other train() argument, YAML-typed (e.g. --set copy_paste=0); repeatable")
    p.add_argument("--val-batch", type=int, default=32, help="batch size of the final validation")
    p.add_argument("--trainer-val", action="store_true",
                   help="take the scores from the trainer's own final validation of best.pt instead of validating "
                        "it again (same validator, split and imgsz; saves minutes on a CPU)")
    p.add_argument("--out", required=True, help="run folder: data/ (staged), train/ (weights/, results.csv, metrics.json), val/, row.json")
    p.add_argument("--json", default=None, help="also write the row here (default OUT/row.json only)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run on 16+8 sample photos, 1 epoch, 160 px")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, validate, print and write the row; return it. Raises InputError on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch
    import ultralytics

    from pipeline.data.labels import dataset_splits
    from pipeline.model.train import load_recipe, train
    from stage_cardd import stage_dataset

    out = Path(args.out).resolve()
    config = Path(args.config) if args.config else DEFAULT_CONFIG
    recipe = load_recipe(config)
    overrides = dict(TINY) if args.tiny else {}
    if args.tiny:
        if not (SAMPLE / "data.yaml").is_file():
            raise InputError(SAMPLE, "the CarDD sample is missing (expected ../shared beside the checkout)")
        data = stage_dataset(SAMPLE, out / "data", *TINY_IMAGES)
    elif args.data:
        data = Path(args.data).resolve()
    else:
        raise InputError("--data", "a staged data.yaml is required (or --tiny)")
    cli = {"imgsz": args.imgsz, "batch": args.batch, "epochs": args.epochs, "workers": args.workers,
           "device": args.device, "time": None if args.minutes is None else args.minutes / 60}
    overrides.update({k: v for k, v in cli.items() if v is not None})
    overrides.update(parse_sets(args.set))
    settings = {**recipe, **overrides}
    model = args.model or recipe.get("model") or "yolov8n.yaml"
    imgsz = int(settings.get("imgsz", 640))
    device = settings.get("device", "cpu")
    splits = dataset_splits(data)

    install_offline_amp_check()
    AMP_DECISIONS.clear()
    counter = StepCounter()
    t0 = time.time()
    # the benchmark owns its row folders: a row without row.json is an unfinished run, trained again
    trained = train(data, out / "train", model=model, config=config, callbacks=counter.callbacks, overwrite=True,
                    **overrides)
    gpu_minutes = (time.time() - t0) / 60  # out holds the staged data; this is the wall of the training call
    weights = Path(trained["weights"])
    if args.trainer_val:
        # the trainer's own final evaluation of best.pt (same validator, val split and imgsz): a CPU row
        # need not validate the same weights a third time
        metrics, val_seconds = scores(counter.trainer.validator.metrics, counter.trainer.validator.names), 0.0
    else:
        metrics, val_seconds = validate(weights, data, imgsz, device, out, batch=args.val_batch,
                                        workers=int(settings.get("workers", 2)))

    hours = settings.get("time")
    row = {
        "recipe": args.recipe or config.stem + ("-tiny" if args.tiny else ""),
        "config": str(config),
        "model": model,
        "imgsz": imgsz,
        "batch": settings.get("batch"),
        "gpu_minutes": round(gpu_minutes, 2),  # wall of the training call: setup, caching, epochs, final val
        "budget_minutes": round(hours * 60, 2) if hours else None,
        "epochs": trained.get("epochs"),
        **metrics,
        "device": torch.cuda.get_device_name(0) if str(device) not in {"cpu", "mps"} and torch.cuda.is_available()
        else str(device),
        "amp": AMP_DECISIONS[-1] if AMP_DECISIONS else None,
        "n_train": train_count(len(splits["train"]), settings.get("fraction", 1.0)),
        "n_val": len(splits["val"]),  # the final validation passes no fraction: always the whole split
        "val_seconds": round(val_seconds, 1),
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "weights": str(weights),
        "command": " ".join(shlex.quote(a) for a in ["python3", "scripts/train_cardd.py", *argv]),
        "tiny": bool(args.tiny),
        "overrides": overrides,  # what the flags changed on top of the recipe file
        "steps": counter.steps,
        "train_minutes": round(gpu_minutes, 2),  # the same wall as gpu_minutes, named for CPU rows
        "cpus": os.cpu_count(),  # training runs torch on all of them (pipeline.model.train)
        "validated_by": "trainer final eval of best.pt" if args.trainer_val else "validate(best.pt)",
        # the layout the network trained in (the recipe's cpu_channels_last; Ultralytics' own choice on CUDA)
        "memory_format": "channels_last" if settings.get("cpu_channels_last") and str(device) == "cpu" else
        "contiguous" if str(device) == "cpu" else "ultralytics",
    }
    atomic_write_json(out / "row.json", row)
    if args.json:
        atomic_write_json(args.json, row)
    import json

    print(json.dumps(row))
    print(table_row(row))
    return row


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
