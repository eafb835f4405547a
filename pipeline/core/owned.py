"""What the project wrote, so a later run replaces only that: a report's stamp, and each output folder's list.

A file the user names (``check --json``, ``trace --out``, ``film --out``) is ours when it carries the
command's mark (``stamp``: a JSON report's first key, a page's ``<meta name="generator">``). A file in an
output folder (``predict --out DIR`` and every other) is ours when the folder's ``WRITTEN_LIST`` says a
cardamage run wrote it and it is unchanged since (``written_list``, used by ``core.io.output_folder`` and
``core.io.atomic_path``). Anything else is the user's and is replaced only with ``--overwrite``.

Examples:
    >>> stamp({"ok": True}, "cardamage check")
    {'generator': 'cardamage check', 'ok': True}
    >>> with written_list("runs/predict") as ledger:
    ...     ledger.check(Path("runs/predict/detections.json"))  # InputError if it is the user's
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
from pathlib import Path
from typing import Iterator

from pipeline.core.errors import InputError
from pipeline.core.files import os_reason


def resolved(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` and every link resolved; a symlink loop stays a path (``Path.resolve`` raises
    RuntimeError for one), and so does a link that cannot be read (``/proc/1/fd/0``: EACCES even for root):
    whatever then opens it names the problem."""
    path = Path(path).expanduser()
    try:
        return Path(os.path.realpath(path))
    except OSError:
        return Path(os.path.abspath(path))


#: The first key of every JSON file a command writes to a name the user chose (``check --json``, ``trace --out``):
#: ``{"generator": "cardamage check", ...}``. It is how a later run knows the file is its own earlier output.
GENERATOR_KEY = "generator"


#: A file the user names is sealed: this token and the BLAKE2b of the file's text (written with 64 zeros in
#: their place) stand in its first lines, so a report the user edited since (a note added, a number changed) no
#: longer passes as the command's own and is not replaced without ``--overwrite``.
SEAL = "sealed-by-cardamage:"
UNSEALED = SEAL + "0" * 64
_SEALED = re.compile(re.escape(SEAL) + "([0-9a-f]{64})")
#: The largest named file checked for its seal (a film page with its figures is a few MB): a bigger one is not ours.
MAX_SEALED = 64 << 20


def _seal_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).hexdigest()


def seal(text: str) -> str:
    """``text`` with its first ``UNSEALED`` token made the seal of the whole text (``atomic_write_text`` calls it).

    Examples:
        >>> seal('{"seal": "' + UNSEALED + '"}').startswith('{"seal": "sealed-by-cardamage:')
        True
    """
    return text.replace(UNSEALED, SEAL + _seal_digest(text), 1)


def stamp(obj: dict, generator: str) -> dict:
    """``obj`` with ``{"generator": generator, "seal": ...}`` as its first keys, the marks ``written_by`` looks for.

    Examples:
        >>> list(stamp({"ok": True}, "cardamage check"))
        ['generator', 'seal', 'ok']
    """
    return {GENERATOR_KEY: generator, "seal": UNSEALED,
            **{k: v for k, v in obj.items() if k not in (GENERATOR_KEY, "seal")}}


def written_by(path: str | os.PathLike, generator: str) -> bool:
    """Whether ``path`` is a regular file that ``generator`` wrote and nobody changed since: JSON whose first key
    is its ``stamp``, or an HTML page that opens with ``<!DOCTYPE html>`` and names it in ``<meta name="generator">``
    in its first line, and in either its ``SEAL`` matching its text.

    The first 4 KB are read first (the marks come first), so a file that is not ours costs nothing more.
    A symbolic link is never ours: our writer makes plain files, and replacing a link would drop what it is.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace")
            mark = rf'\s*\{{\s*"{GENERATOR_KEY}"\s*:\s*{re.escape(json.dumps(generator))}\s*[,}}]'
            page = (rf'<!DOCTYPE html>\n<html[^>\n]*><head><meta charset="utf-8"><meta name="generator" '
                    rf'content="{re.escape(generator)}">')
            if (re.match(mark, head) is None and re.match(page, head) is None) or _SEALED.search(head) is None:
                return False
            f.seek(0)
            data = f.read(MAX_SEALED + 1)
    except OSError:
        return False
    if len(data) > MAX_SEALED:
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    m = _SEALED.search(text, 0, 4096 + len(SEAL) + 64)
    return m is not None and _seal_digest(text[:m.start(1)] + "0" * 64 + text[m.end(1):]) == m.group(1)


#: In every output folder, the files cardamage commands wrote there: a JSON line per write, ``[path relative
#: to the folder, size, ctime_ns, inode, BLAKE2b of the bytes or null]``. A later run replaces a file only
#: while it is the same file untouched since, or, in a copied folder (new inodes and times), has the same
#: bytes; anything else in the folder is the user's and is never replaced without ``--overwrite``.
WRITTEN_LIST = ".cardamage-written"
#: A longer list is not read (every line is ~150 bytes: 400,000 files): nothing in that folder counts as ours.
MAX_WRITTEN_LIST = 64 << 20
#: Files up to this size are also known by their bytes' digest; a bigger one (a full dump) only as the same file.
DIGEST_LIMIT = 64 << 20


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


#: A line of the list, as written: ``[str, int, int, int, hex str | null]``; nothing nested, nothing huge.
_LINE = re.compile(rb'\[("(?:[^"\\]|\\.){1,4096}"), (\d{1,20}), (\d{1,20}), (\d{1,20}), ("[0-9a-f]{128}"|null)\]')


def _record(line: bytes):
    """``(rel, size, ctime_ns, inode, digest)`` of one line of the list, or None for anything else (a torn, edited
    or hostile line: that file is simply not known to be ours). Matched by shape first, so a line nested 100,000
    deep or a number of 1e999 is refused, not parsed."""
    m = _LINE.fullmatch(line.strip())
    if m is None:
        return None
    try:
        rel = json.loads(m.group(1))
    except ValueError:
        return None
    digest = None if m.group(5) == b"null" else m.group(5).decode()[1:-1]
    return str(rel), int(m.group(2)), int(m.group(3)), int(m.group(4)), digest


class _Ledger:
    """What cardamage wrote into one output folder, read at the start of a run and appended to at each write."""

    def __init__(self, folder: Path, overwrite: bool):
        self.folder, self.real, self.overwrite = folder, resolved(folder), overwrite
        self.named = Path(os.path.abspath(folder))  # as the user named it, links not followed
        self.lock = threading.Lock()
        self.files: dict[str, tuple[int, int, int, str | None]] = {}
        self.lines = 0
        try:  # O_NOFOLLOW: a link in its place is not our list
            fd = os.open(folder / WRITTEN_LIST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            # a FIFO would hang the read, a folder fail it; a hard link is another file's bytes too
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_size > MAX_WRITTEN_LIST:
                return
            data = os.read(fd, MAX_WRITTEN_LIST + 1)
        except OSError:
            return
        finally:
            os.close(fd)
        for line in data.splitlines():
            self.lines += 1
            rec = _record(line)
            if rec is not None:
                self.files[rec[0]] = rec[1:]

    def rel(self, path: Path) -> str:
        return os.path.relpath(resolved(path.parent) / path.name, self.real)

    def ours(self, path: Path) -> bool:
        """Whether ``path`` is a regular file a cardamage command wrote here and nobody changed since (or,
        in a copy of the folder, a file with the very bytes written)."""
        try:
            st = os.lstat(path)
        except OSError:
            return False
        rec = self.files.get(self.rel(path))
        if rec is None or not stat.S_ISREG(st.st_mode) or rec[0] != st.st_size:
            return False
        if rec[1:3] == (st.st_ctime_ns, st.st_ino):  # ctime: an edit's mtime can be set back (touch -d), not it
            return True
        if rec[1] == 0:  # a linked photo, known by its inode: a link made or removed elsewhere changes its ctime
            return rec[2] == st.st_ino
        try:
            return rec[3] is not None and _digest(path) == rec[3]
        except OSError:
            return False

    #: The most bytes ``appended`` returns: a log one record ahead of its note holds far less.
    MAX_APPENDED = 1 << 20

    def appended(self, path: Path) -> bytes | None:
        """The bytes appended to ``path`` since it was noted, where its first bytes are the very bytes noted (a log
        the trainer appends to, noted after each append: a kill between the two leaves the file a record ahead of
        its note); ``None`` when it is not such a file or more than ``MAX_APPENDED`` bytes were added."""
        rec = self.files.get(self.rel(path))
        try:
            st = os.lstat(path)
            if (rec is None or rec[3] is None or not stat.S_ISREG(st.st_mode) or st.st_size < rec[0]
                    or st.st_size - rec[0] > self.MAX_APPENDED):
                return None
            with open(path, "rb") as f:
                h, left = hashlib.blake2b(), rec[0]
                while left:
                    piece = f.read(min(left, 1 << 20))
                    if not piece:
                        return None
                    h.update(piece)
                    left -= len(piece)
                tail = f.read(self.MAX_APPENDED + 1)
            return tail if h.hexdigest() == rec[3] and len(tail) <= self.MAX_APPENDED else None
        except OSError:
            return None

    def check(self, path: Path) -> None:
        """Raise unless ``path`` is free to (re)write: absent, ours, or ``--overwrite`` was given."""
        if not self.overwrite and os.path.lexists(path) and not self.ours(path):
            what = "a symbolic link" if os.path.islink(path) else "a folder" if path.is_dir() else "a file"
            raise InputError(path, f"is {what} cardamage did not write (or that changed since); a run never "
                                   "replaces it: move it, choose another --out, or pass --overwrite")

    def add(self, path: Path, digest: bool = True) -> None:
        """Note ``path`` (just written) as ours: one line appended, so a killed run still knows its files.
        ``digest=False``: a hard link to a photo of the user's (a converted dataset holds thousands), known by its
        inode and size only: no digest read, and a ctime of 0, since making or removing another link changes it."""
        st = os.stat(path)
        rel = self.rel(path)
        rec = ((st.st_size, st.st_ctime_ns, st.st_ino, _digest(path) if st.st_size <= DIGEST_LIMIT else None) if digest
               else (st.st_size, 0, st.st_ino, None))
        line = json.dumps([rel, *rec]) + "\n"
        lst = self.folder / WRITTEN_LIST
        with self.lock:
            self.files[rel] = rec
            try:  # never through a link, never blocked on a FIFO
                fd = os.open(lst, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                             0o666)  # the umask applies
            except OSError as e:
                raise InputError(lst, f"cannot note what this run writes ({os_reason(e)}): remove it") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise InputError(lst, "is not a regular file, so what this run writes cannot be noted: remove it")
                if st.st_nlink > 1:  # appending would change the other name's file too
                    raise InputError(lst, f"is one of {st.st_nlink} hard links to the same file, so what this run "
                                          "writes cannot be noted here: remove it")
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            self.lines += 1

    def compact(self) -> None:
        """Rewrite the list with one line per file still there and ours, once it holds many stale lines."""
        with self.lock:
            if self.lines <= 2 * len(self.files) + 100:
                return
            keep = {rel: rec for rel, rec in self.files.items() if self.ours(self.real / rel)}
            text = "".join(json.dumps([rel, *rec]) + "\n" for rel, rec in keep.items())
            tmp = self.folder / f"{WRITTEN_LIST}.{os.getpid()}.tmp"
            try:  # O_EXCL: never through a link; 0o666 less the umask, as any file the run writes
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, self.folder / WRITTEN_LIST)
            except OSError:
                return  # the longer list is as good, only longer
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self.files, self.lines = keep, len(keep)


#: The output folders open in this process (``written_list``), by real path; the innermost one holding a
#: file decides whether ``atomic_path`` may replace it.
_LEDGERS: dict[Path, list[_Ledger]] = {}
_LEDGERS_LOCK = threading.Lock()


def ledger_for(path: Path) -> _Ledger | None:
    """The list of the innermost open output folder holding ``path``, or None outside every one.

    Raises:
        InputError: ``path`` is named inside an open output folder but a symbolic link on the way (``OUT/crops ->
            elsewhere``) leads out of it: what a run writes there would land outside its folder.
    """
    if not _LEDGERS:
        return None
    parent = resolved(path.parent)
    named = Path(os.path.abspath(path.parent))
    with _LEDGERS_LOCK:
        for folder in (parent, *parent.parents):
            if folder in _LEDGERS:
                return _LEDGERS[folder][-1]
        for ledgers in _LEDGERS.values():
            out = ledgers[-1]
            if out.named == named or out.named in named.parents:
                raise InputError(path, f"leads out of the output folder {out.folder} through a symbolic link (it is "
                                       f"{parent / path.name}); a run writes only inside its folder: remove the link")
    return None


def is_ours(path: str | os.PathLike) -> bool:
    """Whether ``path``, in an open output folder, is a file a cardamage run wrote there and nobody changed since."""
    ledger = ledger_for(Path(path))
    return ledger is not None and ledger.ours(Path(path))


def note_written(path: str | os.PathLike, digest: bool = True) -> None:
    """Note ``path``, written or grown in place (an appended log), as ours in its open output folder's list."""
    path = Path(path)
    ledger = ledger_for(path)
    if ledger is not None and path.is_file() and not path.is_symlink():
        ledger.add(path, digest)


def _check_folder(ledger: _Ledger, base: Path) -> None:
    """Before the work: ``base`` does not lead out of the output folder, and every file in it (and every link,
    to a folder too) is one the run may replace. A hidden name is never one a run writes (only its temporaries
    are, ``.name.XXXX``), so it is let be."""
    ledger_for(base / "-")  # raises for a link leading out
    if base.is_symlink() or not base.is_dir():
        return
    for parent, dirs, files in os.walk(base):  # a link to a folder is listed, not entered
        for name in sorted(files + [d for d in dirs if os.path.islink(os.path.join(parent, d))]):
            if not name.startswith("."):
                ledger.check(Path(parent) / name)


@contextlib.contextmanager
def written_list(folder: str | os.PathLike, overwrite: bool = False, names=(), compact: bool = False,
                 folders=()) -> Iterator[_Ledger]:
    """While open, what ``atomic_path`` writes below ``folder`` may replace only files a cardamage run wrote there.

    ``output_folder`` opens it under the folder's lock; a Ray worker writing into the same folder for that run
    opens it too (its lines are appended, whole, to the same list). ``names`` (relative to ``folder``) are
    checked at once: the files the command knows it will write; ``folders`` (relative too) the subfolders it
    will write into, each checked not to lead out of ``folder`` through a link and to hold only files (and links)
    the run may replace, so a refusal comes before the work, not halfway. ``compact`` (only under the
    folder's lock, where no other process appends) drops stale lines at the end.

    Raises:
        InputError: one of ``names`` is a file of the user's, a link, or changed since a run wrote it; one of
            ``folders`` is a link (or lies below one) leading out of ``folder``, or holds such a file or link.
    """
    ledger = _Ledger(Path(folder), overwrite)
    lst = Path(folder) / WRITTEN_LIST
    if os.path.lexists(lst) and (lst.is_symlink() or not lst.is_file() or lst.stat().st_nlink > 1):
        raise InputError(lst, "is not a plain file of cardamage's (a link, a folder, a FIFO or a hard link), so what "
                              "this run writes could not be noted: remove it")  # before the work, not after
    with _LEDGERS_LOCK:
        _LEDGERS.setdefault(ledger.real, []).append(ledger)
    try:
        for name in names:
            ledger.check(Path(folder) / name)
        for sub in folders:
            _check_folder(ledger, Path(folder) / sub)
        yield ledger
    finally:
        with _LEDGERS_LOCK:
            _LEDGERS[ledger.real].remove(ledger)
            if not _LEDGERS[ledger.real]:
                del _LEDGERS[ledger.real]
        if compact:
            ledger.compact()
