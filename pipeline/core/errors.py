"""The error and warning types for bad user input, in a module that imports nothing heavy.

The command line catches it at its top level (``cardamage --help`` must not wait for Ultralytics or
OpenCV to load), and every layer raises it; ``pipeline.core.io`` re-exports it where most callers import it.

Examples:
    >>> from pipeline.core.errors import InputError
    >>> str(InputError("photo.jpg", "file not found"))
    'photo.jpg: file not found'
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings


class InputError(Exception):
    """Bad user input: the message is one line and names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class InputWarning(UserWarning):
    """Input that was used but is damaged (a JPEG its decoder repaired): the message is one line naming the file.

    Reported by ``warn_input``, not raised, so the work goes on; the command line prints
    ``warning: <file>: <reason>`` once per file and counts the files in its summary.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


_sinks: list = []  # the listeners of ``listen_warnings``, innermost last
_sinks_lock = threading.Lock()


def warn_input(path: str | os.PathLike, reason: str) -> InputWarning:
    """Report damaged but usable input: to the innermost ``listen_warnings`` sink, else as a Python warning.

    A sink, not ``warnings.warn`` alone: Python's warning filters are process-wide, and a worker thread
    that silences another warning for a moment (``catch_warnings``) would drop this one on the floor.
    """
    w = InputWarning(path, reason)
    with _sinks_lock:
        sink = _sinks[-1] if _sinks else None
    if sink is None:
        warnings.warn(w, stacklevel=3)
    else:
        sink(w)
    return w


@contextlib.contextmanager
def listen_warnings(sink):
    """Within the block, every ``warn_input`` (from any thread) calls ``sink(InputWarning)``."""
    with _sinks_lock:
        _sinks.append(sink)
    try:
        yield sink
    finally:
        with _sinks_lock:
            _sinks.remove(sink)
