"""What a path is, asked before it is opened: a read must never block on a FIFO or run on forever.

Examples:
    >>> from pipeline.core.files import check_regular_file
    >>> check_regular_file("/dev/zero", "an image file")
    Traceback (most recent call last):
    pipeline.core.errors.InputError: /dev/zero: not a regular file (a device), expected an image file
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from pipeline.core.errors import InputError


def os_reason(e: OSError) -> str:
    """An OS error's own words ("Permission denied"), or its type where it has none."""
    return e.strerror or type(e).__name__


def check_regular_file(path: str | os.PathLike, what: str = "a file") -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file, in one line naming it.

    ``what`` completes "expected ...", as in ``"an image file"``. A FIFO, socket or device would block a
    read or never end it; a symlink loop raises here, not at the read.

    Raises:
        InputError: missing, a folder, not a regular file, or not stat-able (permission, link loop).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except OSError as e:  # ELOOP: "Too many levels of symbolic links"; EACCES
        raise InputError(path, os_reason(e)) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(path, f"is a folder, expected {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special")
        raise InputError(path, f"not a regular file ({kind}), expected {what}")
    return st


def real_path(path: str | os.PathLike) -> Path:
    """The file a path names, links followed (``Path.resolve()``), or the absolute path itself for a link loop.

    A dataset listing is keyed by real paths (one file under two spellings is one photo), and
    ``Path.resolve()`` raises RuntimeError at a symlink loop: one ``loop.jpg -> loop.jpg`` stopped a whole
    ``check`` with a traceback. A loop is no file, so it is its own key; whoever opens it then names it in
    one line (``check_regular_file``) and the rest of the dataset is checked.
    """
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def is_folder(path: str | os.PathLike) -> bool:
    """``Path.is_dir``, False where the path cannot even be looked at (a link into another process's
    ``/proc/PID/fd``: EACCES, even for root) instead of raising: whatever reads it then names the problem."""
    try:
        return Path(path).is_dir()
    except OSError:
        return False


def is_present(path: str | os.PathLike) -> bool:
    """``Path.exists``, True where the path is there but cannot be looked at (see ``is_folder``): a source that
    is there is read, and its read names the problem in one line."""
    try:
        return Path(path).exists()
    except OSError:
        return os.path.lexists(path)


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first: what a ``mkdir(parents=True)`` makes."""
    missing = []
    for f in (folder, *folder.parents):
        if os.path.lexists(f):
            break
        missing.append(f)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """``rmdir`` each of ``folders`` in order (deepest first), stopping at the first that is not empty."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:
            return


def folders_below(root: Path, limit: int) -> set[str] | None:
    """Every folder below ``root`` (not ``root`` itself), as paths: a linked folder is listed, not entered.
    ``None`` past ``limit`` entries: an output folder that large is not swept after a failure."""
    found, seen = set(), 0
    for parent, dirs, files in os.walk(root):  # an unreadable folder is listed too, by its parent
        found.update(os.path.join(parent, d) for d in dirs)
        seen += len(dirs) + len(files)
        if seen > limit:
            return None
    return found


def remove_new_empty_folders(root: Path, before: set[str]) -> None:
    """Remove, deepest first, each folder below ``root`` not in ``before`` that is empty (``rmdir`` only ever
    removes an empty folder; a parent emptied so goes too). ``root`` itself is the caller's to remove."""
    for parent, _, _ in os.walk(root, topdown=False):  # children before their parent; links never entered
        if parent != str(root) and parent not in before:
            with contextlib.suppress(OSError):
                os.rmdir(parent)
