"""Command-line option types shared by every command: each bad value is refused with one line.

``argparse`` calls these while parsing, so a bad option stops the command before any model is
loaded or any file is written; ``pipeline.cli`` prints the refusal as ``error: argument --conf: ...``.

Examples:
    >>> parser.add_argument("--conf", type=probability, default=0.25)
    >>> parser.add_argument("--device", type=device, default="cpu")
"""

from __future__ import annotations

import argparse
import math
import os
import re

import torch

from pipeline.core.facts import MAX_IMGSZ, TRUST_ENV


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    """A threshold in (0, 1]: conf and iou (0 would keep every one of the 8400 candidate boxes)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0: thresholds such as |z| cut-offs and the dead-unit epsilon."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0: GPUs per Ray worker (a fraction shares a GPU between workers)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1: batch, workers, counts."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def int_range(lo: int, hi: int | None = None):
    """An argparse type for an integer in [lo, hi] (no upper end when ``hi`` is None)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer in {lo}..{hi if hi is not None else ''}, got {text}")
        return value

    parse.__name__ = f"integer {lo}..{hi if hi is not None else ''}"  # argparse names the type in its messages
    return parse


non_negative_int = int_range(0)


def image_size(text: str) -> int:
    """An inference or training size in pixels, 32..4096: Ultralytics rounds it up to a stride multiple."""
    value = _number(text, int)
    if not 32 <= value <= MAX_IMGSZ:
        raise argparse.ArgumentTypeError(f"must be a size in pixels from 32 to {MAX_IMGSZ}, got {text}")
    return value


_CUDA = re.compile(r"^(cuda:)?\d+(,\d+)*$")


def device(text: str) -> str:
    """``cpu``, ``mps``, or CUDA indices (``0``, ``0,1``, ``cuda:0``) that exist on this machine."""
    value = text.strip().lower().replace(" ", "")
    if value == "cpu":
        return value
    if value == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("mps is not available on this machine; use --device cpu")
        return value
    if value == "cuda":
        value = "0"
    if not _CUDA.match(value):
        raise argparse.ArgumentTypeError(f"expected cpu, mps or CUDA indices like 0 or 0,1, got {text!r}")
    wanted = [int(i) for i in value.removeprefix("cuda:").split(",")]
    have = torch.cuda.device_count()
    missing = [i for i in wanted if i >= have]
    if missing:
        seen = f"{have} CUDA device(s)" if have else "no CUDA device"
        raise argparse.ArgumentTypeError(f"device {missing[0]} not found: torch sees {seen}; use --device cpu")
    return value


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite`` for a command that writes into an output folder (``core.io.output_folder``)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="let --out's files be replaced even where no cardamage run wrote them (a file of "
                             "yours with the same name as an output, or a link); without it such a file is refused")


def add_trust_weights(parser: argparse.ArgumentParser) -> None:
    """The explicit opt-in for weights files that safe loading refuses (see ``pipeline.model.load_model``)."""
    parser.add_argument(
        "--trust-weights", action="store_true", default=os.environ.get(TRUST_ENV, "") == "1",
        help=f"load a weights file even if it holds code (pickled objects outside the YOLO format); only for "
             f"files from a source you trust. Also: {TRUST_ENV}=1",
    )


_RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def ray_address(text: str) -> str:
    """``--ray``'s optional value: ``auto``, ``local``, ``host:port`` or ``ray://host:port``."""
    value = text.strip()
    if not _RAY_ADDRESS.match(value):
        raise argparse.ArgumentTypeError(
            f"expected a Ray address like auto, 10.0.0.5:6379 or ray://head:10001, got {text!r} "
            "(a photo right after --ray is read as its address: put --ray after the photos)")
    return value


def add_ray_arguments(parser: argparse.ArgumentParser, workers: bool = True) -> None:
    """``--ray [ADDRESS]`` and ``--gpus-per-worker`` (``--workers`` counts Ray workers when ``--ray`` is given)."""
    parser.add_argument("--ray", nargs="?", const="local", default=None, type=ray_address, metavar="ADDRESS",
                        help="run on Ray: no ADDRESS starts a local instance (loopback only), an ADDRESS "
                             "(auto, host:port, ray://host:port) joins that cluster; photos and --out must be on a "
                             "filesystem every worker sees. Needs pip install -e '.[scale]'")
    if workers:
        parser.add_argument("--workers", type=positive_int, default=None,
                            help="Ray workers (default: one per CPU of the cluster, or per --gpus-per-worker GPUs)")
    parser.add_argument("--gpus-per-worker", type=non_negative_float, default=0, metavar="G",
                        help="GPUs each Ray worker takes (default 0: CPU workers); with --ray only")
