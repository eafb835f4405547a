"""Write the report: a ``PhotoRun`` for the photo, each section a function of it, the page from templates.

``write_report`` loads the model, makes one ``pipeline.report.run.PhotoRun`` (the photo decoded once, one
recorded forward pass of a private fused copy), calls every section of ``pipeline.report.sections`` on it
(in any order: none needs another first), renders ``report.html`` with ``pipeline.report.render`` and writes
``report_files/report.json`` with the numbers the sections own. The command is ``cardamage report``
(``pipeline.cli.report``, whose docstring is its help).

Examples:
    >>> from pipeline.report.page import write_report
    >>> write_report("runs/demo/train/weights/best.pt", "photo.jpg", "runs/report")
    PosixPath('runs/report/report.html')
"""

from __future__ import annotations

import math
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.core import runtime
from pipeline.core.io import InputError, atomic_write_json, atomic_write_text, expand_sources, file_digest
from pipeline.model.load import load_model
from pipeline.report.render import FILES, render_page
from pipeline.report.run import PhotoRun
from pipeline.report.sections import BUILDERS, TITLES, Options

#: Section ids and titles, in the lesson's order (the browser test checks every one).
SECTIONS = TITLES
DEFAULT_NC = 6
__all__ = ["FILES", "SECTIONS", "write_report", "weights_file"]


def weights_file(weights: str) -> Path | None:
    """The file behind a weights spec: the path itself, or the YAML Ultralytics resolves a name to."""
    p = Path(weights)
    if p.is_file():
        return p
    if weights.endswith((".yaml", ".yml")):
        from ultralytics.utils.checks import check_yaml

        # Ultralytics reads yolov8n.yaml from its yolov8.yaml with scale "n" (the same rewrite as yaml_model_load)
        unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", weights)
        found = check_yaml(unified, hard=False) or check_yaml(weights, hard=False)
        return Path(found) if found else None
    return None


def _info(weights: str, image: Path, names: dict, imgsz: int, conf: float, seed: int) -> dict:
    """What the page's header and report.json name: the photo and the weights, with sha256, and the versions."""
    import ultralytics

    wfile = weights_file(weights)
    return {
        "image": str(image), "image_sha256": file_digest(image, "sha256"),
        "weights": weights, "weights_file": str(wfile) if wfile else None,
        "weights_sha256": file_digest(wfile, "sha256") if wfile else None,
        "untrained": weights.endswith((".yaml", ".yml")), "imgsz": imgsz, "conf": conf, "seed": seed, "classes": names,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "ultralytics": ultralytics.__version__},
    }


def _stats_sources(stats_over) -> tuple[list, list]:
    """``--stats-over`` listed up front: fail before the heavy work if the set names nothing."""
    if not stats_over:
        return [], []
    stats_over = list(stats_over) if isinstance(stats_over, (list, tuple)) else [stats_over]
    files, missing = expand_sources([str(s) for s in stats_over])
    if not files:
        raise missing[0] if missing else InputError(" ".join(map(str, stats_over)), "no photos")
    return files, missing


def write_report(weights, image, out_dir, imgsz: int = 640, conf: float = 0.25, grad_imgsz: int = 320,
                 grad_batch: int = 2, seed: int = 0, layercam: bool = True, stats_over=None, stats_limit: int = 200,
                 trust: bool = False, on_error=None) -> Path:
    """Run the lesson on one photo with one model and write ``out_dir/report.html``; return its path.

    Args:
        weights: a checkpoint path (``best.pt``) or a model YAML (``yolov8n.yaml``: built from scratch
            with ``seed``, 6 CarDD classes).
        image: the photo. out_dir: folder for ``report.html`` and ``report_files/``.
        imgsz, conf: inference size and score threshold (as ``YOLO.predict``).
        grad_imgsz, grad_batch: size and number of images of the gradient-flow batch (the photo plus
            synthetic scenes); five backward passes run on it, so it is kept small.
        seed: torch seed for a YAML build and for the activation-variant models.
        layercam: also ask Ultralytics' ``visualize=True`` for its LayerCAM heatmap.
        stats_over, stats_limit: also show every layer's statistics over these photos (at most ``stats_limit``).
        trust: load a weights file that safe loading refuses (``--trust-weights``).
        on_error: called with each ``--stats-over`` source or photo that could not be read (the rest count).

    Raises:
        InputError: unreadable image or weights, or a ``stats_over`` that names no photo.
    """
    threads = torch.get_num_threads()
    try:
        return _write_report(weights, image, out_dir, imgsz, conf,
                             Options(grad_imgsz=grad_imgsz, grad_batch=grad_batch, seed=seed, layercam=layercam,
                                     stats_limit=stats_limit), stats_over, trust, on_error)
    finally:
        torch.set_num_threads(threads)


def _write_report(weights, image, out_dir, imgsz: int, conf: float, opts: Options, stats_over, trust: bool,
                  on_error) -> Path:
    """``write_report``'s work, on the CPU threads Ultralytics' predict would use (the caller's are restored after).

    ``select_device`` leaves a core free (``min(8, cores - 1)`` threads). With a thread on every core, each
    parallel torch op waits for its slowest thread, so any other process on the machine stalls them all:
    measured on 2 shared cores, the gradient and LayerCAM sections took 13 s instead of 1.5 s. The old report
    ran on these threads too, from its first ``predict`` on.
    """
    from ultralytics.utils.torch_utils import select_device

    select_device("cpu", verbose=False)
    runtime.return_freed_memory()  # feature maps of every size come and go: keep the heap from drifting up
    t_start = time.perf_counter()
    opts.stats_files, opts.stats_missing = _stats_sources(stats_over)
    out_dir, image, weights = Path(out_dir), Path(image), str(weights)
    if weights.endswith((".yaml", ".yml")):
        torch.manual_seed(opts.seed)
    yolo = load_model(weights, nc=DEFAULT_NC if weights.endswith((".yaml", ".yml")) else None, trust=trust)
    run = PhotoRun(yolo, image, imgsz=imgsz, conf=conf)  # InputError on a bad photo, before anything is written
    files = out_dir / FILES
    files.mkdir(parents=True, exist_ok=True)
    if opts.layercam:
        # the heaviest extra pass (autograd through the whole network) runs while the process is lean; the
        # output section reads the kept result (8000 px photo: peak 1612 MiB when it ran last, 1358 first)
        run.layercam(files / "layercam")
    timings = {"run": round(time.perf_counter() - t_start, 2)}
    sections = []
    for sid, _ in SECTIONS:
        t = time.perf_counter()
        sections.append(BUILDERS[sid](run, files, opts))
        timings[sid] = round(time.perf_counter() - t, 2)
    for e in (e for s in sections for e in s.errors):
        if on_error:
            on_error(e)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    info = _info(weights, image, run.names, imgsz, conf, opts.seed)
    numbers = {"info": info}
    for s in sections:
        numbers.update(s.numbers)
    numbers["timings_s"] = timings
    page = render_page(info, sections, timings, list(SECTIONS))
    atomic_write_json(files / "report.json", _jsonable(numbers))
    return atomic_write_text(out_dir / "report.html", page)


def _jsonable(obj):
    """Plain JSON types; inf/nan become strings (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj
