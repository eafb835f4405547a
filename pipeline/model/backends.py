"""The engine's two ways to run the network on a batch: torch (a fused private copy) and ONNX Runtime.

Both return the head's raw outputs, so the engine can keep each detection's class logit. ONNX exports are
cached per model fingerprint (``ONNX_CACHE_MAX`` newest kept) so a second run starts at once.

Examples:
    >>> from pipeline.model.backends import make_backend
    >>> backend = make_backend(yolo.model, torch.device("cpu"), backend="auto")
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import io
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.core import runtime
from pipeline.core.io import InputError, atomic_write_bytes, is_ours, written_list


def onnx_available() -> bool:
    """True when the runtime (``onnxruntime``) imports and the exporter (``onnx``) is installed.

    ``onnx`` is found, not imported: importing it takes a noticeable part of a second, which a run whose
    graphs are all in the cache never needs (``torch.onnx.export`` imports it when a graph is exported).
    """
    try:
        runtime.import_onnxruntime()
    except ImportError:
        return False
    return importlib.util.find_spec("onnx") is not None


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


#: The names this module gives the graphs it caches (``OnnxBackend.cache_path``): only those are ever evicted, so
#: a cache folder the user named (``CARDAMAGE_CACHE``) that holds ONNX files of their own keeps them.
GRAPH_NAME = re.compile(r"[0-9a-f]{24}-\d+x\d+\.onnx")


def _evict(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recently used graphs of ours in ``folder`` (races with another process are
    harmless); a file of another name is never touched."""
    try:
        ours = [p for p in folder.iterdir() if GRAPH_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
        graphs = sorted(ours, key=lambda p: p.stat().st_mtime, reverse=True)
        for old in graphs[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


@contextlib.contextmanager
def _cache_list(path: Path | None):
    """While open, the graph cache folder's list of what this project wrote there (``core.io.written_list``): yields
    whether ``path`` can be cached at all (False without a cache, or where its folder cannot be made)."""
    with contextlib.ExitStack() as stack:
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(written_list(path.parent, overwrite=True))  # a foreign file by a graph's name
        except (OSError, InputError):  # is replaced; a cache that cannot be made is not used
            path = None
        yield path is not None



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
        self.ort = runtime.import_onnxruntime()
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
                with _cache_list(path) as listed:
                    # a graph is run from the cache only if an export of this project wrote it there, unchanged
                    # since (the folder's list of what it wrote): a graph planted under its name (a 317-byte
                    # one took 7 GB to load) is exported again and replaced
                    if listed and is_ours(path):  # a regular file of the size written, its bytes unchanged
                        try:
                            session = self.ort.InferenceSession(path.read_bytes(), so, providers=["CPUExecutionProvider"])
                            os.utime(path)  # recently used: kept by the eviction
                        except Exception:  # a damaged cache file: export again and replace it
                            session = None
                    if session is None:
                        graph = self._export(hw)
                        if listed:
                            try:
                                atomic_write_bytes(path, graph)
                                _evict(path.parent, ONNX_CACHE_MAX)
                            except (OSError, InputError):  # a read-only cache (or a folder by the graph's name)
                                pass  # only costs the export next time
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
