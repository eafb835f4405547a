"""Reading an atlas folder (``cardamage atlas``'s output) for the pages that link to it: explorer and report.

The atlas itself is built by ``pipeline.atlas`` (a sibling of ``explore`` and ``report``, which may not import
each other), so the reader and the file names live here, below all three. ``atlas.json``'s schema is in
docs/atlas.md.

Examples:
    >>> atlas = AtlasIndex("runs/atlas")
    >>> atlas.entry("model.8.cv2", 17)["best_class"]
    >>> atlas.page("model.8.cv2", 17)
    'layer-model.8.cv2.html#c17'
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pipeline.core.io import InputError
from pipeline.core.readback import MAX_JSON_ITEMS, is_number, json_key, json_kind, json_value, read_bounded_text

#: A channel's ``activity`` (docs/atlas.md).
ACTIVITIES = ("never", "rare", "active")


def layer_file(path: str) -> str:
    """The atlas page of one Conv block, e.g. ``layer-model.8.cv2.html`` (channel anchors ``#c<channel>``)."""
    return f"layer-{path}.html"



def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0




def _channel_problem(where: str, ch, photos: int) -> str | None:
    """What is wrong with one channel entry of ``atlas.json`` (the keys the explorer and report read)."""
    if not isinstance(ch, dict):
        return f"{where} is {json_kind(ch)}, not a mapping"
    if not _is_count(ch.get("channel")):
        return f"{where}['channel'] is {json_kind(ch.get('channel'))}, not a channel number"
    top = ch.get("top")
    if not isinstance(top, list):
        return f"{where}['top'] is {json_kind(top)}, not a list"
    for j, t in enumerate(top):
        at = f"{where}['top'][{j}]"
        if not isinstance(t, dict):
            return f"{at} is {json_kind(t)}, not a mapping"
        p = t.get("photo")
        if not _is_count(p) or p >= photos:
            shown = p if _is_count(p) else json_kind(p)
            return f"{at}['photo'] is {shown}, not an index into 'photos' (0 to {photos - 1})" if photos else \
                f"{at}['photo'] is {shown}, but 'photos' is empty"
        for k in ("y", "x"):
            if not _is_count(t.get(k)):
                return f"{at}[{k!r}] is {json_kind(t.get(k))}, not a whole number of 0 or more"
        for k in ("value", "z"):
            if k in t and not is_number(t[k]):
                return f"{at}[{k!r}] is {json_kind(t[k])}, not a finite number"
        if "value" not in t:
            return f"{at} has no 'value'"
        for k in ("box_xyxy", "box_input"):
            if k in t and not (isinstance(t[k], list) and len(t[k]) == 4 and all(is_number(v) for v in t[k])):
                return f"{at}[{k!r}] is not a list of 4 finite numbers"
    for k in ("best_iou", "outside_mean"):
        if k in ch and not (ch[k] is None or is_number(ch[k])):
            return f"{where}[{k!r}] is {json_kind(ch[k])}, not a finite number or null"
    for k in ("active_fraction", "threshold", "mean"):
        if (k in ch or k == "active_fraction") and not is_number(ch.get(k)):
            return f"{where}[{k!r}] is {json_kind(ch.get(k))}, not a finite number"
    if "best_class" in ch and not (ch["best_class"] is None or isinstance(ch["best_class"], str)):
        return f"{where}['best_class'] is {json_kind(ch['best_class'])}, not a class name or null"
    if ch.get("activity") not in ACTIVITIES:
        return f"{where}['activity'] is not one of {', '.join(ACTIVITIES)}"
    crops = ch.get("crops")
    if crops is not None:  # a strip inside the atlas folder: the report copies it, the explorer serves it
        if not isinstance(crops, str):
            return f"{where}['crops'] is {json_kind(crops)}, not a path or null"
        parts = PurePosixPath(crops).parts
        if not crops or crops.startswith("/") or "\\" in crops or ".." in parts or "\0" in crops:
            return f"{where}['crops'] is not a path inside the atlas folder"
    classes = ch.get("classes", {})
    if not isinstance(classes, dict):
        return f"{where}['classes'] is {json_kind(classes)}, not a mapping"
    for name, c in classes.items():
        if not isinstance(c, dict) or not all(v is None or is_number(v) for v in c.values()):
            return f"{where}['classes'][{json_key(name)}] is not a mapping of finite numbers or null"
    if "filter" in ch and not isinstance(ch["filter"], list):
        return f"{where}['filter'] is {json_kind(ch['filter'])}, not a list"
    return None


def atlas_problem(doc) -> str | None:
    """What is wrong with an ``atlas.json``'s content (docs/atlas.md), or ``None``: the explorer and report can read it.

    Checked once when the atlas is opened, so a request never meets a string where a list belongs or a photo
    index past the end of ``photos`` (each was a 500 answer).

    Examples:
        >>> atlas_problem({"layers": {"model.0": {"channels": "oops"}}, "photos": []})
        "layers['model.0']['channels'] is a str, not a list"
    """
    if not isinstance(doc, dict):
        return f"the file holds {json_kind(doc)}, not a JSON object"
    layers, photos = doc.get("layers"), doc.get("photos")
    if not isinstance(layers, dict):
        return "no 'layers'" if "layers" not in doc else f"'layers' is {json_kind(layers)}, not a mapping"
    if not isinstance(photos, list):
        return "no 'photos'" if "photos" not in doc else f"'photos' is {json_kind(photos)}, not a list"
    for i, p in enumerate(photos):
        if not isinstance(p, str):
            return f"'photos'[{i}] is {json_kind(p)}, not a path"
    if "weights" in doc and not (doc["weights"] is None or isinstance(doc["weights"], str)):
        return f"'weights' is {json_kind(doc['weights'])}, not a path or null"
    if "selectivity" in doc and not isinstance(doc["selectivity"], bool):
        return f"'selectivity' is {json_kind(doc['selectivity'])}, not true or false"
    for name, layer in layers.items():
        where = f"layers[{json_key(name)}]"
        if not isinstance(layer, dict):
            return f"{where} is {json_kind(layer)}, not a mapping"
        channels = layer.get("channels")
        if not isinstance(channels, list):
            return f"{where}['channels'] is {json_kind(channels)}, not a list" if "channels" in layer else \
                f"{where} has no 'channels'"
        for k in ("depth", "index", "channels_count", "never_active", "rarely_active"):
            if k in layer and not _is_count(layer[k]):
                return f"{where}[{k!r}] is {json_kind(layer[k])}, not a whole number of 0 or more"
        if "mean_best_iou" in layer and not (layer["mean_best_iou"] is None or is_number(layer["mean_best_iou"])):
            return f"{where}['mean_best_iou'] is {json_kind(layer['mean_best_iou'])}, not a finite number or null"
        for c, ch in enumerate(channels):
            if problem := _channel_problem(f"{where}['channels'][{c}]", ch, len(photos)):
                return problem
    return None


class AtlasIndex:
    """One atlas folder, read once: look up a channel's entry, its page and its crop strip.

    Args:
        root: the folder holding ``atlas.json``.

    Raises:
        InputError: no ``atlas.json`` there, or one that is not an atlas: not JSON, or any key the explorer or
            the report reads of the wrong type (``atlas_problem``), a photo index past ``photos``.
    """

    def __init__(self, root):
        self.root = Path(root)
        path = self.root / "atlas.json"
        if not (path.exists() or path.is_symlink()):  # anything else there is named for what it is when read
            raise InputError(self.root, "no atlas.json here "
                                        "(build one with: cardamage atlas --weights W SOURCE --out DIR)")
        try:  # ~1 KB a channel: 256 MiB is far past any YOLOv8, and read whole it costs a few times its size
            self.doc = json_value(read_bounded_text(path, "an atlas.json", 256 << 20, MAX_JSON_ITEMS))
        except ValueError as e:
            raise InputError(path, f"cannot read the atlas ({e})") from None
        if not isinstance(self.doc, dict) or not isinstance(self.doc.get("layers"), dict):
            raise InputError(path, "not an atlas (no 'layers')")
        problem = atlas_problem(self.doc)  # every key a request reads, once: no request can meet a wrong type
        if problem:
            raise InputError(path, f"not a readable atlas: {problem}")

    @property
    def layers(self) -> list[str]:
        return list(self.doc["layers"])

    def entry(self, layer: str, channel: int) -> dict | None:
        """The channel's entry in ``atlas.json`` plus ``layer``, ``page`` and ``photo_names``; ``None`` if absent."""
        entry = self.doc["layers"].get(layer)
        if entry is None or not 0 <= channel < len(entry["channels"]):
            return None
        ch = entry["channels"][channel]
        photos = self.doc["photos"]
        return {**ch, "layer": layer, "page": self.page(layer, channel), "weights": self.doc.get("weights"),
                "photo_names": [Path(photos[t["photo"]]).name for t in ch["top"]],
                "selectivity": self.doc.get("selectivity", False)}

    def page(self, layer: str, channel: int) -> str:
        """The channel's place in the atlas pages, relative to the atlas folder."""
        return f"{layer_file(layer)}#c{channel}"
