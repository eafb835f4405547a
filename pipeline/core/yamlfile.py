"""The one reader of a user's YAML file (data.yaml, a ``configs/*.yaml`` recipe, a model YAML).

YAML's anchors and aliases let a 1 KB file stand for gigabytes: PyYAML shares an aliased node, so the
load itself is small, but anything that walks the result (printing it, ``str()`` of a class name,
``json.dumps``) expands every alias. A data.yaml, a recipe and a model YAML have no need of them, so
``read_yaml`` refuses any alias node while parsing, before anything walks the tree. It also refuses what
is not a regular file (a FIFO would block the read forever, ``/dev/zero`` would never end) and a file
over ``MAX_YAML_BYTES``, and names the file in one line.

Examples:
    >>> from pipeline.core.yamlfile import read_yaml
    >>> read_yaml("../shared/data/cardd-sample/data.yaml")["nc"]
    6
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from pipeline.core.errors import InputError

#: The largest YAML file read: 1 MiB holds some 50,000 class names; CarDD's data.yaml is 300 bytes.
MAX_YAML_BYTES = 1 << 20


class AliasRefused(yaml.YAMLError):
    """An alias met while parsing: its anchor name and 1-based line."""

    def __init__(self, anchor: str, line: int):
        self.anchor, self.line = anchor, line
        super().__init__(f"line {line}: alias *{anchor}")


class NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader that raises at the first alias (``*name``) instead of sharing the anchored node.

    The pure-Python loader, not the C one: composing happens in ``compose_node`` here, which the C parser
    would not call. These files are a few KB, so speed does not matter.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


def check_regular_file(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file, in one line naming it.

    A FIFO, socket or device would block a read or never end it; a symlink loop raises here, not later.

    Raises:
        InputError: missing, a folder, not a regular file, or not stat-able (permission, link loop).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, f"{what} not found") from None
    except OSError as e:  # ELOOP: "Too many levels of symbolic links"; EACCES
        raise InputError(path, e.strerror or type(e).__name__) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, f"is a folder, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special")
        raise InputError(path, f"not a regular file ({kind}), expected a {what}")
    return st


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> object:
    """Parse a user's YAML file safely: a regular file, at most ``MAX_YAML_BYTES``, UTF-8, no aliases.

    Returns whatever the document holds (``None`` for an empty file); callers check its shape.

    Raises:
        InputError: one line naming the file and why (not found, not a regular file, too large, not
            UTF-8, a YAML syntax error, an alias).
    """
    path = Path(path)
    st = check_regular_file(path, what)
    if st.st_size > MAX_YAML_BYTES:
        raise InputError(path, f"{st.st_size:,} bytes is too large for a {what} (the limit is {MAX_YAML_BYTES:,})")
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_YAML_BYTES + 1).decode("utf-8")  # + 1: a file that grew since the stat still fails
    except OSError as e:
        raise InputError(path, e.strerror or type(e).__name__) from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    if len(text.encode("utf-8")) > MAX_YAML_BYTES:
        raise InputError(path, f"too large for a {what} (the limit is {MAX_YAML_BYTES:,} bytes)")
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except AliasRefused as e:
        raise InputError(path, f"line {e.line}: YAML alias *{e.anchor} refused: a {what} may not use anchors "
                               "and aliases (a few of them can stand for gigabytes)") from None
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise InputError(path, f"not valid YAML ({reason[:300]})") from None
