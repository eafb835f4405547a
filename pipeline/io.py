"""Files in and out: one-line errors that name the file, atomic writes, and image reading.

Every command reads photos and writes results through here, so the rules hold everywhere:
bad input raises ``InputError`` (the CLI prints it as one line and exits non-zero), and every file
is written to a temporary sibling first and then renamed, so a crash never leaves half a file.

Examples:
    >>> from pipeline.io import atomic_write_json, read_image
    >>> atomic_write_json("out/result.json", {"ok": True})
    >>> img = read_image("photo.jpg")  # BGR uint8, HxWx3, exactly as Ultralytics reads it
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".dng", ".mpo", ".pfm", ".heic"}


class InputError(Exception):
    """Bad user input: the message is one line and names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (NaN is refused: JSON has no NaN)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_write_image(path: str | os.PathLike, image_bgr: np.ndarray) -> Path:
    """Encode a BGR image by the file's suffix and write it atomically."""
    import cv2

    ok, buf = cv2.imencode(Path(path).suffix or ".jpg", image_bgr)
    if not ok:
        raise InputError(path, "could not encode image")
    return atomic_write_bytes(path, buf.tobytes())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Save a dict of torch tensors with safetensors, atomically (contiguous copies are made as needed)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in chunks by hashlib)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _jpeg_is_truncated(path: Path) -> bool:
    """A whole JPEG ends with the EOI marker FF D9; a cut-off download does not."""
    with open(path, "rb") as f:
        head = f.read(2)
        if head != b"\xff\xd8":
            return False
        f.seek(-2, os.SEEK_END)
        tail = f.read(2)
    return tail != b"\xff\xd9"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as BGR uint8 HxWx3, the way Ultralytics' predictor reads it.

    Ultralytics reads with ``cv2.imread(..., IMREAD_COLOR)``: grayscale becomes 3 equal channels,
    alpha is dropped, 16-bit is scaled to 8-bit. We use its own reader and add the checks it leaves
    out, so that bad files fail with one clear line instead of a traceback or a silently grey image.

    Raises:
        InputError: missing, empty, non-image, truncated JPEG or undecodable file.
    """
    from pipeline import runtime  # noqa: F401  (offline env before ultralytics)
    from ultralytics.utils.patches import imread

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    if _jpeg_is_truncated(path):
        raise InputError(path, "truncated or corrupt JPEG (no end-of-image marker)")
    try:
        image = imread(str(path))
    except Exception as e:  # cv2 raises on some malformed headers
        raise InputError(path, f"cannot decode image ({type(e).__name__})") from None
    if image is None or image.size == 0:
        raise InputError(path, "not an image or corrupt (OpenCV could not decode it)")
    if image.ndim == 2:  # imread may hand back 2-D for some formats
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {image.dtype}")
    return image


def expand_sources(sources: list[str]) -> tuple[list[Path], list[InputError]]:
    """Turn files, folders and globs into a sorted list of image files, plus errors for what matched nothing.

    A folder contributes the images directly inside it (by suffix); an explicitly named file is kept
    whatever its suffix, so a non-image named by the user is reported rather than silently skipped.
    """
    import glob

    files: list[Path] = []
    errors: list[InputError] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(InputError(p, "folder holds no images"))
            files += found
        elif p.exists():
            files.append(p)
        elif any(c in src for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(src, recursive=True) if Path(f).is_file())
            if not found:
                errors.append(InputError(src, "glob matched no files"))
            files += found
        else:
            errors.append(InputError(p, "file not found"))
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, errors
