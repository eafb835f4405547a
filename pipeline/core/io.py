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
import glob
import hashlib
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from safetensors import SafetensorError
from safetensors.torch import save_file
from ultralytics.data.utils import IMG_FORMATS

# defined apart, so the command line can use them without loading this; re-exported for the other layers
from pipeline.core.errors import InputError, one_line, warn_input  # noqa: F401
from pipeline.core.files import (check_regular_file, folders_below, is_present, missing_folders, os_reason,
                                  remove_empty, remove_new_empty_folders)
# what the project wrote: defined apart (one job per module), re-exported for the commands that name files
from pipeline.core.owned import (  # noqa: F401
    GENERATOR_KEY, UNSEALED, WRITTEN_LIST, is_ours, ledger_for, note_written, resolved, seal, stamp, written_by,
    written_list)
# photos in: defined apart (one job per module), re-exported here where most callers import them
from pipeline.core.photo import (  # noqa: F401
    READ_FORMATS, check_pixels, native_stderr, pil_open, quiet_training_reads, read_image, shrink, validate_image,
    warn_if_repaired)


#: What a folder contributes: Ultralytics' own image formats, so predict sees what training sees (no GIF).
IMAGE_SUFFIXES = {f".{suffix}" for suffix in IMG_FORMATS}



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



def _write_reason(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be written, in words: a file where a folder should be says so by name."""
    for parent in path.parents:  # `--json notes.txt/r.json`: the OSError itself only says "Not a directory"
        if parent.exists() and not parent.is_dir():
            return f"cannot write ({parent} is a file, not a folder)"
    return f"cannot write ({os_reason(e)})"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask): mkstemp's
    0600 would otherwise hide every result from the user's group. OS errors become one-line
    ``InputError``s naming ``path`` (not a folder, permission denied, read-only, disk full).

    Inside a folder ``output_folder`` holds open, a file already at ``path`` is replaced only if a
    cardamage command wrote it there and it is unchanged since (``WRITTEN_LIST``), or with ``--overwrite``:
    checked before and again just before the rename, and the new file is noted as ours.
    """
    path = Path(path)
    ledger = ledger_for(path)
    made = missing_folders(path.parent)  # removed again if this write fails and leaves them empty
    try:
        try:
            if path.is_dir():
                raise InputError(path, "is a folder, expected a file path to write")
            if ledger is not None:
                ledger.check(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # the temporary name stays short: ".<name>.XXXXXXXX<suffix>" of a 255-byte name is past NAME_MAX
            suffix = path.suffix if 0 < len(path.suffix) <= 16 else ".tmp"
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=suffix, dir=path.parent)
            os.fchmod(fd, 0o666 & ~UMASK)
            os.close(fd)
        except OSError as e:
            raise InputError(path, _write_reason(path, e)) from None
        tmp = Path(tmp)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~UMASK)  # again: a writer may have replaced the file (safetensors does)
            if ledger is not None:
                ledger.check(path)  # again: the user may have put a file there while this one was being made
            os.replace(tmp, path)
            if ledger is not None:
                try:
                    ledger.add(path)
                except (OSError, InputError):  # not noted (a full disk): a file the next run would refuse as
                    path.unlink(missing_ok=True)  # not its own; written whole and noted, or not at all
                    raise
        except OSError as e:
            raise InputError(path, f"cannot write ({os_reason(e)})") from None
        finally:
            tmp.unlink(missing_ok=True)
    except BaseException:
        remove_empty(made)
        raise




def check_output(out: str | os.PathLike, inputs=(), not_inside=()) -> Path:
    """Refuse, before any work, an output that could touch the user's input; return ``out`` as a Path.

    ``out`` may not be one of ``inputs`` (files or folders the command reads), may not hold one of them
    (anything written there could land on it), and may not lie inside a folder of ``not_inside`` (a
    dataset split that training scans recursively). An existing file is not an output folder.

    Raises:
        InputError: one line naming ``out`` and the input it would touch.
    """
    out = Path(out)
    target = resolved(out)
    for item in inputs:
        source = resolved(item)
        if source == target or target in source.parents:
            verb = "is" if source == target else "holds"
            raise InputError(out, f"output {verb} an input ({item}); results would mix with or overwrite it: "
                                  "choose another output folder")
    for folder in not_inside:
        folder_r = resolved(folder)
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
                target = f"unreadable: {os_reason(e)}"
            raise InputError(path, f"is a symbolic link (to {target}); a run writes only inside its own folder "
                                   "and would write through it: remove the link, or choose another --out")


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
    if str(out).endswith(("/", os.sep)):  # Path() drops the slash: "dir.json/" would be written as a file
        raise InputError(out, "names a folder (it ends in a slash); expected a file name to write")
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; expected a file name to write")
    for item in inputs:
        if Path(item).exists() and resolved(item) == resolved(out):
            raise InputError(out, f"is an input of this command ({item}); choose another file name")
    if out.suffix.lower() != suffix:
        raise InputError(out, f"expected a file name ending in {suffix} (this command writes {suffix[1:].upper()})")
    if generator and not overwrite and (out.exists() or out.is_symlink()) and not written_by(out, generator):
        raise InputError(out, f"exists and is not an earlier output of {generator}; choose another file name, "
                              "or pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, inputs=(), not_inside=(), overwrite: bool = False,
                  names=(), folders=()) -> Iterator[Path]:
    """Check ``out`` (``check_output``), create it, prove it writable, and lock it while a command writes.

    While it is open, a file the command writes into it (through ``atomic_path``) may replace only a file a
    cardamage command wrote there before and nobody changed since (its ``WRITTEN_LIST``): a user's own
    ``detections.json``, photo or symbolic link of the same name is refused with one line, unless
    ``overwrite`` (``--overwrite``). ``names`` (relative to ``out``) are the files the command knows it will
    write, and ``folders`` the subfolders it writes into (``crops``, ``report_files``): they are checked at
    once, before the work (a file of the user's, a link leading out of ``out``).

    The lock is an ``flock`` on the folder itself: the kernel drops it when the process ends, so a
    killed run never leaves a folder stuck, and a second run into the same folder at the same time is
    refused with one line instead of mixing its results with the first run's. A folder this call
    created and nothing was written into is removed again, so a run refused before it writes leaves no
    trace; a run that fails after writing keeps what it wrote (train: the dataset view, a ``last.pt`` to resume).
    A run that fails (an error, a full disk, Ctrl-C) also removes every folder below ``out`` it made that is
    still empty, deepest first, whoever made it (``make_folder``, ``atomic_path``, a ``mkdir`` of Ultralytics'
    such as LayerCAM's): a folder that was there before the run, or that holds anything, stays.

    Examples:
        >>> with output_folder("runs/predict", inputs=["photos/"]) as out:
        ...     atomic_write_json(out / "detections.json", [])
    """
    out = check_output(out, inputs, not_inside)
    created = not out.exists()
    parents = missing_folders(out.parent)  # made for --out: removed with it when the run leaves them empty
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise InputError(out, _write_reason(out, e).replace("cannot write", "cannot create the output folder")) from None
    before: set[str] | None = None  # the folders below ``out`` that were there before the run (none if it made out)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(out, "busy: another cardamage run is writing into this folder; "
                                  "wait for it or choose another output folder") from None
        before = set() if created else folders_below(out, MAX_GLOB)  # under the lock: no other run is adding any
        try:
            tempfile.TemporaryFile(dir=out).close()  # read-only or full: one line now, not after the work
        except OSError as e:
            raise InputError(out, f"cannot write here ({os_reason(e)})") from None
        with written_list(out, overwrite, names, compact=True, folders=folders):
            yield out
    except BaseException:
        if before is not None:  # still under the lock: a folder removed here is not one another run just made
            remove_new_empty_folders(out, before)
        raise
    finally:
        os.close(fd)  # releases the flock
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds if empty
                remove_empty(parents)




def check_inside(out: str | os.PathLike, folders) -> None:
    """Refuse, before the work, a subfolder of the open output folder ``out`` that leads out of it through a link.

    Raises:
        InputError: one line naming the first such folder.
    """
    for sub in folders:
        ledger_for(Path(out) / sub / "-")


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents) for a command's output, and return it.

    Inside an open output folder, a folder reached through a symbolic link leading out of it is refused before
    anything is created there (``ledger_for``), as a file written there would be.

    Raises:
        InputError: the folder leads out of the output folder, or cannot be created (one line, naming it).
    """
    path = Path(path)
    ledger_for(path / "-")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(path, _write_reason(path, e).replace("cannot write", "cannot create the folder")) from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; a text carrying ``owned.UNSEALED`` in its first lines (a
    ``stamp``-ed report, a film page) is sealed first (``owned.seal``)."""
    if UNSEALED in text[:4096]:
        text = seal(text)
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
    check_regular_file(path, "a file to read")
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


#: The largest photo list read (``predict list.txt``, a data.yaml's ``train: list.txt``): a line is a path of
#: some 40 to 100 bytes, so 64 MiB lists about a million photos (COCO's train2017.txt lists 118,287 in under
#: 5 MB). A bigger file is refused unread: a list of a gigabyte took near three times its size to read and split.
MAX_LIST_BYTES = 64 << 20
#: The longest line of a photo list: Linux's PATH_MAX. A longer line names no file, and is not echoed.
MAX_LIST_LINE = 4096


def list_lines(path: Path) -> Iterator[str]:
    """The lines of a photo list, streamed (``str.splitlines``' rule, as Ultralytics reads a list).

    Raises:
        InputError: one line naming the list when it is over ``MAX_LIST_BYTES`` (before a byte is read),
            has a line over ``MAX_LIST_LINE`` characters (a file of zeros has one), or is unreadable or not UTF-8.
    """
    try:
        size = os.stat(path).st_size
        if size > MAX_LIST_BYTES:
            raise InputError(path, f"{size:,} bytes is too large for a photo list (the limit is {MAX_LIST_BYTES:,})")
        with open(path, encoding="utf-8") as f:
            # readline with a limit: a line with no newline in a gigabyte is cut after MAX_LIST_LINE + 1 characters
            for n, line in enumerate(iter(lambda: f.readline(MAX_LIST_LINE + 1), ""), 1):
                if len(line.rstrip("\r\n")) > MAX_LIST_LINE:
                    raise InputError(path, f"line {n} is longer than {MAX_LIST_LINE:,} characters (no path is "
                                           "that long): not a photo list")
                yield from line.splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read the list ({getattr(e, 'strerror', None) or type(e).__name__})") from None


def read_list(path: Path) -> list[str]:
    """The photos a ``.txt`` source names, one per line; blank lines and ``#`` comments are skipped.

    A relative line is taken relative to the list file's folder, so a list travels with its photos. The file is
    read as ``list_lines`` reads it: over ``MAX_LIST_BYTES``, or with a line no path could be, it is one line.

    Examples:
        >>> read_list(Path("/data/list.txt"))  # lines "a.jpg", "/other/b.jpg"
        ['/data/a.jpg', '/other/b.jpg']
    """
    names = [line.strip() for line in list_lines(path) if line.strip() and not line.strip().startswith("#")]
    return [n if Path(n).is_absolute() else str(path.parent / n) for n in names]


#: The most paths one glob may match, or walk past below a ``**``: a quoted ``'/**'`` would otherwise list a whole
#: file system (and ``/proc/self/**`` never ends). COCO's train2017 is 118,287 photos.
MAX_GLOB = 1_000_000


def walks_past(root: str | os.PathLike, limit: int | None = None) -> bool:
    """Whether a recursive walk of ``root`` (links followed, as a ``**`` glob follows them) passes ``limit``
    entries (default ``MAX_GLOB``), stopping as soon as it does: ``/usr`` or ``/proc`` named as a dataset
    folder, or a quoted ``/proc/**/*.jpg``, would otherwise be listed whole (minutes, gigabytes)."""
    limit = MAX_GLOB if limit is None else limit
    seen = 0
    for _, dirs, files in os.walk(root, followlinks=True):
        seen += len(dirs) + len(files)
        if seen > limit:
            return True
    return False


def _walks_too_far(pattern: str) -> bool:
    """Whether a ``**`` in ``pattern`` would walk past ``MAX_GLOB`` paths below its fixed part (``/proc`` in
    ``/proc/**/*.jpg``). The glob itself counts only what matches, so a walk of a whole file system matching
    nothing ran for minutes; here every entry walked counts."""
    if "**" not in pattern:
        return False
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return walks_past(Path(*parts[:fixed]) if fixed else Path("."))


def _glob(pattern: str) -> tuple[list[Path], InputError | None]:
    """The files ``pattern`` matches (``**`` recursive), sorted, or an error past ``MAX_GLOB`` paths."""
    if _walks_too_far(pattern):
        return [], InputError(pattern, f"glob walks more than {MAX_GLOB:,} paths: name a narrower one")
    found = list(itertools.islice(glob.iglob(pattern, recursive=True), MAX_GLOB + 1))
    if len(found) > MAX_GLOB:
        return [], InputError(pattern, f"glob walks more than {MAX_GLOB:,} paths: name a narrower one")
    return sorted(Path(f) for f in found if _file_or_unreadable(Path(f))), None


def _file_or_unreadable(path: Path) -> bool:
    """Whether a glob's match is a file to read: a file, or something that cannot be looked at (a link into
    another process's ``/proc/PID/fd``), which reading then names in one line; not a folder."""
    try:
        return path.is_file()
    except OSError:
        return True


def expand_sources(sources: list[str], globs: bool = True) -> tuple[list[Path], list[InputError]]:
    """Turn files, folders, globs and ``.txt`` lists into a list of image files, plus errors for what matched nothing.

    A folder contributes the images directly inside it (by suffix, sorted); a ``.txt`` file contributes
    the photos it lists (``read_list``), one error per missing line, or one for the whole file when no line
    names anything (a text file that is not a list); any other explicitly named file is kept whatever its
    suffix, so a non-image named by the user is reported rather than silently skipped. A photo named twice
    counts once. A list's lines are paths as written (``globs=False``): a line ``/proc/self/**`` names no file.

    Examples:
        >>> files, errors = expand_sources(["photos/", "more.txt", "shots/*.jpg"])
    """
    files: list[Path] = []
    errors: list[InputError] = []
    for src in map(str, sources):
        p = Path(src)
        try:  # a link that cannot be followed (``/proc/1/fd/0``: EACCES even for root) raises in exists()
            p.exists()
        except OSError as e:
            errors.append(InputError(p, f"cannot read ({os_reason(e)})"))
            continue
        if p.suffix.lower() == ".txt" and p.is_file():
            try:
                listed = read_list(p)
            except InputError as e:
                errors.append(e)
                continue
            if not listed:
                errors.append(InputError(p, "the list names no photos"))
            # lists do not nest, and their lines are names, not patterns
            more, bad = expand_sources([f for f in listed if not f.lower().endswith(".txt")], globs=False)
            if listed and not more:  # notes, not a list: one line for the file, not one per line of prose
                errors.append(InputError(p, f"not a photo list: none of its {len(listed)} lines names a photo"))
                continue
            files += more
            errors += bad
        elif p.is_dir():
            try:
                named = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            except OSError as e:  # unreadable folder: reported, the other sources still run
                errors.append(InputError(p, f"cannot list folder ({os_reason(e)})"))
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
        elif globs and any(c in src for c in "*?["):
            found, too_many = _glob(src)
            if too_many or not found:
                errors.append(too_many or InputError(src, "glob matched no files"))
            files += found
        else:
            errors.append(InputError(p, "file not found"))
    seen: set[Path] = set()
    real = [resolved(f) for f in files]
    unique = [f for f, r in zip(files, real) if not (r in seen or seen.add(r))]
    return unique, errors


def input_paths(sources) -> list[Path]:
    """Every path a command reads from ``sources`` (files, folders, globs): what ``--out`` must not touch."""
    files, _ = expand_sources([str(s) for s in sources])
    return [*(Path(s) for s in sources if is_present(s)), *files]
