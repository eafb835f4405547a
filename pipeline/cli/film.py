"""Draw a watched training run (``train --watch``) as one offline page: ``OUT/film.html``.

Layer x record heatmaps of the gradient norm, the update ratio, the nearly-off share and BatchNorm's gamma;
the probe photo's top box and its logit -> sigmoid across training; per-class AP; and the lesson, in
sentences computed from this run's numbers (``pipeline.report.film``).

With ``--compare-activations --data DATA.yaml``, first train the same few epochs once per activation
(SiLU, sigmoid, ReLU; ``pipeline.lesson.compare``) into ``OUT/<activation>/``, each watched and filmed,
then draw ``OUT/compare.html``: the gradient norm per depth and the loss curves side by side.

Examples:
    cardamage train --data datasets/synth/data.yaml --epochs 3 --imgsz 128 --watch --out runs/watched
    cardamage film runs/watched
    cardamage film runs/watched --out /tmp/film.html
    cardamage film runs/acts --compare-activations --data datasets/synth/data.yaml --epochs 3 --imgsz 96
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.options import image_size, positive_int
from pipeline.core.io import InputError, check_output_file, one_line
from pipeline.lesson.compare import COMPARED, train_variants
from pipeline.report.film import GENERATOR, write_compare, write_film


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder trained with --watch (holds watch.jsonl), or the watch.jsonl itself; "
                               "with --compare-activations, the folder for the variant runs")
    p.add_argument("--out", default=None, help="page to write (default RUN/film.html, or RUN/compare.html)")
    p.add_argument("--compare-activations", action="store_true",
                   help=f"train once per activation ({', '.join(COMPARED)}) on --data and compare them")
    p.add_argument("--data", help="dataset YAML for --compare-activations")
    p.add_argument("--epochs", type=positive_int, default=3, help="epochs per variant (default 3)")
    p.add_argument("--imgsz", type=image_size, default=96, help="training size per variant (default 96)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch size (default 8; nbs = batch)")
    p.add_argument("--overwrite", action="store_true",
                   help="let the page replace an existing .html file that is not an earlier film or compare page")


def run(args) -> int:
    if not args.compare_activations:
        print(f"film: {one_line(write_film(args.run, args.out, args.overwrite))}")
        return 0
    if not args.data:
        raise InputError("--data", "--compare-activations trains on a dataset: give its data.yaml")
    out = check_output_file(Path(args.out) if args.out else Path(args.run) / "compare.html", [args.data], ".html",
                            GENERATOR, args.overwrite)  # before the variants train, not after
    runs = train_variants(args.data, args.run, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                          nbs=args.batch, seed=0, deterministic=True, plots=False)
    for name in runs:
        print(f"film of {name}: {write_film(Path(args.run) / name)}")
    print(f"compare: {one_line(write_compare(args.run, runs, out, args.overwrite))}")
    return 0
