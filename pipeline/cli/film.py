"""Draw a watched training run (``train --watch``) as one offline page: ``OUT/film.html``.

Layer x record heatmaps of the gradient norm, the update ratio, the nearly-off share and BatchNorm's gamma;
the probe photo's top box and its logit -> sigmoid across training; per-class AP; and the lesson, in
sentences computed from this run's numbers (``pipeline.report.film``).

Examples:
    cardamage train --data datasets/synth/data.yaml --epochs 3 --imgsz 128 --watch --out runs/watched
    cardamage film runs/watched
    cardamage film runs/watched --out /tmp/film.html
"""

from __future__ import annotations

import argparse

from pipeline.report.film import write_film


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder trained with --watch (holds watch.jsonl), or the watch.jsonl itself")
    p.add_argument("--out", default=None, help="page to write (default RUN/film.html)")


def run(args) -> int:
    path = write_film(args.run, args.out)
    print(f"film: {path}")
    return 0
