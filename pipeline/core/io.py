"""Files in and out: one-line errors that name the file, atomic writes, and image reading.

Every command reads photos and writes results through here, so the rules hold everywhere:
bad input raises ``InputError`` (the CLI prints it as one line and exits non-zero), and every file
is written to a temporary sibling first and then renamed, so a crash never leaves half a file. A file the
user names as an output (``check --json``) replaces only the same command's earlier output (``stamp``,
``written_by``, ``check_output_file``).

Examples:
    >>> from pipeline.core.io import atomic_write_json, read_image
    >>> atomic_write_json("out/result.json", {"ok": True})
    >>> img = read_image("photo.jpg")  # BGR uint8, HxWx3, exactly as Ultralytics reads it
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import PIL.Image
import simplejpeg
from safetensors import SafetensorError
from safetensors.torch import save_file
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.utils import patches as ultralytics_patches
from ultralytics.utils.patches import imread

from pipeline.core import runtime

# defined apart, so the command line can use them without loading this; re-exported for the other layers
from pipeline.core.errors import InputError, one_line, warn_input  # noqa: F401
from pipeline.core.files import check_regular_file

#: Pillow's own ``Image.open``: Ultralytics patches ``PIL.Image.open`` to pip-check pi-heif on every format
#: Pillow does not know (a coloured requirements warning on a text file named .jpg); ours never does.
pil_open = getattr(ultralytics_patches, "_image_open", PIL.Image.open)

#: What a folder contributes: Ultralytics' own image formats, so predict sees what training sees (no GIF).
IMAGE_SUFFIXES = {f".{suffix}" for suffix in IMG_FORMATS}

#: The formats a photo may be in, said in the refusal of any other: Ultralytics' own list less what Pillow
#: cannot read without a plugin (HEIC, HEIF) or at all (DNG's raw data; Pillow reads a DNG only where it is
#: a plain TIFF, and then as TIFF). ``test_every_format_named_is_one_pillow_reads`` keeps it true.
READ_FORMATS = "JPEG, PNG, BMP, TIFF, WebP, JPEG 2000, AVIF, MPO"


def _read_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): set-and-restore, once, at import
    os.umask(mask)
    return mask


UMASK = _read_umask()


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _write_reason(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be written, in words: a file where a folder should be says so by name."""
    for parent in path.parents:  # `--json notes.txt/r.json`: the OSError itself only says "Not a directory"
        if parent.exists() and not parent.is_dir():
            return f"cannot write ({parent} is a file, not a folder)"
    return f"cannot write ({_os_reason(e)})"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask): mkstemp's
    0600 would otherwise hide every result from the user's group. OS errors become one-line
    ``InputError``s naming ``path`` (not a folder, permission denied, read-only, disk full).
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError(path, "is a folder, expected a file path to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~UMASK)
        os.close(fd)
    except OSError as e:
        raise InputError(path, _write_reason(path, e)) from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~UMASK)  # again: a writer may have replaced the file (safetensors does)
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(path, f"cannot write ({_os_reason(e)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _real(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` and every link resolved; a symlink loop stays a path (``Path.resolve`` raises
    RuntimeError for one) and is named by whatever then opens it."""
    return Path(os.path.realpath(Path(path).expanduser()))


def check_output(out: str | os.PathLike, inputs=(), not_inside=()) -> Path:
    """Refuse, before any work, an output that could touch the user's input; return ``out`` as a Path.

    ``out`` may not be one of ``inputs`` (files or folders the command reads), may not hold one of them
    (anything written there could land on it), and may not lie inside a folder of ``not_inside`` (a
    dataset split that training scans recursively). An existing file is not an output folder.

    Raises:
        InputError: one line naming ``out`` and the input it would touch.
    """
    out = Path(out)
    target = _real(out)
    for item in inputs:
        source = _real(item)
        if source == target or target in source.parents:
            verb = "is" if source == target else "holds"
            raise InputError(out, f"output {verb} an input ({item}); results would mix with or overwrite it: "
                                  "choose another output folder")
    for folder in not_inside:
        folder_r = _real(folder)
        if folder_r == target or folder_r in target.parents:
            raise InputError(out, f"output lies inside input folder {folder}, which is read recursively: "
                                  "choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    return out


def refuse_links(folder: str | os.PathLike, read_only=lambda rel: False) -> None:
    """Refuse a folder another program will write into (Ultralytics' trainer) if it holds a symbolic or hard link.

    That program opens ``results.csv``, ``args.yaml``, ``weights/last.pt``, its plots and caches by name and
    writes through whatever link sits there, into a file outside the folder (an append, a rewrite): this is
    checked before it runs, since its writes cannot be routed. Every entry is looked at, folders included
    (a linked ``weights/`` sends every checkpoint elsewhere), not a list of names, so a file a later
    Ultralytics adds is covered too. ``folder`` itself may be a link: the user named it.

    Args:
        folder: the folder, which exists.
        read_only: ``read_only(rel)`` says whether the link at ``rel`` (a ``PurePath`` relative to ``folder``)
            is one the program only reads, e.g. a dataset view's links to the user's images. A link to a
            folder is never accepted: what is written below it would land outside.

    A regular file with other hard links is refused too: the same bytes stand elsewhere.

    Raises:
        InputError: one line naming the first link (in sorted order) and where it points.
    """
    root = Path(folder)
    for parent, dirs, files in os.walk(root):  # a linked folder is listed, not entered
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(parent) / name
            if not path.is_symlink():
                # a hard link shares its bytes with a file elsewhere: an append or a rewrite in place changes both
                if name in files and path.stat().st_nlink > 1:
                    raise InputError(path, f"is one of {path.stat().st_nlink} hard links to the same file; a run "
                                           "writes only inside its own folder and would change the others too: "
                                           "copy the file (cp, not cp -l), or choose another --out")
                continue
            if read_only(path.relative_to(root)) and not path.is_dir():
                continue
            try:
                target = os.readlink(path)
            except OSError as e:
                target = f"unreadable: {_os_reason(e)}"
            raise InputError(path, f"is a symbolic link (to {target}); a run writes only inside its own folder "
                                   "and would write through it: remove the link, or choose another --out")


#: The first key of every JSON file a command writes to a name the user chose (``check --json``, ``trace --out``):
#: ``{"generator": "cardamage check", ...}``. It is how a later run knows the file is its own earlier output.
GENERATOR_KEY = "generator"


def stamp(obj: dict, generator: str) -> dict:
    """``obj`` with ``{"generator": generator}`` as its first key, the mark ``written_by`` looks for.

    Examples:
        >>> stamp({"ok": True}, "cardamage check")
        {'generator': 'cardamage check', 'ok': True}
    """
    return {GENERATOR_KEY: generator, **{k: v for k, v in obj.items() if k != GENERATOR_KEY}}


def written_by(path: str | os.PathLike, generator: str) -> bool:
    """Whether ``path`` is a regular file that ``generator`` wrote: JSON whose first key is its ``stamp``.

    Only the first 4 KB are read (the stamp comes first), so a large file that is not ours costs nothing.
    A symbolic link is never ours: our writer makes plain files, and replacing a link would drop what it is.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    mark = rf'\s*\{{\s*"{GENERATOR_KEY}"\s*:\s*{re.escape(json.dumps(generator))}\s*[,}}]'
    return re.match(mark, head) is not None


def check_output_file(out: str | os.PathLike, inputs=(), suffix: str = ".json", generator: str | None = None,
                      overwrite: bool = False) -> Path:
    """Refuse an output *file* (``--json``, ``trace --out``) that could replace something not ours; return it.

    Refused: a folder, one of the ``inputs``, a name without ``suffix`` (a report never replaces a photo,
    label, checkpoint or yaml), and, when ``generator`` is given, any existing file (or link) that is not
    that command's own earlier output (``written_by``) unless ``overwrite``: a ``{"a": 1}`` of the user's,
    a dataset's ``annotations.json`` or another command's report stays as it is. Call it before the work,
    so the refusal costs nothing, and again just before writing, so a file that appeared meanwhile is safe too.

    Raises:
        InputError: one line naming ``out`` and what is in the way.
    """
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; expected a file name to write")
    for item in inputs:
        if Path(item).exists() and _real(item) == _real(out):
            raise InputError(out, f"is an input of this command ({item}); choose another file name")
    if out.suffix.lower() != suffix:
        raise InputError(out, f"expected a file name ending in {suffix} (this command writes {suffix[1:].upper()})")
    if generator and not overwrite and (out.exists() or out.is_symlink()) and not written_by(out, generator):
        raise InputError(out, f"exists and is not an earlier output of {generator}; choose another file name, "
                              "or pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, inputs=(), not_inside=()) -> Iterator[Path]:
    """Check ``out`` (``check_output``), create it, prove it writable, and lock it while a command writes.

    The lock is an ``flock`` on the folder itself: the kernel drops it when the process ends, so a
    killed run never leaves a folder stuck, and a second run into the same folder at the same time is
    refused with one line instead of mixing its results with the first run's. A folder this call
    created and nothing was written into is removed again, so a refused or failed run leaves no trace.

    Examples:
        >>> with output_folder("runs/predict", inputs=["photos/"]) as out:
        ...     atomic_write_json(out / "detections.json", [])
    """
    out = check_output(out, inputs, not_inside)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise InputError(out, _write_reason(out, e).replace("cannot write", "cannot create the output folder")) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out, "busy: another cardamage run is writing into this folder; "
                                  "wait for it or choose another output folder") from None
        try:
            tempfile.TemporaryFile(dir=out).close()  # read-only or full: one line now, not after the work
        except OSError as e:
            raise InputError(out, f"cannot write here ({_os_reason(e)})") from None
        yield out
    finally:
        os.close(fd)  # releases the flock
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds if empty


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
    ok, buf = cv2.imencode(Path(path).suffix or ".jpg", image_bgr)
    if not ok:
        raise InputError(path, "could not encode image")
    return atomic_write_bytes(path, buf.tobytes())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Save a dict of torch tensors with safetensors, atomically (contiguous copies are made as needed)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its I/O errors (disk full) are not OSErrors
            raise InputError(path, f"cannot write ({' '.join(str(e).split())})") from None
    return Path(path)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in chunks by hashlib); a FIFO or device is an ``InputError``, not a hang."""
    import hashlib

    check_regular_file(path, "a file to read")
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _pixel_refusal(pixels: int, limit: int) -> str:
    size = 3 * pixels  # BGR, one byte per channel: what one decode holds
    held = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
    return (f"{pixels / 1e6:.1f} megapixels, over the limit of {limit / 1e6:g} (decoding would take {held}); "
            f"if the photo is genuine, set {runtime.MAX_PIXELS_ENV} to a higher number of pixels")


def check_pixels(path: str | os.PathLike, width: int, height: int) -> None:
    """Raise ``InputError`` if a ``width`` x ``height`` photo is over the pixel limit (``runtime.max_pixels``)."""
    try:
        limit = runtime.max_pixels()
    except ValueError as e:
        raise InputError(runtime.MAX_PIXELS_ENV, str(e)) from None
    if int(width) * int(height) > limit:
        raise InputError(path, _pixel_refusal(int(width) * int(height), limit))


def _png_bad_chunk(path: str | os.PathLike) -> str | None:
    """The type of the first PNG chunk whose CRC does not match its bytes, or None (not a PNG, or all match).

    Pillow's ``load`` does not check chunk CRCs; libpng does, refuses the file and prints "libpng error: IDAT:
    CRC error" in two writes (text, then newline), which no catching of fd 2 can keep apart from another
    thread's line printed between them. So the CRCs are checked here, before libpng sees the file: crc32 runs
    at memory speed, and the bytes are read anyway.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    at = 8
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        end = at + 8 + length
        if end + 4 > len(data):
            return None  # truncated: Pillow's decode has already said so, or will
        if zlib.crc32(data[at + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            return data[at + 4:at + 8].decode("latin-1")
        if data[at + 4:at + 8] == b"IEND":
            return None
        at = end + 4
    return None


def validate_image(path: str | os.PathLike) -> None:
    """Check ``path``'s size from its header, then decode it once with Pillow; raise ``InputError`` if the
    photo is over the pixel limit or the decoder reports damage.

    The one rule every command applies to a photo: an image is good when its whole data stream
    decodes. Bytes after a JPEG's end marker are fine (cameras and editors append them); a truncated
    file or a broken stream (libjpeg's "Corrupt JPEG data", which OpenCV only prints to stderr and
    then hands back grey blocks) is an error. JPEGs decode at 1/8 scale (``draft``): every entropy-
    coded byte is still read, which is where damage shows, at ~0.5 ms for a 640 px photo.

    Size first: Pillow's ``open`` reads only the header, so a photo over ``runtime.max_pixels()`` (a 1 MB PNG
    can hold 900 megapixels) is refused before any pixel is decoded, here or by OpenCV after.
    """
    check_regular_file(path, "an image file")  # Pillow's open would block on a FIFO forever
    try:
        bad_chunk = _png_bad_chunk(path)
    except OSError as e:
        raise InputError(path, _os_reason(e)) from None
    if bad_chunk:  # an error, as libpng (OpenCV's decoder) and Ultralytics' training check refuse it
        raise InputError(path, f"corrupt image: PNG chunk {one_line(bad_chunk)} fails its CRC check")
    try:
        with pil_open(path) as im:
            check_pixels(path, im.width, im.height)
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except (PIL.UnidentifiedImageError, ModuleNotFoundError):
        # Refused, not handed to OpenCV: OpenCV also decodes formats Pillow does not read (Radiance HDR,
        # OpenEXR) as float32, four times the bytes a pixel of the BGR the pixel limit is sized for, and its
        # own guard counts pixels only, so a HDR named .jpg went past the limit and the memory promise.
        # Training refuses the same files (Ultralytics verifies every image with Pillow), so predict now
        # sees what training sees. HEIC/HEIF need the pi-heif plugin, which this project does not install.
        raise InputError(path, "not an image or corrupt (Pillow cannot identify it; "
                               f"formats read: {READ_FORMATS})") from None
    except PIL.Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses at open, giving the count
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels = int(found.group(1)) if found else 2 * PIL.Image.MAX_IMAGE_PIXELS + 1
        raise InputError(path, _pixel_refusal(pixels, runtime.max_pixels())) from None
    except (OSError, SyntaxError, ValueError) as e:  # SyntaxError: Pillow's word for a malformed header
        if isinstance(e, (PermissionError, FileNotFoundError, IsADirectoryError)):
            raise InputError(path, _os_reason(e)) from None
        reason = str(e).split("\n")[0] or type(e).__name__
        raise InputError(path, f"corrupt image: {reason}") from None


def warn_if_repaired(path: str | os.PathLike) -> str | None:
    """Warn (``warn_input``) when a JPEG decodes only because libjpeg repaired it; return the reason.

    libjpeg treats a scan cut short ("Corrupt JPEG data: premature end of data segment") or bytes where a
    marker should be ("N extraneous bytes before marker") as warnings: it fills the gap and carries on,
    Pillow says nothing, and OpenCV only prints the text to stderr, naming no file. simplejpeg runs
    libjpeg-turbo with such warnings raised (``strict``), at 1/8 scale as ``validate_image`` decodes.
    Call it after ``validate_image``: what Pillow refuses outright is an error, not a warning.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not simplejpeg.is_jpeg(data):
        return None
    try:
        header = simplejpeg.decode_jpeg_header(data)
        simplejpeg.decode_jpeg(data, min_height=max(1, header[0] // 8), min_width=max(1, header[1] // 8),
                               min_factor=8, strict=True)
    except ValueError as e:
        reason = f"damaged JPEG, decoded with the gaps filled ({' '.join(str(e).split())})"
        warn_input(path, reason)
        _repaired.add(os.path.realpath(path))
        return reason
    return None


#: Every photo ``warn_if_repaired`` warned about (real paths): the ones whose later decodes by others'
#: code (Ultralytics' training loader) make libjpeg speak, so only those pay for ``native_stderr``'s lock.
_repaired: set[str] = set()


def _imread_repaired_quietly(filename, flags: int = cv2.IMREAD_COLOR):
    """Ultralytics' ``imread``, with libjpeg's lines caught for a photo already warned about as repaired."""
    if os.path.realpath(filename) in _repaired:
        with native_stderr():
            return imread(filename, flags)
    return imread(filename, flags)


@contextlib.contextmanager
def quiet_training_reads() -> Iterator[None]:
    """While the block runs, Ultralytics' dataset loader decodes a repaired JPEG without libjpeg's own line.

    Training warned about each such photo by name before it started (``warn_if_repaired``); its loader then
    decodes the photo again every epoch, and libjpeg printed "Corrupt JPEG data" each time, naming nothing.
    The loader's module-level ``imread`` is swapped for the block only (forked loader workers inherit it).
    """
    from ultralytics.data import base

    original = base.imread
    base.imread = _imread_repaired_quietly
    try:
        yield
    finally:
        base.imread = original


#: The lines libjpeg and libpng print to stderr from inside OpenCV's decode, naming no file: ``warn_if_repaired``
#: and ``read_image`` already say the same in a line that names it. OpenCV's own log level does not reach them.
#: Whole lines only: our own warning quotes libjpeg's text ("... (Corrupt JPEG data: ...)"), and a warning printed
#: while another thread has fd 2 must come back whole. libpng writes its message and its newline apart, so a line
#: another thread prints between the two is glued to it and goes with it: ``_png_bad_chunk`` keeps the CRC case,
#: the one a photo meets, from reaching libpng at all.
_NATIVE_LINE = re.compile(rb"^(Corrupt JPEG data|Premature end of JPEG file|Warning: unknown JFIF|libpng (error|warning)"
                          rb"|Invalid SOS parameters|Bogus |Unsupported marker|Huffman table)[^\n]*\n?", re.MULTILINE)
_native_lock = threading.Lock()


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Catch what native decoders write to fd 2 during the block; yield a list that then holds their lines.

    libjpeg and libpng print with C's ``fprintf(stderr)``, which no Python setting reaches, so fd 2 itself is
    pointed at a temporary file for the block. The fd is shared by the whole process, hence the lock: one
    decode at a time redirects it (the engine's decode threads read photos too). Anything else written to fd 2
    meanwhile (a Python warning from another thread) is not one of the decoders' lines and is written back
    to the real stderr afterwards, so nothing of the program's own is lost. Its order may not be: Python's
    stderr writes a print's text and its newline apart, so a line printed just as the block begins can come
    out after the decode, its newline before it.
    """
    caught: list[str] = []
    with _native_lock:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep clean
            yield caught
            return
        with tempfile.TemporaryFile() as buf:
            # no sys.stderr.flush() here: Python's stderr is line-buffered, and a flush from this thread would
            # cut another thread's print between its text and its newline, splitting the line across the fds
            os.dup2(buf.fileno(), 2)
            try:
                yield caught
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                buf.seek(0)
                text = buf.read()
                caught += [m.group().decode("utf-8", "replace").strip() for m in _NATIVE_LINE.finditer(text)]
                others = _NATIVE_LINE.sub(b"", text)
                if others:
                    os.write(2, others)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as BGR uint8 HxWx3, the way Ultralytics' predictor reads it.

    Ultralytics reads with ``cv2.imread(..., IMREAD_COLOR)``: grayscale becomes 3 equal channels,
    alpha is dropped, 16-bit is scaled to 8-bit. We use its own reader after ``validate_image``, so
    bad files fail with one clear line instead of a traceback or a silently grey image.

    A JPEG that libjpeg had to repair is read, with an ``InputWarning`` naming it (``warn_if_repaired``).

    Raises:
        InputError: missing, not a regular file (a FIFO, a device), unreadable, empty, non-image,
            truncated or corrupt file.
    """
    path = Path(path)
    try:
        if check_regular_file(path, "an image file").st_size == 0:
            raise InputError(path, "empty file")
        with open(path, "rb"):  # permission denied is one line here, not a None from OpenCV
            pass
    except OSError as e:
        raise InputError(path, _os_reason(e)) from None
    validate_image(path)
    repaired = warn_if_repaired(path)
    with open(path, "rb") as f:
        clean_jpeg = repaired is None and simplejpeg.is_jpeg(f.read(16))
    # A JPEG libjpeg-turbo just decoded strictly has nothing to print, so it decodes without the lock and the
    # engine's decode threads stay parallel; anything else may make libjpeg or libpng speak: caught.
    quiet = contextlib.nullcontext([]) if clean_jpeg else native_stderr()
    try:
        with quiet as native:  # their line names no file; ours below (or the warning above) does
            image = imread(str(path))
    except Exception as e:  # cv2 raises on some malformed headers, and over OPENCV_IO_MAX_IMAGE_PIXELS
        if "CV_IO_MAX_IMAGE_PIXELS" in str(e):  # OpenCV's guard (runtime.py), behind ours
            raise InputError(path, f"over the limit of {runtime.max_pixels() / 1e6:g} megapixels (OpenCV refused to "
                                   f"decode it); if the photo is genuine, set {runtime.MAX_PIXELS_ENV} higher") from None
        raise InputError(path, f"cannot decode image ({type(e).__name__})") from None
    if image is None or image.size == 0:
        said = f": {native[-1]}" if native else ""  # libpng's "IDAT: CRC error", which Pillow's load never checks
        raise InputError(path, f"not an image or corrupt (OpenCV could not decode it{said})")
    if image.ndim == 2:  # imread may hand back 2-D for some formats
        image = np.repeat(image[..., None], 3, axis=2)
    if image.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {image.dtype}")
    return image


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` itself if its longest side is at most ``max_side``, else a copy shrunk to it (area average)."""
    h, w = image.shape[:2]
    r = max_side / max(h, w)
    if r >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)


def read_list(path: Path) -> list[str]:
    """The photos a ``.txt`` source names, one per line; blank lines and ``#`` comments are skipped.

    A relative line is taken relative to the list file's folder, so a list travels with its photos.

    Examples:
        >>> read_list(Path("/data/list.txt"))  # lines "a.jpg", "/other/b.jpg"
        ['/data/a.jpg', '/other/b.jpg']
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read the list ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [n if Path(n).is_absolute() else str(path.parent / n) for n in names]


def expand_sources(sources: list[str]) -> tuple[list[Path], list[InputError]]:
    """Turn files, folders, globs and ``.txt`` lists into a list of image files, plus errors for what matched nothing.

    A folder contributes the images directly inside it (by suffix, sorted); a ``.txt`` file contributes
    the photos it lists (``read_list``), one error per missing line, or one for the whole file when no line
    names anything (a text file that is not a list); any other explicitly named file is kept whatever its
    suffix, so a non-image named by the user is reported rather than silently skipped. A photo named twice
    counts once.

    Examples:
        >>> files, errors = expand_sources(["photos/", "more.txt", "shots/*.jpg"])
    """
    import glob

    files: list[Path] = []
    errors: list[InputError] = []
    for src in map(str, sources):
        p = Path(src)
        if p.suffix.lower() == ".txt" and p.is_file():
            try:
                listed = read_list(p)
            except InputError as e:
                errors.append(e)
                continue
            if not listed:
                errors.append(InputError(p, "the list names no photos"))
            more, bad = expand_sources([f for f in listed if not f.lower().endswith(".txt")])  # lists do not nest
            if listed and not more:  # notes, not a list: one line for the file, not one per line of prose
                errors.append(InputError(p, f"not a photo list: none of its {len(listed)} lines names a photo"))
                continue
            files += more
            errors += bad
        elif p.is_dir():
            try:
                named = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as e:  # unreadable folder: reported, the other sources still run
                errors.append(InputError(p, f"cannot list folder ({_os_reason(e)})"))
                continue
            found, special = [], []
            for f in named:  # a FIFO, socket, device link, link loop, dangling link or folder named x.jpg
                try:  # is one line, as when named on its own, never a silent skip; stat does not block
                    check_regular_file(f, "an image file")
                    found.append(f)
                except InputError as e:
                    special.append(e)
            if not named:
                errors.append(InputError(p, "folder holds no images"))
            errors += special
            files += found
        elif p.exists() or p.is_symlink():  # a dangling link or a loop: the read names why, in one line
            files.append(p)
        elif any(c in src for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(src, recursive=True) if Path(f).is_file())
            if not found:
                errors.append(InputError(src, "glob matched no files"))
            files += found
        else:
            errors.append(InputError(p, "file not found"))
    seen: set[Path] = set()
    real = [_real(f) for f in files]
    unique = [f for f, r in zip(files, real) if not (r in seen or seen.add(r))]
    return unique, errors


def input_paths(sources) -> list[Path]:
    """Every path a command reads from ``sources`` (files, folders, globs): what ``--out`` must not touch."""
    files, _ = expand_sources([str(s) for s in sources])
    return [*(Path(s) for s in sources if Path(s).exists()), *files]
