"""What a path is, asked before it is opened: a read must never block on a FIFO or run on forever.

Examples:
    >>> from pipeline.core.files import check_regular_file
    >>> check_regular_file("/dev/zero", "an image file")
    Traceback (most recent call last):
    pipeline.core.errors.InputError: /dev/zero: not a regular file (a device), expected an image file
"""

from __future__ import annotations

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
