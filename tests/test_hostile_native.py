"""Issue #30, what native libraries did behind the project's back: OpenCV decoding a format Pillow cannot
read (a float HDR past the pixel limit), folders' special files skipped without a word, libjpeg's and
libpng's own stderr lines, matplotlib quoting a file name's control characters, and explore's missing
warnings summary. docs/robustness.md ("Photos: decoding decides", "Memory on any input") cites these tests.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest

from pipeline.cli import main
from pipeline.core.io import READ_FORMATS, expand_sources, native_stderr
from test_hostile_inputs import _scan_cut_short
from test_memory import SHARE_KIB, measure_imports_kib
from test_trust import REPO, cli, jpeg_bytes, photos, weights  # noqa: F401 - fixtures

#: A raw control byte on the terminal: C0 but tab and newline, DEL, and the C1 controls as UTF-8 (U+0085...).
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def _hdr(width: int, height: int) -> bytes:
    """A Radiance HDR (RLE scanlines of one colour): Pillow cannot identify it, OpenCV decodes it as float32."""
    line = bytearray(b"\x02\x02" + bytes([width >> 8, width & 255]))
    for c in (128, 64, 32, 129):
        n = width
        while n:
            k = min(127, n)
            line += bytes([128 + k, c])
            n -= k
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (height, width) + bytes(line) * height


def _png_bad_crc(chunk: bytes) -> bytes:
    """A good PNG with one byte of ``chunk``'s CRC flipped: libpng refuses it, Pillow's load does not check."""
    img = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    data = bytearray(cv2.imencode(".png", img)[1].tobytes())
    at = data.index(chunk)
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


# ------------------------------------------------------------------ F1. formats Pillow cannot identify


def test_a_hdr_named_jpg_is_refused_before_opencv_decodes_it(weights, photos, tmp_path):  # noqa: F811
    hdr = tmp_path / "hdr.jpg"
    hdr.write_bytes(_hdr(64, 64))
    assert cv2.imread(str(hdr), cv2.IMREAD_UNCHANGED).dtype == np.float32  # what used to reach the model
    good = sorted(photos.iterdir())[0]
    r = cli("predict", "--weights", weights, "--imgsz", "64", hdr, good, "--out", tmp_path / "o", timeout=120)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    reason = f"not an image or corrupt (Pillow cannot identify it; formats read: {READ_FORMATS})"
    assert errors == [f"error: {hdr}: {reason}"]
    assert r.returncode == 1 and "1 image," in r.stdout + r.stderr  # the good photo still ran


def test_every_format_named_is_one_pillow_reads():
    PIL.Image.init()
    pillow = {"JPEG": "JPEG", "PNG": "PNG", "BMP": "BMP", "TIFF": "TIFF", "WebP": "WEBP", "JPEG 2000": "JPEG2000",
              "AVIF": "AVIF",
              "MPO": "JPEG"}  # Pillow opens an MPO with its JPEG opener, which hands back an MpoImageFile
    named = READ_FORMATS.split(", ")
    assert set(named) <= set(pillow)
    assert all(pillow[n] in PIL.Image.OPEN for n in named)


@pytest.mark.slow
def test_a_large_hdr_costs_no_decode(weights, tmp_path):  # noqa: F811
    """An 8000x8000 HDR (64 MP, under the pixel limit) decoded to float32 (768 MB) took the process past its
    memory promise: refused, it costs less above the imports than one 64 MP photo's share (tests/test_memory.py)."""
    hdr = tmp_path / "hdr8000.jpg"
    hdr.write_bytes(_hdr(8000, 8000))
    # a fresh parent whose only child is the command: its RUSAGE_CHILDREN peak is that command's alone
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-m", "pipeline", "predict", "--weights", str(weights), "--imgsz", "64", str(hdr),
           "--out", str(tmp_path / "o")]
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert "Pillow cannot identify it" in r.stderr, r.stderr
    assert int(r.stdout.split()[-1]) - measure_imports_kib() < SHARE_KIB


# ------------------------------------------------------------------ F6. special files inside a folder


@pytest.fixture
def folder_with_specials(tmp_path):
    """One good photo beside a FIFO, socket, /dev/zero link, symlink loop, dangling link and folder, all .jpg."""
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.jpg").write_bytes(jpeg_bytes(0))
    os.mkfifo(d / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.jpg"))
    (d / "zero.jpg").symlink_to("/dev/zero")
    (d / "loop.jpg").symlink_to(d / "loop.jpg")
    (d / "dangling.jpg").symlink_to(d / "nowhere.jpg")
    (d / "dir.jpg").mkdir()
    yield d
    sock.close()


def _special_lines(d: Path) -> list[str]:
    return sorted([f"error: {d / 'fifo.jpg'}: not a regular file (a FIFO), expected an image file",
                   f"error: {d / 'sock.jpg'}: not a regular file (a socket), expected an image file",
                   f"error: {d / 'zero.jpg'}: not a regular file (a device), expected an image file",
                   f"error: {d / 'loop.jpg'}: Too many levels of symbolic links",
                   f"error: {d / 'dangling.jpg'}: file not found",
                   f"error: {d / 'dir.jpg'}: is a folder, expected an image file"])


def test_expand_sources_names_each_special_file_in_a_folder(folder_with_specials):
    d = folder_with_specials
    files, errors = expand_sources([str(d)])
    assert files == [d / "good.jpg"]
    assert sorted(f"error: {e}" for e in errors) == _special_lines(d)


@pytest.mark.parametrize("command", ["predict", "inspect"])
def test_a_folders_special_files_are_one_line_each_and_the_rest_runs(command, folder_with_specials,
                                                                     weights, tmp_path):  # noqa: F811
    d, out = folder_with_specials, tmp_path / "o"
    r = cli(command, "--weights", weights, "--imgsz", "64", d, "--out", out, timeout=120)
    assert sorted(line for line in r.stderr.splitlines() if line.startswith("error: ")) == _special_lines(d)
    assert r.returncode == 1 and any(out.iterdir())  # the good photo was processed


# ------------------------------------------------------------------ F7. the native decoders' own lines


def test_libjpeg_and_libpng_lines_are_not_printed_beside_ours(weights, tmp_path):  # noqa: F811
    cut, idat = tmp_path / "cut_scan.jpg", tmp_path / "badcrc_idat.png"
    cut.write_bytes(_scan_cut_short(jpeg_bytes(3, size=(240, 320))))
    idat.write_bytes(_png_bad_crc(b"IDAT"))
    r = cli("predict", "--weights", weights, "--imgsz", "64", cut, idat, "--out", tmp_path / "o", timeout=120)
    lines = r.stderr.splitlines()
    assert not [line for line in lines if line.startswith(("Corrupt JPEG", "libpng"))], r.stderr
    assert f"warning: {cut}: damaged JPEG, decoded with the gaps filled (Corrupt JPEG data: premature end of data " \
           "segment)" in lines
    # decoding decides: libpng refuses the stream (so does the CRC check of Ultralytics' training), an error
    assert f"error: {idat}: corrupt image: PNG chunk IDAT fails its CRC check" in lines
    assert r.returncode == 1


def test_a_png_with_a_broken_header_crc_is_one_line(tmp_path):
    ihdr = tmp_path / "badcrc_ihdr.png"
    ihdr.write_bytes(_png_bad_crc(b"IHDR"))
    code = ("import sys; from pipeline.core.io import read_image, InputError\n"
            "try: read_image(sys.argv[1])\nexcept InputError as e: print(f'error: {e}', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, str(ihdr)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stderr.splitlines() == [f"error: {ihdr}: corrupt image: PNG chunk IHDR fails its CRC check"]


def test_other_stderr_written_during_a_native_decode_is_kept(tmp_path):
    """fd 2 is the whole process's: a line another thread writes while a decode has it must still come out."""
    cut = tmp_path / "cut_scan.jpg"
    cut.write_bytes(_scan_cut_short(jpeg_bytes(3, size=(240, 320))))
    code = f"""
import sys, threading, time, warnings
from pipeline.core.io import read_image
warnings.simplefilter("ignore")  # the InputWarning naming the file: not what this test reads
def other():
    for i in range(50):
        print(f"python line {{i}}", file=sys.stderr, flush=True); time.sleep(0.001)
t = threading.Thread(target=other); t.start()
for _ in range(50):
    read_image({str(cut)!r})
t.join()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    # every line's text comes out (a print's newline may land apart from its text: see native_stderr)
    assert sorted(map(int, re.findall(r"python line (\d+)", r.stderr))) == list(range(50))
    assert not re.sub(r"python line \d+", "", r.stderr).strip(), r.stderr  # and nothing of libjpeg's


def test_native_stderr_hands_back_what_it_caught():
    with native_stderr() as caught:
        os.write(2, b"libpng error: IDAT: CRC error\n")
    assert caught == ["libpng error: IDAT: CRC error"]


# ------------------------------------------------------------------ F8. names drawn into figures


def test_a_figure_titled_with_a_control_character_draws_without_a_glyph_warning(tmp_path, recwarn):
    import matplotlib.pyplot as plt

    from pipeline.report.plots import save_png

    fig, ax = plt.subplots()
    ax.set_title("ansi\x1b[2J\x1b[31mRED\r\u0085.jpg")
    ax.text(0.5, 0.5, "two\nlines")
    save_png(fig, tmp_path / "f.png")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


@pytest.mark.slow
def test_report_on_a_photo_named_with_controls_prints_no_raw_control(weights, tmp_path):  # noqa: F811
    photo = tmp_path / "ansi\x1b[2J\x1b[31mRED\r\u0085.jpg"
    photo.write_bytes(jpeg_bytes(0))
    r = cli("report", "--weights", weights, "--imgsz", "64", "--grad-imgsz", "64", photo, "--out", tmp_path / "o",
            timeout=280)
    assert r.returncode == 0, r.stderr
    assert "Glyph" not in r.stderr and not RAW_CONTROL.search(r.stderr), repr(r.stderr)


# ------------------------------------------------------------------ F9. explore's warnings summary


def test_explore_start_up_counts_its_warnings(weights, tmp_path, monkeypatch, capsys):  # noqa: F811
    import pipeline.cli.explore as explore_cli

    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_scan_cut_short(jpeg_bytes(3, size=(240, 320))))
    said = {}
    monkeypatch.setattr(explore_cli, "listen", lambda host, port: None)
    monkeypatch.setattr(explore_cli, "served_urls", lambda sock, host: ["http://127.0.0.1:1/"])
    monkeypatch.setattr(explore_cli, "bound_beyond_loopback", lambda sock: False)
    monkeypatch.setattr(explore_cli, "serve", lambda *a, **k: said.setdefault("before", capsys.readouterr().err))
    assert main(["explore", "--weights", str(weights), str(cut), "--no-browser"]) == 0
    err = said["before"].splitlines()  # what was on the terminal when the server started
    assert err[0].startswith(f"warning: {cut}: damaged JPEG")
    assert "1 photo with warnings (above)" in err
    assert "photo with warnings" not in capsys.readouterr().err  # not counted a second time at exit


def test_trainings_loader_decodes_a_repaired_jpeg_without_libjpegs_line(tmp_path):
    """train warns about the photo by name first; Ultralytics' loader then decoded it each epoch, and libjpeg
    printed its nameless line every time."""
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(_scan_cut_short(jpeg_bytes(3, size=(240, 320))))
    code = f"""
import warnings
from ultralytics.data import base
from pipeline.core.io import quiet_training_reads, warn_if_repaired
warnings.simplefilter("ignore")
assert warn_if_repaired({str(cut)!r})
with quiet_training_reads():
    assert base.imread({str(cut)!r}).shape == (240, 320, 3)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_our_warning_quoting_libjpeg_comes_back_whole():
    """A warning printed while a decode has fd 2 quotes libjpeg's text; only libjpeg's own line may go."""
    code = """
import os
from pipeline.core.io import native_stderr
with native_stderr() as caught:
    os.write(2, b"warning: x.jpg: damaged JPEG (Corrupt JPEG data: premature end of data segment)\\n"
                b"Corrupt JPEG data: premature end of data segment\\n")
print(caught)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.stderr == "warning: x.jpg: damaged JPEG (Corrupt JPEG data: premature end of data segment)\n"
    assert r.stdout.strip() == "['Corrupt JPEG data: premature end of data segment']"


def test_one_file_named_two_ways_is_warned_once(tmp_path, capsys):
    """explore reads a photo at start-up as named, and again for its run by its full path: one warning line."""
    from pipeline.cli import input_warnings
    from pipeline.core.errors import warn_input

    photo = tmp_path / "cut.jpg"
    photo.write_bytes(b"x")
    with input_warnings() as warned:
        warn_input(photo, "damaged JPEG")
        warn_input(tmp_path / "." / "cut.jpg", "damaged JPEG")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and len(warned) == 1, lines


def test_a_control_character_drawn_in_a_figure_prints_no_glyph_warning():
    """Drawing measures a title before save_png escapes it: the missing-glyph warning (raw byte and all)
    must not reach the terminal. Oracle: a plain matplotlib process does print it."""
    code = ("import sys; sys.path.insert(0, '.'); {imp}import matplotlib; matplotlib.use('Agg'); "
            "import matplotlib.pyplot as plt; f = plt.figure(); f.suptitle('a\\x1b[2Jb\\x07'); f.canvas.draw()")
    plain = subprocess.run([sys.executable, "-c", code.format(imp="")], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    ours = subprocess.run([sys.executable, "-c", code.format(imp="import pipeline.report.plots; ")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert "Glyph" in plain.stderr
    assert ours.returncode == 0 and "Glyph" not in ours.stderr and "\x1b" not in ours.stderr, ours.stderr[-1000:]
