"""Training around Ultralytics' own trainer: recipes, a linked dataset view, resume and ``metrics.json``.

- ``train``: one run into exactly ``out`` (``weights/best.pt``, ``weights/last.pt``, ``results.csv``,
  ``metrics.json``), from ``yolov8n.yaml`` unless weights are given; keyword overrides win over the
  recipe, the dataset is read through links under ``out/dataset`` (``data.dataset_view``) so the user's
  files are never rewritten, damaged images are left out and reported, and ``resume=True`` continues
  from ``out/weights/last.pt``, writing only into ``out`` (``RESUME_MAY_CHANGE`` says what it may change).
- recipes (``configs/*.yaml``) are read and checked by ``pipeline.model.recipe.load_recipe``.
- ``check_data_yaml``: the dataset yaml as Ultralytics resolves it (nothing downloaded), or one error line.
- ``metrics_dict``: Ultralytics' ``DetMetrics`` flattened to the keys ``metrics.json`` promises.

Examples:
    >>> from pipeline.model.train import train
    >>> m = train("datasets/synth/data.yaml", "runs/synth", epochs=1, imgsz=160, device="cpu")
    >>> m["epochs"], "mAP50" in m
    (1, True)
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePath

import torch
from ultralytics.nn import tasks

from pipeline.core import runtime
from pipeline.core.io import InputError, atomic_write_json, is_ours, ledger_for, note_written, one_line, written_list, output_folder, quiet_training_reads, refuse_links
from pipeline.data.dataset_view import check_view_folder, drop_view_caches, own_view, stage_dataset, view_link
from pipeline.data.labels import dataset_folders, read_data_yaml
from pipeline.model.recipe import OWN_KEYS, RECIPE_REFUSED, load_recipe, recipe_key_error
from pipeline.model.load import (DEFAULT_IMGSZ, DEFAULT_MODEL, check_forward, load_model, model_yaml_parameters,
                                 weights_error, weights_policy)


class BatchCounter:
    """Counts the batches a run trained, so a time budget that stops inside an epoch is told as it is.

    Ultralytics' ``time=`` breaks out of the batch loop and still counts the cut epoch as one
    (``trainer.epoch + 1``); ``epochs_done`` is the real amount: whole epochs plus the cut one's fraction.

    Examples:
        >>> counter = BatchCounter()
        >>> yolo.add_callback("on_train_batch_start", counter.on_batch)  # doctest: +SKIP
        >>> counter.epochs_done  # 77 batches into the first epoch of 175  # doctest: +SKIP
        0.44
    """

    def __init__(self):
        self.batches = 0  # batches started, each one trained (the time check comes after its step)
        self.epoch = -1  # the epoch the last batch belonged to
        self.in_epoch = 0  # batches of that epoch
        self.per_epoch = 0  # len(train_loader)

    def on_batch(self, trainer) -> None:
        if trainer.epoch != self.epoch:
            self.epoch, self.in_epoch = trainer.epoch, 0
        self.in_epoch += 1
        self.batches += 1
        self.per_epoch = len(trainer.train_loader)

    @property
    def epochs_done(self) -> float | None:
        if not self.per_epoch:
            return None
        return round(self.epoch + min(self.in_epoch / self.per_epoch, 1.0), 3)


def check_data_yaml(data: str | Path) -> dict:
    """Resolve a dataset YAML with Ultralytics (no downloads: the runtime is offline) or raise one line."""
    from ultralytics.data.utils import check_det_dataset

    path = Path(data)
    read_data_yaml(path)  # a FIFO, an alias bomb or bad names: one line before Ultralytics reads the file
    try:
        return check_det_dataset(str(path.resolve()), autodownload=False)
    except Exception as e:  # FileNotFoundError / SyntaxError with multi-line messages
        msg = " ".join(str(e).split())
        raise InputError(path, f"bad dataset ({msg[:300]})") from None


def metrics_dict(metrics, names: dict) -> dict:
    """Flatten Ultralytics' DetMetrics into the keys metrics.json promises."""
    box = metrics.box
    per_class = {names[int(c)]: round(float(ap), 5) for c, ap in zip(metrics.ap_class_index, box.ap50)}
    return {
        "mAP50": round(float(box.map50), 5),
        "mAP50-95": round(float(box.map), 5),
        "precision": round(float(box.mp), 5),
        "recall": round(float(box.mr), 5),
        "per_class": per_class,
    }


def _use_every_core(yolo) -> None:
    """Train on all CPU cores: Ultralytics pins torch to cores-1 but also forces 0 dataloader workers on
    the CPU, so the spare core sits idle (row train-threads in docs/benchmarks.md)."""
    threads = os.cpu_count() or 1

    def callback(trainer):
        if trainer.device.type == "cpu":
            torch.set_num_threads(threads)

    yolo.add_callback("on_train_epoch_start", callback)  # each epoch: validation re-pins the threads


def _cpu_channels_last(yolo) -> None:
    """Train in channels-last memory (NHWC) on the CPU: the model and its EMA, once both exist.

    Ultralytics turns ``channels_last`` on for CUDA only and ignores it on a CPU, yet on a 2-core x86
    machine YOLOv8n's forward and backward ran faster in NHWC (oneDNN's convolutions; rows throughput-nhwc
    and r-nchw in docs/benchmarks.md). Convolutions follow the
    weights' layout, so the NCHW batches need no change; Ultralytics saves checkpoints NCHW anyway.
    A resumed run does not re-read the recipe, so it continues in NCHW.
    """

    def callback(trainer):
        if trainer.device.type == "cpu":
            trainer.model.to(memory_format=torch.channels_last)
            if trainer.ema is not None:
                trainer.ema.ema.to(memory_format=torch.channels_last)

    yolo.add_callback("on_pretrain_routine_end", callback)  # after the EMA copy is made, before the first step




#: What a resume may change, as Ultralytics' own resume allows: where and how fast it runs. Everything else
#: (epochs, data, model, recipe, learning-rate schedule) is the run's, kept in its ``last.pt``: a resume
#: continues the very run that was cut; a different recipe is a new run.
RESUME_MAY_CHANGE = ("device", "batch", "imgsz", "time")

#: What a training run leaves in its folder, ours and Ultralytics' (which it writes by name, unasked): a folder
#: holding any of them holds an earlier run, or a file of the user's the trainer would replace.
RUN_FILES = ("weights/best.pt", "weights/last.pt", "metrics.json", "args.yaml", "results.csv")


def check_fresh(out: str | Path, overwrite: bool = False) -> None:
    """Refuse to train into a folder holding an earlier run, unless ``overwrite``; then clear its run files.

    Ultralytics trains into an existing folder without a word, replacing ``results.csv`` at once and
    ``best.pt`` after the first epoch: a repeated command would silently lose a finished 30-minute run.

    Call it holding ``output_folder``'s lock, so ``overwrite`` never deletes the files of a run still writing.

    Raises:
        InputError: ``out`` holds an earlier run and ``overwrite`` is False.
    """
    found = next((Path(out) / f for f in RUN_FILES if (Path(out) / f).is_file()), None)
    if found is None:
        return
    if not overwrite:
        raise InputError(out, f"holds an earlier training run ({found.relative_to(out)}); choose another "
                              "--out, or pass --overwrite to train over it")
    for f in RUN_FILES:
        (Path(out) / f).unlink(missing_ok=True)


def check_links(out: str | Path) -> None:
    """Refuse a run folder holding a symbolic link that training would write through (before any work).

    Ultralytics' trainer opens its files by name in the run folder (``results.csv`` appended, ``args.yaml``,
    ``weights/*.pt``, plots, ``labels.cache``; our ``metrics.json`` and the watch's files too): a link
    planted there, or a linked ``weights/``, would make a run (a resume above all, which keeps the folder)
    rewrite a file outside ``--out``. Refused rather than replaced: a link is never the run's own file, and
    deleting what the user put there is not this command's call. The dataset view's links to the user's
    images and labels (``dataset/<split>/images|labels/...``, ``view_link``) are the view itself and only read.
    Call it holding ``output_folder``'s lock.

    Raises:
        InputError: one line naming the link and where it points.
    """
    refuse_links(out, read_only=lambda rel: rel.parts[0] == "dataset" and view_link(PurePath(*rel.parts[1:])))


def train(
    data: str | Path,
    out: str | Path,
    model: str | None = None,
    config: str | Path | None = None,
    resume: bool = False,
    callbacks: dict | None = None,
    trust: bool = False,
    on_error=None,
    overwrite: bool = False,
    **overrides,
) -> dict:
    """Train and return the metrics dict (also written to ``out/metrics.json``).

    Args:
        data: dataset YAML (YOLO boxes or polygons).
        out: run folder; gets ``weights/best.pt``, ``weights/last.pt``, ``results.csv``, ``metrics.json``.
        model: ``yolov8n.yaml`` (from scratch) or a path to weights; default: the recipe's ``model``, else yolov8n.yaml.
        config: optional recipe YAML; ``overrides`` (e.g. epochs=5) win over it.
        resume: continue the interrupted run in ``out`` from ``out/weights/last.pt``, writing only into ``out``
            (a copied or moved run folder included: the checkpoint's own folder is not used). Only the
            ``RESUME_MAY_CHANGE`` overrides apply; ``data``, ``model``, ``config``, ``overwrite`` or any other
            override is refused with one line, since a resume keeps the run's recipe.
        callbacks: optional ``{event: function(trainer)}`` (or a list of functions per event) added to Ultralytics'
            callbacks (e.g. ``on_train_start``).
        trust: load ``model`` / ``last.pt`` even if safe loading refuses it (``--trust-weights``).
        overwrite: train even if ``out`` holds an earlier run (``--overwrite``); its weights and metrics are
            removed first, so a failed run never leaves the old ``best.pt`` looking like the new one.
        on_error: called with each damaged dataset image, which is left out of training.

    Training reads a view of the dataset made of links under ``out/dataset`` (``pipeline.data.dataset_view``),
    so nothing in the user's dataset is ever rewritten; ``out`` may not hold the dataset or the weights.

    Examples:
        >>> m = train("datasets/synth/data.yaml", "runs/s", epochs=1, imgsz=160, device="cpu")
        >>> m["epochs"], sorted(k for k in m if k.startswith("mAP"))
        (1, ['mAP50', 'mAP50-95'])
    """
    runtime.ultralytics_settings()
    for name in (out, model, data, config):  # Ultralytics' own log prints these paths as they are
        if name is not None and one_line(str(name)) != str(name):
            raise InputError(name, "holds a control, line-break or bidirectional character that the trainer's "
                                   "own log would print raw (a forged line): choose a plainer name")
    out = Path(out).resolve()
    t0 = time.time()
    counter = BatchCounter()
    if resume:
        _refuse_recipe_changes({"data": data, "model": model, "config": config, "overwrite": overwrite or None,
                                **{k: v for k, v in overrides.items() if k not in RESUME_MAY_CHANGE}})
        last = out / "weights" / "last.pt"
        if not last.is_file():
            raise InputError(last, "nothing to resume: no interrupted run in this folder")
        with output_folder(out):
            check_links(out)
            changes = {k: v for k, v in overrides.items() if v is not None}
            yolo, results, left_out = _resume(out, trust, counter, changes, callbacks, on_error)
    else:
        yolo, results, left_out = _new_run(data, out, model, config, overrides, counter, callbacks, trust, on_error,
                                           overwrite)
    metrics = _run_metrics(yolo, results, counter, out, left_out)
    metrics["train_seconds"] = round(time.time() - t0, 1)
    with written_list(out):  # the folder's list: a metrics.json the user saved there meanwhile is kept
        atomic_write_json(out / "metrics.json", metrics)
    return metrics



#: The files Ultralytics' trainer writes by name into the run folder. Each is noted in the folder's list as the
#: trainer writes it (``_note_trainer_files``), so a resume can tell the run's own from a file edited since.
TRAINER_FILES = ("args.yaml", "results.csv", "weights/last.pt", "weights/best.pt")


def _note_trainer_files(trainer, names=TRAINER_FILES) -> None:
    """Callback: the trainer's files as they now are, noted as the run's own (after its args, after each epoch)."""
    for name in names:
        note_written(Path(trainer.save_dir) / name)


def _note_trainer_files_but_results(trainer) -> None:
    """Callback at each epoch's end: ``results.csv`` is noted by its guard right after each append, and only
    then (noted again here, a file put in its place after the append would pass as the run's own)."""
    _note_trainer_files(trainer, tuple(n for n in TRAINER_FILES if n != "results.csv"))


def _guard_results(trainer) -> None:
    """Callback: the trainer appends its row to ``results.csv`` only while that file is still the run's own.

    Ultralytics opens it by name and appends: a file put in its place while the run trains (a copy of the user's,
    an edit) would get the run's rows. Checked right before each append, and noted right after it, so the file
    is never a row ahead of its note for longer than the append itself.

    Raises:
        InputError: (from the append's place, stopping the run; ``last.pt`` keeps the last finished epoch)
            ``results.csv`` is no longer the file the run wrote.
    """
    append = trainer.save_metrics
    csv = Path(trainer.csv)

    def guarded(metrics):
        ledger = ledger_for(csv)
        if ledger is not None and os.path.lexists(csv) and not ledger.ours(csv):
            raise InputError(csv, "was replaced or changed while the run trained, so its next row was not appended "
                                  "and the run stopped (last.pt holds the last finished epoch): put the run's own "
                                  "back and resume, or start a new run")
        append(metrics)
        note_written(csv)

    trainer.save_metrics = guarded  # on this trainer only: Ultralytics calls self.save_metrics once an epoch


def _watch_trainer_files(yolo) -> None:
    """Note the trainer's own files as it writes them; added before any other callback, so a callback that stops
    training at an epoch's end (a test's, a user's) still leaves them noted."""
    yolo.add_callback("on_pretrain_routine_end", _note_trainer_files)  # a resumed run's results.csv, as checked
    for event in ("on_fit_epoch_end", "on_train_end"):  # on_train_end: the final strip
        yolo.add_callback(event, _note_trainer_files_but_results)
    yolo.add_callback("on_pretrain_routine_end", _guard_results)


def add_callbacks(yolo, callbacks: dict | None) -> None:
    """Add ``{event: fn}`` or ``{event: [fn, ...]}`` to Ultralytics' callbacks, each function once, in order."""
    for event, fns in (callbacks or {}).items():
        for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
            yolo.add_callback(event, fn)

def _refuse_recipe_changes(given: dict) -> None:
    """One line for the first option a resume would ignore: Ultralytics would only log that it did."""
    kept = next((k for k, v in given.items() if v is not None), None)
    if kept:
        raise InputError(f"--{kept}", "a resume keeps the run's recipe (epochs, data, model, config and every "
                                      f"other setting); only --{', --'.join(RESUME_MAY_CHANGE)} may change: "
                                      "start a new run to change the rest")


def _new_run(data, out: Path, model, config, overrides: dict, counter: BatchCounter, callbacks, trust: bool,
             on_error, overwrite: bool):
    """Train a new run into ``out`` from the recipe and overrides; return (yolo, results, left_out)."""
    recipe = load_recipe(config)
    settings = {**recipe, **{k: v for k, v in overrides.items() if v is not None}}
    args = {k: v for k, v in settings.items() if k not in OWN_KEYS}  # ours, not Ultralytics'
    model = model or recipe.get("model") or DEFAULT_MODEL
    info = check_data_yaml(data)
    if str(model).endswith((".yaml", ".yml")):  # a hostile model YAML is refused before the dataset is listed
        model_yaml_parameters(model, int(info["nc"]))
    folders = dataset_folders(data)
    inputs = [*folders, *([model] if Path(model).is_file() else []), *([config] if config else [])]
    with output_folder(out, inputs=inputs, not_inside=folders[1:], overwrite=overwrite):
        check_links(out)  # before check_fresh: --overwrite deletes nothing in a folder that is refused
        if os.path.lexists(out / "dataset"):
            check_view_folder(out / "dataset")  # the view is replaced whole: a folder of the user's is refused
        check_fresh(out, overwrite)
        yolo = load_model(model, nc=int(info["nc"]), names=list(info["names"].values()), trust=trust)
        check_forward(yolo, int(settings.get("imgsz") or DEFAULT_IMGSZ))  # a checkpoint's layers, at the run's size
        view = stage_dataset(data, out / "dataset", on_error=on_error)
        args.setdefault("device", "cpu")
        args.setdefault("plots", False)
        args.setdefault("workers", 2)
        args.update(
            data=str(view.data_yaml),
            project=str(out.parent),  # absolute: otherwise runs land inside site-packages under pytest
            name=out.name,
            exist_ok=True,
            # Ultralytics 8.4 drops a loaded checkpoint's weights when pretrained is False: a weights
            # file would silently train from scratch. A YAML build has no checkpoint to keep.
            pretrained=bool(yolo.ckpt),
            verbose=args.get("verbose", False),
        )
        _use_every_core(yolo)
        if settings.get("cpu_channels_last", False):
            _cpu_channels_last(yolo)
        _watch_trainer_files(yolo)
        yolo.add_callback("on_train_batch_start", counter.on_batch)
        add_callbacks(yolo, callbacks)
        with weights_policy(trust), quiet_training_reads():
            try:
                results = yolo.train(**args)
            except OSError as e:  # e.g. a full disk while Ultralytics saves a checkpoint: name the run
                raise InputError(e.filename or out, e.strerror or type(e).__name__) from None
            # a setting only the trainer checks (optimizer: bogus, device: cuda:3, batch: 1.5, split: test): the
            # built-in errors its checks raise; a callback's own exception, or a failure once training ran, goes on
            except (ValueError, TypeError, NotImplementedError, RuntimeError, KeyError, IndexError, AttributeError,
                    AssertionError) as e:
                if counter.batches or type(e).__module__ != "builtins":
                    raise
                raise InputError(config or out, _trainer_refusal(e)) from None
    return yolo, results, view.errors


def _trainer_refusal(e: BaseException) -> str:
    """One line for an exception the trainer raised before its first batch: a setting it refused."""
    text = " ".join(str(e).split()).replace("❌", "").strip() or type(e).__name__
    return f"the trainer refused a setting before its first batch: {text[:300]}"


def _run_metrics(yolo, results, counter: BatchCounter, out: Path, left_out) -> dict:
    """``metrics.json`` without its wall time: Ultralytics' metrics, how far the run got, what was left out."""
    names = yolo.model.names if hasattr(yolo.model, "names") else yolo.names
    metrics = metrics_dict(results, names) if results is not None else {}
    metrics["epochs"] = int(yolo.trainer.epoch + 1) if getattr(yolo, "trainer", None) else None
    # how far the run got, a cut last epoch as its fraction (a resumed run: from its start); batches: this call's
    metrics["epochs_done"] = counter.epochs_done
    metrics["batches"] = counter.batches
    metrics["batches_per_epoch"] = counter.per_epoch
    metrics["last_epoch_batches"] = counter.in_epoch
    metrics["weights"] = str(out / "weights" / "best.pt")
    metrics["left_out"] = [str(e) for e in left_out]  # damaged images not trained on (one error line each)
    return metrics


def _one_row(csv: Path, tail: bytes | None) -> bool:
    """Whether ``tail`` (the bytes after the noted ones) is one row as the trainer writes them: one line, as many
    comma-separated numbers as the header has names, and the epoch after the last noted row's. Anything else
    appended (a copy of an earlier row included) is not the run's."""
    if not tail or not tail.endswith(b"\n") or tail.count(b"\n") != 1:
        return False
    try:
        if csv.stat().st_size > MAX_RESULTS_BYTES:
            return False
        data = csv.read_bytes()
        lines = data[: len(data) - len(tail)].splitlines()
        header, last = lines[0], lines[-1]
        numbers = [float(v) for v in tail.decode("ascii").split(",")]  # ValueError: not a number
        if len(numbers) != len(header.split(b",")):
            return False
        if header.split(b",")[0].strip() == b"epoch" and last is not header:
            return numbers[0] == float(last.split(b",")[0]) + 1
        return True
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        return False


#: results.csv of a run is a few KB (one line of 15 numbers per epoch): a larger one is not read whole
MAX_RESULTS_BYTES = 16 << 20


def _resume(out: Path, trust: bool, counter: BatchCounter, changes: dict, callbacks: dict | None, on_error):
    """Continue the run whose folder is ``out`` from its ``weights/last.pt``; return (yolo, results, left_out).

    Every write lands in ``out``: Ultralytics' resume would train into the folder its checkpoint names
    (``train_args.save_dir``), the original folder of a copied run or wherever an edited file says, and read
    the original's dataset view. It is given ``out`` as ``save_dir`` and ``out``'s own view as ``data``; a
    run without a view (trained by Ultralytics directly) gets one, so the user's dataset is never written.
    """
    last = out / "weights" / "last.pt"
    # A finished run's last.pt is stripped of its optimizer; Ultralytics would then silently start a
    # *new* run on its default dataset (coco8, a download). Refuse that here. Safe loading as everywhere.
    with weights_policy(trust):
        try:
            ckpt, _ = tasks.torch_safe_load(str(last))
        except Exception as e:
            raise InputError(last, weights_error(last, e, trust)) from None
    if not isinstance(ckpt, dict) or ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
        raise InputError(last, "nothing to resume: this run finished (or last.pt holds no optimizer state)")
    # the trainer resumes with the checkpoint's own arguments: each is held to what a recipe may say
    train_args = ckpt.get("train_args")
    if not isinstance(train_args, dict):
        raise InputError(last, "cannot resume: the checkpoint holds no train_args mapping")
    for key, value in train_args.items():
        if key in RECIPE_REFUSED:  # files, folders and the run's place: the resume sets them to this folder's
            continue
        reason = recipe_key_error(key, value)
        if reason:
            raise InputError(last, f"cannot resume: its train_args {one_line(str(key))[:40]}: {reason}")
    # a resume rewrites args.yaml and results.csv: only the run's own, unchanged since, may be replaced. (last.pt
    # is the resume's input, whatever folder it was copied from; a run folder older than its list is let be.)
    listed = ledger_for(out / "args.yaml")
    for name in ("args.yaml", "results.csv"):
        # results.csv may be a row ahead of its note (killed between the trainer's append and the note after it)
        grown = name == "results.csv" and listed is not None and _one_row(out / name, listed.appended(out / name))
        if listed is not None and listed.files and (out / name).exists() and not is_ours(out / name) and not grown:
            raise InputError(out / name, "changed since this run wrote it, or no cardamage run wrote it: a resume "
                                         "would replace it; put the run's own back, or start a new run")
    left_out = []
    if (out / "dataset" / "data.yaml").is_file():
        data = own_view(out / "dataset")
        drop_view_caches(out / "dataset")  # Ultralytics unpickles them: a file planted there would run code
    else:
        source = (ckpt.get("train_args") or {}).get("data")
        if not source:
            raise InputError(last, "cannot resume: the checkpoint names no dataset")
        view = stage_dataset(source, out / "dataset", on_error=on_error)
        data, left_out = view.data_yaml, view.errors
    yolo = load_model(last, trust=trust)
    _watch_trainer_files(yolo)
    yolo.add_callback("on_train_batch_start", counter.on_batch)
    add_callbacks(yolo, callbacks)  # e.g. the training watch, which continues its watch.jsonl
    _use_every_core(yolo)
    try:
        with weights_policy(trust), quiet_training_reads():
            return yolo, yolo.train(resume=True, save_dir=str(out), data=str(data), **changes), left_out
    except (AssertionError, FileNotFoundError) as e:  # e.g. "training to N epochs is finished"
        raise InputError(last, f"cannot resume ({' '.join(str(e).split())[:200]})") from None
    # a setting of last.pt only the trainer checks (optimizer: bogus), as a fresh run's recipe gets it
    except (ValueError, TypeError, NotImplementedError, RuntimeError, KeyError, IndexError, AttributeError) as e:
        if counter.batches or type(e).__module__ != "builtins":
            raise
        raise InputError(last, f"cannot resume: {_trainer_refusal(e)}") from None
    except OSError as e:  # a full disk while saving a checkpoint: name the run, as a fresh run does
        raise InputError(e.filename or out, e.strerror or type(e).__name__) from None
