"""The one reader of a user's YAML file (data.yaml, a ``configs/*.yaml`` recipe, a model YAML).

YAML's anchors and aliases let a 1 KB file stand for gigabytes: PyYAML shares an aliased node, so the
load itself is small, but anything that walks the result (printing it, ``str()`` of a class name,
``json.dumps``) expands every alias. A data.yaml, a recipe and a model YAML have no need of them, so
``read_yaml`` refuses any alias node while parsing, before anything walks the tree. It also refuses what
is not a regular file (a FIFO would block the read forever, ``/dev/zero`` would never end) and a file
over ``MAX_YAML_BYTES`` or nested deeper than ``MAX_YAML_DEPTH``, and names the file in one line.

Examples:
    >>> from pipeline.core.yamlfile import read_yaml
    >>> read_yaml("../shared/data/cardd-sample/data.yaml")["nc"]
    6
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipeline.core.errors import InputError, one_line
from pipeline.core.files import check_regular_file

#: The largest YAML file read: 1 MiB holds some 50,000 class names; CarDD's data.yaml is 300 bytes.
MAX_YAML_BYTES = 1 << 20
#: The deepest nesting of lists and mappings read. PyYAML composes a node by recursion, a few Python frames
#: a level, so a few hundred ``[`` overflow the interpreter's stack (a RecursionError, thousands of lines of
#: traceback); a model YAML, the deepest file read, nests its layer lists a handful of levels.
MAX_YAML_DEPTH = 50


class AliasRefused(yaml.YAMLError):
    """An alias met while parsing: its anchor name and 1-based line."""

    def __init__(self, anchor: str, line: int):
        self.anchor, self.line = anchor, line
        super().__init__(f"line {line}: alias *{anchor}")


class TooDeep(yaml.YAMLError):
    """Nesting past ``MAX_YAML_DEPTH`` met while parsing, at a 1-based line."""

    def __init__(self, line: int):
        self.line = line
        super().__init__(f"line {line}: nested deeper than {MAX_YAML_DEPTH} levels")


class DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice: PyYAML keeps the last silently (``names:`` given twice)."""

    def __init__(self, key: str, line: int, first: int):
        self.key, self.line, self.first = key, line, first
        super().__init__(f"line {line}: key {key} again (first on line {first})")


class NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader that raises at the first alias (``*name``) instead of sharing the anchored node,
    and at nesting deeper than ``MAX_YAML_DEPTH`` (before the composer's recursion overflows the stack).

    The pure-Python loader, not the C one: composing happens in ``compose_node`` here, which the C parser
    would not call. These files are a few KB, so speed does not matter.
    """

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(event.anchor, event.start_mark.line + 1)
        if self._depth >= MAX_YAML_DEPTH:
            raise TooDeep(self.peek_event().start_mark.line + 1)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(repr(key)[:60], key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: PyYAML's own constructor says so
                continue
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike, what: str = "YAML file") -> object:
    """Parse a user's YAML file safely: a regular file, at most ``MAX_YAML_BYTES``, UTF-8, no aliases.

    Returns whatever the document holds (``None`` for an empty file); callers check its shape.

    Raises:
        InputError: one line naming the file and why (not found, not a regular file, too large, not
            UTF-8, a YAML syntax error, an alias, nesting past ``MAX_YAML_DEPTH``).
    """
    path = Path(path)
    st = check_regular_file(path, f"a {what}")
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
    except DuplicateKey as e:
        raise InputError(path, f"line {e.line}: the key {one_line(e.key)} is given twice (first on line {e.first}): "
                               f"a {what} names each key once") from None
    except TooDeep as e:
        raise InputError(path, f"line {e.line}: nested deeper than {MAX_YAML_DEPTH} levels: "
                               f"refused as a {what}") from None
    except RecursionError:  # a backstop: the depth limit above should stop any recursion first
        raise InputError(path, f"nested too deeply to read as a {what}") from None
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise InputError(path, f"not valid YAML ({reason[:300]})") from None
