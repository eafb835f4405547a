"""Build the atlas folder: the dataset pass, then crops, pages and ``atlas.json``.

``build_atlas`` runs ``pipeline.analysis.atlas.AtlasPass`` over every readable photo (one forward pass each;
an unreadable one is reported through ``on_error`` and skipped), then writes into ``out``:

- ``atlas.json``: the atlas (schema in docs/atlas.md), written last, so a folder with it is complete;
- ``crops/<layer>/c<channel>.jpg``: each channel's top-k crops as one strip (``pipeline.atlas.crops``);
- ``index.html`` and ``layer-<path>.html``: the offline pages (``pipeline.atlas.page``).

Examples:
    >>> res = build_atlas(load_model("best.pt"), ["../shared/data/cardd-sample/data.yaml"], "runs/atlas", imgsz=320)
    >>> res["photos"], res["json"]
    (100, PosixPath('runs/atlas/atlas.json'))
"""

from __future__ import annotations

import time

from pipeline.analysis.atlas import IOU_FLOOR, QUANTILE, AtlasPass, atlas_sources
from pipeline.atlas.crops import write_crops
from pipeline.atlas.page import write_pages
from pipeline.core.io import InputError, atomic_write_json, make_folder
from pipeline.core.runtime import progress_bar
from pipeline.model.load import detection_model


def _weights_name(yolo) -> str:
    net = detection_model(yolo)
    return str(getattr(yolo, "ckpt_path", None) or getattr(net, "pt_path", None) or
               (getattr(net, "yaml", {}) or {}).get("yaml_file") or type(net).__name__)


def build_atlas(yolo, sources, out, imgsz: int = 640, k: int = 9, limit: int | None = None, layers=None,
                on_error=None, progress: bool = True, quantile: float = QUANTILE, iou_floor: float = IOU_FLOOR,
                parts=None) -> dict:
    """The whole atlas of ``yolo`` over ``sources`` in ``out``.

    Args:
        yolo: an ``ultralytics.YOLO`` (``load_model``) or DetectionModel.
        sources: photos, folders, globs, ``.txt`` lists, ``data.yaml`` (its val split).
        out: the atlas folder (created; the caller holds ``core.io.output_folder`` on it).
        imgsz: inference size. k: top photos per channel. limit: the first ``limit`` photos only.
        layers: Conv block selection (``probe.layers.select_layers``; default all).
        on_error: called with each ``InputError`` (unreadable photo) as it happens.
        progress: progress bar. quantile, iou_floor: the Dissection threshold share and "no class" floor.
        parts: ``pipeline.scale``'s hook: a function ``(atlas_pass, files) -> photo entries`` that fills the
            pass's tables some other way (Ray workers); default: this process, photo by photo.

    Returns:
        ``{"json", "index", "photos": n used, "errors": [InputError], "seconds", "bytes": {json, crops, pages},
        "selectivity": bool, "label_problems": ["file: reason"]}``.

    Raises:
        InputError: a bad data.yaml or layer selector, or no photo could be read.
    """
    t0 = time.perf_counter()
    files, errors = atlas_sources(sources)
    for e in errors:
        if on_error:
            on_error(e)
    files = files[:limit] if limit is not None else files
    atlas = AtlasPass(yolo, imgsz=imgsz, layers=layers, k=k)
    if parts is not None:
        photos, more = parts(atlas, files)
        errors += more
    else:
        photos = []
        for f in progress_bar(files, desc="atlas", unit="img", disable=not progress or len(files) < 2):
            try:
                photos.append(atlas.add(f))
            except InputError as e:
                errors.append(e)
                if on_error:
                    on_error(e)
    if not photos:
        raise InputError(" ".join(map(str, sources)), f"no photo could be read ({len(errors)} errors)")
    doc = {"weights": _weights_name(yolo), "imgsz": imgsz,
           **atlas.finish(photos, quantile=quantile, iou_floor=iou_floor), "errors": [str(e) for e in errors]}
    out = make_folder(out)
    crops = write_crops(doc, out, on_error=on_error)
    pages = write_pages(doc, out)
    doc["seconds"] = round(time.perf_counter() - t0, 3)
    json_path = atomic_write_json(out / "atlas.json", doc, indent=None)  # ~1 KB per channel: no indentation
    return {"json": json_path, "index": out / "index.html", "photos": len(photos), "errors": errors,
            "seconds": doc["seconds"], "selectivity": doc["selectivity"], "label_problems": doc["label_problems"],
            "bytes": {"json": json_path.stat().st_size, "crops": crops, "pages": sum(p.stat().st_size for p in pages)}}
