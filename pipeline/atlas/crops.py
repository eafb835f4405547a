"""The atlas's crops: each top neuron's receptive field cut from the original photo, its position marked.

A channel's k crops form one strip ``crops/<layer>/c<channel>.jpg`` (k tiles of ``TILE`` px side by side, in
``top`` order), so the atlas holds one small JPEG per channel rather than k. Each photo is decoded once: the
crops are cut photo by photo into a tile table kept in a memory-mapped scratch file (one per layer, on disk
next to the output), and the strips are encoded from it layer by layer. So memory stays bounded however
many photos and channels there are.

Each tile is the receptive field (``box_xyxy``, photo pixels) scaled to fit ``TILE`` x ``TILE`` with its
aspect kept (grey around it), and a red ring marks the neuron's own cell centre, mapped to the photo the way
``to_photo_many`` maps boxes (letterbox padding removed, scaled back).

Size budget: a tile is ``TILE`` = 48 px at JPEG quality ``QUALITY`` = 80, ~1 KB on photos (the tests hold
the average under ``TILE_BUDGET`` bytes), so yolov8n's 5,200 channels at top-9 stay under ~70 MB.

Examples:
    >>> write_crops(doc, out_dir)           # doc: AtlasPass.finish(); adds "crops" to every channel
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.files import os_reason
from pipeline.core.io import InputError, atomic_write_bytes, make_folder, read_image
from pipeline.probe.receptive_field import to_photo_many

TILE = 48
QUALITY = 80
#: Bytes per tile the crops must stay under on average (the stated size budget; tests check it).
TILE_BUDGET = 1500
#: Colour of the mark (BGR): red, visible on grey paint and on most car bodies.
MARK = (0, 0, 255)
PAD = (114, 114, 114)  # the letterbox grey, so padding reads as "no photo here" as in the model input


def pyramid(pixels: np.ndarray, tile: int = TILE) -> list[np.ndarray]:
    """The photo, then halved (area average) while a side stays over ``2 * tile``: a deep block's receptive field
    covers most of the photo, and shrinking all of it for every one of its crops was most of the atlas's time."""
    levels = [pixels]
    while min(levels[-1].shape[:2]) > 4 * tile:
        h, w = levels[-1].shape[:2]
        levels.append(cv2.resize(levels[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
    return levels


def crop_tile(pixels: np.ndarray | list[np.ndarray], box_xyxy, centre_xy, tile: int = TILE) -> np.ndarray:
    """``tile x tile`` BGR: the photo inside ``box_xyxy`` scaled to fit, aspect kept, a ring at ``centre_xy``.

    ``pixels`` may be a ``pyramid`` of the photo: the crop is then cut from the smallest level at which it is
    still at least twice the tile's side (so the area average behind each tile pixel is nearly the same).

    Examples:
        >>> crop_tile(photo, [10, 20, 50, 60], (30, 40)).shape
        (48, 48, 3)
    """
    levels = pixels if isinstance(pixels, list) else [pixels]
    h, w = levels[0].shape[:2]
    x0, y0 = max(0, int(np.floor(box_xyxy[0]))), max(0, int(np.floor(box_xyxy[1])))
    x1, y1 = min(w, max(x0 + 1, int(np.ceil(box_xyxy[2])))), min(h, max(y0 + 1, int(np.ceil(box_xyxy[3]))))
    ch, cw = y1 - y0, x1 - x0
    s = tile / max(ch, cw)
    nh, nw = max(1, round(ch * s)), max(1, round(cw * s))
    level = 0
    while level + 1 < len(levels) and max(ch, cw) >> (level + 1) >= 2 * tile:
        level += 1
    lv = levels[level]
    fy, fx = lv.shape[0] / h, lv.shape[1] / w
    crop = lv[int(y0 * fy):max(int(y0 * fy) + 1, int(np.ceil(y1 * fy))), int(x0 * fx):max(int(x0 * fx) + 1, int(np.ceil(x1 * fx)))]
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST  # tiny early fields: show their pixels, not a blur
    out = np.full((tile, tile, 3), PAD, dtype=np.uint8)
    oy, ox = (tile - nh) // 2, (tile - nw) // 2
    out[oy:oy + nh, ox:ox + nw] = cv2.resize(crop, (nw, nh), interpolation=interp)
    cx, cy = ox + (centre_xy[0] - x0) * nw / cw, oy + (centre_xy[1] - y0) * nh / ch
    cv2.circle(out, (int(round(cx)), int(round(cy))), max(2, tile // 12), MARK, 1, cv2.LINE_AA)
    return out


def cell_box(entry: dict, stride: float) -> tuple[float, float, float, float]:
    """The neuron's cell centre in input pixels, ``((x + 0.5) * stride, (y + 0.5) * stride)``, as a point box."""
    cx, cy = (entry["x"] + 0.5) * stride, (entry["y"] + 0.5) * stride
    return cx, cy, cx, cy


def write_crops(doc: dict, out_dir, on_error=None) -> int:
    """Cut every channel's top crops and write one strip per channel; set each channel's ``"crops"`` path.

    Args:
        doc: the atlas dict (``AtlasPass.finish``); its ``photos``, ``photo_shapes``, ``input_shapes`` are read.
        out_dir: the atlas folder (strips go to ``crops/<layer>/c<channel>.jpg``).
        on_error: called with an ``InputError`` for a photo that no longer reads (its tiles stay grey).

    Returns:
        Bytes written.
    """
    out_dir = Path(out_dir)
    k = doc["k"]
    layers = list(doc["layers"])
    wanted: dict[int, list] = {}  # photo -> [(layer number, channel, slot, entry)]
    for li, path in enumerate(layers):
        for ch in doc["layers"][path]["channels"]:
            for slot, e in enumerate(ch["top"]):
                wanted.setdefault(e["photo"], []).append((li, ch["channel"], slot, e))
    try:
        return _write_crops(doc, out_dir, layers, wanted, k, on_error)
    except OSError as e:  # numpy's memmap of a full disk raises with no file name: the atlas folder is named
        raise InputError(e.filename or out_dir, f"cannot write the crops ({os_reason(e)})") from None


def _write_crops(doc: dict, out_dir: Path, layers: list, wanted: dict, k: int, on_error) -> int:
    written = 0
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".crops-") as tmp:
        tables = [np.lib.format.open_memmap(Path(tmp) / f"{li}.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(doc["layers"][p]["channels"]), k, TILE, TILE, 3))
                  for li, p in enumerate(layers)]
        for t in tables:
            t[:] = PAD
        for ph in sorted(wanted):
            try:
                pixels = pyramid(read_image(doc["photos"][ph]))
            except InputError as e:  # read during the pass, gone since: its tiles stay grey, one line says why
                if on_error:
                    on_error(e)
                continue
            hw = doc["input_shapes"][ph]
            centres = to_photo_many([cell_box(e, doc["layers"][layers[li]]["cell_stride"]) for li, _, _, e in wanted[ph]],
                                    hw, doc["photo_shapes"][ph])
            for (li, c, slot, e), centre in zip(wanted[ph], centres):
                tables[li][c, slot] = crop_tile(pixels, e["box_xyxy"], centre[:2])
        for li, path in enumerate(layers):
            folder = make_folder(out_dir / "crops" / path)  # never through a link leading out of the atlas
            for ch in doc["layers"][path]["channels"]:
                n = len(ch["top"])
                if not n:
                    ch["crops"] = None
                    continue
                strip = np.concatenate(list(tables[li][ch["channel"], :n]), axis=1)
                ok, buf = cv2.imencode(".jpg", strip, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
                if not ok:
                    raise InputError(folder, "could not encode a crop strip")
                name = folder / f"c{ch['channel']}.jpg"
                atomic_write_bytes(name, buf.tobytes())
                written += len(buf)
                ch["crops"] = f"crops/{path}/c{ch['channel']}.jpg"
            tables[li] = None  # this layer's memmap goes now: its pages are not kept
    return written
