"""Does input scaling matter? Train the demo twice, with YOLOv8's x/255 and with z-score standardized inputs.

Same synthetic data, seed, recipe (``configs/demo.yaml``) and wall-clock budget; only the scaling differs
(``pipeline/input_scaling.py``). Writes both runs, ``OUT/scaling.json`` (dataset mean/std, final metrics,
per-epoch losses) and a figure of the three training losses per epoch.

Run:
    .venv/bin/python scripts/scaling_experiment.py --out runs/scaling --minutes 2.5 --fig docs/img/scaling.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402,F401  (offline environment before ultralytics)
from pipeline.lesson.input_scaling import standardized_trainer  # noqa: E402
from pipeline.core.io import atomic_write_json  # noqa: E402
from pipeline.lesson.input_scaling import dataset_channel_stats  # noqa: E402
from pipeline.data.synth import write_dataset  # noqa: E402
from pipeline.model.train import train  # noqa: E402

LOSSES = ("train/box_loss", "train/cls_loss", "train/dfl_loss")


def losses(run: Path) -> dict[str, list[float]]:
    with open(run / "results.csv") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return {k: [float(r[k]) for r in rows] for k in LOSSES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/scaling")
    ap.add_argument("--minutes", type=float, default=2.5, help="training budget of each run")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--fig", help="also write the figure here (e.g. docs/img/scaling.png)")
    args = ap.parse_args()
    out = Path(args.out).resolve()

    data = write_dataset(out / "data", args.train, args.val, imgsz=256, seed=0, progress=False)
    stats = dataset_channel_stats(sorted((out / "data" / "train" / "images").glob("*.jpg")), imgsz=args.imgsz, auto=False)
    mean, std = stats["mean"], stats["std"]
    print(f"train-set x/255 per channel (R, G, B): mean {[round(v, 4) for v in mean]}, std {[round(v, 4) for v in std]}")

    common = dict(config=ROOT / "configs" / "demo.yaml", time=args.minutes / 60, imgsz=args.imgsz, val=True)
    runs = {
        "x/255 (YOLOv8)": (out / "x255", {}),
        "z-score (dataset mean/std)": (out / "zscore", {"trainer": standardized_trainer(mean, std)}),
    }
    summary = {"mean": mean, "std": std, "minutes_each": args.minutes, "runs": {}}
    for name, (run, extra) in runs.items():
        m = train(data, run, **common, **extra, overwrite=True)  # the experiment redraws its whole folder
        summary["runs"][name] = {"metrics": m, "losses": losses(run)}
        print(f"{name}: {m['epochs']} epochs, mAP50 {m['mAP50']:.3f}, mAP50-95 {m['mAP50-95']:.3f}")
    atomic_write_json(out / "scaling.json", summary)

    import matplotlib.pyplot as plt

    from pipeline.report.plots import save_png

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for (name, r), color in zip(summary["runs"].items(), ("tab:blue", "tab:orange")):
        for ax, key in zip(axes, LOSSES):
            ys = r["losses"][key]
            ax.plot(range(1, len(ys) + 1), ys, "o-", color=color, label=f"{name}: mAP50 {r['metrics']['mAP50']:.3f}")
            ax.set_title(key.split("/")[1])
            ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"YOLOv8n from scratch on synthetic damage, {args.minutes:g} CPU-minutes each: only the input scaling differs")
    fig.tight_layout()
    save_png(fig, out / "scaling.png", tight=False)
    if args.fig:
        import shutil

        shutil.copyfile(out / "scaling.png", args.fig)
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
