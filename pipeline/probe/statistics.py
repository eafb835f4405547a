"""What ``cardamage inspect`` records: every Conv block of one photo in full, or per-channel statistics of many.

- ``inspect_image``: one forward pass of the predictor's exact input (``data.preprocess.model_input`` at
  the model's stride) with a ``LayerRecorder`` on the chosen blocks; writes ``input.safetensors``,
  ``activations.safetensors`` (z and SiLU(z) per block, the head's class logits, box outputs and decoded
  output), ``params.safetensors`` (conv and BatchNorm weights, and the folded ones), ``index.json`` and
  ``stats.csv``, and returns their paths with the time and sizes.
- ``record_statistics``: one stats-mode recorder kept open over many photos, so nothing but running
  per-channel sums is held; unreadable photos are collected as errors, not raised.
- ``inspect_dataset``: ``record_statistics`` over photos, folders and globs, written as ``stats.csv`` (one
  row per channel over the whole set) and ``index.json``.
- ``stats_csv``: ``ChannelStats`` rows as CSV text (``STATS_COLUMNS``, 9 significant digits).

Examples:
    >>> from safetensors.torch import load_file
    >>> from pipeline.probe.statistics import inspect_dataset, inspect_image
    >>> paths = inspect_image("yolov8n.yaml", "photo.jpg", "runs/inspect", imgsz=640)
    >>> load_file(paths["activations"])["model.0.post"].shape
    torch.Size([1, 16, 320, 320])
    >>> inspect_dataset("best.pt", ["datasets/cardd-roboflow-check/valid/images"], "runs/inspect-valid")["images"]
    799
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import torch

from pipeline.core.facts import CLASS_NAMES
from pipeline.core.io import (InputError, atomic_save_safetensors, atomic_write_json, atomic_write_text, expand_sources,
                              make_folder)
from pipeline.core.runtime import progress_bar
from pipeline.data.preprocess import model_input
from pipeline.model.load import detection_model, load_model, model_stride, trained_imgsz
from pipeline.probe.channel_stats import DEAD_EPS, STATS_COLUMNS
from pipeline.probe.fold import block_params, conv_meta, head_params, param_counts
from pipeline.probe.layers import conv_blocks
from pipeline.probe.recorder import LayerRecorder

DTYPES = {"float32": torch.float32, "float16": torch.float16}
FILES = ("input", "activations", "params", "index", "stats")


def _model_name(yolo) -> str:
    net = detection_model(yolo)
    path = getattr(yolo, "ckpt_path", None) or getattr(net, "pt_path", None)
    if path:
        return str(path)
    yaml = getattr(net, "yaml", {}) or {}
    return str(yaml.get("yaml_file") or type(net).__name__)


def stats_csv(rows: list[dict]) -> str:
    """The per-channel statistics as CSV text (``STATS_COLUMNS``, floats with 9 significant digits)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=STATS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def inspect_image(weights_or_yolo, image_path, out_dir, layers=None, dtype: str = "float32", imgsz: int | None = None,
                  fuse: bool = False, dead_eps: float = DEAD_EPS) -> dict:
    """Run one photo through the model with every chosen Conv block hooked and write the five files.

    Args:
        weights_or_yolo: a weights path or model YAML (``load_model``), or a loaded ``ultralytics.YOLO``.
        image_path: the photo.
        out_dir: folder for the files (created).
        layers: selection for ``select_layers`` (``None`` = all Conv blocks).
        dtype: ``"float32"`` or ``"float16"`` for ``activations.safetensors``.
        imgsz: inference size, as for ``YOLO.predict`` (default: the weights' training size, 640 for a YAML).
        fuse: fold BatchNorm into the convs first (on the given model, in place).
        dead_eps: |SiLU(z)| below this counts as dead in the statistics.

    Returns:
        ``{"input", "activations", "params", "index", "stats"}`` -> Path, plus ``"seconds"`` (wall time of
        record + write) and ``"bytes"`` {name: file size}.

    Raises:
        InputError: unreadable weights or image, unknown layer selector, unknown dtype.
    """
    t0 = time.perf_counter()
    if dtype not in DTYPES:
        raise InputError("--dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    yolo = weights_or_yolo
    if isinstance(weights_or_yolo, (str, Path)):
        yolo = load_model(weights_or_yolo, nc=len(CLASS_NAMES))  # nc only matters for a YAML build
    net = detection_model(yolo)
    imgsz = trained_imgsz(yolo, imgsz)
    if fuse:
        net.fuse(verbose=False)
    x, meta = model_input(image_path, imgsz, stride=model_stride(net))
    try:
        recorder = LayerRecorder(net, layers=layers, mode="both", head=True, dead_eps=dead_eps)
    except ValueError as e:
        raise InputError("--layers", str(e)) from None
    with recorder as rec:
        rec(x)

    out = make_folder(out_dir)
    paths = {
        "input": out / "input.safetensors",
        "activations": out / "activations.safetensors",
        "params": out / "params.safetensors",
        "index": out / "index.json",
        "stats": out / "stats.csv",
    }
    acts = _activation_tensors(rec, DTYPES[dtype])
    params = _param_tensors(net, rec.layers)
    index = _index(yolo, net, rec, acts, x, meta, image_path, dtype, dead_eps, paths)

    atomic_save_safetensors(paths["input"], {"input": x})
    atomic_save_safetensors(paths["activations"], acts, metadata={"dtype": dtype, "image": str(image_path)})
    atomic_save_safetensors(paths["params"], params)
    atomic_write_text(paths["stats"], stats_csv(rec.stats_table()))
    atomic_write_json(paths["index"], index)
    result = dict(paths)
    result["seconds"] = time.perf_counter() - t0
    result["bytes"] = {k: p.stat().st_size for k, p in paths.items()}
    return result


def _activation_tensors(rec: LayerRecorder, cast: torch.dtype) -> dict[str, torch.Tensor]:
    """Every recorded block's z (``.pre``) and SiLU(z) (``.post``), and the head's outputs, in ``cast``."""
    acts: dict[str, torch.Tensor] = {}
    for path in rec.layers:
        z, a = rec.activations[path]
        acts[f"{path}.pre"], acts[f"{path}.post"] = z.to(cast), a.to(cast)
    head = rec.head
    if head:
        for i, (cls, box) in enumerate(zip(head["cls_logits"], head["box"])):
            acts[f"{head['path']}.cls_logits.{i}"] = cls.to(cast)
            acts[f"{head['path']}.box.{i}"] = box.to(cast)
        acts[f"{head['path']}.decoded"] = head["decoded"].to(cast)
    return acts


def _param_tensors(net, layers) -> dict[str, torch.Tensor]:
    """The recorded blocks' parameters and the head's, as float32, keyed ``<block path>.<name>``."""
    blocks = conv_blocks(net)
    params = {f"{path}.{key}": value.float() for path in layers for key, value in block_params(blocks[path]).items()}
    params.update({k: v.float() for k, v in head_params(net).items()})
    return params


def _index(yolo, net, rec: LayerRecorder, acts, x, meta, image_path, dtype, dead_eps, paths) -> dict:
    """``index.json``: what each file holds, every recorded block's shapes and statistics, the head's keys."""
    blocks = conv_blocks(net)
    head = rec.head
    counts = param_counts(net)
    layer_entries = []
    for path in rec.layers:
        layer_entries.append({
            "path": path,
            **conv_meta(blocks[path]),
            "input_shape": rec.shapes[path]["input"],
            "output_shape": rec.shapes[path]["output"],
            "keys": {"pre": f"{path}.pre", "post": f"{path}.post"},
            "stats": rec.stats[path].summary(),
        })
    return {
        "model": _model_name(yolo),
        "image": str(image_path),
        "imgsz": meta["imgsz"],
        "input_shape": list(x.shape),
        "letterbox": {k: v for k, v in meta.items() if k != "source"},
        "fused": bool(net.is_fused()) if hasattr(net, "is_fused") else False,
        "dtype": dtype,
        "dead_eps": dead_eps,
        "names": {int(k): str(v) for k, v in getattr(net, "names", {}).items()},
        "layers": layer_entries,
        "head": None if not head else {
            "path": head["path"],
            "nc": head["nc"],
            "reg_max": head["reg_max"],
            "strides": head["strides"],
            "grids": [list(t.shape[2:]) for t in head["cls_logits"]],
            "keys": {
                "cls_logits": [f"{head['path']}.cls_logits.{i}" for i in range(len(head["cls_logits"]))],
                "box": [f"{head['path']}.box.{i}" for i in range(len(head["box"]))],
                "decoded": f"{head['path']}.decoded",
            },
            "params": sorted(head_params(net)),
        },
        "top_level_layers": counts["layers"],
        "totals": {
            "params": counts["total"],
            "conv_blocks": len(blocks),
            "recorded_blocks": len(rec.layers),
            "activation_values": int(sum(t.numel() for t in acts.values())),
        },
        "stats_columns": list(STATS_COLUMNS),
        "files": {k: p.name for k, p in paths.items()},
        "versions": {"torch": torch.__version__, "ultralytics": __import__("ultralytics").__version__},
    }


def record_statistics(model, sources, imgsz=640, layers=None, dead_eps: float = DEAD_EPS, progress: bool = True,
                      on_error=None, limit: int | None = None):
    """Run photos through ``model`` with one stats-mode recorder kept open; keep no feature map.

    Args:
        model: a YOLO wrapper or DetectionModel. sources: photos, folders, globs. imgsz: inference size.
        layers: selection for ``select_layers``. dead_eps: the dead threshold.
        progress: progress bar with images per second. on_error: called with each ``InputError`` as it happens.
        limit: use at most this many photos (the first, in sorted order).

    Returns:
        ``(recorder, used, errors, shapes)``: the closed recorder (``.stats``, ``.layers``), ``[{"image",
        "input_shape"}]``, ``[InputError]``, and ``{layer: set of output CxHxW shapes}``.

    Raises:
        InputError: unknown layer selector, or no photo could be read.
    """
    net = detection_model(model)
    files, errors = expand_sources([str(s) for s in sources])
    files = files[:limit] if limit is not None else files
    for e in errors:
        if on_error:
            on_error(e)
    try:
        recorder = LayerRecorder(net, layers=layers, mode="stats", head=False, dead_eps=dead_eps)
    except ValueError as e:
        raise InputError("--layers", str(e)) from None
    used, shapes = [], {}
    with recorder as rec:
        for f in progress_bar(files, desc="inspect", unit="img", disable=not progress or len(files) < 2):
            try:
                x, _ = model_input(f, imgsz, stride=model_stride(net))
            except InputError as e:
                errors.append(e)
                if on_error:
                    on_error(e)
                continue
            rec(x)
            used.append({"image": str(f), "input_shape": list(x.shape)})
            for path in rec.layers:
                shapes.setdefault(path, set()).add(tuple(rec.shapes[path]["output"][1:]))
    if not used:
        raise InputError(" ".join(map(str, sources)), f"no photo could be read ({len(errors)} errors)")
    return rec, used, errors, shapes


def inspect_dataset(weights_or_yolo, sources, out_dir, layers=None, imgsz: int | None = None, fuse: bool = False,
                    dead_eps: float = DEAD_EPS, progress: bool = True, on_error=None) -> dict:
    """Per-channel statistics of every chosen Conv block over many photos, without keeping any feature map.

    One stats-mode ``LayerRecorder`` stays open over all photos (each at its own letterbox shape, as
    ``YOLO.predict`` would run it), so every row of ``stats.csv`` describes a channel over all values of
    all photos: the mean, std, min and max of z, the share of z < 0, the share of dead |SiLU(z)|, the mean
    of SiLU(z). Writes into ``out_dir``:

    - ``stats.csv``: as in ``inspect_image``, over the whole set;
    - ``index.json``: model, image size, the photos used (with their input shapes), the photos that failed
      (``"file: reason"``), per block its path, type, kernel, stride, parameter count and layer summary,
      seconds and images per second.

    A photo that cannot be read is reported and skipped; the rest still run.

    Args:
        weights_or_yolo: a weights path or model YAML (``load_model``), or a loaded ``ultralytics.YOLO``.
        sources: photos, folders and globs (``pipeline.core.io.expand_sources``).
        out_dir: folder for the two files (created).
        layers: selection for ``select_layers`` (``None`` = all Conv blocks).
        imgsz: inference size (default: the weights' training size, 640 for a YAML). fuse: fold BatchNorm into the convs first. dead_eps: the dead threshold.
        progress: show a progress bar with images per second.
        on_error: called with each ``InputError`` as it happens (the CLI prints it), besides being returned.

    Returns:
        ``{"stats": Path, "index": Path, "images": n used, "errors": [InputError], "seconds": float}``.

    Raises:
        InputError: unreadable weights, unknown layer selector, or no photo could be read.

    Examples:
        >>> res = inspect_dataset("best.pt", ["datasets/cardd-roboflow-check/valid/images"], "runs/inspect-valid")
        >>> res["images"], res["stats"]
        (799, PosixPath('runs/inspect-valid/stats.csv'))
    """
    yolo = weights_or_yolo
    if isinstance(weights_or_yolo, (str, Path)):
        yolo = load_model(weights_or_yolo, nc=len(CLASS_NAMES))
    net = detection_model(yolo)
    imgsz = trained_imgsz(yolo, imgsz)
    if fuse:
        net.fuse(verbose=False)
    t0 = time.perf_counter()  # images per second: reading, letterboxing, forward and statistics, not the load
    rec, used, errors, shapes = record_statistics(net, sources, imgsz, layers=layers, dead_eps=dead_eps,
                                                  progress=progress, on_error=on_error)
    seconds = time.perf_counter() - t0

    stats = {p: rec.stats[p] for p in rec.layers}
    return write_dataset_statistics(yolo, out_dir, stats, used, errors, shapes, seconds, imgsz=imgsz, dead_eps=dead_eps)


def write_dataset_statistics(yolo, out_dir, stats: dict, used: list[dict], errors: list, shapes: dict, seconds: float,
                             imgsz=640, dead_eps: float = DEAD_EPS) -> dict:
    """Write ``stats.csv`` and ``index.json`` of a dataset pass (``inspect_dataset``'s files) from its parts.

    ``stats`` is ``{block path: ChannelStats}`` in model order, however it was gathered: one recorder over
    all photos, or the totals of several workers merged with ``ChannelStats.absorb`` (``pipeline.scale``).

    Returns:
        ``{"stats": Path, "index": Path, "images": n used, "errors": [InputError], "seconds": float}``.

    Examples:
        >>> write_dataset_statistics(yolo, "runs/inspect", {p: rec.stats[p] for p in rec.layers}, used, [], shapes, 3.2)
    """
    net = detection_model(yolo)
    out = make_folder(out_dir)
    paths = {"stats": out / "stats.csv", "index": out / "index.json"}
    blocks = conv_blocks(net)
    index = {
        "model": _model_name(yolo),
        "mode": "dataset statistics",
        "imgsz": imgsz,
        "fused": bool(net.is_fused()) if hasattr(net, "is_fused") else False,
        "dead_eps": dead_eps,
        "names": {int(k): str(v) for k, v in getattr(net, "names", {}).items()},
        "images": used,
        "errors": [str(e) for e in errors],
        "layers": [{"path": p, **conv_meta(blocks[p]), "output_shapes": sorted(list(s) for s in shapes[p]),
                    "stats": stats[p].summary()} for p in stats],
        "totals": {"params": param_counts(net)["total"], "conv_blocks": len(blocks), "recorded_blocks": len(stats),
                   "images": len(used), "failed": len(errors)},
        "seconds": round(seconds, 3),
        "images_per_second": round(len(used) / seconds, 3),
        "stats_columns": list(STATS_COLUMNS),
        "files": {k: p.name for k, p in paths.items()},
        "versions": {"torch": torch.__version__, "ultralytics": __import__("ultralytics").__version__},
    }
    atomic_write_text(paths["stats"], stats_csv([row for p, s in stats.items() for row in s.table(p)]))
    atomic_write_json(paths["index"], index)
    return {**paths, "images": len(used), "errors": errors, "seconds": seconds}
