"""``LayerRecorder``: hooks on every Conv block (and the Detect head) that record what each computes.

It owns its hook handles, works as a context manager and removes them on exit. It records ``z`` (after
BatchNorm, before SiLU) and ``a`` (after SiLU) as tensors, or only their per-channel statistics.

Examples:
    >>> from pipeline.probe.recorder import LayerRecorder
    >>> with LayerRecorder(yolo, mode="both") as rec:
    ...     _ = rec.model(x)
    >>> z, a = rec.activations["model.0"]      # pre and post SiLU of the first conv
"""

from __future__ import annotations

import contextlib

import torch

from pipeline.model.load import detection_model
from pipeline.probe.channel_stats import DEAD_EPS, ChannelStats
from pipeline.probe.layers import detect_head, is_fused, select_layers

# ------------------------------------------------------------------------------------------------
# The recorder
# ------------------------------------------------------------------------------------------------


def _shape_of(output):
    """A module output's shape as lists: a tensor's shape, or the shapes inside a tuple/list (the head's)."""
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)):
        return [_shape_of(o) for o in output]
    if isinstance(output, dict):  # some heads return a dict of branches in training mode
        return {k: _shape_of(v) for k, v in output.items()}
    return None


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
        stages: ``{"model.i": {"type", "out_shape"}}`` for every top-level layer, in order, always: the
            forward pass stage by stage (the Detect head's entry lists its decoded output and its 3 scales).
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
        self.stages: dict[str, dict] = {}
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

    def _on_stage(self, path):
        def hook(module, inputs, output):
            self.stages[path] = {"type": type(module).__name__, "out_shape": _shape_of(output)}

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
            for i, layer in enumerate(self.model.model):  # shapes only: a stage map costs no copy
                self._handles.append(layer.register_forward_hook(self._on_stage(f"model.{i}")))
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
