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

from pathlib import Path

from pipeline.core.io import MAX_JSON_ITEMS, InputError, json_value, read_bounded_text


def layer_file(path: str) -> str:
    """The atlas page of one Conv block, e.g. ``layer-model.8.cv2.html`` (channel anchors ``#c<channel>``)."""
    return f"layer-{path}.html"


class AtlasIndex:
    """One atlas folder, read once: look up a channel's entry, its page and its crop strip.

    Args:
        root: the folder holding ``atlas.json``.

    Raises:
        InputError: no ``atlas.json`` there, or one that is not an atlas.
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
