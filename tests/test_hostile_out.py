"""A run writes only inside its own --out (docs/robustness.md, issue #30 section 2).

- a file name cannot forge an ``error:`` line: control characters are printed escaped, one bad input is one line;
- an output named as a file (``check --json``, ``trace --out``) replaces only this command's own earlier output;
- ``train --resume`` writes only into ``--out``, whatever the checkpoint says its folder was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from checkpoints import save_checkpoint
from pipeline.cli import main
from pipeline.core.errors import InputError, one_line
from pipeline.model.recipe import load_recipe
from test_trust import cli, digests, jpeg_bytes, one_error_line

# what a terminal would act on: every C0/C1 control but the newline that ends a line, and DEL
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
TRACE = ["--layer", "model.0", "--channel", "0", "--y", "0", "--x", "0", "--imgsz", "64"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A genuine checkpoint in the trainer's layout (as tests/test_trust.py's), loads in a second."""
    return save_checkpoint(tmp_path_factory.mktemp("w") / "good.pt")


# ------------------------------------------------------------------------------- 1. one line per input


def test_one_line_escapes_only_what_could_break_a_line():
    assert one_line("runs/car 1 (copy)/é.jpg") == "runs/car 1 (copy)/é.jpg"  # ordinary names print as they are
    name = "a\nerror: fake.jpg: ok.jpg\r\x1b[2J\x85\u2028\u202e\u061c"
    assert one_line(name) == "a\\nerror: fake.jpg: ok.jpg\\r\\x1b[2J\\x85\\u2028\\u202e\\u061c"
    # the reason may repeat the name (an OSError's text): both halves are escaped
    e = InputError(name, f"cannot open {name}")
    assert "\n" not in str(e) and "\x1b" not in str(e) and str(e).count(one_line(name)) == 2
    assert e.path == name  # the raw name stays available to JSON reports
    # zero-width characters make two names look alike (sixth hostile retest): escaped, each as repr writes it
    hidden = "car\u200b\u200c\u200d\u2060\ufeff.jpg"
    assert one_line(hidden) == "car" + "".join(repr(c)[1:-1] for c in hidden[3:-4]) + ".jpg" != hidden


def test_a_photo_name_cannot_forge_an_error_line(weights, tmp_path):
    """Two bad photos whose names hold a newline + a fake error line, and an ANSI clear-screen: two lines."""
    d = tmp_path / "photos"
    d.mkdir()
    (d / "good.jpg").write_bytes(jpeg_bytes(0))
    forged = d / "a\nerror: fake.jpg: ok.jpg"
    forged.write_bytes(b"not a photo at all")
    ansi = d / "b\x1b[2J.jpg"
    ansi.write_bytes(jpeg_bytes(1)[:400])  # truncated
    r = cli("predict", "--weights", weights, d / "good.jpg", forged, ansi, "--out", tmp_path / "o", "--imgsz", "64",
            "--no-overlays")
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"error: {d}/a\\nerror: fake.jpg: ok.jpg: ")
    assert errors[1].startswith(f"error: {d}/b\\x1b[2J.jpg: ")
    assert not RAW_CONTROL.search(r.stderr + r.stdout)
    done = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert [Path(rec["image"]).name for rec in done] == ["good.jpg"]  # the batch went on past both


def test_a_reason_that_repeats_a_name_stays_one_line(synth_data, tmp_path, capsys):
    """``check --json notes\\n.txt/r.json``: the reason names the file in the way, newline and all."""
    note = tmp_path / "notes\nerror: x: y.txt"
    note.write_text("mine\n")
    assert main(["check", str(synth_data), "--json", str(note / "r.json")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {one_line(note)}/r.json: cannot write ({one_line(note)} is a file, not a folder)"
    assert note.read_text() == "mine\n"


def test_an_unknown_option_cannot_smuggle_an_escape(capsys):
    with pytest.raises(SystemExit) as e:
        main(["check", "data.yaml", "--bogus\x1b[2J"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "\\x1b[2J" in err and not RAW_CONTROL.search(err)


# ------------------------------------------------------------------------- 2. outputs named as files


def _writers(synth_data, photo, weights):
    """Each command that writes a file the user names: argv up to (not including) that file."""
    return {
        "check": ["check", synth_data, "--json"],
        "trace": ["trace", photo, "--weights", weights, *TRACE, "--out"],
    }


@pytest.fixture
def photo(tmp_path) -> Path:
    p = tmp_path / "car.jpg"
    p.write_bytes(jpeg_bytes(3))
    return p


@pytest.mark.parametrize("command", ["check", "trace"])
def test_a_file_the_command_did_not_write_is_refused_and_kept(command, synth_data, photo, weights,
                                                              tmp_path, capsys):
    argv = _writers(synth_data, photo, weights)[command]
    other = "trace" if command == "check" else "check"
    foreign = {
        "plain": b'{"a": 1}\n',
        "not json": b"my notes, not JSON\n",
        "a lookalike": b'{"a": 1, "generator": "cardamage %s"}\n' % command.encode(),  # the mark is not first
        "the other command's": b'{\n  "generator": "cardamage %s",\n  "ok": true\n}\n' % other.encode(),
    }
    for name, data in foreign.items():
        target = tmp_path / f"{name}.json"
        target.write_bytes(data)
        assert main([str(a) for a in [*argv, target]]) == 1, name
        line = one_error_line(capsys.readouterr().err)
        assert line == (f"error: {target}: exists and is not an earlier output of cardamage {command}; "
                        "choose another file name, or pass --overwrite to replace it")
        assert target.read_bytes() == data, name
    # a link is the user's too, whatever it points at: neither it nor its target changes
    (tmp_path / "mine.json").write_bytes(b'{"a": 1}\n')
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "mine.json")
    assert main([str(a) for a in [*argv, link]]) == 1
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert link.is_symlink() and (tmp_path / "mine.json").read_bytes() == b'{"a": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left behind


@pytest.mark.parametrize("command", ["check", "trace"])
def test_its_own_earlier_output_is_replaced_and_overwrite_replaces_any(command, synth_data, photo,
                                                                        weights, tmp_path, capsys):
    argv = [str(a) for a in _writers(synth_data, photo, weights)[command]]
    target = tmp_path / "out.json"
    assert main([*argv, str(target)]) == 0
    first = json.loads(target.read_text())
    assert next(iter(first)) == "generator" and first["generator"] == f"cardamage {command}"
    assert main([*argv, str(target)]) == 0  # its own, unchanged: replaced
    assert json.loads(target.read_text()) == first
    edited = json.dumps({**first, "my_notes": "keep"}, indent=2)  # an earlier run's, edited since: the user's now
    target.write_text(edited)
    assert main([*argv, str(target)]) == 1
    assert "exists and is not an earlier output of" in capsys.readouterr().err and target.read_text() == edited
    assert main([*argv, str(target), "--overwrite"]) == 0
    assert json.loads(target.read_text()) == first  # replaced by this run's report, not merged
    target.write_bytes(b'{"a": 1}\n')
    assert main([*argv, str(target), "--overwrite"]) == 0
    assert json.loads(target.read_text()) == first
    capsys.readouterr()


def test_a_foreign_file_that_appears_during_the_run_is_kept(synth_data, tmp_path, monkeypatch, capsys):
    """The check before the work is repeated just before writing: a scan takes minutes on CarDD."""
    import pipeline.cli.check

    target = tmp_path / "r.json"
    real = pipeline.cli.check.check_dataset

    def scan_then_user_saves(*a, **k):
        report = real(*a, **k)
        target.write_bytes(b'{"a": 1}\n')
        return report

    monkeypatch.setattr(pipeline.cli.check, "check_dataset", scan_then_user_saves)
    assert main(["check", str(synth_data), "--json", str(target)]) == 1
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert target.read_bytes() == b'{"a": 1}\n'


# ------------------------------------------------------------------------------------- 3. train --resume


class Interrupt(Exception):
    """Stands for a crash after the first epoch's checkpoint was saved."""


@pytest.fixture(scope="module")
def interrupted(synth_data, tmp_path_factory) -> Path:
    """A real run folder of ``cardamage train``: 2 epochs of 64 px planned, cut after the first one's last.pt."""
    from pipeline.model.train import train

    def stop(trainer):
        raise Interrupt

    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.raises(Interrupt):
        train(synth_data, out, epochs=2, imgsz=64, batch=8, nbs=8, workers=0, device="cpu", val=False, seed=0,
              callbacks={"on_fit_epoch_end": stop})
    ckpt = torch.load(out / "weights" / "last.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["train_args"]["epochs"], ckpt["train_args"]["save_dir"]) == (0, 2, str(out))
    return out


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)  # as `cp -a`: the view's links stay links to the user's files
    return dest


@pytest.mark.slow
def test_resuming_a_copied_run_writes_only_into_the_copy(interrupted, tmp_path):
    copy = _copy(interrupted, tmp_path / "copy")
    before, tree = digests(interrupted), _tree(interrupted)
    assert main(["train", "--out", str(copy), "--resume"]) == 0
    assert digests(interrupted) == before and _tree(interrupted) == tree  # the original: not a byte, not a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    m = json.loads((copy / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["weights"] == str(copy.resolve() / "weights" / "best.pt")
    assert len((copy / "results.csv").read_text().strip().splitlines()) == 1 + 2  # header + both epochs, here
    args = yaml.safe_load((copy / "args.yaml").read_text())  # the trainer's record: a finished last.pt drops save_dir
    assert args["save_dir"] == str(copy.resolve()) and args["data"] == str(copy.resolve() / "dataset" / "data.yaml")
    view = yaml.safe_load((copy / "dataset" / "data.yaml").read_text())
    assert view["path"] == str(copy.resolve() / "dataset")
    assert (copy / "dataset" / "train" / "labels.cache").is_file()  # its cache too is the copy's own


@pytest.mark.slow
def test_a_checkpoint_naming_another_folder_writes_nothing_there(interrupted, tmp_path):
    """An edited last.pt (save_dir, project, name elsewhere) still resumes into --out; --batch may change."""
    run = _copy(interrupted, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    ckpt = torch.load(run / "weights" / "last.pt", weights_only=False)
    ckpt["train_args"].update(save_dir=str(elsewhere), project=str(tmp_path), name="elsewhere")
    torch.save(ckpt, run / "weights" / "last.pt")
    before = digests(interrupted)
    assert main(["train", "--out", str(run), "--resume", "--batch", "4"]) == 0
    assert not elsewhere.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert digests(interrupted) == before
    args = torch.load(run / "weights" / "last.pt", weights_only=False)["train_args"]
    assert (args["batch"], args["epochs"]) == (4, 2)
    assert yaml.safe_load((run / "args.yaml").read_text())["save_dir"] == str(run.resolve())
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("extra", [["--epochs", "5"], ["--data", "other.yaml"], ["--model", "yolov8s.yaml"],
                                   ["--config", "configs/cardd.yaml"], ["--overwrite"]])
def test_a_resume_refuses_what_it_would_ignore(extra, weights, tmp_path, capsys):
    """Refused before anything is read, so a checkpoint that looks cut after epoch 1 of 2 is enough."""
    run = tmp_path / "run"
    ckpt = torch.load(weights, weights_only=False)
    ckpt.update(epoch=0, optimizer={"state": {}, "param_groups": []})
    ckpt["train_args"].update(epochs=2, save_dir=str(run))
    (run / "weights").mkdir(parents=True)
    torch.save(ckpt, run / "weights" / "last.pt")
    before, tree = digests(run), _tree(run)
    assert main(["train", "--out", str(run), "--resume", *extra]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {extra[0]}: a resume keeps the run's recipe (epochs, data, model, config")
    assert "only --device, --batch, --imgsz, --time may change" in line
    assert digests(run) == before and _tree(run) == tree


RECIPE = "epochs: 1\nimgsz: 64\nbatch: 4\nworkers: 0\n"


@pytest.mark.parametrize("key, reason", [
    ("save_dir: {elsewhere}", "save_dir: a recipe holds settings, not files, folders or runs "
                              "(--out says where the run writes)"),
    ("project: {elsewhere}", "project: a recipe holds settings, not files, folders or runs "
                             "(--out says where the run writes)"),
    ("cfg: https://example.com/x.yaml", "cfg: a recipe holds settings, not files, folders or runs "
                                        "(write its keys into this recipe)"),
    ("cfg: {bomb}", "cfg: a recipe holds settings, not files, folders or runs (write its keys into this recipe)"),
    ("data: {elsewhere}/data.yaml", "data: a recipe holds settings, not files, folders or runs "
                                    "(--data names the dataset)"),
    ("bogus: 1", "bogus: 'bogus' is not a valid YOLO argument."),
    ("lr0: [1, 2]", "lr0: 'lr0=[1, 2]' is of invalid type list. Valid 'lr0' types are int (i.e. 'lr0=0') or "
                    "float (i.e. 'lr0=0.5')"),
    ("amp: maybe", "amp: 'amp=maybe' is invalid. Valid 'amp' values are True, False, 'fp16', 'bf16', or 'fp32'."),
    ("watch: 3", "watch: must be true or false, not 3"),
    ("imgsz: 0", "imgsz: must be an integer size in pixels from 32 to 4096, not 0"),
    ("nbs: 0", "nbs: 'nbs=0' is an invalid value. 'nbs' must be >= 1."),
    ("workers: -1", "workers: must be an integer >= 0, not -1"),
    ("batch: 0", "batch: must be an integer >= 1, -1 (auto), or a fraction of GPU memory in (0, 1), not 0"),
    ("epochs: 0", "epochs: 'epochs=0' is an invalid value. 'epochs' must be >= 1."),
    ("batch: 1.5", "batch: must be an integer >= 1, -1 (auto), or a fraction of GPU memory in (0, 1), not 1.5"),
    ("model: 7", "model: must name a model YAML or a weights file, not '7' (int)"),
    ("model: [a, b]", "model: must name a model YAML or a weights file, not \"['a', 'b']\" (list)"),
    ('model: "a\\nINFO forged.yaml"', r"model: a\nINFO forged.yaml holds a control, line-break or bidirectional "
                                      "character: choose a plainer name"),
    ("compile: true", "compile: True is not supported: this project does not train compiled models (its probes "
                      "and the film hook the modules that torch.compile replaces)"),
])
def test_a_recipe_naming_files_or_bad_keys_is_one_line_before_anything(key, reason, synth_data, tmp_path, capsys):
    """A recipe is settings only, checked whole before a model or dataset view is built: a key that names
    a file, folder or run, an unknown key or a badly typed value is one line naming the recipe and the key.
    Nothing is written, inside --out or where the key points; a cfg URL is never fetched (the network guard)."""
    elsewhere, bomb = tmp_path / "escaped_run", tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n")
    recipe = tmp_path / "r.yaml"
    base = "".join(f"{line}\n" for line in RECIPE.splitlines() if line.split(":")[0] != key.split(":")[0])
    recipe.write_text(base + key.format(elsewhere=elsewhere, bomb=bomb) + "\n")
    out = tmp_path / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", "--data", str(synth_data), "--config", str(recipe), "--out", str(out)]) == 1
    assert one_error_line(capsys.readouterr().err) == f"error: {recipe}: {reason}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, nothing where the key points


def test_a_recipe_save_dir_in_a_child_process_is_one_line(synth_data, tmp_path):
    """The hostile tester's command as a user types it: no traceback, no training, nothing outside --out."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + f"save_dir: {tmp_path / 'escaped_run'}\n")
    r = cli("train", "--data", synth_data, "--config", recipe, "--out", tmp_path / "run", timeout=120)
    assert r.returncode == 1, r.stderr
    assert one_error_line(r.stderr).startswith(f"error: {recipe}: save_dir: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


@pytest.mark.parametrize("setting, said", [
    ("optimizer: bogus", "Optimizer 'bogus' not found"),
    ("device: cuda:3", "Invalid CUDA 'device=3' requested"),
])
def test_a_value_only_the_trainer_checks_is_one_line(setting, said, synth_data, tmp_path):
    """Values that pass Ultralytics' argument checks and fail in its trainer before the first batch (the third
    and fourth hostile retests): one line naming the recipe, exit 1, no traceback."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + setting + "\n")
    r = cli("train", "--data", synth_data, "--config", recipe, "--out", tmp_path / "run", timeout=300)
    assert r.returncode == 1, r.stderr
    line = one_error_line(r.stderr)
    assert line.startswith(f"error: {recipe}: the trainer refused a setting before its first batch: "), line
    assert said in line, line


@pytest.mark.parametrize("key", ["task: pose", "mode: predict"])
def test_a_recipe_cannot_choose_the_task_or_mode(key, synth_data, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE + key + "\n")
    assert main(["train", "--data", str(synth_data), "--config", str(recipe), "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {recipe}: {key.split(':')[0]}: not a recipe's to choose"), line


@pytest.mark.parametrize("yaml", ["yolov8n-seg.yaml", "yolov8n-pose.yaml", "yolov8n-obb.yaml", "yolov8n-cls.yaml"])
def test_a_model_of_another_task_is_one_line(yaml, tmp_path):
    """Ultralytics ships these YAMLs; built as detection models they failed deep in predict and train with
    tracebacks about shapes (fourth hostile retest). Refused when loaded, naming the head."""
    photo = tmp_path / "p.jpg"
    photo.write_bytes(jpeg_bytes(0))
    r = cli("predict", "--weights", yaml, photo, "--out", tmp_path / "o", timeout=300)
    assert r.returncode == 1, r.stderr
    head = {"seg": "Segment", "pose": "Pose", "obb": "OBB", "cls": "Classify"}[yaml.split("-")[1].split(".")[0]]
    assert one_error_line(r.stderr) == (f"error: {yaml}: a model with a {head} head: this project reads detection "
                                        "models (a YOLOv8 Detect head, e.g. yolov8n.yaml or a detection checkpoint)")


def test_the_shipped_recipes_pass_the_recipe_check():
    for recipe in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        assert load_recipe(recipe), recipe


# ------------------------------------------------------------- 4. no write through a link in the run folder

LINK_REASON = ("a run writes only inside its own folder and would write through it: remove the link, "
               "or choose another --out")


def _plant(run: Path, rel: str, victim: Path) -> Path:
    """Move ``run/rel`` (a file, or the weights folder) to ``victim/rel`` and leave a link to it in its place,
    as `ln -sf /victim/results.csv run/results.csv` does; return the victim."""
    here, there = run / rel, victim / rel
    there.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(here, there)
    here.symlink_to(there)
    return there


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["results.csv", "args.yaml", "weights", "dataset/data.yaml",
                                 "dataset/train/labels.cache"])
def test_a_resume_never_writes_through_a_link_in_the_run_folder(rel, interrupted, tmp_path, capsys):
    """The trainer appends results.csv, rewrites args.yaml and the checkpoints, and the view's yaml and cache
    are written too: each linked out of the folder is refused before training, and its target keeps every byte."""
    run = _copy(interrupted, tmp_path / "run")
    assert (run / rel).exists(), rel  # the interrupted run made it: a real file the trainer would write again
    target = _plant(run, rel, tmp_path / "victim")
    before = digests(tmp_path / "victim")
    assert main(["train", "--out", str(run), "--resume"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {run.resolve() / rel}: is a symbolic link (to {target}); {LINK_REASON}"
    assert digests(tmp_path / "victim") == before and (run / rel).is_symlink()
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_new_run_into_a_folder_holding_a_link_is_refused(overwrite, synth_data, tmp_path, capsys):
    """A new run writes the same files (``--overwrite`` first deletes the old run's): refused before any of it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "results.csv").write_bytes(b"epoch,mine\n1,2\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").symlink_to(victim / "results.csv")
    before, tree = digests(victim), _tree(out)
    argv = ["train", "--data", str(synth_data), "--out", str(out), "--epochs", "1", "--imgsz", "64", *overwrite]
    assert main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {out.resolve() / 'results.csv'}: is a symbolic link (to {victim / 'results.csv'}); {LINK_REASON}"
    assert digests(victim) == before and _tree(out) == tree


def test_only_the_views_links_to_images_and_labels_are_accepted(tmp_path):
    """Files in the view's images/ and labels/ are links by design; a folder there, or any other name, is not."""
    from pipeline.model.train import check_links

    run = tmp_path / "run"
    images, labels = run / "dataset" / "train" / "images" / "a", run / "dataset" / "train" / "labels" / "a"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    (tmp_path / "car.jpg").write_bytes(jpeg_bytes(0))
    (tmp_path / "car.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (images / "car.jpg").symlink_to(tmp_path / "car.jpg")
    (labels / "car.txt").symlink_to(tmp_path / "car.txt")
    check_links(run)  # the view as stage_dataset makes it
    for planted, target in [(images / "dir.jpg", tmp_path), (labels.parent / "a.cache", tmp_path / "car.txt"),
                            (labels / "x.cache", tmp_path / "car.txt"), (run / "plots.png", tmp_path / "car.jpg")]:
        planted.symlink_to(target)
        with pytest.raises(InputError) as e:
            check_links(run)
        assert str(e.value).startswith(f"{planted}: is a symbolic link (to {target})"), planted
        planted.unlink()


def test_a_hard_link_in_the_run_folder_is_refused(synth_data, tmp_path, capsys):
    """A hard link is the victim's own bytes under another name: an append to results.csv would change both."""
    victim = tmp_path / "victim.csv"
    victim.write_bytes(b"epoch,mine\n1,2\n")
    out = tmp_path / "run"
    out.mkdir()
    os.link(victim, out / "results.csv")
    before = victim.read_bytes()
    assert main(["train", "--data", str(synth_data), "--out", str(out), "--epochs", "1", "--imgsz", "64"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out.resolve() / 'results.csv'}: is one of 2 hard links to the same file"), line
    assert victim.read_bytes() == before and os.stat(victim).st_nlink == 2


@pytest.mark.slow
@pytest.mark.parametrize("plant", ["download", "alias", "deep", "fifo"])
def test_a_resume_reads_its_dataset_view_as_untrusted_input(plant, interrupted, tmp_path, capsys):
    """The view's yaml and links are in the run folder, which anyone may have edited: a 'download:' key would be
    run by Ultralytics' dataset check (a script), an alias or deep nesting would blow up, a link re-pointed at
    a FIFO would hang the first read. Each is one line before training, and no planted code runs."""
    run = _copy(interrupted, tmp_path / "run")
    view = run / "dataset" / "data.yaml"
    marker = tmp_path / "PWNED"
    text = view.read_text()
    if plant == "download":  # Ultralytics runs 'download' when a split is missing
        text = text.replace("val: val/images", "val: val/missing") + f"download: \"open('{marker}', 'w')\"\n"
    elif plant == "alias":
        text += "x: &a [1, 2]\ny: *a\n"
    elif plant == "deep":
        text += "extra: " + "[" * 200 + "]" * 200 + "\n"
    else:
        image = next((run / "dataset" / "train" / "images").rglob("*.jpg"))
        image.unlink()
        os.mkfifo(tmp_path / "fifo.jpg")
        image.symlink_to(tmp_path / "fifo.jpg")
    view.write_text(text)
    assert main(["train", "--out", str(run), "--resume"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: ") and ("data.yaml" in line or "fifo" in line or "images" in line), line
    assert not marker.exists() and not (run / "metrics.json").exists()


def test_a_resumed_view_keeps_only_what_a_view_holds(tmp_path):
    """A harmless extra key (here 'download' beside intact splits) is dropped when the view is rewritten."""
    from pipeline.data.dataset_view import own_view

    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("path: /elsewhere\ntrain: train/images\nval: val/images\nnc: 1\n"
                                        "names: {0: dent}\ndownload: \"raise SystemExit(3)\"\n")
    spec = yaml.safe_load(own_view(tmp_path).read_text())
    assert spec == {"path": str(tmp_path.resolve()), "train": "train/images", "val": "val/images", "nc": 1,
                    "names": {0: "dent"}}


# ------------------------------------------------------------------ 4. files in an output folder (--out DIR)


def _predict(weights, photo, out, *extra):
    return main(["predict", str(photo), "--weights", str(weights), "--out", str(out), "--imgsz", "64", *extra])


@pytest.mark.parametrize("name", ["detections.json", "car.jpg"])  # the records, and the photo's overlay
def test_predict_refuses_a_file_of_the_users_in_its_folder_before_any_work(name, weights, photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    mine = out / name
    mine.write_bytes(b"the user's own file\n")
    assert _predict(weights, photo, out) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {mine}: is a file cardamage did not write") and "--overwrite" in line
    assert mine.read_bytes() == b"the user's own file\n" and sorted(p.name for p in out.iterdir()) == [name]
    assert _predict(weights, photo, out, "--overwrite") == 0
    assert (out / "detections.json").read_bytes() != b"the user's own file\n"
    capsys.readouterr()


def test_predict_never_replaces_a_link_in_its_folder(weights, photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere.json").write_text("[]\n")
    (out / "detections.json").symlink_to(tmp_path / "elsewhere.json")
    assert _predict(weights, photo, out) == 1
    assert "is a symbolic link cardamage did not write" in one_error_line(capsys.readouterr().err)
    assert (out / "detections.json").is_symlink() and (tmp_path / "elsewhere.json").read_text() == "[]\n"


def test_predict_replaces_its_own_earlier_files_but_not_once_the_user_changed_them(weights, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(weights, photo, out) == 0
    first = (out / "detections.json").read_bytes()
    assert _predict(weights, photo, out) == 0  # its own: replaced without a word
    assert (out / "detections.json").read_bytes() == first
    # a copy of the folder (new inodes and times, same bytes) is still the run's own
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert _predict(weights, photo, copy) == 0
    (out / "car.jpg").write_bytes(b"edited by hand")  # the user's now
    assert _predict(weights, photo, out) == 1
    assert f"error: {out / 'car.jpg'}: is a file cardamage did not write" in capsys.readouterr().err
    assert (out / "car.jpg").read_bytes() == b"edited by hand"


def test_a_file_that_appears_in_the_folder_during_the_work_is_kept(tmp_path):
    """The check is made again just before the rename: a file the user saves meanwhile is not replaced."""
    from pipeline.core.io import WRITTEN_LIST, atomic_path, atomic_write_text, output_folder

    with output_folder(tmp_path / "o") as out:
        atomic_write_text(out / "a.txt", "ours\n")
        with pytest.raises(InputError, match="did not write"):
            with atomic_path(out / "b.txt") as tmp:
                tmp.write_text("ours\n")
                (out / "b.txt").write_text("the user's\n")
        atomic_write_text(out / "a.txt", "ours again\n")
    assert (out / "b.txt").read_text() == "the user's\n" and (out / "a.txt").read_text() == "ours again\n"
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN_LIST, "a.txt", "b.txt"]  # no temporary left


@pytest.mark.parametrize("kind", ["fifo", "link", "hard link", "folder", "garbage", "huge number", "nested"])
def test_a_hostile_written_list_makes_nothing_ours_and_never_hangs(kind, tmp_path):
    """A list that is not a plain file is one line before any work (and nothing is appended to a hard link's
    other name); a list of hostile lines makes nothing ours, without a traceback."""
    from pipeline.core.io import WRITTEN_LIST, atomic_write_text, output_folder

    out = tmp_path / "o"
    out.mkdir()
    (out / "a.txt").write_text("the user's\n")
    lst = out / WRITTEN_LIST
    forged = json.dumps(["a.txt", 11, 0, 0, None]) + "\n"
    (tmp_path / "diary.txt").write_text(forged)
    make = {"fifo": lambda: os.mkfifo(lst), "link": lambda: lst.symlink_to(tmp_path / "diary.txt"),
            "hard link": lambda: os.link(tmp_path / "diary.txt", lst), "folder": lst.mkdir,
            "garbage": lambda: lst.write_bytes(b"\x00\xff not json\n[1, 2]\n"),
            "huge number": lambda: lst.write_text('["a.txt", 1e999, 0, 0, null]\n'),
            "nested": lambda: lst.write_text("[" * 100_000 + "]" * 100_000 + "\n")}
    make[kind]()
    if kind in ("fifo", "link", "hard link", "folder"):
        with pytest.raises(InputError, match="is not a plain file of cardamage's"):
            with output_folder(out):
                pass
        assert (tmp_path / "diary.txt").read_text() == forged
    else:
        with output_folder(out) as o:
            with pytest.raises(InputError, match="did not write"):
                atomic_write_text(o / "a.txt", "ours\n")
    assert (out / "a.txt").read_text() == "the user's\n"


@pytest.mark.parametrize("sub", ["report_files", "crops/model.0"])
def test_a_link_inside_the_folder_cannot_lead_a_write_out(sub, tmp_path):
    """OUT/report_files -> elsewhere: a write named inside the folder would land outside it. Refused, one line."""
    from pipeline.core.io import atomic_write_text, output_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c0.jpg").write_text("the user's\n")
    out = tmp_path / "o"
    (out / sub).parent.mkdir(parents=True)
    (out / sub).symlink_to(elsewhere)
    with output_folder(out) as o:
        with pytest.raises(InputError, match="leads out of the output folder .* through a symbolic link"):
            atomic_write_text(o / sub / "c0.jpg", "ours\n")
        with pytest.raises(InputError, match="leads out of the output folder"):
            atomic_write_text(o / sub / "new" / "x.txt", "ours\n")
    assert (elsewhere / "c0.jpg").read_text() == "the user's\n" and sorted(p.name for p in elsewhere.iterdir()) == ["c0.jpg"]


def test_preprocess_keeps_a_file_of_the_users_in_its_folder(photo, tmp_path, capsys):
    """The same rule for every command writing into --out DIR: here the first file preprocess writes."""
    out = tmp_path / "pre"
    out.mkdir()
    (out / "input.safetensors").write_bytes(b"mine")
    argv = ["preprocess", str(photo), "--out", str(out), "--imgsz", "64", "--no-plots"]
    assert main(argv) == 1
    assert "input.safetensors: is a file cardamage did not write" in one_error_line(capsys.readouterr().err)
    assert (out / "input.safetensors").read_bytes() == b"mine"
    assert main([*argv, "--overwrite"]) == 0 and main(argv) == 0  # then it is the run's own
    capsys.readouterr()


def test_a_panorama_longer_than_a_jpeg_gets_a_shrunk_overlay_and_the_batch_goes_on(weights, photo, tmp_path, capsys):
    """A 70000 x 4 PNG (0.28 MP: accepted) gave OpenCV's raw lines and stopped the whole batch at its overlay:
    JPEG holds 65,500 px a side. Its overlay is shrunk to fit, and the next photo is predicted too."""
    import cv2
    import numpy as np

    pano = tmp_path / "pano.png"
    cv2.imwrite(str(pano), np.full((4, 70000, 3), 120, np.uint8))
    out = tmp_path / "o"
    assert main(["predict", str(pano), str(photo), "--weights", str(weights), "--out", str(out), "--imgsz", "64"]) == 0
    err = capsys.readouterr().err
    assert "ERROR" not in err and "error" not in err
    records = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in records] == ["pano.png", "car.jpg"]
    h, w = cv2.imread(str(out / "pano.jpg")).shape[:2]
    assert w == 65500 and h >= 1


def test_train_refuses_a_name_its_trainer_would_log_raw(synth_data, tmp_path, capsys):
    """Ultralytics prints --out (args dump, labels.cache, last.pt ...) unescaped: 11 forged lines from one name."""
    out = tmp_path / "r\nerror: photo.jpg: forged"
    assert main(["train", "--data", str(synth_data), "--out", str(out), "--epochs", "1", "--imgsz", "64"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "\\nerror: photo.jpg: forged: holds a control, line-break or bidirectional character" in line
    assert not out.exists()


@pytest.mark.parametrize("kind", ["fifo", "huge", "nested"])
def test_a_runs_own_files_read_back_are_bounded(kind, tmp_path):
    """watch.jsonl (film), atlas.json (explore --atlas) and a Ray shard: a FIFO hung predict --ray, a 1 GB file took
    2.9 GB, one line nested 100,000 deep was a RecursionError traceback. Each is one line now (a nested watch line
    is skipped, as a torn one)."""
    from pipeline.analysis.atlas_format import AtlasIndex
    from pipeline.probe.watch import MAX_WATCH_BYTES, read_watch
    from pipeline.scale.predict import MAX_SHARD_BYTES, read_shards

    files = {"watch": tmp_path / "run" / "watch.jsonl", "atlas": tmp_path / "atlas" / "atlas.json",
             "shard": tmp_path / "shards" / "part-00000.jsonl"}
    limits = {"watch": MAX_WATCH_BYTES, "atlas": 256 << 20, "shard": MAX_SHARD_BYTES}
    for name, f in files.items():
        f.parent.mkdir(parents=True)
        if kind == "fifo":
            os.mkfifo(f)
        elif kind == "huge":
            with open(f, "wb") as fh:
                fh.truncate(limits[name] + 1)  # sparse: no disk
        else:
            f.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    readers = {"watch": lambda: read_watch(files["watch"]), "atlas": lambda: AtlasIndex(files["atlas"].parent),
               "shard": lambda: read_shards(files["shard"].parent, {})}
    for name, read in readers.items():
        if kind == "nested" and name == "watch":
            assert read() == []
            continue
        with pytest.raises(InputError) as e:
            read()
        assert "\n" not in str(e.value), name
        said = {"fifo": "not a regular file", "huge": "is too large for", "nested": ""}[kind]
        assert said in str(e.value), (name, str(e.value))


@pytest.mark.parametrize("name", ["results.csv", "args.yaml"])
def test_train_keeps_a_file_of_the_users_that_its_trainer_would_replace(name, synth_data, tmp_path, capsys):
    """Ultralytics writes results.csv and args.yaml by name: a user's file there was replaced silently."""
    out = tmp_path / "T"
    out.mkdir()
    (out / name).write_text("MINE\n")
    assert main(["train", "--data", str(synth_data), "--out", str(out), "--epochs", "1", "--imgsz", "64"]) == 1
    assert f"holds an earlier training run ({name})" in one_error_line(capsys.readouterr().err)
    assert (out / name).read_text() == "MINE\n"


def test_a_resume_keeps_a_trainer_file_edited_since(interrupted, tmp_path, capsys):
    """A copy of a run whose args.yaml the user annotated: a resume would rewrite it. Refused, the note kept;
    the untouched copy (its files noted by the trainer's callbacks, same bytes) resumes as before."""
    copy = _copy(interrupted, tmp_path / "copy")
    with open(copy / "args.yaml", "a") as f:
        f.write("# my notes\n")
    before = (copy / "args.yaml").read_text()
    assert main(["train", "--resume", "--out", str(copy)]) == 1
    assert f"error: {copy / 'args.yaml'}: changed since this run wrote it" in one_error_line(capsys.readouterr().err)
    assert (copy / "args.yaml").read_text() == before


# ------------------------------------------------------------------------- sixth hostile retest


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_train_never_removes_a_dataset_folder_of_the_users(kind, synth_data, tmp_path, capsys):
    """OUT/dataset is where training puts its view of the dataset, replaced whole: a folder of the user's there
    (notes, a real dataset) was deleted. A file that is not part of a view is refused, before any work."""
    out = tmp_path / "run"
    mine = out / "dataset" / "notes.txt" if kind == "folder" else out / "dataset"
    mine.parent.mkdir(parents=True)
    mine.write_text("MINE\n")
    argv = ["train", "--data", str(synth_data), "--out", str(out), "--epochs", "1", "--imgsz", "64"]
    assert main(argv) == 1
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {mine}: is not ")
    assert mine.read_text() == "MINE\n" and sorted(p.name for p in out.iterdir()) == ["dataset"]
    assert main([*argv, "--overwrite"]) == 1 and mine.read_text() == "MINE\n"  # --overwrite is for run files only
    capsys.readouterr()


def test_a_view_of_the_projects_own_is_recognised_for_replacing(tmp_path):
    """What a view holds passes (links, its listed yaml, label caches); an unlisted data.yaml does not."""
    from pipeline.core.io import atomic_write_text, output_folder
    from pipeline.data.dataset_view import check_view_folder

    out = tmp_path / "run"
    with output_folder(out):
        view = out / "dataset"
        atomic_write_text(view / "data.yaml", "path: x\n")
        (view / "train" / "images").mkdir(parents=True)
        (view / "train" / "images" / "a.jpg").symlink_to(tmp_path / "nowhere.jpg")
        (view / "train" / "labels.cache").write_bytes(b"cache")
        check_view_folder(view)
        (view / "data.yaml").write_text("path: edited\n")
        with pytest.raises(InputError, match="data.yaml: is not part of a dataset view"):
            check_view_folder(view)


def test_atlas_refuses_a_crops_link_leading_out_before_its_dataset_pass(weights, photo, tmp_path, capsys,
                                                                         monkeypatch):
    """OUT/crops -> elsewhere: the atlas ran its whole pass, made elsewhere/model.0, then refused. Now one line
    before the pass, and nothing made where the link points."""
    import pipeline.cli.atlas as cli_atlas

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "atlas"
    out.mkdir()
    (out / "crops").symlink_to(elsewhere)
    monkeypatch.setattr(cli_atlas, "build_atlas", lambda *a, **k: pytest.fail("the pass ran"))
    assert main(["atlas", "--weights", str(weights), str(photo), "--out", str(out), "--imgsz", "64"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "leads out of the output folder" in line and "crops" in line
    assert list(elsewhere.iterdir()) == []


def test_make_folder_never_creates_through_a_link_leading_out(tmp_path):
    from pipeline.core.io import make_folder, output_folder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "o"
    out.mkdir()
    (out / "crops").symlink_to(elsewhere)
    with output_folder(out) as o:
        with pytest.raises(InputError, match="leads out of the output folder"):
            make_folder(o / "crops" / "model.0")
        assert make_folder(o / "inside" / "model.0").is_dir()
    assert list(elsewhere.iterdir()) == []


def test_report_checks_its_page_before_drawing_any_figure(weights, photo, tmp_path, capsys):
    """A report.html of the user's in --out was refused only after every figure was drawn into report_files/."""
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.html").write_text("MINE")
    assert main(["report", "--weights", str(weights), str(photo), "--out", str(out),
                 "--imgsz", "64"]) == 1
    assert "report.html: is a file cardamage did not write" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["report.html"] and (out / "report.html").read_text() == "MINE"


@pytest.mark.slow
def test_a_resume_accepts_its_results_one_row_ahead_of_their_note(interrupted, tmp_path):
    """Killed between the trainer's append to results.csv and the note after it, the run's own file was refused
    as changed. A file that is the noted bytes plus appended rows is the run's own."""
    copy = _copy(interrupted, tmp_path / "copy")
    rows = (copy / "results.csv").read_text().splitlines()
    fields, epoch = rows[0].count(",") + 1, float(rows[-1].split(",")[0])
    with open(copy / "results.csv", "a") as f:  # the next epoch's row, which the note did not see
        f.write(",".join([f"{epoch + 1:g}", "2.5"] + ["0.1"] * (fields - 2)) + "\n")
    assert main(["train", "--resume", "--out", str(copy)]) == 0


@pytest.mark.parametrize("tail", ["garbage that is not csv\n", "1,2\n", "1,2,3", "1\n2\n", "row 1 again"])
def test_a_resume_refuses_anything_else_appended_to_its_results(interrupted, tmp_path, tail, capsys):
    """Bytes appended to results.csv that are not one row as the trainer writes it (one line, a number per
    column of the header) were accepted as a row ahead of the note, and the resume appended after them."""
    copy = _copy(interrupted, tmp_path / "copy")
    if tail == "row 1 again":  # a copy of the first row: numbers in every column, but not the next epoch
        tail = (copy / "results.csv").read_text().splitlines()[1] + "\n"
    with open(copy / "results.csv", "a") as f:
        f.write(tail)
    before = (copy / "results.csv").read_bytes()
    assert main(["train", "--resume", "--out", str(copy)]) == 1
    assert "results.csv: changed since this run wrote it" in one_error_line(capsys.readouterr().err)
    assert (copy / "results.csv").read_bytes() == before


def test_a_results_file_replaced_while_training_gets_no_row(synth_data, tmp_path):
    """The trainer opens results.csv by name and appends: a file put there mid-run (the user's) got the run's
    rows. The append is refused, the run stops with one line, and the file is kept as it was."""
    from pipeline.model.train import train

    out = tmp_path / "run"

    def plant(trainer):
        (out / "results.csv").write_text("MINE\n")

    with pytest.raises(InputError, match="results.csv: was replaced or changed while the run trained"):
        train(synth_data, out, epochs=1, imgsz=64, batch=8, nbs=8, workers=0, device="cpu", val=False, seed=0,
              callbacks={"on_train_epoch_end": plant})
    assert (out / "results.csv").read_text() == "MINE\n"


@pytest.mark.parametrize("text, said", [("{oops", "not JSON: Expecting property name enclosed in double quotes: line 1 "
                                                  "column 2 (char 1)"),
                                        ("[1, 2]", "a JSON list, not an object")])
def test_a_damaged_ray_run_file_says_what_is_wrong(text, said, tmp_path):
    """A Ray run folder's run.json that is not a settings object was refused as only "(ValueError)", or crashed."""
    from pipeline.scale.predict import RUN_FILE, read_shards

    (tmp_path / RUN_FILE).write_text(text)
    with pytest.raises(InputError) as e:
        read_shards(tmp_path, {"conf": 0.25})
    assert str(e.value) == (f"{tmp_path / RUN_FILE}: cannot read the earlier run's settings ({said}): delete this "
                            "folder or choose another output folder")


def test_an_edit_of_the_same_size_with_its_time_set_back_is_the_users(tmp_path):
    """An edit keeping the size, its mtime restored (``touch -d``), passed as the run's own file: the list's quick
    check now uses the ctime, which no user call sets back, and the digest decides."""
    from pipeline.core.io import atomic_write_text, is_ours, output_folder

    out = tmp_path / "o"
    with output_folder(out) as o:
        atomic_write_text(o / "a.txt", "ours\n")
        st = os.stat(o / "a.txt")
        assert is_ours(o / "a.txt")
        with open(o / "a.txt", "r+") as f:  # same inode, same size
            f.write("MINE")
        os.utime(o / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(o / "a.txt").st_mtime_ns == st.st_mtime_ns and not is_ours(o / "a.txt")
        (o / "a.txt").write_text("ours\n")  # the very bytes again: the digest says it is the run's
        assert is_ours(o / "a.txt")


# ------------------------------------------------------------------------- seventh hostile retest


@pytest.mark.parametrize("plant", ["report_files/03_outliers.png", "report_files/layercam"])
def test_report_refuses_a_file_or_link_of_the_users_in_its_figures_folder_before_any_figure(plant, weights, photo,
                                                                                              tmp_path, capsys):
    """A figure of the user's in report_files/ was refused after 14 figures were drawn, naming another file; a
    link report_files/layercam -> elsewhere got LayerCAM's image written through it. Both refused up front."""
    out, elsewhere = tmp_path / "rep", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "report_files").mkdir(parents=True)
    if plant.endswith(".png"):
        (out / plant).write_text("mine")
    else:
        (out / plant).symlink_to(elsewhere)
    assert main(["report", "--weights", str(weights), str(photo), "--out", str(out), "--imgsz", "64"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out / plant}: is a ")
    assert sorted(p.name for p in (out / "report_files").iterdir()) == [Path(plant).name]
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("command, link", [("synth", "val"), ("atlas", "crops/model.0")])
def test_a_link_below_a_commands_folders_is_refused_before_any_work(command, link, weights, photo, tmp_path, capsys):
    """synth wrote its train split, then refused OUT/val -> elsewhere after making elsewhere/images; the atlas ran
    its whole pass before refusing OUT/crops/model.0 -> elsewhere. Both one line before the first file."""
    out, elsewhere = tmp_path / "o", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(elsewhere)
    argv = {"synth": ["synth", "--out", str(out), "--train", "2", "--val", "1", "--imgsz", "64"],
            "atlas": ["atlas", "--weights", str(weights), str(photo), "--out", str(out), "--imgsz", "64"]}[command]
    assert main(argv) == 1
    assert str(out / link) in one_error_line(capsys.readouterr().err)
    assert list(elsewhere.iterdir()) == []
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != ".cardamage-written") == \
        sorted({link, *[str(p) for p in Path(link).parents if str(p) != "."]})


def test_demo_refuses_a_step_folder_leading_out_before_step_one(tmp_path, capsys):
    out, elsewhere = tmp_path / "dm", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "report").symlink_to(elsewhere)
    assert main(["demo", "--out", str(out)]) == 1
    assert f"error: {out / 'report'}/-: leads out of the output folder" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["report"] and list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_a_resume_never_reads_a_label_cache_planted_in_the_run(interrupted, tmp_path):
    """Ultralytics unpickles labels.cache: one planted in a copied run's view ran its code on resume. The view's
    caches are dropped before the trainer scans (it writes them again)."""
    import numpy as np

    copy = _copy(interrupted, tmp_path / "copy")
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for cache in (copy / "dataset").rglob("*.cache"):
        with open(cache, "wb") as f:
            np.save(f, np.array(Payload(), dtype=object), allow_pickle=True)
    assert main(["train", "--out", str(copy), "--resume"]) == 0
    assert not marker.exists()


def test_a_dataset_photo_named_to_forge_a_line_is_left_out_of_training(synth_data, tmp_path):
    """Ultralytics' log prints a training photo's name raw (its duplicate-label warning): a name holding a newline
    forged an `error:` line. Such a photo is left out with one escaped line, as a damaged one is."""
    from pipeline.data.dataset_view import stage_dataset
    from pipeline.data.labels import label_path

    data = tmp_path / "ds"
    shutil.copytree(Path(synth_data).parent, data)
    images = sorted((data / "train" / "images").glob("*.jpg"))
    bad = images[0].with_name("a\nerror: forged.jpg: planted.jpg")
    images[0].rename(bad)
    label_path(images[0]).rename(label_path(bad))
    errors = []
    view = stage_dataset(data / "data.yaml", tmp_path / "run" / "dataset", on_error=errors.append)
    assert [e.path for e in errors] == [str(bad)] and "\n" not in str(errors[0])
    assert "left out; rename it" in str(errors[0])
    assert view.images["train"] == len(images) - 1


def test_a_model_yaml_layer_that_downloads_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """Ultralytics' TorchVision layer fetches weights from the internet while it is built (a DNS query, a write
    to ~/.cache/torch): refused with one line, nothing built."""
    import pipeline.model.load as load

    spec = tmp_path / "tv.yaml"
    spec.write_text('nc: 6\nbackbone:\n  - [-1, 1, TorchVision, [512, "resnet18", "IMAGENET1K_V1", True, 2]]\n'
                    "  - [-1, 1, Conv, [64, 3, 2]]\n  - [-1, 1, Conv, [64, 3, 2]]\nhead:\n  - [[0, 1, 2], 1, Detect, [nc]]\n")
    monkeypatch.setattr(load.tasks, "parse_model", lambda *a, **k: pytest.fail("the YAML was built"))
    with pytest.raises(InputError) as e:
        load.load_model(spec, nc=6)
    assert str(e.value).startswith(f"{spec}: layer TorchVision builds a torchvision model and fetches its weights")


def test_a_results_file_replaced_right_after_an_append_gets_no_more_rows(synth_data, tmp_path):
    """The epoch-end note re-noted whatever results.csv was there: a file put in place right after the first
    append passed as the run's own and got rows 2-5. Only the guard notes it now, right after its own append."""
    from pipeline.model.train import train

    out = tmp_path / "run"

    def plant(trainer):
        if trainer.epoch == 0:
            (out / "results.csv").unlink()
            (out / "results.csv").write_text("MINE\n")

    with pytest.raises(InputError, match="results.csv: was replaced or changed while the run trained"):
        train(synth_data, out, epochs=2, imgsz=64, batch=8, nbs=8, workers=0, device="cpu", val=False, seed=0,
              callbacks={"on_fit_epoch_end": plant})
    assert (out / "results.csv").read_text() == "MINE\n"


def test_json_read_back_is_bounded_by_its_values_not_only_its_bytes(tmp_path, monkeypatch):
    """250 MB of ``{},{},...`` in an atlas.json (under its byte limit) took 4.9 GB and a MemoryError traceback;
    a padded watch.jsonl 4.1 GB; a 200 MB COCO file 4.9 GB. The values are counted on the text, before any parse:
    one line each. (The limits are lowered here so the files stay small.)"""
    import pipeline.analysis.atlas_format as atlas_format
    import pipeline.data.coco as coco
    import pipeline.probe.watch as watch
    from pipeline.core.readback import json_items

    assert json_items('{"a": [1, 2], "b": {}}') >= 6 and json_items(b"{},{},{}") == 6  # 3 values, counted twice
    monkeypatch.setattr(atlas_format, "MAX_JSON_ITEMS", 1000)
    monkeypatch.setattr(watch, "MAX_JSON_ITEMS", 1000)
    monkeypatch.setattr(coco, "MAX_COCO_CONTAINERS", 1000)
    pad = "[" + ",".join(["{}"] * 2000) + "]"
    (tmp_path / "at").mkdir()
    (tmp_path / "at" / "atlas.json").write_text('{"layers": {}, "pad": ' + pad + "}")
    with pytest.raises(InputError, match="holds more than 1,000 JSON values, more than an atlas.json"):
        atlas_format.AtlasIndex(tmp_path / "at")
    (tmp_path / "watch.jsonl").write_text('{"epoch": 0, "pad": ' + pad + "}\n")
    with pytest.raises(InputError, match="holds more than 1,000 JSON values, more than a watch.jsonl"):
        watch.read_watch(tmp_path / "watch.jsonl")
    bomb = tmp_path / "bomb.json"
    bomb.write_text('{"images": [], "annotations": [], "categories": [], "pad": ' + pad + "}")
    with pytest.raises(InputError, match=r"holds 2,00\d JSON objects and lists, over the 1,000"):
        coco._read_coco(bomb)


@pytest.mark.parametrize("key, value, said", [("compile", True, "compile: True is not supported"),
                                              ("optimizer", "bogus", "Optimizer 'bogus' not found"),
                                              ("imgsz", 20000, "imgsz: must be an integer size in pixels from 32")])
def test_a_resume_holds_the_checkpoints_arguments_to_a_recipes_rules(interrupted, tmp_path, key, value, said, capsys):
    """The trainer resumes with last.pt's own train_args, which nothing checked: compile=True compiled for minutes
    with no line, optimizer='bogus' and imgsz=20000 ended in tracebacks. Each is refused as a recipe's key is."""
    copy = _copy(interrupted, tmp_path / "copy")
    ckpt = torch.load(copy / "weights" / "last.pt", weights_only=False)
    ckpt["train_args"][key] = value
    torch.save(ckpt, copy / "weights" / "last.pt")
    assert main(["train", "--resume", "--out", str(copy)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {copy / 'weights' / 'last.pt'}: cannot resume: ") and said in line, line


GOOD_RECORD = {"image": "/p/a.jpg", "width": 640, "height": 480, "overlay": "a.jpg",
               "detections": [{"class_id": 1, "class_name": "dent", "score": 0.5, "logit": 0.0,
                               "box_xyxy": [1.0, 2.0, 30.0, 40.0]}]}


@pytest.mark.parametrize("change, said", [
    ({"overlay": "/etc/passwd"}, "'overlay' is not a file name"),
    ({"overlay": "../x.jpg"}, "'overlay' is not a file name"),
    ({"width": "640"}, "'width' and 'height'"),
    ({"detections": [{"box_xyxy": "x", "score": "NaN"}]}, "detections[0] is not a detection"),
    ({"detections": [{"class_id": 1, "class_name": "dent", "score": 1.5, "logit": 0.0, "box_xyxy": [1, 2, 3, 4]}]},
     "detections[0]"),
    ({"detections": [{"class_id": 1, "class_name": "dent", "score": 0.5, "logit": 0.0, "box_xyxy": [1, 2, 3]}]},
     "detections[0]"),
    ({"image": 7}, "'image' is not a path"),
])
def test_a_ray_shard_record_is_checked_field_by_field(change, said, tmp_path):
    """A shard's records were checked only at the top: a box "x", a score "NaN", an overlay "/etc/passwd" went
    straight into detections.json as a detection. Each field is held to what detections.json promises."""
    from pipeline.scale.predict import read_shards

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-00000.jsonl").write_text(json.dumps(GOOD_RECORD) + "\n")
    done, _ = read_shards(shards, {})
    assert done == {"/p/a.jpg": GOOD_RECORD}
    (shards / "part-00000.jsonl").write_text(json.dumps({**GOOD_RECORD, **change}) + "\n")
    with pytest.raises(InputError) as e:
        read_shards(shards, {})
    assert str(e.value).startswith(f"{shards / 'part-00000.jsonl'}: line 1 is not a detections record (") and said in str(e.value)
