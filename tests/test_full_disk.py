"""A run that fails (a full disk) removes every folder it made and never wrote into (docs/robustness.md).

``core.io.output_folder`` notes the folders below ``--out`` before the run; when the run fails, each folder
made since that is still empty is removed, deepest first, whoever made it (``make_folder``, a plain ``mkdir``,
Ultralytics' LayerCAM folder). A folder that was there before, or that holds a file, stays.

A full disk is simulated as ``test_trust.test_disk_full_is_one_line`` does: every ``Path.write_bytes`` (how
``atomic_path`` fills its temporary file) raises ENOSPC, and ``cv2.imwrite`` (how Ultralytics saves its LayerCAM
picture) fails silently, returning False, as it does on a full disk.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.core.io import InputError, atomic_write_text, make_folder, output_folder


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {lines}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def folders(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


@pytest.fixture
def full_disk(monkeypatch):
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)


@pytest.fixture
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (0, 0), 3)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    path = tmp_path / "car.jpg"
    path.write_bytes(buf.tobytes())
    return path


# ------------------------------------------------------------------------------- the mechanism


def test_a_failed_run_removes_the_empty_folders_it_made(tmp_path):
    out = tmp_path / "out"
    (out / "keep" / "deep").mkdir(parents=True)  # the user's empty folders
    (out / "mine").mkdir()
    (out / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="boom"):
        with output_folder(out) as o:
            make_folder(o / "a" / "b" / "c")
            os.mkdir(o / "m")
            (o / "keep" / "deep" / "new").mkdir()  # made inside a folder that was there before
            (o / "mine" / "x" / "y").mkdir(parents=True)
            atomic_write_text(o / "w" / "sub" / "done.txt", "written before the failure")
            make_folder(o / "w" / "empty")
            raise InputError(o / "w" / "sub" / "next.txt", "boom")
    assert folders(out) == ["keep", "keep/deep", "mine", "w", "w/sub"]
    assert (out / "mine" / "notes.txt").read_text() == "mine"
    assert (out / "w" / "sub" / "done.txt").read_text() == "written before the failure"


def test_a_failed_run_removes_the_out_it_made(tmp_path):
    out = tmp_path / "new" / "out"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C too
        with output_folder(out) as o:
            make_folder(o / "a" / "b")
            (o / "c" / "d").mkdir(parents=True)
            raise KeyboardInterrupt
    assert not out.exists()


def test_a_run_that_succeeds_keeps_its_empty_folders(tmp_path):
    with output_folder(tmp_path / "out") as o:
        make_folder(o / "val" / "images")  # e.g. `synth --val 0`: data.yaml names it
    assert (tmp_path / "out" / "val" / "images").is_dir()


def test_a_refused_run_leaves_another_runs_folders_alone(tmp_path):
    out = tmp_path / "out"
    with output_folder(out) as o:
        (o / "made").mkdir()  # by the run holding the folder, still empty when a second run is refused
        with pytest.raises(InputError, match="busy"):
            with output_folder(out):
                pass
        assert (o / "made").is_dir()
    assert (o / "made").is_dir()


# ------------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("existing", [False, True])
def test_synth_on_a_full_disk_leaves_no_empty_folder(existing, full_disk, tmp_path, capsys):
    out = tmp_path / "syn"
    if existing:
        (out / "keep").mkdir(parents=True)
    code = main(["synth", "--out", str(out), "--train", "2", "--val", "1", "--imgsz", "64"])
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith("cannot write (No space left on device)") and "train_00000.jpg" in line
    if existing:
        assert folders(out) == ["keep"]  # the user's empty folder stays; train/{images,labels} are gone
    else:
        assert not out.exists()


@pytest.mark.parametrize("existing", [False, True])
def test_report_on_a_full_disk_leaves_no_empty_folder(existing, photo, full_disk, tmp_path, capsys):
    out = tmp_path / "r"
    if existing:
        (out / "keep").mkdir(parents=True)
    code = main(["report", "--weights", "yolov8n.yaml", str(photo), "--out", str(out), "--imgsz", "64",
                 "--grad-imgsz", "64", "--grad-batch", "1"])
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.endswith("cannot write (No space left on device)"), line
    if existing:
        assert folders(out) == ["keep"]  # report_files/ and report_files/layercam/ are gone
    else:
        assert not out.exists()


@pytest.fixture
def tmpfs(tmp_path):
    """A full 600 KB tmpfs (root only: skipped where it cannot be mounted), unmounted after the test."""
    import shutil
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount") or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root and a tmpfs mount")
    try:
        with open(mnt / "fill", "wb") as f:  # fill it: the run's first file meets ENOSPC
            with pytest.raises(OSError, match="No space left"):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)  # leave no mount behind
            pytest.fail("the tmpfs was still in use: a process of the failed run was still writing into it")


@pytest.mark.parametrize("command", ["synth", "report"])
def test_a_really_full_disk_leaves_no_empty_folder(command, photo, tmpfs, capsys):
    """The hostile retest as it was run: a full tmpfs, ENOSPC from the kernel, LayerCAM's own mkdir."""
    (tmpfs / "old" / "keep").mkdir(parents=True)
    for out in (tmpfs / "new", tmpfs / "old"):
        args = {"synth": ["synth", "--out", out, "--train", "2", "--val", "1", "--imgsz", "64"],
                "report": ["report", "--weights", "yolov8n.yaml", photo, "--out", out, "--imgsz", "64",
                           "--grad-imgsz", "64", "--grad-batch", "1"]}[command]
        assert main([str(a) for a in args]) == 1
        assert one_error_line(capsys.readouterr().err).endswith("cannot write (No space left on device)")
    assert folders(tmpfs) == ["old", "old/keep"]
