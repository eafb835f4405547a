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
          --(Ultralytics' scale_boxes)--> records, in the same schema as ``pipeline.predict``

Reading ahead is bounded in bytes as well as in photos: decodes share a budget sized from each file's
header (``DECODE_BUDGET_PER_WORKER``), and photos are kept for overlays only within ``KEEP_BUDGET``
(``Engine.photo`` reads the others again when their overlay is drawn), so a folder of 8000x8000 photos
is decoded one photo at a time instead of one per thread.

Where the time goes decides the backend. On the 2-core CPU this project runs on, decoding a 640x640
JPEG takes ~2.5 ms and letterboxing ~1.3 ms, while stock's forward pass takes ~150 ms (Ultralytics'
``select_device`` sets torch to cores - 1 threads, so one thread here): reading ahead and batching alone
cannot buy much, and batching does not help a CPU at all (bigger batches fall out of cache). ONNX
Runtime runs the same graph, exported from the same fused model (one graph per letterboxed shape), in
~65 ms on both cores, so ``backend="auto"`` picks it on CPU when ``onnxruntime`` and ``onnx`` are
installed (``pip install -e '.[onnx]'``) and falls back to torch otherwise. On CUDA the engine uses
torch: fused model, fp16, channels_last, batches of 32 on the device, optionally JPEG decoding on the
GPU (``gpu_decode=True``). The CUDA path was written without a GPU to test it on: it is guarded so that
a CPU-only machine never touches it, and it is untested.

Every detection keeps the raw class logit behind its score (``score == sigmoid(logit)``), read from the
head's class output at the anchor Ultralytics' NMS kept, as ``pipeline.predict`` does.

Examples:
    >>> from pipeline.engine import Engine
    >>> from pipeline.model import load_model
    >>> engine = Engine(load_model("best.pt"), imgsz=640, conf=0.25, workers=2)
    >>> records, errors = engine.predict(["photos/a.jpg", "photos/b.jpg"])
    >>> records[0]["detections"][0].keys()
    dict_keys(['class_id', 'class_name', 'score', 'logit', 'box_xyxy'])

    Command line (the engine runs when ``--batch`` > 1 or a folder is given)::

        cardamage predict --weights best.pt photos/ --out runs/predict --workers 2 --no-overlays
        cardamage predict --weights best.pt photos/ --out runs/predict --device 0 --batch 64   # GPU, untested
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline import runtime  # noqa: F401  (offline env before ultralytics)
from pipeline.io import InputError, atomic_write_bytes, read_image, validate_image
from pipeline.model import model_stride
from pipeline.preprocess import input_size, model_input

import torch  # noqa: E402

#: Photos per forward pass when none is asked for. On CPU one photo per pass is fastest (measured with
#: ONNX Runtime at 640 on 2 cores: 66 ms/photo at batch 1, 69 at 4, 78 at 8: bigger batches fall out of
#: cache); a GPU needs large batches to be busy.
DEFAULT_BATCH = {"cpu": 1, "cuda": 32}
#: Photos decoding ahead of the forward pass, per decode worker (bounds memory on huge folders).
PREFETCH_PER_WORKER = 4
#: Bytes of photos being decoded at once, per decode worker (``_decode_cost``: twice the decoded pixels).
#: With the CPU's 2 workers: 384 MiB, two 32-megapixel photos at a time, one 64-megapixel photo alone
#: (an 8000x8000 photo decodes at 366 MiB), where two at once came to 1.9 GB for the whole process.
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
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: only the size is read
            with Image.open(path) as im:
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


def onnx_available() -> bool:
    """True when both the exporter (``onnx``) and the runtime (``onnxruntime``) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_threads() -> int:
    """The user's ``OMP_NUM_THREADS`` when they set one (tests and shared machines pin it), else every core.

    ``import ultralytics`` sets ``OMP_NUM_THREADS=1`` in ``os.environ`` when it is unset, so the value the
    process was started with is read from ``/proc/self/environ`` where there is one.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            start_env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        env = start_env.get(b"OMP_NUM_THREADS", b"").decode()
    except OSError:
        env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A fused (Conv+BN folded), eval-mode float32 copy of a DetectionModel; the caller's model is untouched."""
    m = copy.deepcopy(model).float().eval()
    m = m.fuse(verbose=False) if hasattr(m, "fuse") else m
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class _HeadOutputs(torch.nn.Module):
    """Export wrapper: the decoded predictions (what NMS reads) and the raw class logits (what we report)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y, raw = self.model(x)
        return y, raw["scores"]


# ----------------------------------------------------------------------------------------------------
# Backends: uint8 NxHxWx3 BGR batch -> (decoded predictions N x (4+nc) x A, class logits N x nc x A)
# ----------------------------------------------------------------------------------------------------


def _stock_preprocess(x_bgr_u8: torch.Tensor, device, half: bool) -> torch.Tensor:
    """The predictor's own steps: to device as uint8, NHWC -> NCHW, BGR -> RGB, to float, /255."""
    x = x_bgr_u8.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous().flip(1)
    return (x.half() if half else x.float()).div_(255)


class TorchBackend:
    """The fused PyTorch model, as stock predict runs it (channels_last weights on x86 CPU and on CUDA).

    Args:
        model: the ``DetectionModel`` (``yolo.model``); a fused copy is made.
        device: a ``torch.device``.
        half: fp16 weights and inputs (CUDA only).
        channels_last: NHWC weights; ``None`` = what Ultralytics' AutoBackend picks for the device.
    """

    name = "torch"

    def __init__(self, model, device: torch.device, half: bool = False, channels_last: bool | None = None):
        self.device, self.half = device, bool(half and device.type == "cuda")
        if channels_last is None:  # AutoBackend: on for CUDA, and for x86 CPUs with oneDNN
            channels_last = device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())
        self.channels_last = channels_last
        m = fused_copy(model).to(device)
        m = m.half() if self.half else m
        self.model = m.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def preprocess(self, x_bgr_u8: torch.Tensor) -> torch.Tensor:
        return _stock_preprocess(x_bgr_u8, self.device, self.half)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            y, raw = self.model(x)
        return y.float(), raw["scores"].float()


#: Graphs kept in the ONNX cache at most (the oldest go first); each is ~12 MB for yolov8n.
ONNX_CACHE_MAX = 24


def _fingerprint(model: torch.nn.Module) -> str:
    """A hash of everything an export of ``model`` depends on: versions, this module's export code, and per
    submodule its path, class and plain attributes (activation type, Detect's stride, nc, flags...), and
    every tensor's values (parameters, buffers, tensors held as attributes)."""
    import inspect

    import ultralytics

    h = hashlib.sha256(f"{torch.__version__}|{ultralytics.__version__}|opset17".encode())
    h.update(inspect.getsource(_HeadOutputs).encode())
    h.update(inspect.getsource(OnnxBackend._export).encode())
    for path, m in model.named_modules():
        h.update(f"|{path}:{type(m).__module__}.{type(m).__qualname__}".encode())
        for key, value in sorted(vars(m).items()):
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, torch.Tensor):
                h.update(key.encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
            elif isinstance(value, (bool, int, float, str, tuple, list, type(None))):
                h.update(f"{key}={value!r}".encode())
        for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _evict(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used graphs in ``folder`` (races with another process are harmless)."""
    try:
        graphs = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in graphs[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


class OnnxBackend:
    """ONNX Runtime on CPU, one graph per letterboxed input shape (batch axis dynamic), exported in memory.

    The graph is ``torch.onnx.export`` of the same fused model that torch would run, with the raw class
    logits as a second output. A fixed height and width let ONNX Runtime fold the anchor grid and plan
    its memory once; photos from one camera share one shape, so a folder needs one or a few exports
    (~1 s each). Exported graphs are kept in ``<cache>/onnx/`` under a hash of the weights' values, the
    shape and the torch/Ultralytics versions, so the next run on the same weights loads them instead.

    Args:
        model: the ``DetectionModel`` (``yolo.model``).
        threads: ONNX Runtime intra-op threads (default: ``OMP_NUM_THREADS`` if set, else every core this
            process may use. Not ``torch.get_num_threads()``: Ultralytics' ``select_device`` sets torch to
            cores - 1, which is 1 on a 2-core machine).
        cache: keep exported graphs on disk (``runtime.cache_dir() / "onnx"``); ``False``: export in memory.
    """

    name = "onnx"

    def __init__(self, model, threads: int | None = None, cache: bool = True):
        import onnxruntime as ort

        self.ort = ort
        self.model = _HeadOutputs(fused_copy(model)).eval()
        self.threads = threads or cpu_threads()
        self.device = torch.device("cpu")
        self.sessions: dict[tuple[int, int], object] = {}
        self.exported: list[tuple[int, int]] = []  # shapes exported by this process (the rest came from the cache)
        self._lock = threading.Lock()
        self.cache = cache
        self._weights_hash: str | None = None

    def cache_path(self, hw: tuple[int, int]) -> Path:
        """Where the graph for ``hw`` is kept: named by a hash of what the export depends on (``_fingerprint``)."""
        if self._weights_hash is None:
            self._weights_hash = _fingerprint(self.model)
        return runtime.cache_dir() / "onnx" / f"{self._weights_hash}-{hw[0]}x{hw[1]}.onnx"

    def _export(self, hw: tuple[int, int]) -> bytes:
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter, not user-facing
            torch.onnx.export(
                self.model,
                torch.zeros(1, 3, *hw),
                buf,
                input_names=["images"],
                output_names=["predictions", "logits"],
                dynamic_axes={"images": {0: "batch"}, "predictions": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        self.exported.append(hw)
        return buf.getvalue()

    def session(self, hw: tuple[int, int]):
        """The ONNX Runtime session for inputs of height/width ``hw`` (exported on first use)."""
        with self._lock:
            if hw not in self.sessions:
                so = self.ort.SessionOptions()
                so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                so.intra_op_num_threads = self.threads
                so.inter_op_num_threads = 1
                session = None
                path = self.cache_path(hw) if self.cache else None
                if path is not None and path.is_file():
                    try:
                        session = self.ort.InferenceSession(path.read_bytes(), so, providers=["CPUExecutionProvider"])
                        os.utime(path)  # recently used: kept by the eviction
                    except Exception:  # a damaged cache file: export again and replace it
                        session = None
                if session is None:
                    graph = self._export(hw)
                    if path is not None:
                        try:
                            path.parent.mkdir(parents=True, exist_ok=True)
                            atomic_write_bytes(path, graph)
                            _evict(path.parent, ONNX_CACHE_MAX)
                        except OSError:  # a read-only cache only costs the export next time
                            pass
                    session = self.ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
                self.sessions[hw] = session
            return self.sessions[hw]

    def preprocess(self, x_bgr_u8: torch.Tensor) -> torch.Tensor:
        """Stock's steps in numpy, not torch: torch's OpenMP workers keep spinning for a while after each op
        and would steal both cores from ONNX Runtime's threads (measured: 120 vs 75 ms per 640 photo).
        float32 x / 255 is correctly rounded either way, so the tensor is the same bit for bit."""
        x = x_bgr_u8.numpy()[..., ::-1].transpose(0, 3, 1, 2)  # BGR -> RGB, NHWC -> NCHW
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / np.float32(255))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, logits = self.session(tuple(x.shape[2:])).run(None, {"images": x.numpy()})
        return torch.from_numpy(y), torch.from_numpy(logits)


def make_backend(model, device: torch.device, backend: str = "auto", half: bool | None = None, threads: int | None = None):
    """Pick the backend: ``onnx`` on CPU when installed, else ``torch``; CUDA always uses torch (fp16 by default)."""
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"unknown backend {backend!r} (auto, torch or onnx)")
    if backend == "onnx" and device.type != "cpu":
        raise ValueError("the onnx backend runs on CPU only; use backend='torch' on CUDA")
    if backend == "onnx" and not onnx_available():
        raise ImportError("backend='onnx' needs the onnx and onnxruntime packages: pip install -e '.[onnx]'")
    if backend == "onnx" or (backend == "auto" and device.type == "cpu" and onnx_available()):
        return OnnxBackend(model, threads=threads)
    return TorchBackend(model, device, half=device.type == "cuda" if half is None else half)


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
        imgsz: inference size, as ``YOLO.predict(imgsz=...)``.
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
        imgsz=640,
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
        self.letterbox = _Letterboxer(imgsz, self.stride)
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
        return _Loaded(index, path, None, (0, 0), image, data=read_file(str(path)))

    def _decode_on_gpu(self, items: list[_Loaded]) -> Iterator[_Loaded | Output]:
        """GPU path, stage 2: nvJPEG-decode a list of JPEGs in one call and letterbox each on the device.

        Tested on the CPU (libjpeg-turbo) only: no GPU was lent to the sessions that wrote it. Falls back to
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


# ----------------------------------------------------------------------------------------------------
# Agreement with stock predict
# ----------------------------------------------------------------------------------------------------


def detection_dicts(boxes_xyxy, scores, classes, logits, names) -> list[dict]:
    """The ``detections`` entries of detections.json: one schema for the stock path (``pipeline.predict``)
    and the engine."""
    return [
        {
            "class_id": int(c),
            "class_name": names[int(c)],
            "score": float(s),
            "logit": float(z),
            "box_xyxy": [round(float(v), 2) for v in xyxy],
        }
        for xyxy, s, c, z in zip(boxes_xyxy.tolist(), scores.tolist(), classes.tolist(), logits.tolist())
    ]


def match_detections(a: list[dict], b: list[dict], iou_min: float = 0.99, score_tol: float = 1e-3) -> list[tuple[int, int, float]]:
    """Pair detections of one photo: same class, |score difference| <= ``score_tol``, IoU >= ``iou_min``.

    Greedy, highest score of ``a`` first; each takes the free partner in ``b`` with the closest score
    (then the largest IoU: boxes clipped to the photo's edges can coincide exactly). Returns
    ``(i, j, iou)`` for every pair.
    """
    from torchvision.ops import box_iou

    if not a or not b:
        return []
    iou = box_iou(torch.tensor([d["box_xyxy"] for d in a], dtype=torch.float64), torch.tensor([d["box_xyxy"] for d in b], dtype=torch.float64))
    ds = (torch.tensor([d["score"] for d in a], dtype=torch.float64)[:, None] - torch.tensor([d["score"] for d in b], dtype=torch.float64)[None]).abs()
    same = torch.tensor([d["class_id"] for d in a])[:, None] == torch.tensor([d["class_id"] for d in b])[None]
    ok = same & (ds <= score_tol) & (iou >= iou_min)
    pairs, taken = [], set()
    for i in sorted(range(len(a)), key=lambda k: -a[k]["score"]):
        free = [j for j in ok[i].nonzero().flatten().tolist() if j not in taken]
        if free:
            j = min(free, key=lambda j: (float(ds[i, j]), -float(iou[i, j])))
            taken.add(j)
            pairs.append((i, j, float(iou[i, j])))
    return pairs


def agreement(ours: list[dict], stock: list[dict], iou_min: float = 0.99, score_tol: float = 1e-3) -> dict:
    """Compare two lists of detections.json records photo by photo (same order); ``ok`` if every box pairs up.

    Returns counts (``stock_boxes``, ``our_boxes``, ``matched``, ``unmatched_stock``, ``unmatched_ours``),
    the worst matched pair (``min_iou``, ``max_score_diff``, ``max_logit_diff``) and ``ok``.

    Examples:
        >>> agreement(engine_records, stock_records)["ok"]
        True
    """
    if [r["image"] for r in ours] != [r["image"] for r in stock]:
        raise ValueError("records are for different photos (or in a different order)")
    n_s = n_o = n_m = 0
    min_iou, max_ds, max_dz = 1.0, 0.0, 0.0
    for ro, rs in zip(ours, stock):
        a, b = rs["detections"], ro["detections"]
        pairs = match_detections(a, b, iou_min, score_tol)
        n_s, n_o, n_m = n_s + len(a), n_o + len(b), n_m + len(pairs)
        for i, j, v in pairs:
            min_iou = min(min_iou, v)
            max_ds = max(max_ds, abs(a[i]["score"] - b[j]["score"]))
            if "logit" in a[i] and "logit" in b[j]:  # stock Results carry no logit
                max_dz = max(max_dz, abs(a[i]["logit"] - b[j]["logit"]))
    return {
        "images": len(ours),
        "stock_boxes": n_s,
        "our_boxes": n_o,
        "matched": n_m,
        "unmatched_stock": n_s - n_m,
        "unmatched_ours": n_o - n_m,
        "min_iou": min_iou if n_m else None,
        "max_score_diff": max_ds if n_m else None,
        "max_logit_diff": max_dz if n_m else None,
        "iou_min": iou_min,
        "score_tol": score_tol,
        "ok": n_m == n_s == n_o,
    }


__all__ = [
    "DEFAULT_BATCH",
    "Engine",
    "OnnxBackend",
    "Output",
    "TorchBackend",
    "agreement",
    "fused_copy",
    "make_backend",
    "match_detections",
    "onnx_available",
]


# ------------------------------------------------------------------------------ agreement tooling
def redraw_head(yolo, photo, imgsz: int, seed: int = 0):
    """Give a weak checkpoint a head whose NMS has one stable answer (for agreement checks: bench and tests).

    A checkpoint trained for minutes on synthetic data scores every CarDD anchor about alike (~0.002),
    so which of two near-tied boxes NMS keeps is decided by float noise of ~1e-7, and no two backends
    can agree box for box. Keeping the trained backbone, this redraws the last class convs as random
    readouts of the features (logit ~ -3 + N(0, 1), standardised on ``photo``) and puts each box side's
    DFL mass on bins 1-2 (boxes 2-4 strides wide). Speed is unchanged: same layers, same shapes.
    Modifies ``yolo`` in place and returns it.
    """
    model = yolo.model.eval()
    detect = model.model[-1]
    heads = [seq[-1] for seq in detect.cv3] + [seq[-1] for seq in detect.cv2]
    stats = {}

    def measure(k):
        def hook(module, inputs, output):
            f = inputs[0][0].flatten(1)
            stats[k] = (f.mean(1), f.std(1).clamp_min(1e-6))

        return hook

    hooks = [h.register_forward_hook(measure(k)) for k, h in enumerate(heads)]
    with torch.no_grad():
        model(model_input(photo, imgsz)[0])
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(seed)

    def readout(k, rows):
        mu, sigma = stats[k]
        w = torch.randn(rows, len(mu), generator=g) / (sigma * len(mu) ** 0.5)
        return w, -(w @ mu)

    for k, conv in enumerate(heads):
        if k < len(detect.cv3):
            w, b = readout(k, conv.weight.shape[0])
            conv.weight.data, conv.bias.data = w[:, :, None, None].clone(), b - 3.0
        else:
            w, b = torch.zeros(conv.weight.shape[:2]), torch.full((conv.weight.shape[0],), -20.0)
            wk, bk = readout(k, 4)
            for side in range(4):
                r = side * detect.reg_max
                b[r + 1] = 0.0
                w[r + 2], b[r + 2] = wk[side], bk[side]
            conv.weight.data, conv.bias.data = w[:, :, None, None].clone(), b
    return yolo
