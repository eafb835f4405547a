"""The error and warning types for bad user input, in a module that imports nothing heavy.

The command line catches it at its top level (``cardamage --help`` must not wait for Ultralytics or
OpenCV to load), and every layer raises it; ``pipeline.core.io`` re-exports it where most callers import it.

Examples:
    >>> from pipeline.core.errors import InputError
    >>> str(InputError("photo.jpg", "file not found"))
    'photo.jpg: file not found'
"""

from __future__ import annotations

import os


class InputError(Exception):
    """Bad user input: the message is one line and names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class InputWarning(UserWarning):
    """Input that was used but is damaged (a JPEG its decoder repaired): the message is one line naming the file.

    Raised with ``warnings.warn``, so the work goes on; the command line prints ``warning: <file>: <reason>``
    once per file and counts the files in its summary.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")
