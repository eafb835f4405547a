"""The channel atlas's numbers: one forward pass per photo, every Conv block, every channel, streaming.

``AtlasPass`` runs photos one at a time through a fused copy of the model (prepared by Ultralytics'
``AutoBackend`` as ``predict`` prepares it, so the values are predict's), records every chosen Conv block's
z and SiLU(z) with ``LayerRecorder`` and feeds each block's maps to a ``probe.atlas_stats.ChannelAtlas``.
Nothing of a photo outlives its turn but its path and its two shapes, so memory does not grow with the
number of photos. ``finish`` turns the tables into the atlas dict (``atlas.json``'s content, documented in
docs/atlas.md): per channel its top-k neurons with their receptive field in photo pixels
(``probe.receptive_field.receptive_field`` mapped by ``to_photo``, as the explorer draws it), its class
selectivity and Dissection IoU where labels exist, its activity, and its folded filter.

Sources are what ``inspect`` takes (photos, folders, globs, ``.txt`` lists) plus a ``data.yaml``, which
stands for its ``val`` split; labels are read beside each photo (``data.labels.photo_labels``) whatever the
source, so a folder of a YOLO dataset's ``images/`` has its labels too.

Examples:
    >>> from pipeline.analysis.atlas import AtlasPass, atlas_sources
    >>> files, errors = atlas_sources(["../shared/data/cardd-sample/data.yaml"])
    >>> atlas = AtlasPass(load_model("best.pt"), imgsz=320, k=9)
    >>> for i, f in enumerate(files):
    ...     atlas.add(f)
    >>> doc = atlas.finish()
    >>> doc["layers"]["model.0"]["channels"][0]["top"][0]["value"]
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from ultralytics.nn.autobackend import AutoBackend

from pipeline.core.io import InputError, expand_sources, read_image
from pipeline.data.labels import dataset_splits, photo_labels
from pipeline.data.preprocess import model_input
from pipeline.model.load import detection_model, model_stride
from pipeline.probe.atlas_stats import BINS, BoxCells, ChannelAtlas
from pipeline.probe.fold import fold_bn
from pipeline.probe.layers import conv_blocks, select_layers
from pipeline.probe.receptive_field import receptive_field, to_photo_many
from pipeline.probe.recorder import LayerRecorder

#: Dissection threshold: a channel's map is "on" where it is in its dataset-wide top 0.5% (Bau et al. 2017).
QUANTILE = 0.005
#: Best-class IoU below this is "no class". A map with the same share of "on" cells placed at random overlaps a
#: class mask with IoU <= QUANTILE on average (0.005 here); 0.04 is eight times that and is the floor Network
#: Dissection used to call a unit a detector of a concept.
IOU_FLOOR = 0.04
#: A channel with SiLU(z) >= 0 on less than this share of all cells is "rarely active".
RARE = 0.01
#: Input channels of the folded filter kept per channel in atlas.json (the page draws them).
FILTER_INPUTS = 3


def atlas_sources(sources) -> tuple[list[Path], list[InputError]]:
    """Photos of ``sources`` as ``inspect`` takes them, with a ``data.yaml`` standing for its ``val`` split.

    Raises:
        InputError: a data.yaml that cannot be read or has no ``val`` split.

    Examples:
        >>> files, errors = atlas_sources(["../shared/data/cardd-sample/data.yaml", "more/*.jpg"])
    """
    plain, files = [], []
    for s in map(str, sources):
        if Path(s).suffix.lower() in (".yaml", ".yml"):
            splits = dataset_splits(s)
            if "val" not in splits:
                raise InputError(s, "has no 'val' split (the atlas reads a data.yaml's val images)")
            files += [str(f) for f in splits["val"]]
        else:
            plain.append(s)
    found, errors = expand_sources(files + plain)
    return found, errors


def box_masks(rows, meta: dict, classes: int, hw: tuple[int, int], stride: float) -> torch.Tensor:
    """``classes x h x w`` bool: cells whose centre lies in a labelled box of that class.

    Args:
        rows: the photo's label rows ``(class, xc, yc, w, h)``, normalised to the photo.
        meta: the letterbox dict of ``data.preprocess.model_input`` (``orig_shape``, ``ratio``, ``pad``).
        classes: number of classes. hw: the map's height and width. stride: input pixels per cell.

    A cell is inside when its centre ``((x + 0.5) * stride, (y + 0.5) * stride)`` in input pixels is, the rule
    ``analysis.thread.choose_neuron`` uses for "in the box".

    Examples:
        >>> box_masks([(1, 0.5, 0.5, 0.5, 0.5)], meta, 6, (40, 40), 8.0)[1].sum()
    """
    h, w = hw
    out = torch.zeros(classes, h, w, dtype=torch.bool)
    ph, pw = meta["orig_shape"]
    r, left, top = meta["ratio"], meta["pad"]["left"], meta["pad"]["top"]
    cy = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
    cx = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
    for cls, xc, yc, bw, bh in rows:
        x0, x1 = (xc - bw / 2) * pw * r + left, (xc + bw / 2) * pw * r + left
        y0, y1 = (yc - bh / 2) * ph * r + top, (yc + bh / 2) * ph * r + top
        out[int(cls)] |= ((cy >= y0) & (cy <= y1))[:, None] & ((cx >= x0) & (cx <= x1))[None, :]
    return out


class AtlasPass:
    """Per-channel atlas tables of every chosen Conv block, fed one photo at a time.

    Args:
        yolo: an ``ultralytics.YOLO`` or DetectionModel (copied, never changed).
        imgsz: inference size (as ``predict``'s; each photo letterboxed to its minimum rectangle).
        layers: selection for ``probe.layers.select_layers`` (``None``: every Conv block).
        k: top photos per channel.
        bins: histogram bins (``probe.atlas_stats``).

    Attributes:
        net: the fused copy that runs. layers: recorded block paths. tables: ``{path: ChannelAtlas}``.
        photos: ``[{"path", "orig_shape", "input_hw", "labelled"}]`` in the order added.
        names: class names by id.

    Raises:
        InputError: a layer selector that matches no Conv block.

    Examples:
        >>> p = AtlasPass(yolo, imgsz=320, layers=["model.0"], k=4)
        >>> p.add("a.jpg"); p.add("b.jpg")
        >>> p.tables["model.0"].top_value.shape
        torch.Size([16, 4])
    """

    def __init__(self, yolo, imgsz: int = 640, layers=None, k: int = 9, bins: int = BINS):
        self.model = detection_model(yolo)
        self.net = AutoBackend(model=copy.deepcopy(self.model), device=torch.device("cpu"), fuse=True,
                               verbose=False).model
        for m in self.net.modules():  # activations out of place: the recorder keeps z as it is, with no copy
            if type(m).__module__ == "torch.nn.modules.activation" and getattr(m, "inplace", False):
                m.inplace = False
        self.imgsz, self.k, self.bins = imgsz, k, bins
        self.names = {int(i): str(n) for i, n in self.model.names.items()}
        try:
            self.layers = select_layers(self.net, layers)
        except ValueError as e:
            raise InputError("--layers", str(e)) from None
        self.stride = model_stride(self.net)
        self.tables: dict[str, ChannelAtlas] = {}
        self.cell_stride: dict[str, float] = {}  # input pixels per cell of each block (8, 16, 32 ...)
        self.photos: list[dict] = []
        self._rec = LayerRecorder(self.net, layers=self.layers, mode="tensors", head=False)
        self._photo: dict = {}  # the photo being added: what ``_take`` needs beside each block's map

    def add(self, path, index: int | None = None) -> dict:
        """One photo: read, letterbox, one forward pass, every block's maps into its tables.

        ``index`` is the photo's number in the whole run (default: the next one here); a Ray worker passes
        the global index so that merged tables name the same photos. Returns the photo's entry.

        Raises:
            InputError: the photo cannot be read (nothing is added).
        """
        pixels = read_image(path)
        x, meta = model_input(pixels, self.imgsz, stride=self.stride, auto=True)
        rows, problem = photo_labels(path, len(self.names))  # a bad label file: the photo counts as unlabelled
        index = len(self.photos) if index is None else index
        self._photo = {"index": index, "rows": rows, "meta": meta, "side": x.shape[-1], "cells": {}}
        try:
            with self._rec as rec:  # hooks on for this pass only: the caller's model is never left hooked
                rec(x)
                # after the pass, not in each block's hook: the C kernel's threads and torch's would take turns 57
                # times a photo, each pool spinning while the other works (measured 20% slower)
                for p in self.layers:
                    self._take(p, *rec.activations[p])
                rec.activations.clear()  # the maps go now, not at the next photo
        finally:
            self._photo = {}
        entry = {"path": str(path), "orig_shape": list(pixels.shape[:2]), "input_hw": list(x.shape[2:]),
                 "labelled": rows is not None, "label_problem": problem}
        self.photos.append(entry)
        return entry

    def _take(self, path: str, z: torch.Tensor, a: torch.Tensor) -> None:
        """One block's ``z`` and ``a`` of the photo being added, into the block's table."""
        ph = self._photo
        c, h, w = a.shape[1:]
        if path not in self.tables:
            self.tables[path] = ChannelAtlas(c, len(self.names), self.k, self.bins)
            self.cell_stride[path] = ph["side"] / w
        cells = ph["cells"]  # (h, w) -> BoxCells: the blocks of one map size share the photo's box cells
        if ph["rows"] is not None and (h, w) not in cells:
            cells[h, w] = BoxCells(box_masks(ph["rows"], ph["meta"], len(self.names), (h, w), ph["side"] / w))
        self.tables[path].update(a, z, ph["index"], cells.get((h, w)))

    # -- the atlas -------------------------------------------------------------------------------
    def finish(self, photos: list[dict] | None = None, quantile: float = QUANTILE,
               iou_floor: float = IOU_FLOOR) -> dict:
        """The atlas dict (``atlas.json`` without crop file names): layers, channels, top-k, selectivity.

        Args:
            photos: the run's photo entries by global index (default: those added here).
            quantile, iou_floor: the Dissection threshold share and the "no class" floor.
        """
        photos = self.photos if photos is None else photos
        blocks = conv_blocks(self.model)
        labelled = sum(p["labelled"] for p in photos)
        layers = {}
        order = {p: i for i, p in enumerate(blocks)}  # depth: the block's place among all Conv blocks, stem = 0
        for path in self.layers:
            if path not in self.tables:
                continue
            layers[path] = self._layer(path, order[path], blocks[path], photos, labelled > 0, quantile, iou_floor)
        return {
            "photos": [p["path"] for p in photos],
            "photo_shapes": [p["orig_shape"] for p in photos],
            "input_shapes": [p["input_hw"] for p in photos],
            "labelled": [p["labelled"] for p in photos],
            "label_problems": [p["label_problem"] for p in photos if p.get("label_problem")],
            "names": [self.names[i] for i in sorted(self.names)],
            "selectivity": labelled > 0,
            "quantile": quantile,
            "iou_floor": iou_floor,
            "rare": RARE,
            "bins": self.bins,
            "k": self.k,
            "layers": layers,
        }

    def _layer(self, path, depth, block, photos, with_labels, quantile, iou_floor) -> dict:
        t = self.tables[path]
        weight, _ = fold_bn(block, torch.float64)
        thresholds = t.thresholds(quantile).tolist()
        active = t.active_fraction().tolist()
        mean = (t.sum / max(t.count, 1)).tolist()
        if with_labels:
            iou = t.dissection_iou(quantile).tolist()
            inside = t.inside_means().tolist()
            outside = t.outside_mean().tolist()
        channels, by_photo = [], {}  # photo -> the top entries on it, mapped to photo pixels in one call below
        for c in range(t.channels):
            top = []
            for j in range(t.k):
                ph = int(t.top_photo[c, j])
                if ph < 0:
                    break
                y, x = int(t.top_y[c, j]), int(t.top_x[c, j])
                rf = receptive_field(self.net, path, tuple(photos[ph]["input_hw"]), y, x)
                top.append({"photo": ph, "y": y, "x": x, "value": float(t.top_value[c, j]), "z": float(t.top_z[c, j]),
                            "box_input": list(rf), "box_xyxy": None})
                by_photo.setdefault(ph, []).append(top[-1])
            entry = {"channel": c, "top": top, "mean": mean[c], "active_fraction": active[c],
                     "activity": "never" if active[c] == 0 else "rare" if active[c] < RARE else "active",
                     "threshold": thresholds[c],
                     "filter": [[[round(float(v), 5) for v in row] for row in weight[c, i]]
                                for i in range(min(FILTER_INPUTS, weight.shape[1]))]}
            if with_labels:
                classes = {n: {"inside_mean": _num(inside[c][i]), "iou": iou[c][i]} for i, n in
                           ((i, self.names[i]) for i in sorted(self.names))}
                best = int(np.argmax(iou[c])) if iou[c] else None
                best_iou = iou[c][best] if best is not None else 0.0
                entry.update(classes=classes, outside_mean=_num(outside[c]), best_iou=best_iou,
                             best_class=self.names[best] if best is not None and best_iou >= iou_floor else None)
            else:
                entry.update(classes={}, outside_mean=None, best_iou=None, best_class=None)
            channels.append(entry)
        for ph, entries in by_photo.items():
            boxes = to_photo_many([e["box_input"] for e in entries], tuple(photos[ph]["input_hw"]), photos[ph]["orig_shape"])
            for e, box in zip(entries, boxes):
                e["box_xyxy"] = box
        never = sum(ch["activity"] == "never" for ch in channels)
        rare = sum(ch["activity"] == "rare" for ch in channels)
        return {"depth": depth, "index": int(path.split(".")[1]), "channels_count": t.channels,
                "cell_stride": self.cell_stride[path],
                "kernel": list(block.conv.kernel_size), "stride": list(block.conv.stride),
                "never_active": never, "rarely_active": rare,
                "mean_best_iou": (float(np.mean([ch["best_iou"] for ch in channels])) if with_labels else None),
                "channels": channels}


def _num(v: float):
    """A float for JSON: NaN (a class never labelled, no cell outside boxes) becomes ``None``."""
    return None if v != v else float(v)
