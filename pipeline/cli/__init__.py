"""The ``cardamage`` command line (also ``python -m pipeline``).

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and ``run(args) -> int``
plus a module docstring whose first line is the command's summary and whose ``Examples:`` block is
shown by ``--help``. Modules are imported only when their command runs, so ``--help`` stays fast.

Bad input never shows a traceback: an ``InputError`` is printed as ``error: <file>: <reason>`` and
the exit code is 1. Every such line is one line: control characters in a file name (a newline, an ANSI
escape) are printed escaped (``pipeline.core.errors.one_line``), so a name cannot forge a second line.

Examples:
    cardamage synth --out datasets/synth --train 400 --val 100
    cardamage train --data datasets/synth/data.yaml --epochs 30 --imgsz 320 --out runs/synth
    cardamage predict --weights runs/synth/weights/best.pt photos/ --out runs/predict
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
import threading

from pipeline import __version__
from pipeline.core.errors import InputError, InputWarning, listen_warnings, one_line

# command name -> module that implements it (order is the order of --help)
COMMANDS = {
    "synth": "pipeline.cli.synth",
    "check": "pipeline.cli.check",
    "convert-coco": "pipeline.cli.convert_coco",
    "train": "pipeline.cli.train",
    "film": "pipeline.cli.film",
    "predict": "pipeline.cli.predict",
    "demo": "pipeline.cli.demo",
    "preprocess": "pipeline.cli.preprocess",
    "outliers": "pipeline.cli.outliers",
    "inspect": "pipeline.cli.inspect",
    "trace": "pipeline.cli.trace",
    "report": "pipeline.cli.report",
    "explore": "pipeline.cli.explore",
    "atlas": "pipeline.cli.atlas",
}

# one-line summaries for the top-level --help (kept here so --help imports nothing heavy)
SUMMARIES = {
    "synth": "draw a synthetic car-damage dataset (YOLO polygons, same seed -> same bytes)",
    "check": "check a YOLO dataset: counts, box sizes, label errors, cross-split duplicates",
    "convert-coco": "convert CarDD's COCO JSON annotations to a YOLO dataset",
    "train": "train YOLOv8 (from yolov8n.yaml by default) and write best.pt + metrics.json",
    "film": "draw a run trained with --watch: every layer's gradients, updates and activations, record by record",
    "predict": "detect damage in photos; overlays + detections.json with scores and logits",
    "demo": "synth -> train on CPU -> predict -> report, offline, in minutes",
    "preprocess": "show the exact model input and three pixel scalings with outliers",
    "outliers": "flag outlier images and cross-split duplicates in a dataset",
    "inspect": "record every conv layer's activations, weights and folded biases (one photo), or its statistics (a folder)",
    "trace": "recompute one neuron by hand: sum(w*x) + b -> SiLU, against the framework",
    "report": "write an offline HTML report walking input -> neurons -> activations -> output -> training",
    "explore": "serve a local page to click any neuron, feature map and detection of a real detector",
    "atlas": "what each conv channel looks for over a dataset: top crops, class selectivity, offline HTML",
}


def _command_help(module) -> tuple[str, str]:
    """Summary line and body of a command's docstring, as plain text for a terminal.

    The docstrings serve the API docs too: their reST literal marks (double backticks, a literal block's
    double colon) are dropped, and the Python session that closes an Examples block is left out, since
    ``--help`` readers type shell commands.
    """
    doc = (module.__doc__ or "").strip().replace("``", "").replace("::\n", ":\n")
    first, _, rest = doc.partition("\n")
    shell = rest.splitlines()
    for i, line in enumerate(shell):
        if line.lstrip().startswith(">>>"):
            shell = shell[:i]
            break
    return first, "\n".join(shell).strip()


class OneLineParser(argparse.ArgumentParser):
    """Bad options get one line (``error: argument --conf: must be in (0, 1], got 2``) and exit 2, not usage."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(' '.join(message.split()))} (see: {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with ``only`` set, import just that command's module."""
    parser = OneLineParser(
        prog="cardamage",
        description="A YOLOv8 car-damage pipeline that shows its own insides.",
        epilog="Examples:" + __doc__.rsplit("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cardamage {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, modname in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=SUMMARIES[name], add_help=False)
            continue
        module = importlib.import_module(modname)
        summary, body = _command_help(module)
        p = sub.add_parser(
            name,
            help=SUMMARIES[name],
            description=summary,
            epilog=body,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def entry() -> int:
    """The ``cardamage`` console script and ``python -m pipeline``: ``main`` in a process of its own.

    Torch, Ultralytics and torchvision (whose import brings torch._dynamo) leave about 340,000 objects
    (``len(gc.get_objects())`` after importing the three) that Python's cyclic collector walks again in
    every full collection and once more at exit, although none of them is ever garbage. The process
    freezes them (``gc.freeze``) once the command's modules are imported, and everything once the command
    is done. At exit alone that is a large part of a short process's time (``python -c "import torch,
    torchvision"`` with and without ``gc.freeze()`` at its end: docs/report.md). Only a process that ends
    with the command does this; ``main`` called inside another program leaves its collector alone.
    """
    code = main(freeze_imports=True)
    gc.freeze()  # exit without a last walk over every object ever made
    return code


@contextlib.contextmanager
def input_warnings():
    """Print each input warning as ``warning: <file>: <reason>``, once per file, and yield the set of files.

    A damaged photo is warned about deep in a read (``pipeline.core.io.warn_if_repaired``), from any thread;
    ``listen_warnings`` carries it here, so every command reports it the same way and counts it.
    """
    warned: set[str] = set()
    lock = threading.Lock()

    def show(w: InputWarning) -> None:
        key = os.path.realpath(w.path)  # one file named two ways (explore's start-up, then its run) is one
        with lock:  # worker threads read photos too
            if key in warned:
                return
            warned.add(key)
        print(f"warning: {w}", file=sys.stderr, flush=True)

    with listen_warnings(show):
        yield warned


def print_warnings_summary(warned) -> None:
    """``N photos with warnings (above)`` on stderr, when ``input_warnings`` caught any: one wording for all."""
    if warned:
        print(f"{len(warned)} photo{'' if len(warned) == 1 else 's'} with warnings (above)", file=sys.stderr)


def main(argv: list[str] | None = None, freeze_imports: bool = False) -> int:
    """Parse ``argv`` and run the chosen command; return its exit code.

    ``freeze_imports``: move every object that exists once the command's modules are imported into the
    collector's permanent generation (``entry`` says why).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(only=command) if command else build_parser(only="")
    if freeze_imports:
        gc.freeze()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        with input_warnings() as warned:
            code = int(args._module.run(args) or 0)
        print_warnings_summary(warned)
        return code
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # permission, not a folder, read-only, disk full: one line naming the path
        where = e.filename if e.filename is not None else "?"
        print(f"error: {one_line(where)}: {one_line(e.strerror or type(e).__name__)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(entry())
