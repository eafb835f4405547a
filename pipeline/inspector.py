"""The hooks: record what every YOLOv8 Conv block computes, its weights, its folded bias, and its counts.

Every ``Conv`` block of YOLOv8 computes, per output channel ``c`` and position ``(y, x)``::

    z = bn(conv(x))            pre-activation   (fused model: z = conv(x), BN already folded in)
    a = silu(z) = z * sigmoid(z)                post-activation, what the next layer sees

and the head's class branch ends in a plain ``Conv2d`` whose outputs are class logits; the score of a
class is ``sigmoid(logit)``. ``LayerRecorder`` hooks the Conv blocks (never the one ``nn.SiLU`` object
all 57 blocks of yolov8n share) and keeps ``z`` and ``a``, or only per-channel statistics of them:

- unfused block: a forward hook on ``block.bn`` sees ``z``, a forward hook on ``block`` sees ``a``;
- fused block (``model.fuse()`` deleted ``bn``): the hook on ``block.conv`` sees ``z``.

Nothing is computed twice: the hooks only keep what the forward pass already made. One catch: a
checkpoint loaded by Ultralytics runs SiLU *in place* (``inplace=True``), so ``a`` overwrites ``z`` in
memory; the recorder then copies ``z`` (tensors mode) or takes its statistics before the SiLU runs.
Stats mode reads each map once in a small C kernel (``_channel_stats.c``), so recording all 57 blocks
costs ~1.1x a plain forward (``scripts/bench_inspect.py``; docs/benchmarks.md).

BatchNorm in eval mode is an affine map per channel, so it folds into the convolution::

    s  = gamma / sqrt(running_var + eps)
    W' = W * s          (per output channel)
    b' = beta - running_mean * s

``fold_bn`` computes that in float64 and matches what ``model.fuse()`` writes into the fused conv.

Examples:
    >>> import torch, pipeline
    >>> from pipeline.model import load_model
    >>> from pipeline.inspector import LayerRecorder, conv_params, param_counts
    >>> yolo = load_model("yolov8n.yaml", nc=6)
    >>> x = torch.rand(1, 3, 320, 320)
    >>> with LayerRecorder(yolo, mode="both") as rec:
    ...     _ = rec.model(x)
    >>> z, a = rec.activations["model.0"]          # pre and post of the first conv, 1x16x160x160
    >>> rec.stats["model.0"].table()[0]["mean"]     # per-channel statistics of z
    >>> rec.head["cls_logits"][0].shape             # class logits at stride 8: 1x6x40x40
    >>> conv_params(yolo)["model.0"]["folded.bias"].shape
    torch.Size([16])
    >>> param_counts(yolo)["total"]                 # == model.info()'s parameter count
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterable

import torch
from torch import nn

from pipeline import runtime  # noqa: F401  (offline env before ultralytics)
from pipeline.model import detection_model, model_stride  # noqa: F401  (detection_model: also public here)
from pipeline.preprocess import model_input as letterboxed_input

try:  # the one-read C kernel for stats mode (pipeline/_channel_stats.c), built by `pip install`; optional
    from pipeline import _channel_stats
except ImportError:  # no compiler at install time: stats mode runs on torch reductions (same numbers, slower)
    _channel_stats = None


#: A post-activation |a| below this counts as "dead" (the neuron passes on ~nothing) in stats mode.
DEAD_EPS = 1e-3

#: Stats mode takes sum(z^2) - n*mean^2 in one pass unless mean^2 > CANCEL_RATIO * variance for a channel
#: (float32 cancellation would then cost more than ~1e-5 of the std): those channels get the two-pass formula.
CANCEL_RATIO = 16.0

#: ChannelStats folds its per-batch tables into running totals every this many batches (bounded memory).
FOLD_EVERY = 64

#: Columns of the per-channel statistics (stats.csv), in order.
STATS_COLUMNS = (
    "layer",
    "channel",
    "count",
    "mean",
    "std",
    "min",
    "max",
    "frac_negative",
    "frac_dead",
    "post_mean",
)


# ------------------------------------------------------------------------------------------------
# Which modules: Conv blocks, the Detect head, layer selection
# ------------------------------------------------------------------------------------------------


def _conv_class():
    from ultralytics.nn.modules.conv import Conv

    return Conv


def _detect_class():
    from ultralytics.nn.modules.head import Detect

    return Detect


def is_fused(block: nn.Module) -> bool:
    """True when ``model.fuse()`` has folded this Conv block's BatchNorm into its conv (``bn`` is gone)."""
    return not hasattr(block, "bn")


def _named(model, modules: dict | None):
    """``(path, module)`` pairs: from ``modules`` (``dict(named_modules())``) when given, else a walk."""
    return modules.items() if modules is not None else detection_model(model).named_modules()


def conv_blocks(model, modules: dict | None = None) -> dict[str, nn.Module]:
    """All Conv blocks (``ultralytics.nn.modules.conv.Conv`` and subclasses) by module path, in model order."""
    Conv = _conv_class()
    return {name: m for name, m in _named(model, modules) if isinstance(m, Conv)}


def detect_head(model, modules: dict | None = None) -> tuple[str, nn.Module] | tuple[None, None]:
    """``(path, Detect module)`` of the model's detection head, or ``(None, None)``."""
    Detect = _detect_class()
    return next(((name, m) for name, m in _named(model, modules) if isinstance(m, Detect)), (None, None))


def select_layers(model, layers=None, modules: dict | None = None) -> list[str]:
    """Resolve a layer selection to Conv block paths, in model order.

    Args:
        model: a YOLO wrapper or DetectionModel.
        layers: ``None`` (all Conv blocks) or an iterable mixing
            - ints or digit strings: top-level layer index (``2`` -> every Conv block inside ``model.2``),
            - module paths: ``"model.2.cv1"`` (that block) or ``"model.2"`` (every Conv block inside it),
            - type names: ``"C2f"``, ``"SPPF"``, ``"Detect"``, ``"Conv"`` (Conv blocks inside modules of that type).
        modules: ``dict(model.named_modules())`` if the caller has it already (saves a walk over the model).

    Raises:
        ValueError: a selector that matches no Conv block.

    Examples:
        >>> select_layers(yolo, [0, "model.2.cv1", "SPPF"])
        ['model.0', 'model.2.cv1', 'model.9.cv1', 'model.9.cv2']
    """
    if modules is None:
        modules = dict(detection_model(model).named_modules())
    blocks = conv_blocks(model, modules)
    if layers is None:
        return list(blocks)
    if isinstance(layers, (str, int)):
        layers = [layers]
    wanted: set[str] = set()
    for sel in layers:
        s = str(sel).strip()
        if re.fullmatch(r"\d+", s):
            s = f"model.{s}"
        if s in modules:
            prefix = s + "."
            hits = [p for p in blocks if p == s or p.startswith(prefix)]
        else:  # a type name: Conv blocks that are, or sit inside, modules of that type
            roots = [p for p, m in modules.items() if type(m).__name__ == s]
            hits = [p for p in blocks if any(p == r or p.startswith(r + ".") for r in roots)]
        if not hits:
            raise ValueError(f"layer selector {sel!r} matches no Conv block (try an index 0-{len(modules) - 1}, "
                             f"a path like 'model.2.cv1', or a type like 'C2f')")
        wanted.update(hits)
    return [p for p in blocks if p in wanted]


# ------------------------------------------------------------------------------------------------
# Statistics per channel, accumulated over any number of forward passes
# ------------------------------------------------------------------------------------------------


class ChannelStats:
    """Per-channel statistics of one Conv block's ``z`` (pre) and ``a`` (post), over any number of passes.

    ``mean``/``std`` (population, ddof 0)/``min``/``max`` describe ``z``; ``frac_negative`` is the share of
    ``z < 0`` (where SiLU bends), ``frac_dead`` the share of ``|a| < dead_eps``, ``post_mean`` the mean of
    ``a`` (how far from zero-centred SiLU's output is).

    Each value of ``z`` and of ``a`` is read once: a small C kernel (``pipeline/_channel_stats.c``) takes
    all of a map's statistics in that read. Where it cannot run (not built, not float32 on the CPU in NCHW
    layout, or ``kernel=False``) torch reductions compute the same numbers in ~10 passes. Batches are
    merged lazily in float64 with Chan's parallel formula, so stats over many images equal the stats of
    one big tensor.

    Args:
        channels: channels of the block's output.
        dead_eps: |a| below this counts as dead.
        kernel: use the C kernel where it can run (``False``: always torch, the tests' second path).
    """

    def __init__(self, channels: int, dead_eps: float = DEAD_EPS, kernel: bool = True):
        self.channels, self.dead_eps = channels, dead_eps
        self.kernel = kernel and _channel_stats is not None
        self._batches: list[tuple] = []  # not yet merged: (n per channel, C x 5 table of z, C x 2 table of a)
        self._pending = None
        self._merged = None

    @staticmethod
    def _rows(t: torch.Tensor) -> torch.Tensor:
        """BxCxHxW -> C x (B*H*W), a free view for one contiguous image."""
        c = t.shape[1]
        return t.view(c, -1) if t.shape[0] == 1 and t.is_contiguous() else t.transpose(0, 1).reshape(c, -1)

    @staticmethod
    def _scratch(t: torch.Tensor, scratch) -> torch.Tensor:
        """A work buffer shaped like ``t``: a view into ``scratch`` (a tensor, or a function of ``t`` giving one)
        when it is big enough (no new memory)."""
        if callable(scratch):
            scratch = scratch(t)
        if scratch is not None and scratch.numel() >= t.numel() and scratch.dtype == t.dtype:
            return scratch[: t.numel()].view(t.shape)
        return torch.empty_like(t)

    def _kernel_can(self, t: torch.Tensor) -> bool:
        """Whether the C kernel can read ``t``: float32 on the CPU, BxCxHxW, contiguous, not empty."""
        return (self.kernel and t.dtype is torch.float32 and t.is_cpu and t.dim() == 4 and t.is_contiguous()
                and t.shape[1] == self.channels and t.numel() > 0)

    @staticmethod
    def _kernel(fn, t: torch.Tensor, width: int, number: float) -> torch.Tensor:
        """Run one entry point of the C kernel on contiguous BxCxHxW ``t``: a C x width float64 table."""
        b, c, h, w = t.shape
        out = torch.empty(c, width, dtype=torch.float64)
        fn(t.data_ptr(), b, c, h * w, number, torch.get_num_threads(), out.data_ptr())
        return out

    def update_pre(self, z: torch.Tensor, scratch=None) -> None:
        """First half of a batch: the statistics of ``z`` (called before an in-place SiLU can overwrite it)."""
        n = z.numel() // self.channels
        if self._kernel_can(z):  # C x {sum, m2, min, max, count(z < 0)}, float64
            self._pending = (n, self._kernel(_channel_stats.pre, z, 5, CANCEL_RATIO))
            return
        zc = self._rows(z)
        work = self._scratch(zc, scratch)
        total = zc.sum(dim=1)
        mean = total / n
        # one pass: m2 = sum(z^2) - n*mean^2; where the mean dwarfs the spread that difference cancels, so those
        # channels (rare) get the exact two-pass sum of squared deviations instead
        m2 = torch.linalg.vector_norm(zc, dim=1).square() - n * mean * mean
        shaky = mean * mean > CANCEL_RATIO * m2 / n
        if shaky.any():
            idx = shaky.nonzero().flatten()
            m2[idx] = torch.linalg.vector_norm(zc.index_select(0, idx) - mean[idx, None], dim=1).square()
        m2.clamp_(min=0)  # rounding can leave a hair below zero; NaN stays NaN
        lo, hi = zc.amin(dim=1), zc.amax(dim=1)
        negative = torch.lt(zc, 0, out=work).sum(dim=1)  # count of z < 0: a sum of float 0/1 (exact below 2^24)
        self._pending = (n, torch.stack([total, m2, lo, hi, negative], 1))

    def update_post(self, a: torch.Tensor, scratch=None) -> None:
        """Second half of a batch: the statistics of ``a = SiLU(z)``; completes the batch begun by ``update_pre``."""
        n, pre = self._pending
        if self._kernel_can(a):  # C x {count(|a| < eps), sum(a)}, float64
            post = self._kernel(_channel_stats.post, a, 2, self.dead_eps)
        else:
            ac = self._rows(a)
            work = self._scratch(ac, scratch)
            dead = torch.lt(torch.abs(ac, out=work), self.dead_eps, out=work).sum(dim=1)  # count of |a| < eps
            post = torch.stack([dead, ac.sum(dim=1)], 1)
        self._batches.append((n, pre, post))
        self._pending = None
        if len(self._batches) >= FOLD_EVERY:  # a long dataset pass: bounded memory, folding stays rare
            self._merge()

    def update(self, z: torch.Tensor, a: torch.Tensor) -> None:
        """Add one batch ``z, a`` (BxCxHxW, float) to the statistics."""
        self.update_pre(z)
        self.update_post(a)

    def _merge(self) -> dict:
        """Fold the batches not yet merged into the running totals (Chan et al.) and return the totals."""
        if self._merged is not None and not self._batches:
            return self._merged
        c, f64 = self.channels, torch.float64
        if self._merged is None:
            count, mean, m2 = 0, torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64)
            lo, hi = torch.full((c,), float("inf"), dtype=f64), torch.full((c,), float("-inf"), dtype=f64)
            negative, dead, post = torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64)
        else:
            t = self._merged
            count, mean, m2, lo, hi = t["count"], t["mean"], t["m2"], t["min"], t["max"]
            negative, dead, post = t["negative"], t["dead"], t["post"]
        for n, pre_table, post_table in self._batches:
            b_sum, b_m2, b_lo, b_hi, b_neg = pre_table.double().unbind(1)
            b_dead, b_post = post_table.double().unbind(1)
            b_mean, total = b_sum / n, count + n
            delta = b_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + b_m2 + delta * delta * (count * n / total)
            count = total
            lo, hi = torch.minimum(lo, b_lo), torch.maximum(hi, b_hi)
            negative, dead, post = negative + b_neg, dead + b_dead, post + b_post
        self._batches.clear()
        self._merged = dict(count=count, mean=mean, m2=m2, min=lo, max=hi, negative=negative, dead=dead, post=post)
        return self._merged

    @property
    def count(self) -> int:
        """Values per channel seen so far (batch x height x width, summed over passes)."""
        return self._merge()["count"]

    @property
    def mean(self) -> torch.Tensor:
        return self._merge()["mean"]

    @property
    def std(self) -> torch.Tensor:
        s = self._merge()
        return (s["m2"] / max(s["count"], 1)).sqrt()

    @property
    def min(self) -> torch.Tensor:
        return self._merge()["min"]

    @property
    def max(self) -> torch.Tensor:
        return self._merge()["max"]

    @property
    def frac_negative(self) -> torch.Tensor:
        s = self._merge()
        return s["negative"] / max(s["count"], 1)

    @property
    def frac_dead(self) -> torch.Tensor:
        s = self._merge()
        return s["dead"] / max(s["count"], 1)

    @property
    def post_mean(self) -> torch.Tensor:
        s = self._merge()
        return s["post"] / max(s["count"], 1)

    def table(self, layer: str = "") -> list[dict]:
        """One dict per channel with the ``STATS_COLUMNS`` keys (plain Python numbers)."""
        cols = {k: getattr(self, k).tolist() for k in STATS_COLUMNS[3:]}
        count = self.count
        return [{"layer": layer, "channel": c, "count": count, **{k: v[c] for k, v in cols.items()}}
                for c in range(self.channels)]

    def summary(self) -> dict:
        """Whole-layer numbers pooled over all channels: mean, std, min, max, fractions, post_mean."""
        mean_c = self.mean
        mean = float(mean_c.mean())
        # pooled variance = mean within-channel variance + variance of the channel means
        var = float((self.std**2).mean() + ((mean_c - mean) ** 2).mean())
        return {
            "count": self.count * self.channels,
            "mean": mean,
            "std": var**0.5,
            "min": float(self.min.min()),
            "max": float(self.max.max()),
            "frac_negative": float(self.frac_negative.mean()),
            "frac_dead": float(self.frac_dead.mean()),
            "post_mean": float(self.post_mean.mean()),
        }


# ------------------------------------------------------------------------------------------------
# The recorder
# ------------------------------------------------------------------------------------------------


class LayerRecorder:
    """Context manager that hooks Conv blocks (and the Detect head) and records what they compute.

    Args:
        model: a YOLO wrapper or DetectionModel, fused or not.
        layers: selection for ``select_layers`` (``None`` = all Conv blocks).
        mode: ``"tensors"`` keeps ``(z, a)`` per block, ``"stats"`` keeps only ``ChannelStats``
            (no feature map outlives its hook), ``"both"`` keeps both.
        head: also record the Detect head: per-scale class logits, box distributions and decoded output.
        keep_inputs: also keep each recorded block's input tensor (what ``trace_neuron`` needs).
        dead_eps: |a| threshold for ``frac_dead`` in stats.
        grad: leave autograd on inside the context (off by default: nothing keeps a graph).
        kernel: stats mode reads each map once with the C kernel where it can (``False``: torch reductions).

    While the context is open the model is in eval mode and (unless ``grad``) autograd is off; on exit
    every hook handle is removed and the model's train/eval flag is restored.

    Attributes:
        model: the DetectionModel (call it inside the context).
        layers: recorded Conv block paths, in model order.
        activations: ``{path: (z, a)}`` (modes ``tensors``/``both``), detached tensors.
        inputs: ``{path: x}`` with ``keep_inputs``.
        shapes: ``{path: {"input": [...], "output": [...]}}``, always.
        stats: ``{path: ChannelStats}`` (modes ``stats``/``both``).
        head: ``{"path", "cls_logits": [per scale BxNCxHxW], "box": [per scale Bx4*reg_maxxHxW],
            "decoded": Bx(4+nc)xN (xywh boxes in input pixels, then sigmoid scores), "strides": [...]}``.

    Examples:
        >>> with LayerRecorder(yolo, layers=["model.0"], mode="both") as rec:
        ...     rec.model(x)
        >>> z, a = rec.activations["model.0"]
        >>> torch.allclose(a, z * torch.sigmoid(z))
        True
    """

    MODES = ("tensors", "stats", "both")

    def __init__(self, model, layers=None, mode: str = "tensors", head: bool = True, keep_inputs: bool = False,
                 dead_eps: float = DEAD_EPS, grad: bool = False, kernel: bool = True):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.model = detection_model(model)
        # one walk over the modules serves selection and hooking (fuse() keeps every block object, only drops bn)
        self._modules = dict(self.model.named_modules())
        self.layers = select_layers(self.model, layers, self._modules)
        self.mode, self.record_head, self.keep_inputs = mode, head, keep_inputs
        self.dead_eps, self.grad, self.kernel = dead_eps, grad, kernel
        self.activations: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, dict] = {}
        self.stats: dict[str, ChannelStats] = {}
        self.head: dict = {}
        self._handles: list = []
        self._pending: dict[str, torch.Tensor] = {}  # z of a block whose forward has not returned yet
        self._scratch: torch.Tensor | None = None  # work memory for stats mode
        self._stack: contextlib.ExitStack | None = None
        self._was_training = None

    # -- hooks ---------------------------------------------------------------------------------
    def _on_pre(self, path, inplace_act: bool):
        keep_tensors, keep_stats = self.mode in ("tensors", "both"), self.mode in ("stats", "both")

        def hook(module, inputs, output):
            # Checkpoints loaded by Ultralytics run SiLU in place: it overwrites z with a. So z's statistics are
            # taken here, before the activation runs, and z is copied only when it is kept and would be overwritten.
            if keep_stats:
                if path not in self.stats:
                    self.stats[path] = ChannelStats(output.shape[1], self.dead_eps, self.kernel)
                self.stats[path].update_pre(output, self._work)  # work memory only for the torch path
            if keep_tensors:
                self._pending[path] = output.detach().clone() if inplace_act else output.detach()

        return hook

    def _work(self, like: torch.Tensor) -> torch.Tensor:
        """One flat scratch buffer for all statistics, grown to the largest feature map (allocated once)."""
        if self._scratch is None or self._scratch.numel() < like.numel() or self._scratch.dtype != like.dtype:
            self._scratch = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return self._scratch

    def _on_block(self, path):
        keep_tensors, keep_stats = self.mode in ("tensors", "both"), self.mode in ("stats", "both")

        def hook(module, inputs, output):
            a = output.detach()
            self.shapes[path] = {"input": list(inputs[0].shape), "output": list(a.shape)}
            if self.keep_inputs:
                self.inputs[path] = inputs[0].detach()
            if keep_tensors:
                self.activations[path] = (self._pending.pop(path), a)
            if keep_stats:
                self.stats[path].update_post(a, self._work)

        return hook

    def _on_head_conv(self, key, i):
        def hook(module, inputs, output):
            self.head[key][i] = output.detach()

        return hook

    def _on_head(self, module, inputs, output):
        y = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(y, torch.Tensor):  # eval mode: B x (4+nc) x N, boxes xywh in input pixels + scores
            self.head["decoded"] = y.detach()

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "LayerRecorder":
        self._stack = contextlib.ExitStack()
        if not self.grad:
            self._stack.enter_context(torch.no_grad())
        modules = self._modules
        # switch to eval only if something trains: Module.train() sets a flag on all ~280 modules (~3 ms each way)
        if any(m.training for m in modules.values()):
            self._was_training = self.model.training
            self.model.eval()
        try:
            for path in self.layers:
                block = modules[path]
                pre = block.conv if is_fused(block) else block.bn
                inplace_act = bool(getattr(block.act, "inplace", False))
                self._handles.append(pre.register_forward_hook(self._on_pre(path, inplace_act)))
                self._handles.append(block.register_forward_hook(self._on_block(path)))
            hpath, detect = detect_head(self.model, modules)
            if self.record_head and detect is not None:
                nl = detect.nl
                self.head.update(path=hpath, cls_logits=[None] * nl, box=[None] * nl, nc=detect.nc,
                                 reg_max=detect.reg_max, strides=[float(s) for s in detect.stride])
                heads = detect.one2many if hasattr(type(detect), "one2many") else {"box_head": detect.cv2, "cls_head": detect.cv3}
                for i in range(nl):
                    self._handles.append(heads["cls_head"][i][-1].register_forward_hook(self._on_head_conv("cls_logits", i)))
                    self._handles.append(heads["box_head"][i][-1].register_forward_hook(self._on_head_conv("box", i)))
                self._handles.append(detect.register_forward_hook(self._on_head))
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook handle and restore autograd and the train/eval flag (safe to call twice)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()
        self._scratch = None
        if self._was_training is not None:
            self.model.train(self._was_training)
            self._was_training = None
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __call__(self, x: torch.Tensor):
        """Run the model on ``x`` (inside the context) and return its output."""
        return self.model(x)

    def stats_table(self) -> list[dict]:
        """All per-channel rows, layer by layer in model order (the rows of stats.csv)."""
        return [row for path in self.layers if path in self.stats for row in self.stats[path].table(path)]


# ------------------------------------------------------------------------------------------------
# Parameters: raw, BatchNorm, folded; counts
# ------------------------------------------------------------------------------------------------


def fold_bn(block: nn.Module, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded weight and bias of a Conv block: ``z = conv(x, W') + b'`` equals ``bn(conv(x, W))``.

    ``W' = W * gamma / sqrt(var + eps)`` per output channel, ``b' = beta - mean * gamma / sqrt(var + eps)``
    (plus the conv's own bias times the same scale, if it has one). Computed in float64, returned in
    ``dtype`` (the weight's dtype by default). A fused block already holds ``W'`` and ``b'``.

    Examples:
        >>> w, b = fold_bn(conv_blocks(yolo)["model.0"])
        >>> w.shape, b.shape
        (torch.Size([16, 3, 3, 3]), torch.Size([16]))
    """
    conv = block.conv
    dtype = dtype or conv.weight.dtype
    with torch.no_grad():
        w = conv.weight.detach().double()
        b0 = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if is_fused(block):
            return w.to(dtype), b0.to(dtype)
        bn = block.bn
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        w_folded = w * scale.view(-1, 1, 1, 1)
        b_folded = bn.bias.detach().double() + (b0 - bn.running_mean.detach().double()) * scale
    return w_folded.to(dtype), b_folded.to(dtype)


def block_params(block: nn.Module) -> dict[str, torch.Tensor]:
    """One Conv block's tensors: ``conv.weight`` (``conv.bias`` if any), ``bn.*`` (unfused), ``folded.*``."""
    out = {"conv.weight": block.conv.weight.detach()}
    if block.conv.bias is not None:
        out["conv.bias"] = block.conv.bias.detach()
    if not is_fused(block):
        bn = block.bn
        out.update({"bn.weight": bn.weight.detach(), "bn.bias": bn.bias.detach(),
                    "bn.running_mean": bn.running_mean.detach(), "bn.running_var": bn.running_var.detach()})
    out["folded.weight"], out["folded.bias"] = fold_bn(block)
    return out


def conv_params(model, layers=None) -> dict[str, dict[str, torch.Tensor]]:
    """``{block path: block_params(block)}`` for the selected Conv blocks (all by default).

    BatchNorm's ``eps`` is a float, not a tensor: read it from ``conv_meta``.
    """
    blocks = conv_blocks(model)
    return {path: block_params(blocks[path]) for path in select_layers(model, layers)}


def head_params(model) -> dict[str, torch.Tensor]:
    """The Detect head's final plain ``Conv2d`` layers (class logits and box distributions), by path."""
    hpath, detect = detect_head(model)
    if detect is None:
        return {}
    out = {}
    for branch in ("cv2", "cv3"):
        for i, seq in enumerate(getattr(detect, branch)):
            conv = seq[-1]
            out[f"{hpath}.{branch}.{i}.{len(seq) - 1}.weight"] = conv.weight.detach()
            out[f"{hpath}.{branch}.{i}.{len(seq) - 1}.bias"] = conv.bias.detach()
    return out


def conv_meta(block: nn.Module) -> dict:
    """Geometry of a Conv block: kernel, stride, padding, dilation, groups, channels, bn eps, fused flag."""
    conv = block.conv
    return {
        "type": type(block).__name__,
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel": list(conv.kernel_size),
        "stride": list(conv.stride),
        "padding": list(conv.padding),
        "dilation": list(conv.dilation),
        "groups": conv.groups,
        "bn_eps": None if is_fused(block) else float(block.bn.eps),
        "fused": is_fused(block),
        "activation": type(block.act).__name__,
        "params": sum(p.numel() for p in block.parameters()),
    }


def param_counts(model) -> dict:
    """Trainable-parameter counts (as ``model.info()`` counts them) per top-level layer, per Conv block, in total.

    Returns:
        ``{"layers": [{"index", "path", "type", "params"}...], "blocks": {path: n}, "total": n}``; the
        per-layer counts are the ``params`` column of Ultralytics' model summary table and they add up to
        ``total``. BatchNorm's gamma and beta count, its running statistics (buffers) do not.
    """
    m = detection_model(model)
    layers = [
        {"index": i, "path": f"model.{i}", "type": type(layer).__name__,
         "params": sum(p.numel() for p in layer.parameters())}
        for i, layer in enumerate(m.model)
    ]
    blocks = {path: sum(p.numel() for p in b.parameters()) for path, b in conv_blocks(m).items()}
    return {"layers": layers, "blocks": blocks, "total": sum(p.numel() for p in m.parameters())}


# ------------------------------------------------------------------------------------------------
# The model input
# ------------------------------------------------------------------------------------------------


def model_input(model, image, imgsz=640) -> tuple[torch.Tensor, dict]:
    """The exact tensor ``YOLO.predict`` feeds this model for one photo: ``pipeline.preprocess.model_input``
    at the model's own stride (``pipeline.model.model_stride``).

    Returns:
        ``(x, meta)``: float32 ``1x3xHxW`` RGB in [0, 1] and the letterbox metadata (ratio, padding...).
    """
    return letterboxed_input(image, imgsz=imgsz, stride=model_stride(model), auto=True)


def iter_modules(model, paths: Iterable[str]) -> list[nn.Module]:
    """Modules by path (a small helper for callers that keep paths)."""
    modules = dict(detection_model(model).named_modules())
    return [modules[p] for p in paths]


__all__ = [
    "DEAD_EPS",
    "STATS_COLUMNS",
    "ChannelStats",
    "LayerRecorder",
    "block_params",
    "conv_blocks",
    "conv_meta",
    "conv_params",
    "detect_head",
    "fold_bn",
    "head_params",
    "is_fused",
    "iter_modules",
    "model_input",
    "model_stride",
    "param_counts",
    "select_layers",
]
