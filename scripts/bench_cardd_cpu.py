"""Stock against the CPU recipe on CarDD, same wall-clock budget, same machine: one table row each.

Each row is one ``scripts/train_cardd.py`` run in its own process, one after the other (never two at
once: on 2 cores a second job halves the first's steps): YOLOv8n from ``yolov8n.yaml`` trained for the
budget, then scored on CarDD ``valid/`` (799 images) by Ultralytics' validator (the trainer's own final
evaluation of best.pt, at the training imgsz). ``test/`` is never read. A row whose ``row.json`` already
exists in ``OUT`` is not trained again, so an interrupted benchmark resumes; ``--table`` only prints.

Rows (``--rows``, default ``stock recipe``):
    stock      configs/cardd_cpu_stock.yaml: Ultralytics' defaults at imgsz 320, batch 16 (issue 16's anchor)
    recipe     configs/cardd_cpu.yaml: the CPU recipe
    ablations, one change each against the recipe (``--rows ablations`` names them all):
    r-256, r-416          image size
    r-b8                  batch 8 (nbs 8): twice the steps, half the images per step
    r-b32                 batch 32 (nbs 32): half the steps, twice the images per step
    r-nbs64               stock's nbs 64 back (4 batches accumulated): credits the step lever
    r-lr001               lr0 0.001 (optimizer=auto's value)
    r-lr004               lr0 0.004: twice the recipe's step size
    r-warmup05            half an epoch of warmup (the recipe's value until 2026-12-02; it takes stock's 3 now)
    r-wblr0               warmup_bias_lr 0: what optimizer=auto sets for AdamW (naming AdamW keeps 0.1)
    r-close10             stock's close_mosaic 10 back (mosaic off for the last 10 of the fitted epochs)
    r-clspw               cls_pw 0.5: inverse-frequency class weights (tire flat 235 vs scratch 2,534)
    r-nocache             cache false: every JPEG decoded again each epoch, as stock does
    r-nchw                cpu_channels_last false: the model trains in NCHW memory, as Ultralytics does on a CPU
    r-synth               start from a synthetic-damage model (``--synth-weights``, e.g. the demo's best.pt)

Run (each row takes its budget plus ~2 minutes of setup and validation):
    .venv/bin/python scripts/bench_cardd_cpu.py --data datasets/cardd-staged/data.yaml --minutes 30
    .venv/bin/python scripts/bench_cardd_cpu.py --data datasets/cardd-staged/data.yaml --minutes 60 120 --rows recipe
    .venv/bin/python scripts/bench_cardd_cpu.py --data ... --minutes 30 --rows recipe --record   # + benchmarks/rows/cardd-cpu.jsonl
    .venv/bin/python scripts/bench_cardd_cpu.py --data ... --minutes 30 --rows r-256 r-416 r-synth \\
        --synth-weights runs/demo/train/weights/best.pt
    .venv/bin/python scripts/bench_cardd_cpu.py --tiny --out /tmp/cardd-cpu-tiny   # CI: 16+8 sample photos, 1 epoch
    .venv/bin/python scripts/bench_cardd_cpu.py --table --out runs/cardd-cpu       # print the rows made so far
    .venv/bin/python scripts/bench_cardd_cpu.py --throughput   # images/s of YOLOv8n forward+backward per batch, size and layout

Examples:
    >>> rows = main(["--tiny", "--out", "/tmp/cardd-cpu-tiny"])
    >>> [r["recipe"] for r in rows]
    ['stock', 'recipe']
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
STOCK = CONFIGS / "cardd_cpu_stock.yaml"
RECIPE = CONFIGS / "cardd_cpu.yaml"
RECORD = ROOT / "benchmarks" / "rows" / "cardd-cpu.jsonl"

#: name -> (config, extra train_cardd.py flags); ablations change one thing against the recipe.
ROWS = {
    "stock": (STOCK, []),
    "recipe": (RECIPE, []),
    "r-256": (RECIPE, ["--imgsz", "256"]),
    "r-416": (RECIPE, ["--imgsz", "416"]),
    "r-b8": (RECIPE, ["--batch", "8", "--set", "nbs=8"]),
    "r-b32": (RECIPE, ["--batch", "32", "--set", "nbs=32"]),
    "r-nbs64": (RECIPE, ["--set", "nbs=64"]),
    "r-lr001": (RECIPE, ["--set", "lr0=0.001"]),
    "r-lr004": (RECIPE, ["--set", "lr0=0.004"]),
    "r-warmup05": (RECIPE, ["--set", "warmup_epochs=0.5"]),
    "r-wblr0": (RECIPE, ["--set", "warmup_bias_lr=0"]),
    "r-close10": (RECIPE, ["--set", "close_mosaic=10"]),
    "r-clspw": (RECIPE, ["--set", "cls_pw=0.5"]),
    "r-nocache": (RECIPE, ["--set", "cache=false"]),
    "r-nchw": (RECIPE, ["--set", "cpu_channels_last=false"]),
    "r-synth": (RECIPE, []),  # + --model SYNTH_WEIGHTS
}
ABLATIONS = [name for name in ROWS if name.startswith("r-")]


def row_command(name: str, minutes: float | None, out: Path, data: str | None, synth_weights: str | None,
                tiny: bool, sets: list[str] = ()) -> list[str]:
    """The ``train_cardd.py`` argument list for one row (without the interpreter); ``sets`` (``KEY=VALUE``)
    come after the row's own changes, so they apply to every row (e.g. an older recipe value back)."""
    config, extra = ROWS[name]
    cmd = ["scripts/train_cardd.py", "--config", str(config.relative_to(ROOT)), "--recipe", name,
           "--trainer-val", "--out", str(out), *extra]
    for item in sets:
        cmd += ["--set", item]
    if name == "r-synth":
        if not synth_weights:
            raise SystemExit("error: --rows r-synth needs --synth-weights (a synthetic-damage model's best.pt)")
        cmd += ["--model", synth_weights]
    if tiny:
        return cmd + ["--tiny"]  # the smoke run: 1 epoch, no budget
    return cmd + ["--data", data, "--minutes", f"{minutes:g}"]


def table(rows: list[dict]) -> str:
    """The rows as a markdown table, printed at the end of a run: one line per row, its command beside it
    (``--record`` keeps them as benchmark rows, which docs/benchmarks.md renders)."""
    head = ("| row | memory | budget min | train wall min | epochs | optimizer steps | mAP50 | mAP50-95 | per-class mAP50 "
            "| command |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        per = ", ".join(f"{k} {v:.2f}" for k, v in r["per_class"].items())
        budget = "-" if r["budget_minutes"] is None else f"{r['budget_minutes']:g}"
        memory = {"channels_last": "NHWC", "contiguous": "NCHW"}.get(r.get("memory_format"), "?")
        lines.append(f"| {r['recipe']} | {memory} | {budget} | {r['train_minutes']:.1f} | {r['epochs']} | {r['steps']} "
                     f"| {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {per} | `{r['bench_command']}` |")
    return "\n".join(lines)


def bench_row(r: dict, id: str, note: str = "") -> dict:
    """One ``train_cardd.py`` row (``row.json`` plus ``bench_command``) as a benchmark row of
    ``benchmarks/rows/cardd-cpu.jsonl`` (``scripts/benchrows.py``): the table's numbers, the bench command,
    this machine, today."""
    import benchrows

    memory = {"channels_last": "NHWC", "contiguous": "NCHW"}.get(r.get("memory_format"), "?")
    numbers = {"memory": memory, "budget_min": r["budget_minutes"], "train_min": round(r["train_minutes"], 1),
               "epochs": r["epochs"], "steps": r["steps"], "mAP50": round(r["mAP50"], 3),
               "mAP50-95": round(r["mAP50-95"], 3), "per_class_mAP50": {k: round(v, 2) for k, v in r["per_class"].items()}}
    return benchrows.make_row(id, r["bench_command"], numbers, note=note)


def throughput(shapes=((32, 320), (16, 320), (8, 320), (16, 256), (8, 256)), repeats: int = 3) -> list[dict]:
    """Images a second of one YOLOv8n training step's forward and backward (no data loading, no optimizer)
    on every core, per (batch, imgsz) and memory layout (NCHW as Ultralytics trains on a CPU, NHWC as the
    recipe's ``cpu_channels_last``): what a batch size, an image size or a layout costs before any data is read."""
    import time

    import torch

    sys.path.insert(0, str(ROOT))
    from ultralytics.nn.tasks import DetectionModel

    import pipeline  # noqa: F401  (offline Ultralytics environment first)

    torch.set_num_threads(os.cpu_count() or 1)  # as training does (pipeline.model.train)
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=6, verbose=False).train()
    out = []
    for batch, imgsz in shapes:
        x = torch.randn(batch, 3, imgsz, imgsz)
        for layout, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            model.to(memory_format=fmt)  # the batch stays NCHW, as Ultralytics hands it over
            times = []
            for i in range(repeats + 1):  # the first pass warms the allocator and oneDNN's kernels up
                t = time.perf_counter()
                y = model(x)
                heads = y.values() if isinstance(y, dict) else y
                sum(h.float().square().mean() for h in heads if torch.is_tensor(h)).backward()
                model.zero_grad(set_to_none=True)
                if i:
                    times.append(time.perf_counter() - t)
            seconds = sorted(times)[len(times) // 2]
            out.append({"batch": batch, "imgsz": imgsz, "layout": layout, "ms_per_batch": round(seconds * 1000),
                        "images_per_s": round(batch / seconds, 1)})
            print(f"batch {batch:3d}  imgsz {imgsz}  {layout}: {seconds * 1000:6.0f} ms/batch  {batch / seconds:5.1f} "
                  "images/s", flush=True)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="staged CarDD data.yaml (scripts/stage_cardd.py): train + valid only")
    p.add_argument("--out", default="runs/cardd-cpu", help="one folder per row: OUT/NAME-MINUTES (default runs/cardd-cpu)")
    p.add_argument("--minutes", type=float, nargs="+", default=[30.0], help="budgets in minutes (default 30)")
    p.add_argument("--rows", nargs="+", default=["stock", "recipe"],
                   help=f"rows in order; 'ablations' = {' '.join(ABLATIONS)} (default: stock recipe)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a train() argument for every row, after the row's own (e.g. warmup_epochs=0.5: the recipe "
                        "before 2026-12-02); repeatable")
    p.add_argument("--synth-weights", help="synthetic-damage model for the r-synth row (e.g. runs/demo/train/weights/best.pt)")
    p.add_argument("--tiny", action="store_true", help="CI smoke: each row on 16+8 sample photos, 1 epoch, 160 px")
    p.add_argument("--table", action="store_true", help="print the table of the rows already in OUT; train nothing")
    p.add_argument("--throughput", action="store_true", help="only time YOLOv8n forward+backward per batch and imgsz")
    p.add_argument("--record", nargs="?", const=str(RECORD), default=None, metavar="ROWS_FILE",
                   help=f"append each row trained now to a benchmark rows file (default {RECORD.relative_to(ROOT)}), "
                        "id NAME-MINUTES (NAME-MINUTES-DATE if taken); then render the docs with scripts/benchrows.py")
    return p.parse_args(argv)


def record(path: str, row: dict, id: str) -> None:
    """Append ``row`` to the rows file ``path`` as ``id``, or as ``id-DATE`` when ``id`` is taken."""
    import benchrows

    new = bench_row(row, id)
    if any(r["id"] == id for r in benchrows.read_rows(path)):
        new["id"] = f"{id}-{new['date']}"
    benchrows.append_row(path, new)
    print(f"row {new['id']} -> {path}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.throughput:
        return throughput()
    names = [n for item in args.rows for n in (ABLATIONS if item == "ablations" else [item])]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown row {unknown[0]!r} (known: {', '.join(ROWS)}, ablations)")
    if not (args.tiny or args.table or args.data):
        raise SystemExit("error: --data is required (a staged CarDD data.yaml), or --tiny")
    out = Path(args.out).resolve()
    budgets = [None] if args.tiny else args.minutes
    rows, failed = [], []
    for minutes in budgets:
        for name in names:
            run_dir = out / (f"{name}-tiny" if minutes is None else f"{name}-{minutes:g}")
            row_file = run_dir / "row.json"
            cmd = row_command(name, minutes, run_dir, args.data, args.synth_weights, args.tiny, args.set)
            data = str(args.data or "datasets/cardd-staged/data.yaml")  # --table alone: the staged set the docs use
            own = ["--tiny"] if minutes is None else ["--data", data, "--minutes", f"{minutes:g}"]
            own += ["--rows", name] + (["--synth-weights", args.synth_weights] if name == "r-synth" else [])
            own += [a for item in args.set for a in ("--set", item)]
            bench = " ".join(shlex.quote(a) for a in ["python3", "scripts/bench_cardd_cpu.py", *own])
            trained_now = False
            if not row_file.is_file() and not args.table:
                run_dir.mkdir(parents=True, exist_ok=True)
                print(f"[{name}, {'tiny' if minutes is None else f'{minutes:g} min'}] {' '.join(cmd)}", flush=True)
                with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
                    rc = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
                if rc != 0:
                    print(f"error: row {name} failed (exit {rc}); see {run_dir.parent / (run_dir.name + '.log')}",
                          file=sys.stderr)
                    failed.append(name)
                    continue
                trained_now = True
            if row_file.is_file():
                row = json.loads(row_file.read_text())
                row["bench_command"] = bench
                rows.append(row)
                if args.record and trained_now:
                    record(args.record, row, run_dir.name)
    print(table(rows))
    if failed:
        raise SystemExit(1)  # the rows that did finish are printed above
    return rows


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
