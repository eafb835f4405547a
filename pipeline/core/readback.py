"""Files a run wrote and a later command reads back (``watch.jsonl``, ``atlas.json``, a Ray shard), read within
bounds: a regular file, at most so many bytes, and for JSON at most so many values, checked before any parse.

Examples:
    >>> from pipeline.core.readback import read_bounded_text, json_value
    >>> doc = json_value(read_bounded_text("runs/atlas/atlas.json", "an atlas", 256 << 20, MAX_JSON_ITEMS))
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.core.files import check_regular_file, os_reason


#: The JSON values a file read back may hold (``json_items``): a value is a few bytes of text but tens of bytes
#: parsed, so a file of ``{},{},...`` under its byte limit took many times its size (docs/robustness.md, seventh
#: hostile retest). A YOLOv8n atlas of 100 photos holds about a million values.
MAX_JSON_ITEMS = 8_000_000


def json_items(text: str | bytes) -> int:
    """An upper bound on the values ``json.loads(text)`` makes, counted on the text: one per comma and per
    opening bracket, plus one (commas inside strings count too, so it only overestimates)."""
    comma, brace, bracket = (",", "{", "[") if isinstance(text, str) else (b",", b"{", b"[")
    return text.count(comma) + text.count(brace) + text.count(bracket) + 1


def read_bounded_text(path: str | os.PathLike, what: str, limit: int, max_items: int | None = None) -> str:
    """The text of a file a run wrote and a later command reads back (``watch.jsonl``, ``atlas.json``, a Ray
    shard): a regular file (a FIFO would hang the read) of at most ``limit`` bytes (read whole, a file costs a few
    times its size), and, for JSON, of at most ``max_items`` values (``json_items``), checked before any parse.

    Raises:
        InputError: one line naming ``path``: not a regular file, too large, or unreadable.
    """
    st = check_regular_file(path, what)
    if st.st_size > limit:
        raise InputError(path, f"{st.st_size:,} bytes is too large for {what} (the limit is {limit:,})")
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(path, f"cannot read ({os_reason(e)})") from None
    if max_items is not None and json_items(text) > max_items:
        raise InputError(path, f"holds more than {max_items:,} JSON values, more than {what} of this project ever "
                               "does; not read (parsed, each costs tens of bytes)")
    return text


def json_value(text: str):
    """``json.loads``, with a value nested past Python's recursion limit as a ``ValueError`` like any bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None


# the schema checks of files read back (watch.jsonl, atlas.json, Ray shards) word their findings alike


def is_number(v) -> bool:
    """A finite JSON number (not a bool; an int too large for a float is not one either)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def json_kind(v) -> str:
    """What a JSON value is, for a message: ``a list``, ``a str``, ``null``, ``true``, ``nan``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return f"a {'mapping' if isinstance(v, dict) else type(v).__name__}"


def json_key(k) -> str:
    """A key of the file, quoted and cut short for a message (``one_line`` escapes it where it is printed)."""
    k = str(k)
    return repr(k if len(k) <= 60 else k[:60] + "...")
