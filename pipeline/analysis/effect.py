"""How much a neuron mattered to a box's score: gradient x activation, and the logit with the neuron set to 0.

Both are measured on the followed box's class logit (one output of the head's ``cv3.<scale>.2`` at its
anchor) and on the activation ``a = SiLU(z)`` the neuron passes on:

* ``grad_x_act`` = d logit / d a * a: the first-order estimate of the neuron's share. Were the network
  linear from this neuron on, setting ``a`` to 0 would change the logit by exactly ``-grad_x_act``.
* ``zeroed_delta`` = logit(a set to 0) - logit: the measured change, from one forward pass that starts at
  the neuron's top-level layer (the layers before it are run once and kept).

They differ where the SiLUs after the neuron bend: the gradient is their slope at this photo's values, the
zeroing walks along their curve. Several neurons are zeroed in one batched pass (one per batch row, row 0
untouched); the gradient comes from row 0 of the same pass (``torch.autograd.grad``: no parameter's
``.grad`` is touched).

Examples:
    >>> fx = LogitEffects(run.net, run.x, target=("model.22.cv3.1.2", 2, 10, 12))
    >>> out = fx.measure("model.4.cv1", [(5, 20, 30), (7, 21, 30)])
    >>> out["grad_x_act"].shape, out["zeroed_delta"]         # CxHxW, and one change per neuron
"""

from __future__ import annotations

import torch

#: Relative gap between -grad_x_act and zeroed_delta above which the page says the two disagree.
DISAGREE = 0.1


class LogitEffects:
    """One network, one input and one target logit; neurons' effects on it, layer by layer.

    Args:
        net: a DetectionModel (the run's fused copy; never changed: hooks are removed after each pass).
        x: the model input ``1x3xHxW``.
        target: ``(final conv path, output channel, y, x)``: the logit followed.
    """

    def __init__(self, net, x: torch.Tensor, target: tuple[str, int, int, int]):
        self.net, self.x, self.target = net, x, target
        self.modules = dict(net.named_modules())
        self._prefix: tuple[int, list, torch.Tensor] | None = None
        self.passes = 0  # batched passes from a layer on (each runs the Detect head once)
        self._zeroed: dict[tuple, float] = {}  # (layer, channel, y, x) -> measured change, from any pass
        # the last layer's pass with nothing zeroed (its gradient): one layer only, since an early layer's maps at
        # 640 px are tens of MB in float64 and an explorer visits many layers
        self._first: dict[str, dict] = {}

    def _run_prefix(self, k: int) -> tuple[list, torch.Tensor]:
        """Layers ``0..k-1`` once (no graph): the saved outputs later layers read and the input of layer ``k``."""
        if self._prefix is None or self._prefix[0] != k:
            y, out = [], self.x
            with torch.no_grad():
                for m in self.net.model[:k]:
                    if m.f != -1:
                        out = y[m.f] if isinstance(m.f, int) else [out if j == -1 else y[j] for j in m.f]
                    out = m(out)
                    y.append(out if m.i in self.net.save else None)
            self._prefix = (k, y, out)  # the last layer asked is kept: an explorer asks the same layer many times
        return self._prefix[1], self._prefix[2]

    def measure(self, layer: str, neurons: list[tuple[int, int, int]]) -> dict:
        """The target logit's gradient w.r.t. ``layer``'s output, and the logit with each neuron zeroed.

        Args:
            layer: a Conv block path (its SiLU output is what is differentiated and zeroed).
            neurons: ``[(channel, y, x)]`` to zero, one per batch row.

        Returns:
            ``{"logit": float, "act": CxHxW, "grad": CxHxW, "grad_x_act": CxHxW, "reaches": bool,
            "zeroed_delta": [float]}``; ``reaches`` is False when ``layer``'s output does not flow into the
            target logit at all (another scale's branch): then the gradient and every change are exactly 0.

        Raises:
            ValueError: ``layer`` is not a module of the network.
        """
        if layer not in self.modules:
            raise ValueError(f"{layer!r} is not a module of this network")
        if not neurons and layer in self._first:
            return self._first[layer]
        k = int(layer.split(".")[1])
        y, out = self._run_prefix(k)
        rows = 1 + len(neurons)

        def wide(t):
            return t.expand(rows, *t.shape[1:]).contiguous() if isinstance(t, torch.Tensor) else t

        held, seen = {}, {}

        def zero(mod, args, output):
            a = output.detach().clone()
            for i, (c, yy, xx) in enumerate(neurons, start=1):
                a[i, c, yy, xx] = 0.0
            held["a"] = a.requires_grad_(True)
            return held["a"]

        path, ch, gy, gx = self.target
        hooks = [self.modules[layer].register_forward_hook(zero),
                 self.modules[path].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))]
        try:
            with torch.enable_grad():
                y, out = [wide(t) for t in y], wide(out)
                for m in self.net.model[k:]:
                    if m.f != -1:
                        out = y[m.f] if isinstance(m.f, int) else [out if j == -1 else y[j] for j in m.f]
                    out = m(out)
                    y.append(out if m.i in self.net.save else None)
                logits = seen["out"][:, ch, gy, gx]
                # a layer on another scale's branch (model.16 feeds only the stride-16 and -32 heads) never reaches
                # a stride-8 box's logit: no graph joins them, its gradient is exactly 0 and zeroing changes nothing
                reaches = logits.requires_grad
                grad = torch.autograd.grad(logits[0], held["a"])[0] if reaches else torch.zeros_like(held["a"])
        finally:
            for h in hooks:
                h.remove()
        self.passes += 1
        act, g = held["a"][0].detach().double(), grad[0].double()
        base = logits.detach().double()
        out = {"logit": float(base[0]), "act": act, "grad": g, "grad_x_act": g * act, "reaches": reaches,
               "zeroed_delta": [float(v - base[0]) for v in base[1:]]}
        if layer not in self._first:
            self._first = {layer: out}
        for n, dz in zip(neurons, out["zeroed_delta"]):
            self._zeroed[(layer, *n)] = dz
        return out

    def zeroed(self, layer: str, neuron: tuple[int, int, int]) -> float:
        """The measured change of the logit with one neuron zeroed, from an earlier pass if one measured it."""
        key = (layer, *neuron)
        if key not in self._zeroed:
            self.measure(layer, [neuron])
        return self._zeroed[key]


#: float32's relative step; a change of the logit below ``NOISE_ULPS`` of them is rounding, not the neuron.
FLOAT32_EPS = 2.0 ** -23
NOISE_ULPS = 64


def noise_floor(logit: float) -> float:
    """The smallest change of a float32 ``logit`` that is not rounding: ``NOISE_ULPS`` float32 steps of it."""
    return NOISE_ULPS * FLOAT32_EPS * max(1.0, abs(logit))


def effect_words(grad_x_act: float, zeroed_delta: float, logit: float = 0.0, reaches: bool = True,
                 target: str = "") -> str:
    """One sentence comparing the first-order estimate ``-grad_x_act`` with the measured change.

    ``reaches`` False: the layer's output never flows into the logit (``target``, the final head conv), so
    the sentence says why both are exactly 0 rather than comparing them.
    """
    if not reaches:
        return (f"this layer's output never flows into box 0's class logit (computed by {target or 'another branch'} "
                f"from an earlier feature map), so its gradient is exactly 0 and zeroing it changes nothing")
    est = -grad_x_act
    gap = abs(zeroed_delta - est)
    scale = max(abs(zeroed_delta), abs(est), 1e-12)
    noise = noise_floor(logit)
    if max(abs(zeroed_delta), abs(est)) <= noise:
        return (f"both are within float32 rounding of the logit (under {noise:.1g}; first-order {est:+.3g}, measured "
                f"{zeroed_delta:+.3g}): this neuron barely matters to this box")
    if gap <= DISAGREE * scale:
        return (f"the two agree (first-order estimate {est:+.4g}, measured {zeroed_delta:+.4g}): from this neuron "
                f"on, the network is nearly linear for a change this size")
    return (f"the two differ (first-order estimate {est:+.4g}, measured {zeroed_delta:+.4g}, a gap of "
            f"{gap:.3g}): the gradient is the slope of every SiLU after this neuron at this photo's values, while "
            f"zeroing walks along their curves, and SiLU's slope changes along its curve (0 at its minimum, z = -1.278; 0.5 at "
            f"z = 0; about 1.1 near z = 2.4)")
