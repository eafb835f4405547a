"""Batched inference: a folder of photos -> the same detections as stock predict, at a higher rate.

Stock ``YOLO.predict(files, stream=True)`` reads, letterboxes, runs and post-processes one photo at a
time. This engine keeps every numeric step of that path (Ultralytics' reader, its ``LetterBox`` with
``auto=True`` exactly as for one photo, its ``non_max_suppression`` and ``scale_boxes``) and changes only
how the work is scheduled::

    files --(thread pool: read_image + LetterBox, each photo exactly as stock batch-1 does)--> uint8 HxWx3
          --(photos of equal letterboxed shape grouped into batches)--> uint8 NxHxWx3
          --(stock preprocessing: BGR->RGB, NCHW, /255)--> float NCHW
          --(backend: fused torch model, or ONNX Runtime on CPU)--> decoded boxes+scores, raw class logits
          --(Ultralytics' NMS on the batch, with the kept anchor indices)--> boxes, score, class, logit
          --(Ultralytics' scale_boxes)--> records, in the same schema as ``pipeline.model.predict``

Reading ahead is bounded in bytes as well as in photos: decodes share a budget sized from each file's
header (``DECODE_BUDGET_PER_WORKER``), and photos are kept for overlays only within ``KEEP_BUDGET``
(``Engine.photo`` reads the others again when their overlay is drawn), so a folder of 8000x8000 photos
is decoded one photo at a time instead of one per thread.

What it is kept for, measured against stock predict and Ultralytics' own ONNX route
(``YOLO(pt).export(format="onnx")``, then ``YOLO(onnx).predict``) as whole processes on the same photos
with the same boxes: rows engine-vs-stock and route-stock, route-onnx, route-ours-warm in
docs/benchmarks.md. On an idle machine the route's predict is about as fast as the engine, so what the
engine adds is what the route does not give:

- ONNX Runtime as two single-threaded streams, preprocessing in numpy (torch's OpenMP workers keep
  spinning after each op and would steal both cores from ONNX Runtime's threads), decoding ahead in
  threads under byte budgets;
- one graph per letterboxed shape with the raw class logits as a second output (the route exports one
  fixed square and only scores), cached on disk by the weights' values (rows route-ours-cold, route-ours-warm);
- the torch backend for CUDA and for ``backend="torch"``. On a CPU without ``onnxruntime`` a folder
  goes through stock predict instead (``pipeline.model.predict``): the torch engine was no faster there
  (row predict-torch). Batching did not help on a CPU, so the CPU batch is 1.

On CUDA the engine uses torch: fused model, fp16, channels_last, batches of 32 on the device, optionally
JPEG decoding on the GPU (``gpu_decode=True``). The CUDA path was written without a GPU to test it on: it
is guarded so that a CPU-only machine never touches it, and it is untested.

Every detection keeps the raw class logit behind its score (``score == sigmoid(logit)``), read from the
head's class output at the anchor Ultralytics' NMS kept, as ``pipeline.model.predict`` does.

Examples:
    >>> from pipeline.model.engine import Engine
    >>> from pipeline.model.load import load_model
    >>> engine = Engine(load_model("best.pt"), imgsz=640, conf=0.25, workers=2)
    >>> records, errors = engine.predict(["photos/a.jpg", "photos/b.jpg"])
    >>> records[0]["detections"][0].keys()
    dict_keys(['class_id', 'class_name', 'score', 'logit', 'box_xyxy'])

    Command line (the engine runs for ``--batch`` > 1, and for a folder with ONNX Runtime or a GPU)::

        cardamage predict --weights best.pt photos/ --out runs/predict --workers 2 --no-overlays
        cardamage predict --weights best.pt photos/ --out runs/predict --device 0 --batch 64   # GPU, untested
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.core.io import InputError, pil_open, read_image, validate_image, warn_if_repaired
from pipeline.data.preprocess import input_size
from pipeline.model.backends import cpu_threads, make_backend, onnx_available
from pipeline.model.detections import detection_dicts
from pipeline.model.load import model_stride, trained_imgsz

#: Photos per forward pass when none is asked for. On CPU one photo per pass is fastest (measured with
#: ONNX Runtime at 640 on 2 cores: 66 ms/photo at batch 1, 69 at 4, 78 at 8: bigger batches fall out of
#: cache); a GPU needs large batches to be busy.
DEFAULT_BATCH = {"cpu": 1, "cuda": 32}
#: Photos decoding ahead of the forward pass, per decode worker (bounds memory on huge folders).
PREFETCH_PER_WORKER = 4
#: Bytes of photos being decoded at once, per decode worker (``_decode_cost``: twice the decoded pixels).
#: With the CPU's 2 workers: 384 MiB, two 32-megapixel photos at a time, one 64-megapixel photo alone
#: (an 8000x8000 photo decodes at 366 MiB), where two at once nearly doubled the whole process's peak.
DECODE_BUDGET_PER_WORKER = 192 * 2**20
#: Bytes of decoded photos kept for overlays at once (``keep_images``). A photo that does not fit is let
#: go after letterboxing and read again when its overlay is drawn (a decode peaks at twice what keeping
#: costs); a 640x640 photo takes 1.2 MB, an 8000x8000 one 183 MB, which is then read again: with 256 MiB
#: a folder of three such photos peaked at 1544 MiB, with 128 MiB at 1377 (tests/test_memory.py).
KEEP_BUDGET = 128 * 2**20


def _decode_cost(path: Path, alone: int) -> int:
    """Bytes OpenCV's decode of ``path`` peaks at: twice its 8-bit BGR pixels (the decoded image, and the
    copy cv2's Python binding makes of it), from the header (PIL reads no pixels for ``size``). A header
    PIL cannot read costs ``alone``, the whole budget: that file is decoded with nothing beside it."""
    try:
        if not path.is_file():  # a FIFO would block PIL's open for ever; read_image names what it is
            return alone
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: only the size is read
            with pil_open(path) as im:
                w, h = im.size
    except Exception:  # not an image PIL knows, or too big for it: read_image decides what it is
        return alone
    return 2 * 3 * int(w) * int(h)


class _Budget:
    """At most ``limit`` bytes held at once, granted first come, first served.

    ``hold`` waits for room (a request above ``limit`` waits until nothing else is held, then runs alone);
    ``try_take`` takes room only if there is some now. Holders never wait on anything but this budget,
    so first come, first served cannot deadlock.
    """

    def __init__(self, limit: int):
        self.limit, self.used = int(limit), 0
        self._cond = threading.Condition()
        self._queue: deque = deque()

    @contextlib.contextmanager
    def hold(self, nbytes: int):
        n = min(int(nbytes), self.limit)
        with self._cond:
            ticket = object()
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._queue[0] is ticket and self.used + n <= self.limit)
            self._queue.popleft()
            self.used += n
            self._cond.notify_all()
        try:
            yield
        finally:
            self.give(n)

    def try_take(self, nbytes: int) -> bool:
        with self._cond:
            if self._queue or self.used + nbytes > self.limit:
                return False
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


@dataclass
class Output:
    """One photo's outcome: ``record`` (detections.json schema) or ``error``; ``image`` only if kept
    (``Engine.photo`` gives the photo either way)."""

    index: int
    path: Path
    record: dict | None = None
    error: InputError | None = None
    image: np.ndarray | None = field(default=None, repr=False)


@dataclass
class _Loaded:
    index: int
    path: Path
    boxed: np.ndarray | torch.Tensor | None  # letterboxed BGR uint8 HxWx3, or RGB 3xHxW uint8 on the GPU path
    orig_shape: tuple[int, int]
    image: np.ndarray | None = None
    data: torch.Tensor | None = None  # raw JPEG bytes, GPU path only


# ----------------------------------------------------------------------------------------------------
# Loading: each photo exactly as stock batch-1 predict letterboxes it
# ----------------------------------------------------------------------------------------------------


class _Letterboxer:
    """Ultralytics' ``LetterBox`` with ``auto=True`` (stock's setting for one photo and a .pt model)."""

    def __init__(self, imgsz, stride: int):
        from ultralytics.data.augment import LetterBox

        self.size = input_size(imgsz, stride)
        self.box = LetterBox(self.size, auto=True, stride=stride)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.box(image=image)

    def params(self, h: int, w: int) -> dict:
        """LetterBox's resize/pad numbers for an ``h x w`` photo (it reads only the shape)."""
        return self.box.get_params({"img": np.empty((h, w, 0), np.uint8)})


def _gpu_letterbox(rgb: torch.Tensor, params: dict, pad_value: int = 114) -> torch.Tensor:
    """Resize and pad a 3xHxW uint8 tensor on its device with LetterBox's numbers (bilinear, like cv2 INTER_LINEAR).

    Not bit-exact with cv2's fixed-point resize: every pixel within 1 grey level of ``LetterBox``'s
    (``tests/test_engine.py``), so boxes and scores move by a little. Tested on the CPU only.
    """
    import torch.nn.functional as F

    w, h = params["new_unpad"]
    x = rgb[None].float()
    if tuple(rgb.shape[1:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    x = F.pad(x, (params["left"], params["right"], params["top"], params["bottom"]), value=float(pad_value))
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------


class Engine:
    """Run a detector on many photos in batches; same detections as stock batch-1 predict.

    Args:
        yolo: an ``ultralytics.YOLO`` (or its ``DetectionModel``).
        imgsz: inference size, as ``YOLO.predict(imgsz=...)`` (default: the weights' training size, 640 for a YAML).
        conf, iou, max_det: NMS settings (stock defaults 0.25, 0.7, 300).
        device: ``cpu``, a CUDA index (``0``) or ``cuda:0``; resolved by Ultralytics' ``select_device``.
        batch: photos per forward pass (default ``DEFAULT_BATCH`` for the device); only photos with the same
            letterboxed shape share a batch.
        workers: threads decoding and letterboxing ahead of the forward pass (OpenCV drops the GIL); default
            2 on the CPU (the cores belong to the forward), every core but one (at most 16) on CUDA (decoding
            is then the bottleneck: a GPU forward of a 640 photo takes ~0.2 ms, a cv2 decode ~3 ms).
        backend: ``auto`` (ONNX Runtime on CPU if installed, else torch), ``torch`` or ``onnx``.
        half: fp16 on CUDA (default True there; ignored on CPU).
        keep_images: hand decoded photos back in ``Output.image`` (for overlays), as many as fit in
            ``KEEP_BUDGET``; ``photo(out)`` gives each photo, kept or read again.
        gpu_decode: decode JPEGs with torchvision in batches and letterbox with torch on the engine's device
            (nvJPEG on CUDA; libjpeg-turbo on the CPU, where it exists to test this path). Not bit-exact with
            stock: torch's bilinear resize is within 1 grey level of cv2's (measured on the CarDD sample).
        streams: batches in flight at once, each in its own thread (default: one per core with ONNX Runtime,
            each using cores/streams intra-op threads; 1 with torch).
        decode_budget: bytes of photos decoded at once (``_decode_cost``; default ``DECODE_BUDGET_PER_WORKER``
            per worker): big photos wait for each other instead of decoding side by side.

    Examples:
        >>> engine = Engine(load_model("best.pt"), conf=0.25, batch=8)
        >>> for out in engine.run(["a.jpg", "b.jpg"]):
        ...     print(out.index, out.error or len(out.record["detections"]))
    """

    def __init__(
        self,
        yolo,
        imgsz: int | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        device: str = "cpu",
        batch: int | None = None,
        workers: int | None = None,
        backend: str = "auto",
        half: bool | None = None,
        keep_images: bool = False,
        gpu_decode: bool = False,
        streams: int | None = None,
        decode_budget: int | None = None,
    ):
        import torchvision  # noqa: F401  (Ultralytics' NMS uses torchvision's kernel once it is imported, else

        # its own torch loop: measured 5 vs 96 ms per photo with ~300 kept boxes; same boxes either way)
        from ultralytics.utils.torch_utils import select_device

        model = getattr(yolo, "model", yolo)
        self.names = dict(model.names)
        self.stride = model_stride(model)
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.device = select_device(str(device), verbose=False)
        batch = DEFAULT_BATCH.get(self.device.type, 1) if batch is None else batch
        if workers is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = min(16, max(2, cores - 1)) if self.device.type == "cuda" else 2  # prefetch memory grows with it
        self.batch, self.workers = max(1, int(batch)), max(1, int(workers))
        self.keep_images = keep_images
        self.decoding = _Budget(decode_budget or DECODE_BUDGET_PER_WORKER * self.workers)
        self.kept = _Budget(KEEP_BUDGET)
        self.gpu_decode = bool(gpu_decode)
        self.letterbox = _Letterboxer(trained_imgsz(yolo, imgsz), self.stride)
        use_onnx = backend == "onnx" or (backend == "auto" and self.device.type == "cpu" and onnx_available())
        # ONNX Runtime: one single-threaded forward per core beats one forward on all cores (measured 62 vs
        # 70 ms per 640 photo on 2 cores), and NMS of one batch overlaps the next forward. torch: one stream.
        self.streams = max(1, int(streams)) if streams else (cpu_threads() if use_onnx else 1)
        self.backend = make_backend(model, self.device, backend, half, threads=max(1, cpu_threads() // self.streams))

    # -- stage 1: decode + letterbox (worker threads) --------------------------------------------------

    def _load(self, index: int, path: Path) -> _Loaded | Output:
        if self.gpu_decode and path.suffix.lower() in (".jpg", ".jpeg"):
            try:
                return self._read_jpeg_bytes(index, path)
            except InputError as e:
                return Output(index, path, error=e)
        return self._load_cpu(index, path)

    def _read_jpeg_bytes(self, index: int, path: Path) -> _Loaded:
        """GPU path, stage 1: only the file's bytes (decoded later, a batch at a time, on the device)."""
        from torchvision.io import read_file

        image = self._kept_copy(path)  # overlays need the CPU copy anyway
        if not path.is_file() or path.stat().st_size == 0:
            raise InputError(path, "file not found or empty")
        validate_image(path)  # nvJPEG may decode a damaged file into grey rows silently
        warn_if_repaired(path)  # as read_image does on the CPU path
        return _Loaded(index, path, None, (0, 0), image, data=read_file(str(path)))

    def _decode_on_gpu(self, items: list[_Loaded]) -> Iterator[_Loaded | Output]:
        """GPU path, stage 2: nvJPEG-decode a list of JPEGs in one call and letterbox each on the device.

        Tested on the CPU (libjpeg-turbo) only: it has not run on a GPU yet. Falls back to
        the CPU reader, photo by photo, if the batched decode fails (e.g. one corrupt file in the list).
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            rgbs = decode_jpeg([it.data for it in items], mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            rgbs = [None] * len(items)
        for it, rgb in zip(items, rgbs):
            if rgb is None:  # the CPU path gives the exact error line (truncated, corrupt, not an image)
                yield self._load_cpu(it.index, it.path)
                continue
            h, w = rgb.shape[1:]
            boxed = _gpu_letterbox(rgb, self.letterbox.params(h, w))
            yield _Loaded(it.index, it.path, boxed, (int(h), int(w)), it.image)

    def _load_cpu(self, index: int, path: Path) -> _Loaded | Output:
        """Ultralytics' reader and LetterBox, on the CPU: the exact input stock batch-1 predict builds."""
        with self.decoding.hold(_decode_cost(path, self.decoding.limit)):
            try:
                image = read_image(path)
            except InputError as e:
                return Output(index, path, error=e)
            boxed = self.letterbox(image)
        h, w = image.shape[:2]
        return _Loaded(index, path, boxed, (h, w), image if self._keep(image) else None)

    def _keep(self, image: np.ndarray) -> bool:
        """Keep ``image`` for its overlay if asked to and it fits in ``KEEP_BUDGET`` (``photo`` gives it back)."""
        return self.keep_images and self.kept.try_take(image.nbytes)

    def _kept_copy(self, path: Path) -> np.ndarray | None:
        """GPU path: the CPU copy an overlay needs, read now if it will be kept, else left for ``photo``."""
        cost = _decode_cost(path, self.decoding.limit)
        if not self.keep_images or cost // 2 > self.kept.limit:
            return None
        with self.decoding.hold(cost):
            image = read_image(path)
        return image if self._keep(image) else None

    @contextlib.contextmanager
    def photo(self, out: Output) -> Iterator[np.ndarray]:
        """The full-resolution photo of ``out``, to draw on inside the ``with`` block.

        A kept photo (``Output.image``) is handed over and its room in ``KEEP_BUDGET`` given back when the
        block ends; any other is read again under the decode budget, held until the block ends, so that
        drawing and encoding a big photo never overlaps another big decode.
        """
        if out.image is not None:
            image, out.image = out.image, None
            try:
                yield image
            finally:
                self.kept.give(image.nbytes)
            return
        with self.decoding.hold(_decode_cost(out.path, self.decoding.limit)):
            yield read_image(out.path)

    def _loaded(self, files: list[Path]) -> Iterator[_Loaded | Output]:
        """Decoded photos in input order, at most ``workers * PREFETCH_PER_WORKER + batch`` in flight."""
        window = self.workers * PREFETCH_PER_WORKER + self.batch
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            pending: deque = deque()
            it = iter(enumerate(files))
            for i, p in it:
                pending.append(pool.submit(self._load, i, p))
                if len(pending) >= window:
                    break
            while pending:
                yield pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, *nxt))

    # -- stage 2: forward + NMS on a batch of equal shapes ---------------------------------------------

    def _batch_tensor(self, group: list[_Loaded]) -> torch.Tensor:
        if isinstance(group[0].boxed, torch.Tensor):  # GPU path: RGB 3xHxW uint8 on the device
            x = torch.stack([g.boxed for g in group])
            x = x.half() if getattr(self.backend, "half", False) else x.float()
            return x.div_(255)
        arr = group[0].boxed[None] if len(group) == 1 else np.stack([g.boxed for g in group])
        return self.backend.preprocess(torch.from_numpy(arr))

    def infer(self, group: list[_Loaded]) -> list[Output]:
        """Forward one batch of equally shaped photos, NMS it with Ultralytics, and build the records."""
        from ultralytics.utils import nms, ops

        x = self._batch_tensor(group)
        if getattr(self.backend, "channels_last", False) and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)  # stock leaves a CPU input NCHW: so do we
        y, logits = self.backend.forward(x)
        dets, keep = nms.non_max_suppression(
            y, self.conf, self.iou, None, False, max_det=self.max_det, nc=0, return_idxs=True
        )
        outs = []
        for b, (g, det, idx) in enumerate(zip(group, dets, keep)):
            det = det.cpu()
            cls = det[:, 5].long()
            z = logits[b, cls.to(logits.device), idx.long().to(logits.device)].float().cpu()
            boxes = ops.scale_boxes(x.shape[2:], det[:, :4].clone(), g.orig_shape)
            outs.append(Output(g.index, g.path, self._record(g, boxes, det[:, 4], cls, z), image=g.image))
        return outs

    def _record(self, g: _Loaded, boxes, scores, cls, logits) -> dict:
        h, w = g.orig_shape
        dets = detection_dicts(boxes, scores, cls, logits, self.names)
        return {"image": str(g.path), "width": int(w), "height": int(h), "detections": dets}

    # -- the whole run ---------------------------------------------------------------------------------

    def run(self, files: Iterable[str | os.PathLike]) -> Iterator[Output]:
        """Yield one ``Output`` per file: errors as soon as they are found, records batch by batch.

        Outputs come in completion order (a batch waits until it holds ``batch`` photos of one shape, or
        the input ends); ``Output.index`` is the position in ``files``.
        """
        groups: dict[tuple, list[_Loaded]] = {}
        inflight: deque = deque()
        with ThreadPoolExecutor(self.streams, thread_name_prefix="infer") as pool:

            def finished(keep: int) -> Iterator[Output]:  # wait until at most `keep` batches are in flight
                while len(inflight) > keep:
                    yield from inflight.popleft().result()

            for item in self._decoded(self._loaded([Path(f) for f in files])):
                if isinstance(item, Output):
                    yield item
                    continue
                key = tuple(item.boxed.shape)
                group = groups.setdefault(key, [])
                group.append(item)
                if len(group) >= self.batch:
                    del groups[key]
                    inflight.append(pool.submit(self.infer, group))
                    yield from finished(self.streams - 1)
            for group in groups.values():  # the part-filled batches left at the end
                inflight.append(pool.submit(self.infer, group))
            yield from finished(0)

    def _decoded(self, items: Iterator[_Loaded | Output]) -> Iterator[_Loaded | Output]:
        """CPU path: items are already letterboxed. GPU path: JPEG bytes are decoded ``batch`` at a time."""
        if not self.gpu_decode:
            yield from items
            return
        raw: list[_Loaded] = []
        for item in items:
            if isinstance(item, _Loaded) and item.boxed is None:
                raw.append(item)
                if len(raw) >= self.batch:
                    yield from self._decode_on_gpu(raw)
                    raw = []
            else:
                yield item
        if raw:
            yield from self._decode_on_gpu(raw)

    def predict(self, files: Iterable[str | os.PathLike]) -> tuple[list[dict], list[InputError]]:
        """All records in input order, and the errors (bad files are skipped, the rest still run)."""
        outs = sorted(self.run(files), key=lambda o: o.index)
        return [o.record for o in outs if o.record is not None], [o.error for o in outs if o.error is not None]
