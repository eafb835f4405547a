"""``TrainingWatch``: Ultralytics callbacks that film a training run, every Conv block at each record.

At each *record* (every epoch's end, and after the 1st batch, 10 % and 50 % of the first epoch, where most
of the change happens) one line is appended to ``OUT/watch.jsonl`` (schema in docs/film.md) holding, per
Conv block:

- weights of the live model (what the optimizer moves): ``weight_norm`` ||W||, ``update_ratio``
  ||W_t - W_{t-1}|| / ||W_{t-1}|| since the last record (the first record: since training started), and
  BatchNorm's scale gamma: ``gamma_mean``, ``gamma_min``, ``gamma_small`` (share of |gamma| < 1e-2);
- ``grad_norm``: ||dL/dW|| of the conv weight for Ultralytics' own training loss, before clipping,
  averaged over every batch since the last record (``grad_batches`` of them), read by a hook on each weight
  as autograd hands it over, so gradient accumulation and ``optimizer.zero_grad`` do not matter;
- on a fixed probe batch of val photos (the same photos every record), run through a *copy* of the EMA
  model (what Ultralytics validates and saves) in eval mode: the pre-activation ``z_mean``, ``z_std``,
  ``frac_off`` (share of z < -4: SiLU(z) > -0.072, nearly off), ``frac_bend`` (|z| < 2, where SiLU bends),
  ``post_mean`` (mean of SiLU(z)).

and for the run: ``grad_first_last`` (the first block's grad norm over the last block's), the first probe
photo's top detection (``probe``: class, logit, sigmoid, box) and one fixed neuron's z, the per-class val AP
when Ultralytics validated that epoch, the running train losses and the learning rate.

The watch never changes training: it reads tensors, never writes them; the probe runs on a deep copy (no
BatchNorm statistics move, no random numbers drawn), so a run with the watch gives bit-equal weights.

Each line is written with one ``write`` on an ``O_APPEND`` file and ``fsync``'d; the epoch's record is
written just *before* Ultralytics saves that epoch's checkpoint, so a checkpoint never holds an epoch whose
record is not on disk. A resumed run keeps the records up to the checkpoint's epoch and drops the later ones
(they are recorded again as the resumed run redoes those batches): each record once, none lost.

Examples:
    >>> from pipeline.probe.watch import TrainingWatch, read_watch
    >>> with TrainingWatch() as watch:
    ...     train("datasets/synth/data.yaml", "runs/w", epochs=2, imgsz=128, callbacks=watch.callbacks())
    >>> records = read_watch("runs/w/watch.jsonl")
    >>> records[-1]["blocks"]["model.0"]["grad_norm"]  # doctest: +SKIP
    0.83
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import torch

from pipeline.core.io import atomic_write_text, note_written
from pipeline.core.readback import MAX_JSON_ITEMS, json_value, read_bounded_text
from pipeline.data.preprocess import model_input
from pipeline.model.train import metrics_dict
from pipeline.probe.layers import conv_blocks, is_fused
from pipeline.probe.recorder import LayerRecorder

#: The file a watched run writes into its run folder.
WATCH_FILE = "watch.jsonl"
#: z below this is "nearly off": SiLU(-4) = -0.072, and SiLU'(-4) = -0.05, so almost no gradient passes.
OFF_Z = -4.0
#: |z| below this is SiLU's bend, where it is neither ~0 nor ~identity.
BEND_Z = 2.0
#: |gamma| below this: BatchNorm has scaled the channel to (nearly) nothing.
SMALL_GAMMA = 1e-2
#: Records inside the first epoch: after its first batch, and after 10 % and 50 % of its batches.
FIRST_EPOCH_POINTS = (1, 0.1, 0.5)
#: How many val photos (the first, sorted by path) make the probe batch.
PROBE_IMAGES = 4
#: TensorBoard event files go here inside the run folder (``tensorboard --logdir OUT`` finds them).
TB_DIR = "watch_tb"
#: Histogram bins: 64 keep a 30-minute CarDD run's event files far below the issue's size budget.
TB_BINS = 64


def _norm(t: torch.Tensor) -> torch.Tensor:
    """||t|| in float64 (a float32 sum of 10^5 squares would keep only ~5 digits)."""
    return torch.linalg.vector_norm(t.detach(), dtype=torch.float64)


def _finite(x):
    """A float for JSON, or None where it is not a number (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def append_line(path: str | os.PathLike, obj: dict) -> None:
    """Append ``obj`` as one JSON line with a single ``write`` and ``fsync`` it: a crash leaves whole lines.

    Examples:
        >>> append_line("runs/w/watch.jsonl", {"epoch": 0, "step": 1})
    """
    data = (json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask applies, as for open()
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    note_written(path)  # grown, and still ours: a resume rewrites it in place


#: The largest watch.jsonl read: a record is ~10 KB (57 blocks), a long run a few hundred records; 128 MiB
#: holds some ten thousand.
MAX_WATCH_BYTES = 128 << 20


def read_watch_lines(path: str | os.PathLike) -> list[tuple[int, object]]:
    """``(line number, parsed JSON value)`` for each line of a ``watch.jsonl`` that parses, in order (1-based).

    A torn last line (a crash mid-write) is left out. The values are as the file holds them, of any JSON type:
    a reader that relies on a record's schema checks it (``pipeline.probe.watch_records.record_problem``).
    """
    out = []
    for n, line in enumerate(read_bounded_text(path, "a watch.jsonl", MAX_WATCH_BYTES, MAX_JSON_ITEMS).splitlines(), 1):
        try:
            out.append((n, json_value(line)))
        except ValueError:
            continue  # only the last line can be torn: every earlier one ended with its newline; not a record
    return out


def read_watch(path: str | os.PathLike) -> list[dict]:
    """The records of a ``watch.jsonl``, in order; a torn last line (a crash mid-write) is left out.

    Examples:
        >>> [r["step"] for r in read_watch("runs/w/watch.jsonl")]  # doctest: +SKIP
        [1, 2, 4, 8, 16]
    """
    return [value for _, value in read_watch_lines(path)]


def record_points(batches: int, points=FIRST_EPOCH_POINTS) -> set[int]:
    """Batch counts (1-based) inside the first epoch that get a record: ints are counts, floats fractions.

    The epoch's last batch is left out: the epoch's own record follows it.

    Examples:
        >>> sorted(record_points(100))
        [1, 10, 50]
    """
    out = {int(p) if isinstance(p, int) else math.ceil(p * batches) for p in points}
    return {b for b in out if 1 <= b < batches}


class TrainingWatch:
    """Ultralytics callbacks that record every Conv block of a training run into ``watch.jsonl``.

    It owns its hooks (one gradient hook per conv weight, a wrapper around ``trainer.save_model``) and
    removes them when training ends or when the context exits, whichever comes first.

    Args:
        every_batches: record every this many batches (and at each epoch's end) instead of the default
            first-epoch points; ``1`` records each batch (what the gradient oracle test uses).
        points: the first epoch's record points (``record_points``).
        probe_images: how many val photos make the probe batch.
        tensorboard: also write TensorBoard histograms (weights, gradients, pre-activations per block) and
            scalars into ``OUT/watch_tb``; ``None``: when the ``tensorboard`` package is installed.

    Examples:
        >>> with TrainingWatch() as watch:
        ...     train("data.yaml", "runs/w", epochs=3, callbacks=watch.callbacks())
    """

    def __init__(self, every_batches: int | None = None, points=FIRST_EPOCH_POINTS, probe_images: int = PROBE_IMAGES,
                 tensorboard: bool | None = None):
        self.every_batches, self.points, self.probe_images = every_batches, points, probe_images
        if tensorboard is None:
            tensorboard = importlib.util.find_spec("tensorboard") is not None
        self.tensorboard = tensorboard
        self._writer = None
        self.path: Path | None = None
        self.records = 0  # lines this watch wrote
        self.seconds = 0.0  # wall time spent taking records (the per-batch gradient hooks are not in it)
        self._handles: list = []
        self._trainer = None
        self._save_model = None  # Ultralytics' own save_model, while wrapped
        self._reset()

    def _reset(self) -> None:
        self._blocks: dict = {}
        self._snap: dict[str, torch.Tensor] = {}
        self._gsum: dict[str, torch.Tensor] = {}
        self._gcount: dict[str, int] = {}
        self._scale = 1.0
        self._keep: dict[str, torch.Tensor] | None = None  # this batch's gradients, for TensorBoard's histograms
        self._last_grads: dict[str, torch.Tensor] = {}
        self._in_epoch = 0
        self._epoch_open = False  # an epoch has trained batches and has no epoch record yet
        self._validated = False  # Ultralytics validated since the last epoch record

    # -- the callbacks ---------------------------------------------------------------------------
    def callbacks(self) -> dict:
        """``{event: function}`` for ``pipeline.model.train.train(callbacks=...)`` / ``YOLO.add_callback``."""
        return {
            "on_train_start": self.on_train_start,
            "on_train_epoch_start": self.on_train_epoch_start,
            "on_train_batch_start": self.on_train_batch_start,
            "on_train_batch_end": self.on_train_batch_end,
            "on_val_end": self.on_val_end,
            "on_fit_epoch_end": self.on_fit_epoch_end,
            "on_train_end": self.on_train_end,
        }

    def on_train_start(self, trainer) -> None:
        self.close()
        self._reset()
        self._trainer = trainer
        self.path = Path(trainer.save_dir) / WATCH_FILE
        if trainer.start_epoch > 0 and self.path.is_file():  # resumed: keep the records up to the checkpoint's epoch
            kept = [r for r in read_watch(self.path) if r["epoch"] < trainer.start_epoch]
            atomic_write_text(self.path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in kept))
        else:
            atomic_write_text(self.path, "")  # a fresh run: an earlier run's film in this folder is not this one's
            for f in (Path(trainer.save_dir) / TB_DIR).glob("events.out.tfevents.*"):
                f.unlink()  # nor its TensorBoard events
        model = self._live(trainer)
        self._blocks = conv_blocks(model)
        for path, block in self._blocks.items():
            self._snap[path] = block.conv.weight.detach().clone()
            self._gcount[path] = 0
            self._handles.append(block.conv.weight.register_hook(self._grad_hook(path)))
        files = sorted(str(f) for f in trainer.test_loader.dataset.im_files)[: self.probe_images]
        stride = int(max(model.stride)) if hasattr(model, "stride") else 32
        self._probe_files = files
        self._probe = torch.cat([model_input(f, imgsz=trainer.args.imgsz, stride=stride, auto=False)[0] for f in files])
        paths = list(self._blocks)
        self._neuron = {"block": paths[len(paths) // 2], "channel": 0}  # a middle block's first channel, centre pixel
        if self.tensorboard:
            self._open_writer(trainer)
        # the epoch's record goes to disk before the checkpoint that holds the epoch
        self._save_model = trainer.save_model
        trainer.save_model = self._wrapped_save

    def on_train_epoch_start(self, trainer) -> None:
        self._in_epoch = 0

    def _due(self, epoch: int, count: int, nb: int) -> bool:
        """Whether the ``count``-th batch of ``epoch`` gets a record of its own."""
        if self.every_batches:
            return count % self.every_batches == 0
        return epoch == 0 and count in record_points(nb, self.points)

    def on_train_batch_start(self, trainer) -> None:
        # counted here, not at the batch's end: a time budget breaks out of the loop after the step, before
        # on_train_batch_end, and that last batch still trained (and its gradient reached the hooks)
        self._in_epoch += 1
        self._epoch_open = True
        # under AMP the gradients autograd hands over are multiplied by the loss scale of this batch
        scaler = getattr(trainer, "scaler", None)
        self._scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        if self._writer is not None:  # keep this batch's gradients only when a record follows it
            nb = len(trainer.train_loader)
            self._keep = {} if self._due(trainer.epoch, self._in_epoch, nb) or self._in_epoch == nb else None

    def on_train_batch_end(self, trainer) -> None:
        if self._keep is not None:
            self._last_grads, self._keep = self._keep, None
        if self._due(trainer.epoch, self._in_epoch, len(trainer.train_loader)):
            self._record(trainer, "batch")

    def on_val_end(self, validator) -> None:
        self._validated = True

    def _wrapped_save(self, *args, **kwargs):
        trainer = self._trainer
        if self._epoch_open:
            self._record(trainer, "epoch")
        return self._save_model(*args, **kwargs)

    def on_fit_epoch_end(self, trainer) -> None:
        # the epoch's record when no checkpoint was saved (save=False); final_eval's call comes with no epoch open
        if self._epoch_open:
            self._record(trainer, "epoch")

    def on_train_end(self, trainer) -> None:
        self.close()

    # -- what a record holds ----------------------------------------------------------------------
    def _grad_hook(self, path: str):
        def hook(grad):
            n = _norm(grad) / self._scale
            if self._keep is not None:  # a copy: autograd may add later batches into this very tensor
                self._keep[path] = grad.detach().float().div(self._scale)
            self._gsum[path] = self._gsum[path] + n if path in self._gsum else n
            self._gcount[path] += 1
            # returns None: the gradient autograd accumulates is left as it is

        return hook

    @staticmethod
    def _live(trainer):
        model = trainer.model
        return model.module if hasattr(model, "module") else model  # DDP / DataParallel wrap the model

    def _record(self, trainer, kind: str) -> None:
        t0 = time.perf_counter()
        nb = len(trainer.train_loader)
        blocks = {}
        for path, block in self._blocks.items():
            w = block.conv.weight.detach()
            prev = self._snap[path]
            row = {
                "grad_norm": _finite(self._gsum[path] / self._gcount[path]) if self._gcount[path] else None,
                "grad_batches": self._gcount[path],
                "weight_norm": _finite(_norm(w)),
                "update_ratio": _finite(_norm(w.double() - prev.double()) / _norm(prev)),
            }
            if not is_fused(block):
                g = block.bn.weight.detach().double()
                row.update(gamma_mean=_finite(g.mean()), gamma_min=_finite(g.min()),
                           gamma_small=_finite((g.abs() < SMALL_GAMMA).double().mean()))
            blocks[path] = row
            self._snap[path] = w.clone()
            self._gsum.pop(path, None)
            self._gcount[path] = 0
        acts, probe, acts_z = self._probe_pass(trainer)
        for path, stats in acts.items():
            blocks[path].update(stats)
        paths = list(blocks)
        first, last = blocks[paths[0]]["grad_norm"], blocks[paths[-1]]["grad_norm"]
        ap = None
        if kind == "epoch" and self._validated and getattr(trainer, "validator", None) is not None:
            names = self._live(trainer).names
            ap = metrics_dict(trainer.validator.metrics, names)
        losses = trainer.tloss if isinstance(getattr(trainer, "tloss", None), dict) else {}
        record = {
            "epoch": int(trainer.epoch),
            "batch": int(trainer.epoch * nb + self._in_epoch),  # batches trained since the run began
            "step": int(trainer.ema.updates) if trainer.ema else None,  # optimizer steps (each updates the EMA)
            "kind": kind,
            "epoch_progress": round(trainer.epoch + self._in_epoch / nb, 4),
            "batches_per_epoch": nb,
            "lr": _finite(trainer.optimizer.param_groups[0]["lr"]),
            "loss": {k: _finite(v) for k, v in losses.items()},
            "grad_first_last": _finite(first / last) if first is not None and last else None,
            "first_block": paths[0],
            "last_block": paths[-1],
            "blocks": blocks,
            "probe": probe,
            "ap50": ap["per_class"] if ap else None,
            "mAP50": ap["mAP50"] if ap else None,
        }
        append_line(self.path, record)
        if self._writer is not None:
            self._tensorboard(record, acts_z)
        self.records += 1
        self.seconds += time.perf_counter() - t0
        if kind == "epoch":
            self._epoch_open = self._validated = False

    def _probe_pass(self, trainer) -> tuple[dict, dict]:
        """The probe batch through a copy of the EMA model in eval mode: per-block z statistics and the probe."""
        source = trainer.ema.ema if trainer.ema else self._live(trainer)
        net = copy.deepcopy(source).float().eval()  # hooks and forward touch only the copy
        blocks = conv_blocks(net)
        acts: dict[str, dict] = {}
        zs: dict[str, torch.Tensor] = {}  # for TensorBoard's histograms only
        neuron = dict(self._neuron)

        def pre(path):
            def hook(module, inputs, z):
                z = z.detach().double()  # taken before SiLU runs (it may run in place and overwrite z)
                if self._writer is not None:
                    zs[path] = z.float()
                acts[path] = {"z_mean": float(z.mean()), "z_std": float(z.std(correction=0)),
                              "frac_off": float((z < OFF_Z).double().mean()),
                              "frac_bend": float((z.abs() < BEND_Z).double().mean())}
                if path == neuron["block"]:
                    neuron.update(y=z.shape[2] // 2, x=z.shape[3] // 2, z=float(z[0, neuron["channel"], z.shape[2] // 2, z.shape[3] // 2]))

            return hook

        def post(path):
            def hook(module, inputs, a):
                acts[path]["post_mean"] = float(a.detach().double().mean())

            return hook

        handles = []
        for path, block in blocks.items():
            handles.append((block.conv if is_fused(block) else block.bn).register_forward_hook(pre(path)))
            handles.append(block.register_forward_hook(post(path)))
        try:
            with LayerRecorder(net, layers=[], head=True) as rec:
                rec(self._probe)
                head = rec.head
        finally:
            for h in handles:
                h.remove()
        logits = torch.cat([t[0].flatten(1) for t in head["cls_logits"]], dim=1)  # nc x anchors, scale by scale
        decoded = head["decoded"][0]  # (4 + nc) x anchors: xywh in input pixels, then sigmoid scores
        scores = decoded[4:]
        best, cls = scores.max(0)
        n = int(best.argmax())
        c = int(cls[n])
        x, y, w, h = (float(v) for v in decoded[:4, n])
        probe = {
            "image": Path(self._probe_files[0]).name,
            "path": self._probe_files[0],
            "imgsz": list(self._probe.shape[2:]),
            "class_id": c,
            "class_name": str(net.names[c]) if hasattr(net, "names") else str(c),
            "anchor": n,
            "logit": _finite(logits[c, n]),
            "sigmoid": _finite(scores[c, n]),
            "box": [round(x - w / 2, 2), round(y - h / 2, 2), round(x + w / 2, 2), round(y + h / 2, 2)],
            "neuron": neuron,
        }
        return acts, probe, zs

    # -- TensorBoard (optional) ------------------------------------------------------------------
    def _open_writer(self, trainer) -> None:
        # imported here: tensorboard is optional (the dev extra) and its import is slow for every train command
        from torch.utils.tensorboard import SummaryWriter

        nb = len(trainer.train_loader)
        # a resumed run redoes the batches after the checkpoint: purge_step drops their earlier events
        purge = trainer.start_epoch * nb + 1 if trainer.start_epoch > 0 else None
        self._writer = SummaryWriter(str(Path(trainer.save_dir) / TB_DIR), purge_step=purge)

    def _histogram(self, tag: str, t: torch.Tensor, step: int) -> None:
        """A histogram computed in torch and written raw: ``add_histogram``'s numpy sum of squares (``dot``)
        took most of a record's time on a busy 2-core machine."""
        t = t.detach().flatten().float()
        lo, hi = float(t.min()), float(t.max())
        if hi > lo:
            counts = torch.histc(t, bins=TB_BINS, min=lo, max=hi).tolist()
            limits = torch.linspace(lo, hi, TB_BINS + 1, dtype=torch.float64)[1:].tolist()
        else:  # one value: one bucket
            counts, limits = [float(t.numel())], [hi]
        t64 = t.double()
        self._writer.add_histogram_raw(tag, min=lo, max=hi, num=t.numel(), sum=float(t64.sum()),
                                       sum_squares=float(t64.square().sum()), bucket_limits=limits,
                                       bucket_counts=counts, global_step=step)

    def _tensorboard(self, record: dict, zs: dict) -> None:
        """One record as TensorBoard histograms (per block: weights, gradients, z) and scalars, at step ``batch``."""
        w, step = self._writer, record["batch"]
        for path, block in self._blocks.items():
            self._histogram(f"weights/{path}", block.conv.weight, step)
            if path in self._last_grads:
                self._histogram(f"gradients/{path}", self._last_grads[path], step)
            if path in zs:
                self._histogram(f"z/{path}", zs[path], step)
            for key in ("grad_norm", "update_ratio", "frac_off"):
                v = record["blocks"][path].get(key)
                if v is not None:
                    w.add_scalar(f"{key}/{path}", v, step)
        for key in ("grad_first_last", "mAP50"):
            if record.get(key) is not None:
                w.add_scalar(f"watch/{key}", record[key], step)
        for key in ("logit", "sigmoid"):
            if record["probe"].get(key) is not None:
                w.add_scalar(f"probe/{key}", record["probe"][key], step)
        for name, ap in (record.get("ap50") or {}).items():
            w.add_scalar(f"ap50/{name}", ap, step)
        w.flush()
        self._last_grads = {}

    # -- hooks off -------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the gradient hooks, give the trainer back its ``save_model``, close TensorBoard (safe twice)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._save_model is not None and self._trainer is not None:
            self._trainer.save_model = self._save_model
            self._save_model = None

    def __enter__(self) -> "TrainingWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
