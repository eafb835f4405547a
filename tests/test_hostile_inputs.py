"""Hostile inputs are refused before the long work (issue #30): YAML alias bombs and bad class names in a
data.yaml or recipe, model YAMLs over the parameter budget, FIFOs / devices / sockets / link loops named as
photos or YAMLs (one line each, never a hang: every child process runs under a timeout), and JPEGs that libjpeg
repairs while decoding (a warning naming the file, counted in the summary). docs/robustness.md, "Checked
before the long work", lists each case with its test here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from ultralytics.nn import tasks

from checkpoints import save_checkpoint
from pipeline.cli import main
from pipeline.core.io import READ_FORMATS, InputError
from pipeline.core.yamlfile import MAX_YAML_DEPTH
from pipeline.model.load import (MAX_TENSOR, MAX_ACTIVATIONS, MAX_PARAMETERS, PROBE_SIZE, YOLOV8X_ACTIVATIONS, load_model,
                                 model_yaml_parameters)
from test_trust import cli, jpeg_bytes, one_error_line, photos, weights  # noqa: F401 - fixtures

ULTRALYTICS_V8 = Path(tasks.__file__).parent.parent / "cfg" / "models" / "v8" / "yolov8.yaml"


def _dataset(root: Path, names_line: str, extra: str = "") -> Path:
    """A one-photo dataset whose data.yaml has the given ``names:`` line (plus ``extra`` lines)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "images" / "a.jpg").write_bytes(jpeg_bytes(1))
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"train: images\nval: images\n{extra}{names_line}\n")
    return yaml


def _bomb(levels: int = 5) -> str:
    """A billion-laughs ``names``: each level lists the one before it nine times (9**levels strings)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nnames: *l{levels}"


# ------------------------------------------------------------------------------------------- A. YAML files


@pytest.mark.parametrize("command", ["check", "outliers", "train"])
def test_an_alias_bomb_in_a_data_yaml_is_one_line_before_any_work(command, tmp_path):
    data = _dataset(tmp_path / "d", "", extra=_bomb() + "\n")
    args = {"check": ["check", data], "outliers": ["outliers", data, "--out", tmp_path / "o"],
            "train": ["train", "--data", data, "--out", tmp_path / "o", "--epochs", "1", "--imgsz", "32"]}[command]
    r = cli(*args, timeout=120)
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and line.startswith(f"error: {data}: line 4: YAML alias *l0 refused")
    assert len(r.stdout) < 10_000 and not (tmp_path / "o").exists()  # nothing expanded, nothing written


def test_an_alias_in_a_recipe_or_a_model_yaml_is_refused(tmp_path, capsys):
    data = _dataset(tmp_path / "d", "names: [dent]")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("base: &b 3\nepochs: *b\n")
    assert main(["train", "--data", str(data), "--config", str(recipe), "--out", str(tmp_path / "o")]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {recipe}: line 2: YAML alias *b refused: a config file may not use anchors and aliases "
        "(a few of them can stand for gigabytes)")
    model = tmp_path / "m.yaml"
    model.write_text(ULTRALYTICS_V8.read_text().replace("nc: 80", "nc: &n 80\nkpt: *n"))
    with pytest.raises(InputError, match=r"line \d+: YAML alias \*n refused: a model YAML"):
        load_model(model)



def test_a_key_given_twice_is_one_line_not_the_last_one_silently(tmp_path, capsys):
    """A data.yaml with ``names:`` twice (or a recipe with ``epochs:`` twice) was read as its last value, silently:
    which one the author meant is not the reader's to guess."""
    data = _dataset(tmp_path / "d", "names: [dent]\nnames: [crack, dent]")
    assert main(["check", str(data)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {data}: line ") and "the key 'names' is given twice (first on line" in line, line
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 1\nlr0: {a: 1, a: 2}\n")
    assert main(["train", "--data", str(_dataset(tmp_path / "e", "names: [dent]")), "--config", str(recipe),
                 "--out", str(tmp_path / "o")]) == 1
    assert "line 2: the key 'a' is given twice (first on line 2)" in one_error_line(capsys.readouterr().err)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_yaml_nested_past_the_limit_is_one_line_everywhere(tmp_path):
    """PyYAML composes nested lists by recursion: 500 levels overflowed into a RecursionError traceback of
    thousands of lines (data.yaml, recipe, model YAML). For ``train --model`` the model is checked before the
    dataset is listed."""
    deep = f"nested deeper than {MAX_YAML_DEPTH} levels"
    data = tmp_path / "deep-data.yaml"
    data.write_text(f"train: train/images\nval: val/images\nnames: {_nested(500)}\n")
    r = cli("check", data, timeout=60)
    assert r.returncode == 1
    assert one_error_line(r.stderr) == f"error: {data}: line 3: {deep}: refused as a data.yaml file"
    good = _dataset(tmp_path / "d", "names: [dent]")
    recipe = tmp_path / "deep-recipe.yaml"
    recipe.write_text(f"epochs: 1\nlr0: {_nested(500)}\n")
    r = cli("train", "--data", good, "--config", recipe, "--out", tmp_path / "o", timeout=60)
    assert r.returncode == 1
    assert one_error_line(r.stderr) == f"error: {recipe}: line 2: {deep}: refused as a config file"
    model = tmp_path / "deep-model.yaml"
    model.write_text(f"nc: 1\nbackbone: {_nested(500)}\nhead: []\n")
    line = f"error: {model}: line 2: {deep}: refused as a model YAML"
    photo = tmp_path / "d" / "images" / "a.jpg"
    r = cli("predict", "--weights", model, "--imgsz", "64", photo, "--out", tmp_path / "o", timeout=60)
    assert r.returncode == 1 and one_error_line(r.stderr) == line
    os.mkfifo(tmp_path / "d" / "images" / "b.jpg")  # a listing of the dataset would name it: the model goes first
    r = cli("train", "--data", good, "--model", model, "--out", tmp_path / "o", timeout=60)
    assert r.returncode == 1 and one_error_line(r.stderr) == line and not (tmp_path / "o").exists()


def test_nesting_within_the_limit_still_reads(tmp_path):
    from pipeline.core.yamlfile import read_yaml

    ok = tmp_path / "ok.yaml"
    ok.write_text(f"a: {_nested(MAX_YAML_DEPTH - 1)}\n")  # the mapping is one level, the lists the rest
    assert read_yaml(ok) == {"a": eval(_nested(MAX_YAML_DEPTH - 1))}  # noqa: S307 - our own brackets


@pytest.mark.parametrize("names_line, extra, reason", [
    ("names: [1, 2]", "", "class 0 name '1' (int) is not a string: quote it in the YAML"),
    ("names: [dent, yes]", "", "class 1 name 'True' (bool) is not a string: quote it in the YAML"),
    ("names: [dent, null]", "", "class 1 name 'None' (NoneType) is not a string"),
    ("names: [dent, [a, b]]", "", "class 1 name \"['a', 'b']\" (list) is not a string"),
    ("names: [dent, dent]", "", "class 1 name 'dent' repeats class 0"),
    ("names: [dent, '  ']", "", "class 1 name is empty"),
    ('names: ["dent", "scr\\natch"]', "", "class 1 name 'scr\\natch' holds a control character or line break"),
    ('names: ["dent", "a\\u2028b"]', "", "holds a control character or line break"),
    ('names: ["dent", "gpj.\\u202escratch"]', "", "class 1 name 'gpj.\\u202escratch' holds a bidirectional control"),
    ('names: ["dent", "a\\u2067b\\u2069"]', "", "holds a bidirectional control character, which reorders"),
    ("names: {0: dent, 2: crack}", "", "'names' keys must be the class ids 0..1"),
    ("names: []", "", "'names' is empty: at least one class is needed"),
    ("names: dent", "", "'names' must be a list or an {id: name} mapping, not str"),
    ("names: [dent, crack]", "nc: 3\n", "'names' lists 2 classes but 'nc' is 3"),
    ("", "nc: 1000000000000\n", "'nc: 1000000000000' must be a whole number of classes from 1 to 10,000"),
    ("", "nc: 2.5\n", "'nc: 2.5' must be a whole number"),
])
def test_bad_class_names_are_one_line_naming_the_file(names_line, extra, reason, tmp_path, capsys):
    data = _dataset(tmp_path / "d", names_line, extra)
    assert main(["check", str(data)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {data}: ") and reason in line, line


def test_good_names_in_every_accepted_form_still_pass(tmp_path, capsys):
    for i, (names_line, extra) in enumerate([("names: [dent, crack]", "nc: 2\n"), ("names: {0: dent, '1': crack}", ""),
                                             ("", "nc: 2\n")]):
        data = _dataset(tmp_path / f"d{i}", names_line, extra)
        assert main(["check", str(data)]) == 0, capsys.readouterr().err
        capsys.readouterr()


# ------------------------------------------------------------------------------------- B. model YAML budget


def _model_yaml(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = ULTRALYTICS_V8.read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("spec, nc", [("yolov8n.yaml", 6), ("yolov8s.yaml", None)])
def test_the_meta_count_equals_a_real_build(spec, nc):
    """The oracle: Ultralytics' own model built on the CPU, its parameters counted by torch."""
    real = tasks.DetectionModel(spec, nc=nc, verbose=False)
    assert model_yaml_parameters(spec, nc) == sum(p.numel() for p in real.parameters())


def test_a_model_yaml_over_the_budget_is_one_line_with_its_count(tmp_path, photos):  # noqa: F811
    wide = _model_yaml(tmp_path, "wide.yaml", "n: [0.33, 0.25, 1024]", "n: [0.33, 1000, 1024]")
    r = cli("predict", "--weights", wide, photos, "--out", tmp_path / "o", timeout=120)
    line = one_error_line("\n".join(x for x in r.stderr.splitlines() if x.startswith("error")))
    assert r.returncode == 1 and line.startswith(f"error: {wide}: describes ")
    count = int(line.split("describes ")[1].split(" parameters")[0].replace(",", ""))
    # the budget is named, and the count holds the YAML's arithmetic: its second conv alone, 3x3 from
    # 64 * 1000 to 128 * 1000 channels, has 9 * 64,000 * 128,000 weights
    assert f"over the budget of {MAX_PARAMETERS:,}" in line and count > 9 * 64_000 * 128_000 > MAX_PARAMETERS
    assert not (tmp_path / "o").exists()


def test_a_huge_depth_or_nc_is_refused_before_it_is_built(tmp_path):
    deep = _model_yaml(tmp_path, "deep.yaml", "n: [0.33, 0.25, 1024]", "n: [2000, 0.25, 1024]")
    with pytest.raises(InputError, match="describes more than 5,000 modules"):
        load_model(deep)
    many = _model_yaml(tmp_path, "many.yaml", "nc: 80", "nc: 3000000")
    with pytest.raises(InputError, match="parameters, over the budget of 100,000,000"):
        load_model(many)
    with pytest.raises(InputError, match="parameters, over the budget"):  # a sane YAML, a huge class count
        load_model("yolov8n.yaml", nc=3_000_000)


def test_the_meta_build_leaves_the_real_model_unchanged():
    """The count runs Ultralytics' parse_model on a copy: the model then built is the stock one, on the CPU."""
    cfg = tasks.yaml_model_load("yolov8n.yaml")
    before = copy.deepcopy(cfg)
    model_yaml_parameters("yolov8n.yaml", 6)
    yolo = load_model("yolov8n.yaml", nc=6)
    assert tasks.yaml_model_load("yolov8n.yaml") == before
    assert {p.device for p in yolo.model.parameters()} == {torch.device("cpu")}



def _upsample_256(tmp_path: Path) -> Path:
    """YOLOv8 with its first Upsample factor 2 made 256 (a 3 KB file)."""
    text = ULTRALYTICS_V8.read_text()
    assert '[None, 2, "nearest"]' in text
    path = tmp_path / "up256.yaml"
    path.write_text(text.replace('[None, 2, "nearest"]', '[None, 256, "nearest"]', 1))
    return path


def test_yolov8x_stride_probe_activations_by_the_meta_method():
    """The figure the budget's line quotes, recomputed; the budget sits well above every stock YOLOv8."""
    from pipeline.model.load import probe_activations

    cfg = tasks.yaml_model_load("yolov8x.yaml")
    with torch.device("meta"):
        model, save = tasks.parse_model(copy.deepcopy(cfg), ch=3, verbose=False)
    acts, largest, _ = probe_activations("yolov8x.yaml", model, save, 3)
    assert acts == YOLOV8X_ACTIVATIONS
    assert MAX_ACTIVATIONS >= 3 * YOLOV8X_ACTIVATIONS and PROBE_SIZE == 256
    # its largest tensor: the 320-channel C2f concat at stride 4 (80 * 4 channels, 64 x 64), far under the bound
    assert largest == 320 * 64 * 64 * 5 // 4 == 1_638_400 and MAX_TENSOR >= 50 * largest
    from pipeline.model.load import MAX_TENSOR_PER_PIXEL
    assert largest / PROBE_SIZE ** 2 == 25 and MAX_TENSOR_PER_PIXEL >= 4 * 25  # the per-pixel bound's own claim
    for spec in ("yolov8n.yaml", "yolov8x.yaml", "yolov8x-p6.yaml", "yolo11x.yaml"):  # all still build
        model_yaml_parameters(spec, 6)


def test_one_very_wide_conv_is_refused_before_it_is_built(tmp_path):
    """Four layers inside every other budget, the first 3600 channels wide at the probe's 256 px: 945 million
    values, a 4.7 GB process (fifth hostile retest). Counted on the meta device and refused."""
    wide = tmp_path / "wide.yaml"
    wide.write_text("nc: 6\nbackbone:\n  - [-1, 1, Conv, [3600, 1, 1]]\n  - [-1, 1, Conv, [16, 8, 8]]\n"
                    "  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [[1, 2, 3], 1, Detect, [nc]]\n")
    with pytest.raises(InputError, match=r"makes 945,271,878 activation values, over the budget of 250,000,000"):
        model_yaml_parameters(wide, 6)


def test_ultralytics_stride_probe_is_still_256_px():
    """Our meta probe copies the size of Ultralytics' own; a new Ultralytics with another size must be seen."""
    import inspect

    assert f"s = {PROBE_SIZE}" in inspect.getsource(tasks.DetectionModel.__init__)


def test_a_parameterless_blow_up_is_refused_on_the_meta_device(tmp_path, monkeypatch):
    """Ultralytics' stride probe runs a 256 px image through a new model on the real device: an Upsample
    factor of 256 made it allocate gigabytes before its shape error, and ``channels: 20000`` (a 1.3e9-value
    input, few parameters) more. Both are refused by the meta probe; Ultralytics is never asked to build."""
    up = _upsample_256(tmp_path)
    channels = _model_yaml(tmp_path, "ch.yaml", "nc: 80", "nc: 80\nchannels: 20000")
    import pipeline.model.load as load

    monkeypatch.setattr(load, "YOLO", lambda *a, **k: pytest.fail("Ultralytics built a refused model"))
    with pytest.raises(InputError, match=r"not a valid model YAML \(RuntimeError: Sizes of tensors must match"):
        load_model(up, nc=6)
    with pytest.raises(InputError) as e:
        load_model(channels, nc=6)
    assert str(e.value) == (f"{channels}: its 256x256 trial forward (Ultralytics' stride probe) makes 1,321,548,800 "
                            f"activation values, over the budget of {MAX_ACTIVATIONS:,} (YOLOv8x makes "
                            f"{YOLOV8X_ACTIVATIONS:,}); check channels, the Upsample factors and the strides")


def test_a_blow_up_model_yaml_is_one_line_under_a_small_memory_cap(tmp_path, photos):  # noqa: F811
    """The CLI run under a 4 GiB address space (room for torch, one BLAS thread): the real probe of this YAML
    asked the allocator for 4 GiB at once and failed with that, not the shape error the meta probe finds."""
    up = _upsample_256(tmp_path)
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    r = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--weights", str(up), "--imgsz", "64", str(photos),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, preexec_fn=cap,
                       cwd=Path(__file__).parent.parent, env={**os.environ, "OPENBLAS_NUM_THREADS": "1",
                                                              "OMP_NUM_THREADS": "1"})
    errors = [x for x in r.stderr.splitlines() if x.startswith("error")]
    assert r.returncode == 1 and errors == [one_error_line("\n".join(errors))]
    assert "Sizes of tensors must match" in errors[0] and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- C. files that are not files: never a hang


@pytest.fixture
def specials(tmp_path):
    """A FIFO, a socket and a symlink loop named like photos, plus /dev/zero."""
    d = tmp_path / "specials"
    d.mkdir()
    os.mkfifo(d / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.jpg"))
    (d / "loop.jpg").symlink_to(d / "loop.jpg")
    yield {"fifo": d / "fifo.jpg", "socket": d / "sock.jpg", "loop": d / "loop.jpg", "device": Path("/dev/zero")}
    sock.close()


REASONS = {"fifo": "not a regular file (a FIFO), expected an image file",
           "socket": "not a regular file (a socket), expected an image file",
           "device": "not a regular file (a device), expected an image file",
           "loop": "Too many levels of symbolic links"}


@pytest.mark.parametrize("command", ["predict", "inspect", "preprocess", "trace"])
def test_special_files_as_photos_are_one_line_each(command, specials, weights, photos, tmp_path):  # noqa: F811
    good = sorted(photos.iterdir())[0]
    out = tmp_path / "o"
    if command == "trace":  # one photo per run: each special file alone
        for kind, path in specials.items():
            r = cli("trace", "--weights", weights, path, "--layer", "model.0", "--channel", "0", "--y", "1", "--x", "1",
                    timeout=60)
            assert r.returncode == 1 and one_error_line(r.stderr) == f"error: {path}: {REASONS[kind]}"
        return
    args = {"predict": ["predict", "--weights", weights, "--imgsz", "64", "--out", out],
            "inspect": ["inspect", "--weights", weights, "--imgsz", "64", "--out", out],
            "preprocess": ["preprocess", "--no-plots", "--out", out]}[command]
    if command == "preprocess":  # one photo per run
        for kind, path in specials.items():
            r = cli(*args, path, timeout=60)
            assert r.returncode == 1 and one_error_line(r.stderr) == f"error: {path}: {REASONS[kind]}"
        return
    r = cli(*args, *specials.values(), good, timeout=120)
    errors = sorted(line for line in r.stderr.splitlines() if line.startswith("error: "))
    assert errors == sorted(f"error: {p}: {REASONS[k]}" for k, p in specials.items())
    assert r.returncode == 1 and out.is_dir()  # the good photo was still processed


@pytest.mark.parametrize("command", ["check", "outliers", "train"])
def test_special_files_as_a_data_yaml_are_one_line(command, specials, tmp_path):
    for kind, path in specials.items():
        args = {"check": ["check", path], "outliers": ["outliers", path, "--out", tmp_path / "o"],
                "train": ["train", "--data", path, "--out", tmp_path / "o"]}[command]
        r = cli(*args, timeout=60)
        expected = REASONS[kind].replace("an image file", "a data.yaml file")
        assert r.returncode == 1 and one_error_line(r.stderr) == f"error: {path}: {expected}"


def test_a_fifo_model_yaml_or_recipe_is_one_line(specials, tmp_path, photos):  # noqa: F811
    fifo_yaml = tmp_path / "m.yaml"
    os.mkfifo(fifo_yaml)
    r = cli("predict", "--weights", fifo_yaml, photos, "--out", tmp_path / "o", timeout=60)
    assert one_error_line(r.stderr) == f"error: {fifo_yaml}: not a regular file (a FIFO), expected a model YAML"
    data = _dataset(tmp_path / "d", "names: [dent]")
    r = cli("train", "--data", data, "--config", fifo_yaml, "--out", tmp_path / "o", timeout=60)
    assert one_error_line(r.stderr) == f"error: {fifo_yaml}: not a regular file (a FIFO), expected a config file"


def test_explore_names_each_bad_photo_and_serves_the_rest(specials, weights, photos, tmp_path, monkeypatch, capsys):  # noqa: F811
    import pipeline.cli.explore as explore_cli

    empty, text = tmp_path / "empty.jpg", tmp_path / "notes.jpg"
    empty.write_bytes(b"")
    text.write_text("not a photo\n")
    good = sorted(photos.iterdir())[0]
    served = {}
    real_listen = explore_cli.listen
    monkeypatch.setattr(explore_cli, "listen", lambda host, port: real_listen(host, 0))  # a free port, really bound
    monkeypatch.setattr(explore_cli, "serve", lambda explorer, sock, *a, **k: served.setdefault("photos", explorer.photos))
    bad = [*specials.values(), empty, text]
    assert main(["explore", "--weights", str(weights), *map(str, bad), str(good), "--no-browser"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert [line.split(": ")[1] for line in err] == [str(p) for p in bad]
    assert err[-2] == f"error: {empty}: empty file"
    assert err[-1] == f"error: {text}: not an image or corrupt (Pillow cannot identify it; formats read: {READ_FORMATS})"
    assert served["photos"] == [good]
    # none left: exit 1 before any model is loaded or port bound
    assert main(["explore", "--weights", "never-loaded.pt", str(empty), str(specials["fifo"]), "--no-browser"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[-1] == "error: explore: no photo left to serve"


# ---------------------------------------------------------------------- D. JPEGs that libjpeg had to repair


def _scan_cut_short(data: bytes) -> bytes:
    """The entropy-coded data cut in the middle and an end marker appended: libjpeg warns "premature end of
    data segment", fills the rest grey and goes on; Pillow decodes it without a word."""
    sos = data.index(b"\xff\xda")
    return data[: sos + (len(data) - sos) // 2] + b"\xff\xd9"


def _zeros_in_scan(data: bytes) -> bytes:
    """200 zero bytes written over the middle of the scan: libjpeg warns ("premature end of data segment" or
    "N extraneous bytes before marker", by where they land) and repairs it; Pillow finds nothing wrong."""
    b = bytearray(data)
    mid = len(b) // 2
    b[mid:mid + 200] = bytes(200)
    return bytes(b)


@pytest.fixture
def repaired(tmp_path) -> dict[str, Path]:
    d = tmp_path / "repaired"
    d.mkdir()
    good = jpeg_bytes(3, size=(240, 320))
    files = {"cut": _scan_cut_short(good), "zeros": _zeros_in_scan(good), "good": good}
    for name, data in files.items():
        (d / f"{name}.jpg").write_bytes(data)
    return {name: d / f"{name}.jpg" for name in files}


def test_a_repaired_jpeg_is_predicted_with_a_warning_naming_it(repaired, weights, tmp_path, capsys):  # noqa: F811
    assert main(["predict", "--weights", str(weights), *map(str, repaired.values()), "--out", str(tmp_path / "o"),
                 "--imgsz", "64"]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith(("warning: ", "error: "))]
    assert len(warned) == 2 and warned[0] == (f"warning: {repaired['cut']}: damaged JPEG, decoded with the gaps "
                                              "filled (Corrupt JPEG data: premature end of data segment)")
    assert warned[1].startswith(f"warning: {repaired['zeros']}: damaged JPEG, decoded with the gaps filled (Corrupt "
                                "JPEG data: ")  # which warning depends on where the zeros land in the scan
    assert err[-1] == "2 photos with warnings (above)"
    recs = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert sorted(Path(r["image"]).name for r in recs) == ["cut.jpg", "good.jpg", "zeros.jpg"]


@pytest.mark.parametrize("command", ["inspect", "preprocess", "check"])
def test_a_repaired_jpeg_warns_the_same_way_everywhere(command, repaired, weights, tmp_path, capsys):  # noqa: F811
    if command == "check":
        data = _dataset(tmp_path / "d", "names: [dent]")
        (tmp_path / "d" / "images" / "a.jpg").write_bytes(repaired["cut"].read_bytes())
        args, path = ["check", str(data)], tmp_path / "d" / "images" / "a.jpg"
    else:
        path = repaired["cut"]
        args = {"inspect": ["inspect", "--weights", str(weights), str(path), "--imgsz", "64"],
                "preprocess": ["preprocess", str(path), "--no-plots"]}[command] + ["--out", str(tmp_path / "o")]
    main(args)
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("warning: ") and "damaged JPEG" in line]
    assert warned == [f"warning: {path}: damaged JPEG, decoded with the gaps filled "
                      "(Corrupt JPEG data: premature end of data segment)"]
    if command != "check":  # check counts it among its own warnings instead (the test after the next)
        assert err[-1] == "1 photo with warnings (above)"


def test_a_fifo_inside_a_dataset_or_a_batch_is_one_line_never_a_hang(weights, tmp_path):  # noqa: F811
    """Ultralytics' listing reads five sample files whole (its disk speed check), the batched engine opens
    each photo for its size, and check hashes every file: each would block on a FIFO named x.jpg."""
    data = _dataset(tmp_path / "d", "names: [dent]")
    fifo = tmp_path / "d" / "images" / "b.jpg"
    os.mkfifo(fifo)
    line = f"error: {fifo}: not a regular file (a FIFO), expected an image file"
    for args in (["check", data], ["outliers", data, "--out", tmp_path / "o"]):
        r = cli(*args, timeout=120)
        assert r.returncode == 1 and line in r.stderr.splitlines(), r.stderr
    r = cli("predict", "--weights", weights, fifo, tmp_path / "d" / "images" / "a.jpg", "--batch", "2", "--imgsz", "64",
            "--out", tmp_path / "p", timeout=120)
    assert r.returncode == 1 and [x for x in r.stderr.splitlines() if x.startswith("error")] == [line]
    assert len(json.loads((tmp_path / "p" / "detections.json").read_text())) == 1



def test_a_symlink_loop_inside_a_dataset_is_one_line_the_rest_checked(tmp_path):
    """``Path.resolve()`` raised RuntimeError on a link loop and stopped check and outliers with a traceback."""
    data = _dataset(tmp_path / "d", "names: [dent]")
    (tmp_path / "d" / "images" / "b.jpg").write_bytes(jpeg_bytes(2))
    (tmp_path / "d" / "labels" / "b.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    loop = tmp_path / "d" / "images" / "loop.jpg"
    loop.symlink_to("loop.jpg")
    line = f"error: {loop}: Too many levels of symbolic links"
    r = cli("check", data, "--json", tmp_path / "c.json", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [x for x in r.stderr.splitlines() if x.startswith("error")] == [line]
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["total"]["images"] == 3 and report["total"]["labelled"] == 2  # a.jpg and b.jpg were checked
    r = cli("outliers", data, "--out", tmp_path / "o", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert [x for x in r.stderr.splitlines() if x.startswith("error")] == [line]
    assert len((tmp_path / "o" / "image_stats.csv").read_text().splitlines()) == 3  # header and the two photos


def test_check_counts_a_repaired_jpeg_among_its_warnings_and_in_json(repaired, tmp_path, capsys):
    data = _dataset(tmp_path / "d", "names: [dent]")
    photo = tmp_path / "d" / "images" / "a.jpg"
    photo.write_bytes(repaired["cut"].read_bytes())
    assert main(["check", str(data), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr()
    reason = "damaged JPEG, decoded with the gaps filled (Corrupt JPEG data: premature end of data segment)"
    assert [x for x in out.err.splitlines() if "damaged JPEG" in x] == [f"warning: {photo}: {reason}"]
    assert "0 error(s), 2 warning(s), 1 of them leakage" in out.out  # the repaired JPEG and train == val
    report = json.loads((tmp_path / "c.json").read_text())
    assert [w for w in report["warnings"] if w["kind"] == "repaired_jpeg"] == [
        {"file": str(photo), "line": None, "kind": "repaired_jpeg", "reason": reason, "split": "train"}]
    assert report["ok"] and not report["strict_ok"]


@pytest.mark.parametrize("kind", ["fifo", "loop", "folder", "device"])
def test_weights_that_are_not_a_regular_file_say_why(kind, tmp_path, photos):  # noqa: F811
    path = {"fifo": tmp_path / "w.pt", "loop": tmp_path / "loop.pt", "folder": tmp_path / "dir.pt",
            "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "loop":
        path.symlink_to("loop.pt")
    elif kind == "folder":
        path.mkdir()
    reason = {"fifo": "not a regular file (a FIFO), expected a weights file",
              "loop": "Too many levels of symbolic links",
              "folder": "is a folder, expected a weights file",
              "device": "not a regular file (a device), expected a weights file"}[kind]
    with pytest.raises(InputError) as e:
        load_model(path)
    assert str(e.value) == f"{path}: {reason}"


@pytest.mark.parametrize("layer, where, values", [
    ("nn.LocalResponseNorm, [1000000]", "layer 1 (LocalResponseNorm)", (16 + 500_000 + 499_999) * 128 * 128),
    ("C2PSA, [16]", "layer 1 (C2PSA)", None),
])
def test_a_layer_whose_inside_blows_up_is_refused_on_the_meta_device(layer, where, values, tmp_path, monkeypatch):
    """Outputs were counted, a layer's insides not: nn.LocalResponseNorm(10**6) pads its input by a million
    channels, an attention block at stride 2 makes a (pixels x pixels) matrix: 8+ GB in the real stride probe
    from a 1 KB YAML (sixth hostile retest). The largest tensor any step makes is bounded too, the layer named."""
    import pipeline.model.load as load

    spec = tmp_path / "inside.yaml"
    spec.write_text("nc: 6\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, " + layer + "]\n"
                    "  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [[1, 2, 3], 1, Detect, [nc]]\n")
    monkeypatch.setattr(load, "YOLO", lambda *a, **k: pytest.fail("Ultralytics built a refused model"))
    with pytest.raises(InputError) as e:
        load_model(spec, nc=6)
    found = re.search(r"makes one tensor of ([\d,]+) values inside (.+?), over the budget of ([\d,]+) a tensor", str(e.value))
    assert found and found.group(2) == where and int(found.group(3).replace(",", "")) == MAX_TENSOR
    n = int(found.group(1).replace(",", ""))
    if values is not None:
        assert n == values  # the squared input padded by size // 2 and (size - 1) // 2 channels, as torch pads it
    else:  # 128 x 128 = 16,384 tokens: the attention matrix alone is 16,384^2 per head
        assert n >= 128 ** 4 > MAX_TENSOR


def test_a_layer_that_grows_faster_than_the_image_is_checked_at_the_size_it_runs(tmp_path, photos):  # noqa: F811
    """The tensor bound held at the 256 px build probe only: an attention layer at stride 4 passed there and tried
    to allocate 10 GB at 640 px; a checkpoint holding nn.LocalResponseNorm(5000) was never probed (3 GB, 101 s for
    one photo; 50000: a 20 GB allocation and a traceback). Every command checks at its own size, one line."""
    from pipeline.model.load import MAX_TENSOR_PER_PIXEL, check_forward, trained_imgsz

    spec = tmp_path / "aifi.yaml"
    spec.write_text("nc: 6\nbackbone:\n  - [-1, 1, Conv, [32, 3, 2]]\n  - [-1, 1, Conv, [32, 3, 2]]\n"
                    "  - [-1, 1, AIFI, [64, 4]]\n  - [-1, 1, Conv, [32, 3, 2]]\n  - [-1, 1, Conv, [32, 3, 2]]\n"
                    "  - [-1, 1, Conv, [32, 3, 2]]\nhead:\n  - [[3, 4, 5], 1, Detect, [nc]]\n")
    yolo = load_model(spec, nc=6)  # built: at 256 px its attention is 64 x 64 tokens
    check_forward(yolo, 128)
    with pytest.raises(InputError) as e:
        trained_imgsz(yolo, 640)
    tokens = (640 // 4) ** 2
    assert f"at 640 px its forward pass makes one tensor of {4 * tokens * tokens:,} values inside layer 2 (AIFI)" \
        in str(e.value) and f"({MAX_TENSOR_PER_PIXEL} a pixel)" in str(e.value)
    # a checkpoint's module: no YAML, no build probe
    ckpt = torch.load(save_checkpoint(tmp_path / "w.pt"), weights_only=False)
    (ckpt.get("ema") or ckpt["model"]).model[0].act = torch.nn.LocalResponseNorm(5000)
    torch.save(ckpt, tmp_path / "lrn.pt")
    r = cli("predict", "--weights", str(tmp_path / "lrn.pt"), str(photos), "--out", str(tmp_path / "o"))
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and "at 640 px its forward pass makes one tensor of" in line and "inside layer 0" in line
    assert not (tmp_path / "o").exists()


def _unreadable_link(folder: Path) -> Path:
    """A link named a.jpg that even root cannot follow: another process's fd 0 in /proc (ptrace rules, EACCES)."""
    for pid in ("1", *sorted(os.listdir("/proc") if os.path.isdir("/proc") else [])):
        target = f"/proc/{pid}/fd/0"
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.stat(target)
        except PermissionError:
            link = folder / "a.jpg"
            link.symlink_to(target)
            return link
        except OSError:
            continue
    pytest.skip("no /proc link here that cannot be followed")


@pytest.mark.parametrize("how", ["glob", "named", "list"])
def test_a_link_that_cannot_be_followed_is_one_line_and_the_rest_runs(weights, photos, tmp_path, capsys, how):  # noqa: F811
    """A link to ``/proc/1/task/1/fd/0`` (Permission denied on any look) stopped the whole batch with one line,
    nothing predicted, when named by a glob, directly or in a list; given as a folder it was one line already."""
    bad = tmp_path / "bad"
    bad.mkdir()
    link = _unreadable_link(bad)
    source = {"glob": str(bad / "*"), "named": str(link), "list": str(tmp_path / "list.txt")}[how]
    (tmp_path / "list.txt").write_text(f"{link}\n{sorted(photos.iterdir())[0]}\n")  # a list of it and a photo
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(weights), source, str(photos), "--out", str(out), "--imgsz", "64",
                 "--no-overlays"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {link}:") and "ermission denied" in line, line
    records = json.loads((out / "detections.json").read_text())
    assert sorted(Path(r["image"]).name for r in records) == sorted(p.name for p in photos.iterdir())


def test_a_checkpoint_that_unpacks_to_gigabytes_is_one_line_before_any_unpacking(photos, tmp_path, capsys):  # noqa: F811
    """A 4 MB zip whose ``data.pkl`` is deflated zeros unpacks to 4 GB: the loader took 12.8 GB before failing on
    it. The zip's own directory says what its members unpack to; nothing is decompressed before the refusal."""
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data.pkl", "w", force_zip64=True) as f:
            for _ in range(256):
                f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1_000_000
    assert main(["predict", "--weights", str(bomb), str(photos), "--out", str(tmp_path / "o")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {bomb}: a zip archive of 0.3 MB whose members unpack to 0.3 GB"), line


@pytest.mark.parametrize("value", [20000, True, 0, "640"])
@pytest.mark.parametrize("command", ["predict", "inspect", "report"])
def test_a_checkpoints_own_size_is_held_to_the_imgsz_range(weights, photos, tmp_path, capsys, value, command):  # noqa: F811
    """``train_args.imgsz = 20000`` edited into a checkpoint passed the 32..4096 check of ``--imgsz`` (predict,
    report and inspect then tried to allocate 4.8 GB), and ``True`` ran as 1 px: one line, naming the file."""
    ckpt = torch.load(weights, weights_only=False)
    ckpt["train_args"]["imgsz"] = value
    edited = tmp_path / "edited.pt"
    torch.save(ckpt, edited)
    photo = next(iter(sorted(photos.iterdir())))
    assert main([command, "--weights", str(edited), str(photo), "--out", str(tmp_path / "o")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {edited}: its train_args.imgsz is {value!r}, not an integer size"), line
