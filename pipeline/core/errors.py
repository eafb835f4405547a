"""The error and warning types for bad user input, and the escaping that keeps every message one line.

The command line catches it at its top level (``cardamage --help`` must not wait for Ultralytics or
OpenCV to load), and every layer raises it; ``pipeline.core.io`` re-exports it where most callers import it.

A file name may hold any byte but ``/`` and NUL: a newline would let one bad photo print a second, forged
``error:`` line (or hide a real one), and an ANSI escape could clear the terminal. ``one_line`` escapes
those characters the way Python's ``repr`` does, and nothing else, so an ordinary name prints as it is.

Examples:
    >>> from pipeline.core.errors import InputError, one_line
    >>> str(InputError("photo.jpg", "file not found"))
    'photo.jpg: file not found'
    >>> str(InputError("a\\nerror: fake.jpg: ok.jpg", "corrupt image"))
    'a\\\\nerror: fake.jpg: ok.jpg: corrupt image'
    >>> one_line("\\x1b[2Jcar.jpg")
    '\\\\x1b[2Jcar.jpg'
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings

# C0 and C1 controls and DEL (newline, carriage return, ANSI escape), Unicode's own line and paragraph
# separators, the bidirectional overrides that reorder what a terminal shows, and lone surrogates (an
# undecodable byte in a file name, which a strict UTF-8 stdout could not even encode), and the zero-width
# characters that make two names look the same (a space, joiners, the word joiner, a byte-order mark).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200b-\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff"
                     "\ud800-\udfff]")


def one_line(text) -> str:
    """``str(text)`` with every control, line-breaking or direction-changing character escaped as ``repr`` would.

    Examples:
        >>> one_line("ok.jpg"), one_line("a\\nb.jpg")
        ('ok.jpg', 'a\\\\nb.jpg')
    """
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], str(text))


class InputError(Exception):
    """Bad user input: the message is one line and names the file.

    ``path`` and ``reason`` keep the raw text (reports in JSON hold the real name); the message, which is
    what the command line prints, escapes both with ``one_line``: an OS error's text may repeat the name.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{one_line(path)}: {one_line(reason)}")


class InputWarning(UserWarning):
    """Input that was used but is damaged (a JPEG its decoder repaired): the message is one line naming the file.

    Reported by ``warn_input``, not raised, so the work goes on; the command line prints
    ``warning: <file>: <reason>`` once per file and counts the files in its summary.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{one_line(path)}: {one_line(reason)}")


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
