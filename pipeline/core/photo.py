"""Photos in: one decode decides what is a photo, with every refusal one line naming the file.

``validate_image`` (size from the header, then a whole decode at 1/8 scale), ``warn_if_repaired`` (what libjpeg
had to fill in), ``read_image`` (Ultralytics' own reader after both), and the native decoders' own stderr lines
caught (``native_stderr``, ``quiet_training_reads``). ``pipeline.core.io`` re-exports them, where most callers
import them.

Examples:
    >>> from pipeline.core.photo import read_image
    >>> read_image("photo.jpg").shape  # BGR uint8, HxWx3, exactly as Ultralytics reads it
    (480, 640, 3)
"""

from __future__ import annotations

import contextlib
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
from ultralytics.utils import patches as ultralytics_patches
from ultralytics.utils.patches import imread

from pipeline.core import runtime
from pipeline.core.errors import InputError, one_line, warn_input
from pipeline.core.files import check_regular_file, os_reason

#: Pillow's own ``Image.open``: Ultralytics patches ``PIL.Image.open`` to pip-check pi-heif on every format
#: Pillow does not know (a coloured requirements warning on a text file named .jpg); ours never does.
pil_open = getattr(ultralytics_patches, "_image_open", PIL.Image.open)

#: The formats a photo may be in, said in the refusal of any other: Ultralytics' own list less what Pillow
#: cannot read without a plugin (HEIC, HEIF) or at all (DNG's raw data; Pillow reads a DNG only where it is
#: a plain TIFF, and then as TIFF). ``test_every_format_named_is_one_pillow_reads`` keeps it true.
READ_FORMATS = "JPEG, PNG, BMP, TIFF, WebP, JPEG 2000, AVIF, MPO"



#: bytes a pixel of an 8-bit photo holds at OpenCV's decode peak: its BGR, twice while it is handed over. The
#: pixel limit is sized for these; a deeper file counts as the 8-bit photo that costs the same (``decode_cost``).
PHOTO_DECODE_BYTES = 6


#: a JPEG's first bytes: start of image, then a marker
JPEG_MAGIC = b"\xff\xd8\xff"


def _held(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _pixel_refusal(pixels: int, limit: int) -> str:
    return (f"{pixels / 1e6:.1f} megapixels, over the limit of {limit / 1e6:g} (decoding would take {_held(3 * pixels)}); "
            f"if the photo is genuine, set {runtime.MAX_PIXELS_ENV} to a higher number of pixels")


def check_pixels(path: str | os.PathLike, width: int, height: int, decode_bytes: float = PHOTO_DECODE_BYTES,
                 why: str = "") -> None:
    """Raise ``InputError`` if a ``width`` x ``height`` photo is over the pixel limit (``runtime.max_pixels``).

    ``decode_bytes`` is what a pixel holds at the decoder's peak (``decode_cost``): a file that holds more than
    an 8-bit photo's ``PHOTO_DECODE_BYTES`` counts as the 8-bit photo that costs the same, ``why`` saying why.
    """
    try:
        limit = runtime.max_pixels()
    except ValueError as e:
        raise InputError(runtime.MAX_PIXELS_ENV, str(e)) from None
    pixels = int(width) * int(height)
    if pixels > limit:
        raise InputError(path, _pixel_refusal(pixels, limit))
    if pixels * decode_bytes > limit * PHOTO_DECODE_BYTES:
        like = pixels * decode_bytes / PHOTO_DECODE_BYTES
        raise InputError(path, f"{pixels / 1e6:.1f} megapixels {why}: decoding would take {_held(pixels * decode_bytes)} "
                               f"at the decoder's peak, as much as {like / 1e6:.1f} megapixels of a JPEG, over the "
                               f"limit of {limit / 1e6:g}; if the photo is genuine, set {runtime.MAX_PIXELS_ENV} higher")


#: pages of a TIFF (or frames of a file named .tif) read for its cost before it is refused unread (each is a
#: seek in Pillow)
MAX_TIFF_PAGES = 1000


def _tiff_bits(im: PIL.Image.Image) -> tuple[int, ...]:
    bits = im.tag_v2.get(258, 8)
    return tuple(bits) if isinstance(bits, (tuple, list)) else (bits,) * int(im.tag_v2.get(277, 1))


#: bytes a pixel of an AVIF costs at its decode's peak, the most of what was measured on 8000x8000 files: an
#: 8-bit one named .avif goes through Ultralytics' Pillow fallback (three copies), a 12-bit one named .jpg
#: through OpenCV's decoder at 16 bits
AVIF_DECODE_BYTES = 20
#: bytes a pixel of a WebP costs at its decode's peak, measured on 8000x8000 and 10000x10000 files (RGB and RGBA
#: alike): libwebp's own RGBA and YUV planes beside OpenCV's BGR
WEBP_DECODE_BYTES = 17
#: The formats a photo may be in (``READ_FORMATS``, as Pillow names them), each with its decode measured at
#: ``PHOTO_DECODE_BYTES`` or at its own cost above. Any other Pillow decodes (GIF, PPM/PGM/PBM, PFM, ... even
#: named .jpg) is refused by its content: a 144 MP float PFM or 16-bit PGM, and a 150 MP GIF, each peaked above a
#: 150 MP JPEG (fifth hostile retest), and Pillow's check of a 16-bit PPM runs in Python at ~5 s a megapixel (sixth).
MEASURED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP", "AVIF", "TIFF", "JPEG2000"})
#: bytes a file may hold beyond its pixels' (EXIF, XMP, ICC, an embedded preview): what is more is not a photo
PHOTO_EXTRA_BYTES = 64 << 20


def _multi_scan(path: str | os.PathLike) -> bool:
    """Whether a baseline JPEG's first scan holds fewer components than its frame: its colours come in scans of
    their own, and libjpeg keeps every coefficient until the last, as for a progressive JPEG (which Pillow
    flags; this it does not). Reads the markers up to the first scan only."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)  # the markers before the first scan: tables, EXIF (at most 64 KB a segment)
    at, frame = 2, 0
    while at + 4 <= len(head) and head[at] == 0xFF:
        marker, length = head[at + 1], int.from_bytes(head[at + 2:at + 4], "big")
        if marker in (0xC0, 0xC1) and at + 9 < len(head):
            frame = head[at + 9]  # Nf: components in the frame
        elif marker == 0xDA and at + 4 < len(head):
            return 0 < head[at + 4] < frame  # Ns: components in this scan
        at += 2 + length
    return False


def _frame_bytes(im: PIL.Image.Image) -> int:
    """Bytes a pixel of the current frame holds decoded at its own depth (at least 3: the BGR handed on)."""
    if im.format == "TIFF":
        return max(3, sum(_tiff_bits(im)) // 8)
    return max(3, len(im.getbands()) * (2 if im.mode.startswith("I;16") else 4 if im.mode in ("I", "F") else 1))


def decode_cost(path: str | os.PathLike, im: PIL.Image.Image) -> tuple[float, str]:
    """Bytes a pixel of ``im`` costs at the decode's peak, and why when it is more than an 8-bit photo's, from
    the headers alone (each kind measured with the reader: docs/robustness.md, "Memory on any input").

    Most decoders (libjpeg, libpng, libwebp...) write 8-bit BGR straight away: ``PHOTO_DECODE_BYTES``. OpenJPEG
    decodes every sample of a JPEG 2000 to a 32-bit integer first; libjpeg keeps a progressive JPEG's every
    coefficient (2 bytes a sample) until its last scan; AVIF goes through Pillow or a 16-bit decode. And
    Ultralytics' reader decodes every page of a file named .tif or .tiff, whatever is inside (an animated PNG
    or WebP too), each at its own depth and held twice at its peak, to keep the first: so it counts them all.
    """
    if Path(path).suffix.lower() in (".tif", ".tiff") or im.format == "TIFF":
        pages = getattr(im, "n_frames", 1)
        if pages > MAX_TIFF_PAGES:
            raise InputError(path, f"{pages} pages or frames in a file named {Path(path).suffix}: the reader "
                                   f"decodes every one to keep the first; at most {MAX_TIFF_PAGES} are read")
        held, deepest = 0, 8
        try:
            for page in range(pages):
                im.seek(page)
                if im.format == "TIFF":
                    deepest = max(deepest, *_tiff_bits(im))
                held += 2 * im.width * im.height * _frame_bytes(im)
        finally:
            im.seek(0)
        kind = f"{deepest}-bit TIFF" if im.format == "TIFF" else f"{im.format} named {Path(path).suffix}"
        unit = "pages" if im.format == "TIFF" else "frames"
        why = f"of {kind}" + (f" with {pages} {unit} (Ultralytics' reader decodes every one)" if pages > 1 else "")
        return held / (im.width * im.height) + 3, why
    if im.format == "JPEG2000":
        return 4 * len(im.getbands()) + 3, f"of JPEG 2000 ({len(im.getbands())} samples, 4 bytes each in OpenJPEG)"
    progressive = im.format == "JPEG" and ("progressive" in im.info or "progression" in im.info)
    if progressive or (im.format == "JPEG" and _multi_scan(path)):
        layers = getattr(im, "layer", None) or [("", 1, 1, 0)] * len(im.getbands())
        hmax, vmax = max(h for _, h, _, _ in layers), max(v for _, _, v, _ in layers)
        samples = sum(h * v for _, h, v, _ in layers) / (hmax * vmax)
        kind = "progressive JPEG" if progressive else "JPEG with a scan per colour"
        return PHOTO_DECODE_BYTES + 2 * samples, f"of {kind} ({samples:g} samples a pixel kept as coefficients)"
    if im.format == "AVIF":
        return AVIF_DECODE_BYTES, "of AVIF"
    if im.format == "WEBP":
        return WEBP_DECODE_BYTES, "of WebP"
    return PHOTO_DECODE_BYTES, ""


def _unreadable_samples(im: PIL.Image.Image) -> str | None:
    """Why OpenCV's photo reader cannot decode ``im``'s samples, or None: a TIFF of 32-bit or floating-point
    samples (a measurement, not a photo) is refused by libtiff's RGBA reader, which says so in a raw log line."""
    if im.format != "TIFF":
        return None
    bits = max(_tiff_bits(im))
    fmt = im.tag_v2.get(339, 1)
    fmt = max(fmt) if isinstance(fmt, (tuple, list)) else fmt
    if fmt == 3 or bits > 16:
        kind = "floating-point" if fmt == 3 else f"{bits}-bit"
        return f"TIFF of {kind} samples (mode {im.mode}): not a photo format OpenCV reads; save it with 8 or 16 bits a sample"
    return None


def check_file_size(path: str | os.PathLike, size: int) -> None:
    """Raise ``InputError`` if a photo file is larger than the decode budget itself (``PHOTO_DECODE_BYTES`` a
    pixel of the pixel limit): twice the bytes of any photo under the limit, even uncompressed. The file is
    read whole (by the checks here, by Ultralytics' reader), so a small photo with gigabytes after its end
    marker, which decoders accept, would cost those gigabytes."""
    try:
        cap = PHOTO_DECODE_BYTES * runtime.max_pixels()
    except ValueError as e:
        raise InputError(runtime.MAX_PIXELS_ENV, str(e)) from None
    if size > cap:
        try:  # a photo over the pixel limit is refused for that, from its header, as any other is
            with pil_open(path) as im:
                width, height = im.width, im.height
        except Exception:  # noqa: BLE001 - Pillow cannot say (not a photo, a bomb): the size is the reason
            width = height = 0
        check_pixels(path, width, height)
        raise InputError(path, f"a file of {_held(size)}, over the {_held(cap)} that any photo under the limit of "
                               f"{cap / PHOTO_DECODE_BYTES / 1e6:g} megapixels stays under; if the photo is "
                               f"genuine, set {runtime.MAX_PIXELS_ENV} higher")


def check_own_size(path: str | os.PathLike, size: int, pixels: int) -> None:
    """Raise ``InputError`` if a photo file holds far more bytes than its own pixels could: 8 a pixel (16-bit
    RGBA, uncompressed) and ``PHOTO_EXTRA_BYTES`` of metadata. Decoders accept bytes after the image's end, and
    the file is read whole, more than once at a time (docs/robustness.md, "Memory on any input")."""
    cap = 8 * pixels + PHOTO_EXTRA_BYTES
    if size > cap:
        raise InputError(path, f"a file of {_held(size)} for {pixels / 1e6:.2g} megapixels: over the {_held(cap)} its "
                               "pixels and metadata can take; the rest is not a photo (bytes after the image?)")


def _png_bad_chunk(path: str | os.PathLike) -> str | None:
    """The type of the first PNG chunk whose CRC does not match its bytes, or None (not a PNG, or all match).

    Pillow's ``load`` does not check chunk CRCs; libpng does, refuses the file and prints "libpng error: IDAT:
    CRC error" in two writes (text, then newline), which no catching of fd 2 can keep apart from another
    thread's line printed between them. So the CRCs are checked here, before libpng sees the file, chunk by
    chunk in pieces of at most 1 MB (crc32 runs on), up to IEND: what follows it is never read.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None  # not a PNG: not read further
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None  # truncated: Pillow's decode has already said so, or will
            left, kind = int.from_bytes(head[:4], "big"), head[4:]
            crc = zlib.crc32(kind)
            while left:
                piece = f.read(min(left, 1 << 20))
                if not piece:
                    return None
                crc, left = zlib.crc32(piece, crc), left - len(piece)
            stored = f.read(4)
            if len(stored) < 4:
                return None
            if crc != int.from_bytes(stored, "big"):
                return kind.decode("latin-1")
            if kind == b"IEND":
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
    size = check_regular_file(path, "an image file").st_size  # Pillow's open would block on a FIFO forever
    check_file_size(path, size)
    try:
        bad_chunk = _png_bad_chunk(path)
    except OSError as e:
        raise InputError(path, os_reason(e)) from None
    if bad_chunk:  # an error, as libpng (OpenCV's decoder) and Ultralytics' training check refuse it
        raise InputError(path, f"corrupt image: PNG chunk {one_line(bad_chunk)} fails its CRC check")
    try:
        with pil_open(path) as im:
            if im.format not in MEASURED_FORMATS:  # by its content, whatever its name; nothing decoded yet
                raise InputError(path, f"{one_line(im.format)} image: not a format this project reads (formats read: "
                                       f"{READ_FORMATS})")
            check_pixels(path, im.width, im.height, *decode_cost(path, im))
            check_own_size(path, size, im.width * im.height)
            unreadable = _unreadable_samples(im)
            if unreadable:
                raise InputError(path, unreadable)
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
            raise InputError(path, os_reason(e)) from None
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
        if f.read(3) != JPEG_MAGIC:
            return None  # not a JPEG: not read further
        f.seek(0)
        data = f.read()
    if not simplejpeg.is_jpeg(data):  # its header must parse too (is_jpeg reads it: 16 bytes are not enough)
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
#: A line starts one, or follows text glued to it with no separator: Python writes a print's text and its newline
#: apart, so another thread's text can sit just before libjpeg's line (its newline after). Not after a space, a
#: quote or "(": our own warning quotes libjpeg's text ("... (Corrupt JPEG data: ...)") and must come back whole
#: when printed while another thread has fd 2. libpng writes its message and its newline apart, so a line
#: another thread prints between the two is glued to it and goes with it: ``_png_bad_chunk`` keeps the CRC case,
#: the one a photo meets, from reaching libpng at all.
_NATIVE_LINE = re.compile(rb"(?:^|(?<=[^\s(\"']))(Corrupt JPEG data|Premature end of JPEG file|Warning: unknown JFIF|libpng (error|warning)"
                          rb"|Invalid SOS parameters|Bogus |Unsupported marker|Huffman table"
                          rb"|\[ ?(WARN|ERROR|INFO):[^\]\n]*\] global )[^\n]*\n?", re.MULTILINE)
#: OpenCV's own log prefix (``[ WARN:0@0.011] global grfmt_tiff.cpp:811 readData ``), cut from a line we quote
_OPENCV_PREFIX = re.compile(r"^\[ ?(WARN|ERROR|INFO):[^\]]*\] global \S+ \S+ ")
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
        raise InputError(path, os_reason(e)) from None
    validate_image(path)
    repaired = warn_if_repaired(path)
    with open(path, "rb") as f:
        clean_jpeg = repaired is None and f.read(3) == JPEG_MAGIC
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
        said = f": {_OPENCV_PREFIX.sub('', native[-1])}" if native else ""  # libpng's "IDAT: CRC error", which Pillow's load never checks
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
