"""Memory bounded by the work, not by the input: extreme aspect ratios, decompression bombs, many photos.

Oracles are independent of the code under test: image sizes read back from the written files, pixel counts
computed here from the shapes we made, Pillow decoding nothing (the refusal comes from the header), and the
peak resident memory of a child process (``ru_maxrss`` of the whole process, as ``/usr/bin/time -v`` reports).
Hostile files are built at test time; nothing hostile is committed.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from starlette.testclient import TestClient
from test_memory import REPORT_SHARE_KIB, SHARE_KIB, measure_imports_kib, peak_kib
from test_trust import cli, jpeg_bytes, one_error_line

from pipeline.core import runtime
from pipeline.core.io import InputError, atomic_write_image, read_image, validate_image
from pipeline.explore.app import create_app
from pipeline.explore.session import PHOTO_MAX_SIDE, Explorer, held_bytes
from pipeline.model.load import load_model
from pipeline.report.plots import MAX_FIGURE_ASPECT, photo_figsize
from pipeline.report.plots.lesson import plot_detections

REPO = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def thin(tmp_path_factory) -> dict[str, Path]:
    """A 16x20000 panorama, a 20000x16 strip, and 1-pixel-thin versions (20000:1) of both."""
    root = tmp_path_factory.mktemp("thin")
    return {"panorama": atomic_write_image(root / "panorama.jpg", noise(16, 20000)),
            "strip": atomic_write_image(root / "strip.jpg", noise(20000, 16, 1)),
            "row": atomic_write_image(root / "row.png", noise(1, 20000, 2)),
            "column": atomic_write_image(root / "column.png", noise(20000, 1, 3))}


def png_bomb(path: Path, side: int) -> Path:
    """A valid grey PNG of ``side`` x ``side`` zeros, compressed as it is written (never held in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's zeros
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def peak_kib_expect_fail(args: list, cache: Path) -> tuple[int, str]:
    """``test_memory.peak_kib`` for a command that must exit 1 (a bad photo in the batch), and its stderr."""
    wrapper = ("import resource, subprocess, sys\n"
               "rc = subprocess.call(sys.argv[1:])\n"
               "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "pipeline", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CARDAMAGE_CACHE": str(cache)})
    rc, kib = proc.stdout.split()[-2:]
    assert rc == "1", proc.stderr[-2000:]
    return int(kib), proc.stderr


# ------------------------------------------------------------------------------------- aspect ratios
def test_a_photo_figure_is_clamped_to_the_aspect_limit(tmp_path):
    """plot_detections on the strip and the panorama: the PNG is a few hundred pixels each way, not 875,000
    (7 x 8750 inches at 100 dpi: 22.7 GB in the old report) and not zero rows (the old traceback)."""
    for h, w in ((20000, 16), (16, 20000), (20000, 1), (1, 20000)):
        fw, fh = photo_figsize((h, w), 7)
        assert fw == 7 and 7 / MAX_FIGURE_ASPECT - 1e-9 <= fh <= 7 * MAX_FIGURE_ASPECT + 1e-9
        det = {"box_xyxy": [0.0, 0.0, w / 2, h / 2], "class_name": "dent", "class_id": 0, "score": 0.9, "logit": 2.2}
        out = plot_detections(noise(h, w), [det], tmp_path / f"{h}x{w}.png")
        ph, pw = cv2.imread(str(out)).shape[:2]
        assert 20 <= ph <= 100 * 7 * MAX_FIGURE_ASPECT + 50 and 20 <= pw <= 100 * 7 + 50, (h, w, ph, pw)


@linux_only
@pytest.mark.slow
def test_report_on_a_strip_and_a_panorama_is_a_page_under_the_limit(thin, tmp_path):
    """Both extremes get a whole page, every figure bounded, and the whole process within report's share above
    its imports (tests/test_memory.py; the strip alone drove the old report to 22.7 GB)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    imports = measure_imports_kib()
    for name in ("strip", "panorama"):
        out = tmp_path / name
        kib = peak_kib(["report", "--weights", "yolov8n.yaml", thin[name], "--out", out], cache)
        assert kib - imports < REPORT_SHARE_KIB, f"{name}: {kib / 1024:.0f} MiB, imports {imports / 1024:.0f} MiB"
        assert (out / "report.html").stat().st_size > 0
        figures = [f for f in (out / "report_files").glob("*.png") if not f.name.endswith(".narrow.png")]
        sizes = [cv2.imread(str(f)).shape[:2] for f in figures]
        assert len(sizes) >= 10 and max(max(s) for s in sizes) <= 2000, sizes
        for f in figures:  # a stacked version is cut from its figure's own pixels (padded): bounded by them
            narrow = f.with_name(f.stem + ".narrow.png")
            if narrow.exists():
                assert np.prod(cv2.imread(str(narrow)).shape[:2]) <= 2 * np.prod(cv2.imread(str(f)).shape[:2])
        shape = json.loads((out / "report_files" / "report.json").read_text())["input"]["orig_shape"]
        assert shape == list(cv2.imread(str(thin[name])).shape[:2])


@pytest.mark.slow
def test_thin_photos_run_through_predict_and_inspect(thin, tmp_path):
    """Nothing is refused for its aspect: Ultralytics' letterbox keeps at least one pixel row of the photo."""
    names = ("strip", "panorama", "row", "column")
    photos = [thin[n] for n in names]
    proc = cli("predict", "--weights", "yolov8n.yaml", *photos, "--out", tmp_path / "pred", "--imgsz", "320")
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert [(r["height"], r["width"]) for r in recs] == [cv2.imread(str(p)).shape[:2] for p in photos]
    proc = cli("inspect", "--weights", "yolov8n.yaml", *photos, "--out", tmp_path / "insp", "--imgsz", "320")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_explorer_answers_thin_photos_with_images_never_500(thin):
    """The old CAM cut the map to zero columns on the strip and answered 500. Every answer is 200, the
    images are the photo's shape scaled to at most PHOTO_MAX_SIDE, and numbers stay in the photo's pixels."""
    names = ("strip", "panorama", "row", "column")
    ex = Explorer(load_model("yolov8n.yaml", nc=6), [thin[n] for n in names], imgsz=160)
    client = TestClient(create_app(ex))
    for i, name in enumerate(names):
        h, w = cv2.imread(str(thin[name])).shape[:2]
        r = min(1.0, PHOTO_MAX_SIDE / max(h, w))
        want = (max(1, round(h * r)), max(1, round(w * r)))
        for url in ("/api/cam", "/api/image"):
            answer = client.get(url, params={"photo": i})
            assert answer.status_code == 200, (name, url, answer.text)
            img = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
            assert img.shape[:2] == want, (name, url)
        summary = client.get("/api/summary", params={"photo": i})
        assert summary.status_code == 200 and summary.json()["photo_shape"] == [h, w, 3]
        neuron = client.get("/api/neuron", params={"photo": i, "layer": "model.0", "channel": 0, "y": 0, "x": 0})
        assert neuron.status_code == 200
        x0, y0, x1, y1 = neuron.json()["receptive_field_xyxy"]
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h


# ------------------------------------------------------------------------------------- pixel limit
@pytest.mark.parametrize("fmt, mode", [("GIF", "P"), ("PPM", "I;16"), ("PPM", "RGB"), ("PPM", "I")])
def test_a_format_outside_the_read_list_is_refused_by_its_content(fmt, mode, tmp_path, monkeypatch):
    """A 150 MP GIF, or a 144 MP 16-bit PGM or float PFM, named .jpg peaked above a 150 MP JPEG (fifth hostile
    retest), and Pillow checks a 16-bit PPM in Python at seconds a megapixel (sixth): a format outside the list
    the refusal names is refused from its header, no pixel decoded, whatever the file is called."""
    from pipeline.core.photo import MEASURED_FORMATS, READ_FORMATS

    img = PIL.Image.new(mode, (4000, 3000))  # 12 MP: seconds for Pillow's Python decoder of a 16-bit PPM
    odd = tmp_path / "odd.jpg"  # named .jpg: the content decides
    img.save(odd, format=fmt)
    found = PIL.Image.open(odd).format
    assert found not in MEASURED_FORMATS
    validate_image(atomic_write_image(tmp_path / "ok.jpg", noise(600, 1000)))
    loads = []
    real_load = PIL.Image.Image.load
    monkeypatch.setattr(PIL.Image.Image, "load", lambda im: loads.append(im.format) or real_load(im))
    with pytest.raises(InputError) as e:
        validate_image(odd)
    assert loads == []  # refused from the header: Pillow's decoder never ran
    assert str(e.value) == f"{odd}: {found} image: not a format this project reads (formats read: {READ_FORMATS})"


def test_the_pixel_limit_is_read_from_the_header(tmp_path, monkeypatch):
    """Under and over the limit on both sides of Pillow's own 2x bomb error, and a bad variable: one line each."""
    under = atomic_write_image(tmp_path / "under.png", noise(1000, 1000))       # 1.0 MP
    warned = atomic_write_image(tmp_path / "warned.png", noise(1000, 1500))     # 1.5 MP: Pillow only warns
    refused = atomic_write_image(tmp_path / "refused.png", noise(1000, 3000))   # 3.0 MP: Pillow refuses
    monkeypatch.setenv(runtime.MAX_PIXELS_ENV, "1000000")
    validate_image(under)
    for path, mp in ((warned, "1.5"), (refused, "3.0")):
        with pytest.raises(InputError) as e:
            validate_image(path)
        assert str(e.value).startswith(f"{path}: {mp} megapixels, over the limit of 1 ") and "CARDAMAGE_MAX_PIXELS" in str(e.value)
    monkeypatch.setenv(runtime.MAX_PIXELS_ENV, "3e6")
    validate_image(refused)  # raised to 3 MP: it passes (Pillow's own guard is only set at start-up)
    for bad in ("lots", "-5", "0", "1.5", "nan"):
        monkeypatch.setenv(runtime.MAX_PIXELS_ENV, bad)
        with pytest.raises(InputError) as e:
            validate_image(under)
        assert str(e.value).startswith("CARDAMAGE_MAX_PIXELS: must be a whole number of pixels from 1 to 1e+12")
    monkeypatch.delenv(runtime.MAX_PIXELS_ENV)
    assert runtime.max_pixels() == runtime.DEFAULT_MAX_PIXELS == 150_000_000


@linux_only
@pytest.mark.slow
def test_a_decompression_bomb_is_one_line_before_any_decode(tmp_path):
    """A 0.4 MB PNG of 20000x20000 (400 MP, 1.2 GB as BGR) beside a good photo: one line for the bomb, the
    other photo predicted, and the process never holds the bomb's pixels: its share above its imports stays
    under one 64 MP photo's (tests/test_memory.py), where one decode of the bomb is 1.2 GB (2.4 GB at OpenCV's
    peak)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    bomb = png_bomb(folder / "bomb.png", 20000)
    assert bomb.stat().st_size < 1_000_000
    atomic_write_image(folder / "car.jpg", noise(480, 640))
    cache = tmp_path / "cache"
    cache.mkdir()
    # the whole predict process, the bomb's folder included, peaks below one 1.2 GB decode of it
    kib, stderr = peak_kib_expect_fail(["predict", "--weights", "yolov8n.yaml", folder, "--out", tmp_path / "pred"], cache)
    line = one_error_line(stderr)
    assert line.startswith(f"error: {bomb}: 400.0 megapixels, over the limit of 150 (decoding would take 1.2 GB)")
    assert [r["image"] for r in json.loads((tmp_path / "pred" / "detections.json").read_text())] == [str(folder / "car.jpg")]
    imports = measure_imports_kib()
    assert kib - imports < SHARE_KIB, f"{kib / 1024:.0f} MiB, imports {imports / 1024:.0f} MiB"


def deep_files(folder: Path, side: int) -> dict[str, Path]:
    """Small files whose decode is large at their depth (built with Pillow, whose writers compress zeros):
    a JPEG 2000 (OpenJPEG holds 4 bytes a sample), a 16-bit RGBA TIFF, a TIFF of 20 pages (Ultralytics' reader
    decodes every page), and a 32-bit float TIFF, which OpenCV's reader refuses with a raw log line."""
    rgb = PIL.Image.fromarray(np.zeros((side, side, 3), np.uint8))
    files = {"jp2": folder / "deep.jp2", "u16": folder / "rgba16.tif", "pages": folder / "pages.tif",
             "float": folder / "float.tif"}
    rgb.save(files["jp2"], quality_mode="rates", quality_layers=[200])
    rgba16 = np.zeros((side, side, 4), np.uint16)
    ok, buf = cv2.imencode(".tif", rgba16, [cv2.IMWRITE_TIFF_COMPRESSION, 8])  # Pillow writes no 16-bit RGBA
    assert ok
    files["u16"].write_bytes(buf.tobytes())
    page = PIL.Image.fromarray(np.zeros((side // 2, side // 2, 3), np.uint8))
    page.save(files["pages"], save_all=True, append_images=[page] * 19, compression="tiff_deflate")
    PIL.Image.fromarray(np.zeros((side, side), np.float32), "F").save(files["float"], compression="tiff_deflate")
    # an animated WebP named .tif (Ultralytics' reader decodes every frame of a .tif name), a progressive JPEG
    # with full-resolution colour (libjpeg keeps every coefficient), an AVIF, and a small JPEG with 1.5 GB of
    # zeros after its end marker (decoders accept trailing bytes; every reader reads the file whole)
    # 40 frames of a third of the side: 1.7 GB decoded at 8000 (lossless: a lossy encoder merges near-equal frames)
    frames = [PIL.Image.new("RGB", (side // 3, side // 3), (4 * i, 0, 0)) for i in range(40)]
    frames[0].save(folder / "frames.tif", format="WEBP", save_all=True, append_images=frames[1:], lossless=True, method=0)
    big = PIL.Image.new("RGB", (side * 5 // 4, side * 5 // 4), (120, 130, 140))  # 100 MP at 8000
    big.save(folder / "prog444.jpg", quality=10, progressive=True, subsampling=0)  # its cost is in the header
    PIL.Image.new("RGB", (side, side), (120, 130, 140)).save(folder / "photo.avif", speed=10, quality=10)
    tail = folder / "tail.jpg"
    tail.write_bytes(jpeg_bytes(1))
    os.truncate(tail, 1500 << 20)  # sparse: no disk
    # the fourth retest's: a WebP (libwebp's planes beside the BGR), and a small PNG with 200 MB after its end,
    # under the global cap but far over what its own 64x64 pixels can take
    PIL.Image.new("RGB", (side, side), (128, 100, 50)).save(folder / "photo.webp", quality=10, method=0)
    small_tail = folder / "small_tail.png"
    PIL.Image.new("RGB", (64, 64), (200, 30, 30)).save(small_tail)
    os.truncate(small_tail, 200 << 20)
    files.update(frames=folder / "frames.tif", prog=folder / "prog444.jpg", avif=folder / "photo.avif", tail=tail,
                 webp=folder / "photo.webp", small_tail=small_tail)
    return files


@linux_only
@pytest.mark.slow
def test_files_deep_in_bytes_are_counted_at_their_depth_before_any_decode(tmp_path):
    """Under the pixel limit but not under its bytes: an 8000x8000 JPEG 2000 of 2 KB (0.93 GB at OpenJPEG's
    peak), a 16-bit RGBA TIFF (1.8 GiB for predict before), 20 pages of 4000x4000 in a 1.4 MB TIFF (1.8 GB
    in Ultralytics' reader), 40 frames in a WebP named .tif, a progressive 4:4:4 JPEG, an AVIF, a JPEG with
    1.5 GB after its end (the third retest's), and a float TIFF (refused by OpenCV with its raw "[ WARN:0@...]" line before):
    each is one line naming it, the good photo beside them is predicted, and the whole process costs less
    above its imports than one 64 MP JPEG does (tests/test_memory.py)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    files = deep_files(folder, 8000)
    assert all(f.stat().st_size < 2_000_000 for n, f in files.items() if "tail" not in n)
    atomic_write_image(folder / "car.jpg", noise(480, 640))
    cache = tmp_path / "cache"
    cache.mkdir()
    kib, stderr = peak_kib_expect_fail(["predict", "--weights", "yolov8n.yaml", "--imgsz", "64", folder, "--out",
                                        tmp_path / "pred"], cache)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "WARN" in line or "global " in line], lines  # no raw OpenCV log line
    errors = {Path(line.split(": ")[1]).name: line for line in lines if line.startswith("error: ")}
    assert sorted(errors) == sorted(f.name for f in files.values()), lines
    assert "of JPEG 2000" in errors["deep.jp2"] and "over the limit of 150" in errors["deep.jp2"]
    assert "of 16-bit TIFF" in errors["rgba16.tif"]
    assert "with 20 pages" in errors["pages.tif"]
    assert "floating-point samples" in errors["float.tif"]
    assert "named .tif with 40 frames" in errors["frames.tif"]
    assert "of progressive JPEG (3 samples a pixel" in errors["prog444.jpg"]
    assert "of AVIF" in errors["photo.avif"]
    assert "a file of 1.6 GB, over the 900 MB" in errors["tail.jpg"]
    assert "of WebP" in errors["photo.webp"]
    assert "a file of 210 MB for 0.0041 megapixels: over the 67 MB its pixels and metadata" in errors["small_tail.png"]
    assert [Path(r["image"]).name for r in json.loads((tmp_path / "pred" / "detections.json").read_text())] == ["car.jpg"]
    imports = measure_imports_kib()
    assert kib - imports < SHARE_KIB, f"{kib / 1024:.0f} MiB, imports {imports / 1024:.0f} MiB"


def test_a_jpeg_with_a_scan_per_colour_is_told_from_its_markers(tmp_path):
    """The markers up to the first scan, written by hand after the JPEG standard (SOI; SOF0 with 3 components;
    SOS with 1 or 3): a first scan of fewer components than the frame means libjpeg keeps every coefficient."""
    from pipeline.core.photo import _multi_scan

    def jpeg(scan_components: int) -> Path:
        sof = bytes([0xFF, 0xC0, 0, 17, 8, 0, 64, 0, 64, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
        sos = bytes([0xFF, 0xDA, 0, 6 + 2 * scan_components, scan_components]) + bytes(2 * scan_components + 3)
        path = tmp_path / f"scan{scan_components}.jpg"
        path.write_bytes(b"\xff\xd8" + sof + sos + b"\xff\xd9")
        return path

    assert _multi_scan(jpeg(1)) and not _multi_scan(jpeg(3))
    assert not _multi_scan(tmp_path / "scan3.jpg")


def test_small_deep_files_are_read_as_ultralytics_reads_them(tmp_path):
    """Below the budget the same kinds are photos: a 16-bit TIFF's high byte, a multi-page TIFF's first page
    (numpy on the arrays written is the oracle); the float TIFF is still refused, in one line."""
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".tif", deep)
    assert ok
    (tmp_path / "deep16.tif").write_bytes(buf.tobytes())
    assert np.array_equal(read_image(tmp_path / "deep16.tif"), (deep >> 8).astype(np.uint8))
    pages = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    PIL.Image.fromarray(pages[0]).save(tmp_path / "pages.tif", save_all=True,
                                       append_images=[PIL.Image.fromarray(p) for p in pages[1:]])
    assert np.array_equal(read_image(tmp_path / "pages.tif"), pages[0][..., ::-1])  # BGR
    PIL.Image.fromarray(np.ones((40, 60), np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(InputError, match=r"float\.tif: TIFF of floating-point samples"):
        read_image(tmp_path / "float.tif")


PROBE = """import sys
import pipeline
import cv2
from pipeline.core.io import InputError, validate_image
try:
    validate_image(sys.argv[1])
    print("pillow: ok")
except InputError as e:
    print("pillow:", e)
try:
    print("opencv:", cv2.imread(sys.argv[1]).shape)
except cv2.error:
    print("opencv: refused")
"""


def test_the_variable_moves_both_guards(tmp_path):
    """CARDAMAGE_MAX_PIXELS is read at start-up by OpenCV too (formats Pillow cannot read meet that guard):
    a 9 MP photo is refused by both under 8e6, decoded by both under 9e6."""
    photo = png_bomb(tmp_path / "nine.png", 3000)
    said = {}
    for limit in ("8e6", "9e6"):
        out = subprocess.run([sys.executable, "-c", PROBE, str(photo)], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, runtime.MAX_PIXELS_ENV: limit}, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        said[limit] = out.stdout.splitlines()
    assert said["8e6"][0].startswith(f"pillow: {photo}: 9.0 megapixels, over the limit of 8 ") and said["8e6"][1] == "opencv: refused"
    assert said["9e6"] == ["pillow: ok", "opencv: (3000, 3000, 3)"]


@pytest.mark.parametrize("value", ["inf", "1e400", "1e30", "99999999999999999999999999999"])
def test_an_absurd_pixel_limit_is_one_line_not_a_crash(value, tmp_path):
    """Beyond any photo the variable is refused in one line: before, inf crashed every command (--help too) and
    1e30 reached OpenCV's own parser, which aborted the process."""
    photo = png_bomb(tmp_path / "small.png", 64)
    env = {**os.environ, runtime.MAX_PIXELS_ENV: value}
    helped = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=120)
    assert helped.returncode == 0 and "Traceback" not in helped.stderr, helped.stderr[-2000:]
    ran = subprocess.run([sys.executable, "-m", "pipeline", "preprocess", str(photo), "--out", str(tmp_path / "o"),
                          "--imgsz", "64"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in ran.stderr.splitlines() if line.strip()]
    assert ran.returncode == 1 and len(errors) == 1 and errors[0].startswith("error: CARDAMAGE_MAX_PIXELS: "), errors


# ------------------------------------------------------------------------------------- the explorer's runs
def test_held_bytes_counts_each_storage_once():
    a = np.zeros(10)  # 80 bytes
    t = torch.zeros(4)  # 16 bytes
    assert held_bytes({"a": a, "view": a[2:5], "b": [t, t[1:], t.view(2, 2)], "s": "text"}) == 96
    shared, model = set(), {"weights": t}  # ids are only unique while the object lives: the model does
    held_bytes(model, shared)
    assert held_bytes({"run": [a, t]}, set(shared)) == 80  # what the caller shares is not the run's


def test_explorer_keeps_at_most_its_budget_and_rebuilds_the_same_numbers(sample_images):
    """Five photos visited in turn with room for two runs: never more than two kept, the least recently used
    dropped; a dropped photo asked again is built again and answers with the same numbers and bytes."""
    ex = Explorer(load_model("yolov8n.yaml", nc=6), sample_images[:5], imgsz=160, max_runs=2)

    def answers(i: int):
        p = {"photo": str(i)}
        return (ex.detections(p), ex.neuron({**p, "layer": "model.2.cv1", "channel": "3", "y": "5", "x": "6"}),
                ex.featuremap({**p, "layer": "model.0", "channel": "1", "stage": "pre"}), ex.cam(p), ex.photo_png(p))

    first = {}
    for i in range(5):
        first[i] = answers(i)
        assert ex.kept() == list(range(max(0, i - 1), i + 1))
    ex.summary({"photo": "3"})  # 3 is now the most recently used: 4 goes first
    assert ex.builds == 5 and ex.kept() == [4, 3]
    assert answers(0) == first[0]
    assert ex.builds == 6 and ex.kept() == [3, 0]
    assert answers(3) == first[3] and ex.builds == 6  # kept: read off, not rebuilt
    one = Explorer(ex.yolo, sample_images[:3], imgsz=160, runs_budget=1)  # no room: only the newest stays
    for i in range(3):
        one.summary({"photo": str(i)})
        assert one.kept() == [i] and one.kept_bytes() > 0


CHILD = """import json, resource, sys
import pipeline
from pipeline.explore.session import Explorer
from pipeline.model.load import load_model
photos = sys.argv[3:]
ex = Explorer(load_model("yolov8n.yaml", nc=6), photos, imgsz=320, max_runs=int(sys.argv[1]),
              runs_budget=int(sys.argv[2]))
peaks, kept, sizes = [], [], []
for i in range(len(photos)):
    ex.summary({"photo": str(i)})
    ex.cam({"photo": str(i)})
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    kept.append(len(ex.kept()))
    sizes.append(ex.kept_bytes() // len(ex.kept()))
print(json.dumps({"peaks": peaks, "kept": kept, "run_kib": max(sizes) // 1024}))
"""


def explorer_peaks(photos, max_runs: int, budget: int = 1 << 40) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(max_runs), str(budget), *map(str, photos)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux_only
@pytest.mark.slow
def test_explorer_memory_is_bounded_by_its_budget_not_by_the_photos(sample_images):
    """A server over 16 photos visited in turn, room for 3 runs: its whole-process peak after all 16 is at most
    its peak after the first, plus 3 runs, plus 64 MiB for the allocator; 16 kept runs would be ~13 more."""
    got = explorer_peaks(sample_images[:16], max_runs=3)
    assert max(got["kept"]) == 3 and got["kept"][-1] == 3
    bound = got["peaks"][0] + 3 * got["run_kib"] + 64 * 1024
    assert got["peaks"][-1] <= bound, (got["peaks"], got["run_kib"])
