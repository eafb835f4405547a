"""Write the report: a ``PhotoRun`` for the photo, each section a function of it, the page from templates.

``write_report`` loads the model, makes one ``pipeline.analysis.run.PhotoRun`` (the photo decoded once, one
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
import multiprocessing
import os
import platform
import re
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from pipeline.analysis.atlas_format import AtlasIndex
from pipeline.core import heap
from pipeline.core.io import InputError, atomic_write_json, atomic_write_text, expand_sources, file_digest, make_folder
from pipeline.model.load import load_model, trained_imgsz
from pipeline.report.plots import DISPLAY_MAX_SIDE
from pipeline.report.render import FILES, render_page
from pipeline.analysis.run import PhotoRun
from pipeline.report.sections import BUILDERS, TITLES, Options

#: Section ids and titles, in the lesson's order (the browser test checks every one).
SECTIONS = TITLES
DEFAULT_NC = 6
__all__ = ["FILES", "SECTIONS", "weights_file", "write_report"]


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


def write_report(weights, image, out_dir, imgsz: int | None = None, conf: float = 0.25, grad_imgsz: int = 320,
                 grad_batch: int = 2, seed: int = 0, layercam: bool = True, stats_over=None, stats_limit: int = 200,
                 trust: bool = False, on_error=None, film: str | None = None, atlas=None) -> Path:
    """Run the lesson on one photo with one model and write ``out_dir/report.html``; return its path.

    Args:
        weights: a checkpoint path (``best.pt``) or a model YAML (``yolov8n.yaml``: built from scratch
            with ``seed``, 6 CarDD classes).
        image: the photo. out_dir: folder for ``report.html`` and ``report_files/``.
        imgsz, conf: inference size (default: the size the weights were trained at, else 640) and score
            threshold (as ``YOLO.predict``).
        grad_imgsz, grad_batch: size and number of images of the gradient-flow batch (the photo plus
            synthetic scenes); five backward passes run on it, so it is kept small.
        seed: torch seed for a YAML build and for the activation-variant models.
        layercam: also ask Ultralytics' ``visualize=True`` for its LayerCAM heatmap.
        stats_over, stats_limit: also show every layer's statistics over these photos (at most ``stats_limit``).
        trust: load a weights file that safe loading refuses (``--trust-weights``).
        on_error: called with each ``--stats-over`` source or photo that could not be read (the rest count).
        film: the training film of these weights (``cardamage film``) to link from the header, as a path
            relative to ``out_dir``.
        atlas: an atlas folder (``cardamage atlas``): the worked neuron's channel shows its top crops and links there.

    Raises:
        InputError: unreadable image or weights, or a ``stats_over`` that names no photo.
    """
    threads = torch.get_num_threads()
    try:
        return _write_report(weights, image, out_dir, imgsz, conf,
                             Options(grad_imgsz=grad_imgsz, grad_batch=grad_batch, seed=seed, layercam=layercam,
                                     stats_limit=stats_limit, atlas=_atlas(atlas)), stats_over, trust, on_error, film)
    finally:
        torch.set_num_threads(threads)


def _atlas(folder):
    """``--atlas``'s folder read once (one error line for a missing or broken one), or ``None``."""
    if folder is None:
        return None
    return AtlasIndex(folder)


def _write_report(weights, image, out_dir, imgsz: int | None, conf: float, opts: Options, stats_over, trust: bool,
                  on_error, film: str | None = None) -> Path:
    """``write_report``'s work, on the CPU threads Ultralytics' predict would use (the caller's are restored after).

    ``select_device`` leaves a core free (``min(8, cores - 1)`` threads). With a thread on every core, each
    parallel torch op waits for its slowest thread, so any other process on the machine stalls them all:
    on 2 shared cores the gradient and LayerCAM sections took many times as long. The old report
    ran on these threads too, from its first ``predict`` on.
    """
    from ultralytics.utils.torch_utils import select_device

    select_device("cpu", verbose=False)
    heap.return_freed_memory()  # feature maps of every size come and go: keep the heap from drifting up
    t_start = time.perf_counter()
    opts.stats_files, opts.stats_missing = _stats_sources(stats_over)
    out_dir, image, weights = Path(out_dir), Path(image), str(weights)
    if weights.endswith((".yaml", ".yml")):
        torch.manual_seed(opts.seed)
    yolo = load_model(weights, nc=DEFAULT_NC if weights.endswith((".yaml", ".yml")) else None, trust=trust)
    imgsz = trained_imgsz(yolo, imgsz)
    # InputError on a bad photo, before anything is written. The full photo is let go once the model input is
    # made: the figures draw at most DISPLAY_MAX_SIDE and the gradient pass letterboxes to grad_imgsz, so a
    # copy as long as the larger is all they use (an 8000 px photo: 183 MB less beside LayerCAM's autograd)
    run = PhotoRun(yolo, image, imgsz=imgsz, conf=conf, keep_side=max(DISPLAY_MAX_SIDE, opts.grad_imgsz))
    files = out_dir / FILES
    make_folder(files)
    timings = {"run": round(time.perf_counter() - t_start, 2)}
    sections = build_sections(run, files, opts, timings)
    for e in (e for s in sections for e in s.errors):
        if on_error:
            on_error(e)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    info = _info(weights, image, run.names, imgsz, conf, opts.seed)
    info["film"] = film
    numbers = {"info": info}
    for s in sections:
        numbers.update(s.numbers)
    numbers["timings_s"] = timings
    page = render_page(info, sections, timings, list(SECTIONS))
    atomic_write_json(files / "report.json", _jsonable(numbers))
    return atomic_write_text(out_dir / "report.html", page)


#: Sections a second process can build: they draw figures from what the run recorded, and neither run the
#: network nor need the detections (``activations`` runs it with ``--stats-over``, and then stays here).
SIDE_SECTIONS = ("input", "weights", "hidden", "activations")


def build_sections(run: PhotoRun, files: Path, opts: Options, timings: dict) -> list:
    """Every section of the page, in the lesson's order; each one's seconds go into ``timings``.

    The main process runs torch on ``select_device``'s threads, which leave one core free, and matplotlib
    draws on one core. So, where ``fork`` exists and there are two cores, a forked child draws
    ``SIDE_SECTIONS`` (figures from the recorded pass, about half the figure time) while this process runs
    the passes that need the network or the detections (the first detection imports torchvision, for
    Ultralytics' NMS kernel as predict does: a second or more, most of it torch._dynamo, so the child forks
    first). Importing it in a thread beside the gradient passes was tried: the gradients got slower (they
    hold the GIL for much of their Python, and three busy threads share two cores).

    The sections are the same functions either way: a child that fails or dies only means this process
    builds its sections too (a failure then raises here, with its own traceback).
    """
    side = [sid for sid in SIDE_SECTIONS if not (sid == "activations" and opts.stats_files)]
    if ((os.cpu_count() or 1) < 2 or "fork" not in multiprocessing.get_all_start_methods()
            or multiprocessing.current_process().daemon):  # a daemonic process may not start one
        side = []
    child = _start_side(run, files, opts, side) if side else None
    try:
        if opts.layercam:
            # the heaviest extra pass (autograd through the whole network) runs while this process is lean; the
            # output section reads the kept result (8000 px photo: peak 1612 MiB when it ran last, 1358 first)
            t = time.perf_counter()
            run.layercam(files / "layercam")
            heap.trim_heap()  # its autograd's few-MB blocks stay in glibc's heaps; the sections after would stack on them
            timings["layercam"] = round(time.perf_counter() - t, 2)
        built = {}
        for sid, _ in SECTIONS:
            if not (child and sid in side):
                built[sid] = _timed(sid, run, files, opts, timings)
    except BaseException:
        if child:  # no process may go on writing (or making folders) once the run has failed
            _stop_side(*child)
        raise
    if child:
        built.update(_join_side(*child, timings))
    for sid in side:
        if sid not in built:
            built[sid] = _timed(sid, run, files, opts, timings)
    return [built[sid] for sid, _ in SECTIONS]


def _timed(sid: str, run: PhotoRun, files: Path, opts: Options, timings: dict):
    t = time.perf_counter()
    section = BUILDERS[sid](run, files, opts)
    heap.trim_heap()  # what the section freed goes back to the OS, so the next one does not stack on it
    timings[sid] = round(time.perf_counter() - t, 2)
    return section


def _side_main(conn, run: PhotoRun, files: Path, opts: Options, ids: list[str]) -> None:
    """The forked child: one torch thread (a forked OpenMP pool must not be entered), build, send back."""
    torch.set_num_threads(1)
    try:
        timings = {}
        conn.send(("ok", {sid: _timed(sid, run, files, opts, timings) for sid in ids}, timings))
    except BaseException:  # noqa: BLE001  (reported to the parent, which rebuilds and raises it itself)
        conn.send(("error", traceback.format_exc(), {}))
    finally:
        conn.close()


def _start_side(run: PhotoRun, files: Path, opts: Options, ids: list[str]):
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_side_main, args=(send, run, files, opts, ids), daemon=True)
    proc.start()
    send.close()
    return proc, recv


def _stop_side(proc, recv) -> None:
    """Stop the child because this process failed (a full disk): before the output folder removes the empty
    folders the run made, so the child cannot make one again. SIGINT lets it unwind (``atomic_path`` removes its
    temporary file); one that does not stop soon is terminated."""
    try:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGINT)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join()
    finally:
        recv.close()


def _join_side(proc, recv, timings: dict) -> dict:
    """The child's sections, or ``{}`` if it failed or died (the caller then builds them)."""
    try:
        status, built, side_timings = recv.recv()
    except (EOFError, OSError):
        status, built, side_timings = "died", {}, {}
    finally:
        recv.close()
        proc.join()
    if status != "ok":
        return {}
    timings.update(side_timings)
    return built


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
