"""Label files, photo lists and checkpoint class names from a hostile tester (#30, retest bugs 5, 6, 11).

A 1.2 GB label file or photo list is refused unread (peak memory of the whole child process, ``ru_maxrss``, under
the commands' share above their imports, and under a 4 GiB address space so the old code cannot take the machine);
a token quoted in an error is cut; a checkpoint's class names pass the data.yaml rule. Hostile files are made at
test time: the big ones are sparse (``os.truncate``), so they cost no disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import save_checkpoint
from test_memory import SHARE_KIB, measure_imports_kib
from test_trust import cli, jpeg_bytes, one_error_line

from pipeline.core.io import MAX_LIST_LINE, InputError, read_list
from pipeline.data.dataset_view import _check_label
from pipeline.data.labels import MAX_LABEL_BYTES, parse_label_text, photo_labels, read_label_text
from pipeline.model.load import load_model

REPO = Path(__file__).resolve().parent.parent
HUGE = 1200 << 20  # the tester's size: 17 GB (labels) and 3.1 GB (list) peaks before the fix
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")

# the child runs under a 4 GiB address space (room for torch's imports): the old code fails there instead of
# taking the shared machine's memory; ru_maxrss is then the whole child's peak
_WRAPPER = ("import resource, subprocess, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "rc = subprocess.call(sys.argv[1:])\n"
            "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def run_measured(*args) -> tuple[int, str, int]:
    """``python -m pipeline ARGS`` capped at 4 GiB: (exit status, stderr, peak KiB)."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "pipeline", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    rc, kib = proc.stdout.split()[-2:]
    return int(rc), proc.stderr, int(kib)


def sparse(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk."""
    path.touch()
    os.truncate(path, size)
    return path


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error")]


@pytest.fixture(scope="module")
def imports_kib() -> int:
    return measure_imports_kib()


def dataset(root: Path, train: str = "images", val: str = "images", n: int = 2) -> Path:
    """images/p0.jpg ... p{n-1}.jpg with labels/p{n-1}.txt one good row; the others' labels are the test's to make."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        (root / "images" / f"p{i}.jpg").write_bytes(jpeg_bytes(i))
    (root / "labels" / f"p{n - 1}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: {train}\nval: {val}\nnc: 2\nnames: [crack, dent]\n")
    return yaml


# ------------------------------------------------------------------------------------- 5. label files


@linux_only
def test_a_huge_label_file_is_one_line_unread(tmp_path, imports_kib):
    """A 1.2 GB label of zeros: one line naming it and its size (not a 4.8 GB echo of the token), the other
    photo checked, and the process within check's share above its imports (it peaked at 17.5 GB)."""
    yaml = dataset(tmp_path)
    sparse(tmp_path / "labels" / "p0.txt", HUGE)
    rc, err, kib = run_measured("check", yaml)
    errors = error_lines(err)
    assert rc == 1 and len(errors) == 1, err[-2000:]
    assert errors[0] == (f"error: {tmp_path / 'labels' / 'p0.txt'}: {HUGE:,} bytes is too large for a label file "
                         f"(the limit is {MAX_LABEL_BYTES:,} bytes; a box row is under 100)")
    assert len(err) < 2000
    assert kib - imports_kib < SHARE_KIB, f"{kib / 1024:.0f} MiB peak, imports {imports_kib / 1024:.0f} MiB"


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder", "dangling"])
def test_a_label_that_is_not_a_regular_file_is_an_error_not_no_label(kind, tmp_path):
    """A label linked to /dev/zero, a FIFO, a folder or a link to nothing: Ultralytics reads none of them and
    trains the photo as background, so check says so as an error on that file (it said "no label file")."""
    from pipeline.data.check import check_dataset

    yaml = dataset(tmp_path)
    label = tmp_path / "labels" / "p0.txt"
    {"dev-zero": lambda: label.symlink_to("/dev/zero"), "fifo": lambda: os.mkfifo(label),
     "folder": label.mkdir, "dangling": lambda: label.symlink_to(tmp_path / "gone.txt")}[kind]()
    report = check_dataset(yaml)
    mine = [e for e in report["errors"] if e["file"] == str(label)]
    assert [e["kind"] for e in mine] == ["bad_label_file"] and "treats the image as background" in mine[0]["reason"]
    assert not [w for w in report["warnings"] if w["kind"] == "missing_label"]


def test_every_label_reader_refuses_an_oversized_file_unread(tmp_path):
    """check's and training's reader (``read_label_text``), the view's check, and ``photo_labels`` (explore,
    report, atlas): one reason naming the size; a note beside a photo is passed over in silence, as before."""
    labels = tmp_path / "labels"
    labels.mkdir()
    big = labels / "p.txt"
    sparse(big, MAX_LABEL_BYTES + 1)
    with pytest.raises(InputError, match="is too large for a label file"):
        read_label_text(big)
    with pytest.raises(InputError, match="is too large for a label file"):
        _check_label(big, 2)
    rows, reason = photo_labels(tmp_path / "images" / "p.jpg", 2)
    assert rows is None and reason.endswith(f"{MAX_LABEL_BYTES + 1:,} bytes is too large for a label file "
                                            f"(the limit is {MAX_LABEL_BYTES:,} bytes; a box row is under 100)")
    sparse(tmp_path / "beside.txt", MAX_LABEL_BYTES + 1)
    assert photo_labels(tmp_path / "beside.jpg", 2) == (None, None)
    at_limit = labels / "q.txt"
    at_limit.write_text(("0 0.5 0.5 0.2 0.2\n" * (MAX_LABEL_BYTES // 18 + 1))[:MAX_LABEL_BYTES - 1] + "\n")
    assert len(read_label_text(at_limit)) == MAX_LABEL_BYTES


@pytest.mark.parametrize("line, quoted", [("\0" * 100_000 + " 0.5 0.5 0.2 0.2", repr("\0" * 40 + "…")),
                                          ("0 0.5 0.5 " + "x" * 5000 + " 0.2", repr("x" * 40 + "…")),
                                          ("0" * 5000 + ".5 0.5 0.5 0.2 0.2", "0" * 40 + "…")])
def test_a_token_quoted_in_a_label_error_is_cut(line, quoted):
    """A bad value is quoted by its first 40 characters and '…', never whole."""
    _, errors, _ = parse_label_text(line + "\n", nc=2)
    assert len(errors) == 1 and errors[0][2].endswith(quoted) and len(errors[0][2]) < 300, errors


# ------------------------------------------------------------------------------------- 6. photo lists


@linux_only
def test_a_huge_photo_list_in_a_data_yaml_is_one_line_unread(tmp_path, imports_kib):
    """``train: big.txt`` of 1.2 GB: one line naming the list (it was right, but peaked at 3.1 GB)."""
    yaml = dataset(tmp_path, "big.txt", "big.txt")
    sparse(tmp_path / "big.txt", HUGE)
    rc, err, kib = run_measured("check", yaml)
    assert rc == 1
    assert one_error_line(err) == (f"error: {tmp_path / 'big.txt'}: {HUGE:,} bytes is too large for a photo list "
                                   f"(the limit is {64 << 20:,})")
    assert kib - imports_kib < SHARE_KIB, f"{kib / 1024:.0f} MiB peak, imports {imports_kib / 1024:.0f} MiB"


@linux_only
def test_a_huge_photo_list_given_to_predict_is_one_line_and_the_rest_runs(tmp_path, imports_kib):
    big = tmp_path / "big.txt"
    sparse(big, HUGE)
    photo = tmp_path / "car.jpg"
    photo.write_bytes(jpeg_bytes(3))
    out = tmp_path / "o"
    rc, err, kib = run_measured("predict", "--weights", "yolov8n.yaml", "--imgsz", "64", big, photo, "--out", out)
    expected = f"error: {big}: {HUGE:,} bytes is too large for a photo list (the limit is {64 << 20:,})"
    assert rc == 1 and error_lines(err) == [expected], err[-2000:]
    assert (out / "detections.json").is_file()
    assert kib - imports_kib < SHARE_KIB, f"{kib / 1024:.0f} MiB peak, imports {imports_kib / 1024:.0f} MiB"


def test_a_list_line_no_path_could_be_is_one_line_not_echoed(tmp_path):
    """Under the size limit, a file of zeros (one endless line), or a list with a 10,000-character line ending
    .jpg, is refused by its line number, the line not repeated; a line of PATH_MAX characters still reads."""
    zeros = tmp_path / "zeros.txt"
    zeros.write_bytes(b"\0" * 1_000_000)
    with pytest.raises(InputError) as e:
        read_list(zeros)
    assert str(e.value) == f"{zeros}: line 1 is longer than {MAX_LIST_LINE:,} characters (no path is that long): " \
                           "not a photo list"
    long = tmp_path / "long.txt"
    long.write_text("a.jpg\n" + "x" * 10_000 + ".jpg\n")
    with pytest.raises(InputError, match="line 2 is longer"):
        read_list(long)
    ok = tmp_path / "ok.txt"
    ok.write_text("/" + "y" * (MAX_LIST_LINE - 1) + "\nb.jpg")
    assert [len(n) for n in read_list(ok)] == [MAX_LIST_LINE, len(str(tmp_path / "b.jpg"))]


# ------------------------------------------------------------------------------------- 11. checkpoint names


def names_checkpoint(path: Path, names: dict) -> Path:
    """A small yolov8n checkpoint (the trainer's layout) whose model and EMA carry ``names``."""
    save_checkpoint(path)
    ck = torch.load(path, weights_only=False)
    for key in ("model", "ema"):
        if ck.get(key) is not None:
            ck[key].names = names
    torch.save(ck, path)
    return path


FORGED = {0: "crack\nerror: forged.jpg: planted line", 1: "\x1b[2Jdent", 2: "dup", 3: "dup", 4: "e", 5: "f"}


def test_checkpoint_names_cannot_forge_an_error_line(tmp_path):
    """trace (the tester's command) on a checkpoint whose first name holds a newline and an error line: one line
    naming the weights file; the planted line is not printed, and no raw escape reaches stderr."""
    evil = names_checkpoint(tmp_path / "evil.pt", FORGED)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_bytes(0))
    r = cli("trace", "--weights", evil, "--layer", "model.0", "--channel", "0", "--y", "0", "--x", "0", "--head",
            "--conf", "0.0001", photo)
    assert r.returncode == 1
    assert one_error_line(r.stderr) == (f"error: {evil}: class 0 name 'crack\\nerror: forged.jpg: planted line' "
                                        "holds a control character or line break")
    assert "\x1b" not in r.stderr


@pytest.mark.parametrize("names, reason", [
    ({0: "crack", 1: "\x1b[2Jdent"}, "class 1 name '\\x1b[2Jdent' holds a control character or line break"),
    ({0: "dup", 1: "dup"}, "class 1 name 'dup' repeats class 0"),
    ({0: "crack", 1: 7}, "class 1 name '7' (int) is not a string"),
    ({0: "crack", 1: ""}, "class 1 name is empty"),
])
def test_bad_checkpoint_names_are_refused_when_weights_load(names, reason, tmp_path):
    """Every command loads weights through ``load_model``: the data.yaml rule, one line naming the file."""
    path = names_checkpoint(tmp_path / "w.pt", names)
    with pytest.raises(InputError) as e:
        load_model(path)
    assert str(e.value) == f"{path}: {reason}"


def test_good_checkpoint_names_still_load(tmp_path):
    path = names_checkpoint(tmp_path / "w.pt", {0: "crack", 1: "dent", 2: "glass shatter", 3: "lamp broken",
                                                4: "scratch", 5: "tire flat"})
    assert load_model(path).model.names[2] == "glass shatter"


def test_a_list_line_is_a_name_not_a_pattern(tmp_path):
    """``/proc/self/**`` in a photo list walked /proc for ever (RSS growing 4 MB/s): a list's line names a file
    as written. A quoted glob on the command line is still a glob, up to a bound on the paths it walks."""
    import pipeline.core.io as io

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0))
    lst = tmp_path / "l.txt"
    lst.write_text(f"/proc/self/**\n{tmp_path}/*.jpg\n")
    files, errors = io.expand_sources([str(lst)])
    assert files == [] and [str(e) for e in errors] == [f"{lst}: not a photo list: none of its 2 lines names a photo"]
    files, errors = io.expand_sources([f"{tmp_path}/*.jpg"])
    assert files == [tmp_path / "a.jpg"] and errors == []
    old, io.MAX_GLOB = io.MAX_GLOB, 50
    try:
        files, errors = io.expand_sources(["/proc/self/**"])
        # a walk matching nothing counts too (sixth hostile retest: '/proc/**/*.jpg' walked for minutes)
        deep = tmp_path / "deep"
        for i in range(60):
            (deep / f"d{i}").mkdir(parents=True)
        walked, walk_errors = io.expand_sources([f"{deep}/**/*.jpg"])
        narrow, narrow_errors = io.expand_sources([f"{tmp_path}/**/a.jpg"])  # 60 folders, 64 paths: over 50
        io.MAX_GLOB = 100
        kept, kept_errors = io.expand_sources([f"{tmp_path}/**/a.jpg"])
    finally:
        io.MAX_GLOB = old
    assert files == [] and "glob walks more than 50 paths" in str(errors[0])
    assert walked == [] and [str(e) for e in walk_errors] == [f"{deep}/**/*.jpg: glob walks more than 50 paths: "
                                                              "name a narrower one"]
    assert narrow == [] and len(narrow_errors) == 1
    assert kept == [tmp_path / "a.jpg"] and kept_errors == []


def test_training_leaves_out_a_photo_whose_label_is_not_a_regular_file(tmp_path):
    """train read a FIFO, /dev/zero link, folder or dangling link as "no label" and trained the photo as
    background, silently ("4 backgrounds"); its dataset view now leaves each out with one line, as check errs."""
    from pipeline.data.dataset_view import stage_dataset

    yaml = dataset(tmp_path / "ds", n=5)
    labels = tmp_path / "ds" / "labels"
    (labels / "p0.txt").symlink_to("/dev/zero")
    os.mkfifo(labels / "p1.txt")
    (labels / "p2.txt").mkdir()
    (labels / "p3.txt").symlink_to(tmp_path / "gone.txt")
    view = stage_dataset(yaml, tmp_path / "run" / "dataset")
    bad = sorted({str(e.path) for e in view.errors})
    assert bad == [str(labels / f"p{i}.txt") for i in range(4)]
    assert all("train the image as background" in e.reason for e in view.errors)
    assert sorted(p.name for p in (tmp_path / "run" / "dataset" / "train" / "images").iterdir()) == ["p4.jpg"]


def test_a_label_with_more_boxes_than_a_photo_holds_is_left_out(tmp_path):
    """140,000 boxes in a 3.9 MB file (under the byte limit): check said OK, then the trainer's box assigner took
    3.2 GB and crashed (seventh hostile retest). Over MAX_LABEL_BOXES the photo is left out, and check says so."""
    import numpy as np

    from pipeline.data.check import check_dataset
    from pipeline.data.labels import MAX_LABEL_BOXES

    label = tmp_path / "many.txt"
    rng = np.random.default_rng(0)
    rows = rng.uniform(0.2, 0.8, size=(MAX_LABEL_BOXES + 1, 2))
    label.write_text("".join(f"0 {x:.6f} {y:.6f} 0.01 0.01\n" for x, y in rows))
    boxes, errors, _ = parse_label_text(label.read_text(), 6)
    assert len(boxes) == MAX_LABEL_BOXES + 1 and errors == []  # every row is a valid box: the count decides
    with pytest.raises(InputError) as e:
        _check_label(label, 6)
    assert str(e.value) == (f"{label}: {MAX_LABEL_BOXES + 1:,} boxes, over the {MAX_LABEL_BOXES:,} a photo's labels may "
                            "hold (the trainer's box assigner makes tables of boxes x anchors): left out")
    label.write_text("".join(f"0 {x:.6f} {y:.6f} 0.01 0.01\n" for x, y in rows[:MAX_LABEL_BOXES]))
    _check_label(label, 6)  # at the limit: trained on
    # check: the same reason, and the photo counted as dropped
    ds = tmp_path / "ds"
    for split in ("train", "val"):
        (ds / split / "images").mkdir(parents=True)
        (ds / split / "labels").mkdir(parents=True)
        (ds / split / "images" / "a.jpg").write_bytes(jpeg_bytes(0))
        (ds / split / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (ds / "train" / "labels" / "a.txt").write_text("".join(f"0 {x:.6f} {y:.6f} 0.01 0.01\n" for x, y in rows))
    (ds / "data.yaml").write_text(f"path: {ds}\ntrain: train/images\nval: val/images\nnames: [a, b, c, d, e, f]\n")
    report = check_dataset(ds / "data.yaml")
    said = [e for e in report["errors"] if "boxes, over the" in str(e)]
    assert len(said) == 1, report["errors"]


def test_a_dataset_folder_is_listed_only_within_the_walk_bound(tmp_path, monkeypatch):
    """``path: /`` and ``train: usr`` took 90 s and 5 GB to list; ``train: proc`` never ended (seventh hostile
    retest): Ultralytics' scan globs the whole tree below a split folder. Past the bound: one line, unlisted."""
    import pipeline.core.io as io
    import pipeline.data.labels as labels

    for i in range(30):
        (tmp_path / "big" / f"d{i}").mkdir(parents=True)
    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\ntrain: big\nval: big\nnames: [a]\n")
    monkeypatch.setattr(io, "MAX_GLOB", 20)
    monkeypatch.setattr(labels, "MAX_GLOB", 20)
    with pytest.raises(InputError) as e:
        labels.dataset_splits(tmp_path / "d.yaml")
    assert str(e.value) == (f"{tmp_path / 'd.yaml'}: 'train' folder {tmp_path / 'big'} holds more than 20 files and "
                            "folders below it; not listed: name the dataset's own images folder")
