"""Activation functions by hand: the formula, its derivative by formula, its range and its centre.

A neuron computes ``z = sum(w * x) + b`` and then bends it with an activation ``a = f(z)``. YOLOv8 uses
SiLU, ``f(z) = z * sigmoid(z)``, in every Conv block. This module writes seven activations and their
derivatives as plain formulas (float64 torch), so the lesson can show why SiLU was picked:

- sigmoid and tanh saturate (their derivative goes to 0 for large |z|: vanishing gradients);
- ReLU does not saturate for z > 0 but is exactly 0 (and has gradient 0) for z < 0 ("dead" neurons);
- leaky ReLU / PReLU keep a small slope for z < 0;
- softmax turns a vector of logits into probabilities that compete (sum to 1); YOLOv8 does *not* use it
  for classes, it uses an independent sigmoid per class (a box may be several things at once);
- SiLU is smooth, unbounded above, and dips slightly below zero: its minimum is found here by solving
  ``f'(z) = 0`` numerically (about -0.278 at z about -1.278), not written down.

The tests check every derivative against torch autograd applied to torch's own implementations.

Examples:
    >>> from pipeline.lesson.activations import GALLERY, silu_minimum, describe
    >>> x_min, y_min = silu_minimum()
    >>> round(x_min, 3), round(y_min, 3)
    (-1.278, -0.278)
    >>> describe("tanh")["zero_centred"]
    True
    python -c "from pipeline.lesson.activations import describe_all; print(describe_all())"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor

#: Default negative slopes: torch's LeakyReLU default (0.01) and PReLU's initial value (0.25).
LEAKY_SLOPE = 0.01
PRELU_SLOPE = 0.25
#: Softmax is shown over this many logits: the varying one and the rest held at 0 (CarDD has 6 classes).
SOFTMAX_CLASSES = 6


def _t(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


# --- the functions ------------------------------------------------------------------------------


def sigmoid(z) -> Tensor:
    """sigma(z) = 1 / (1 + e^-z): squashes any number into (0, 1); YOLOv8's class scores use it."""
    z = _t(z)
    return 1.0 / (1.0 + torch.exp(-z))


def d_sigmoid(z) -> Tensor:
    """sigma'(z) = sigma(z) * (1 - sigma(z)); at most 0.25 (at z = 0)."""
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh(z) -> Tensor:
    """tanh(z) = (e^z - e^-z) / (e^z + e^-z) = 2 sigma(2z) - 1: in (-1, 1), zero-centred."""
    return 2.0 * sigmoid(2.0 * _t(z)) - 1.0


def d_tanh(z) -> Tensor:
    """tanh'(z) = 1 - tanh(z)^2; at most 1 (at z = 0)."""
    return 1.0 - tanh(z) ** 2


def relu(z) -> Tensor:
    """ReLU(z) = max(0, z)."""
    z = _t(z)
    return torch.where(z > 0, z, torch.zeros_like(z))


def d_relu(z) -> Tensor:
    """ReLU'(z) = 1 for z > 0, else 0 (torch also uses 0 at z = 0)."""
    z = _t(z)
    return (z > 0).to(torch.float64)


def leaky_relu(z, slope: float = LEAKY_SLOPE) -> Tensor:
    """LeakyReLU(z) = z for z > 0, slope * z otherwise."""
    z = _t(z)
    return torch.where(z > 0, z, slope * z)


def d_leaky_relu(z, slope: float = LEAKY_SLOPE) -> Tensor:
    """1 for z > 0, slope otherwise."""
    z = _t(z)
    return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, slope))


def prelu(z, slope: float = PRELU_SLOPE) -> Tensor:
    """PReLU: leaky ReLU whose negative slope is a learned parameter (shown at its initial 0.25)."""
    return leaky_relu(z, slope)


def d_prelu(z, slope: float = PRELU_SLOPE) -> Tensor:
    """d PReLU / dz (the slope itself also gets a gradient in training: dPReLU/da = min(z, 0))."""
    return d_leaky_relu(z, slope)


def softmax(logits, dim: int = -1) -> Tensor:
    """softmax(z)_i = e^(z_i - max z) / sum_j e^(z_j - max z) (shifting by max z avoids overflow)."""
    z = _t(logits)
    e = torch.exp(z - z.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def softmax_first(z, k: int = SOFTMAX_CLASSES) -> Tensor:
    """Softmax probability of class 0 when its logit is ``z`` and the other k-1 logits are 0."""
    z = _t(z)
    logits = torch.stack([z] + [torch.zeros_like(z)] * (k - 1), dim=-1)
    return softmax(logits)[..., 0]


def d_softmax_first(z, k: int = SOFTMAX_CLASSES) -> Tensor:
    """The diagonal Jacobian entry s_0 * (1 - s_0) of ``softmax_first``."""
    s = softmax_first(z, k)
    return s * (1.0 - s)


def silu(z) -> Tensor:
    """SiLU(z) = z * sigma(z) (also called swish): YOLOv8's activation in every Conv block."""
    z = _t(z)
    return z * sigmoid(z)


def d_silu(z) -> Tensor:
    """SiLU'(z) = sigma(z) + z * sigma(z) * (1 - sigma(z)) = sigma(z) * (1 + z * (1 - sigma(z)))."""
    z = _t(z)
    s = sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def d2_silu(z) -> Tensor:
    """SiLU''(z) = sigma'(z) * (2 + z * (1 - 2 sigma(z))), used by Newton's method for the minimum."""
    z = _t(z)
    s = sigmoid(z)
    return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))


# --- the gallery ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """One activation function with its derivative and the torch function that serves as the oracle."""

    name: str
    formula: str
    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]
    torch_f: Callable[[Tensor], Tensor]
    note: str


GALLERY: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("sigmoid", "1 / (1 + e^-z)", sigmoid, d_sigmoid, torch.sigmoid,
                   "saturates at both ends; max slope 0.25"),
        Activation("tanh", "(e^z - e^-z) / (e^z + e^-z)", tanh, d_tanh, torch.tanh,
                   "zero-centred but saturates; max slope 1"),
        Activation("relu", "max(0, z)", relu, d_relu, torch.relu,
                   "no saturation for z > 0; zero output and zero gradient for z < 0"),
        Activation("leaky_relu", f"z if z > 0 else {LEAKY_SLOPE} z", leaky_relu, d_leaky_relu,
                   lambda z: torch.nn.functional.leaky_relu(z, LEAKY_SLOPE),
                   "a small slope keeps negative neurons learning"),
        Activation("prelu", f"z if z > 0 else a z (a learned, init {PRELU_SLOPE})", prelu, d_prelu,
                   lambda z: torch.nn.functional.prelu(z, torch.tensor([PRELU_SLOPE], dtype=z.dtype)),
                   "the negative slope is a trained parameter"),
        Activation("softmax", f"e^z0 / sum_j e^zj (z0 = z, other {SOFTMAX_CLASSES - 1} logits 0)",
                   softmax_first, d_softmax_first,
                   lambda z: torch.softmax(torch.stack([z] + [torch.zeros_like(z)] * (SOFTMAX_CLASSES - 1), -1), -1)[..., 0],
                   "classes compete (sum to 1); YOLOv8 uses one sigmoid per class instead"),
        Activation("silu", "z * sigmoid(z)", silu, d_silu, torch.nn.functional.silu,
                   "YOLOv8's choice: smooth, unbounded above, small negative dip"),
    ]
}


def silu_minimum(x0: float = -1.0, tol: float = 1e-12, max_iter: int = 100) -> tuple[float, float]:
    """Solve SiLU'(z) = 0 by Newton's method (float64); return (z*, SiLU(z*)).

    SiLU' changes sign once, between -2 (negative) and 0 (positive, 0.5), so Newton from -1 converges;
    bisection guards each step in case it ever leaves the bracket.
    """
    lo, hi = -2.0, 0.0
    assert float(d_silu(lo)) < 0 < float(d_silu(hi)), "SiLU' must change sign in [-2, 0]"
    x = x0
    for _ in range(max_iter):
        g = float(d_silu(x))
        if g < 0:
            lo = x
        else:
            hi = x
        step = g / float(d2_silu(x))
        x_new = x - step
        if not lo < x_new < hi:  # Newton left the bracket: bisect instead
            x_new = 0.5 * (lo + hi)
        if abs(x_new - x) < tol:
            x = x_new
            break
        x = x_new
    return x, float(silu(x))


def value_range(name: str, lo: float = -60.0, hi: float = 60.0, n: int = 240_001) -> tuple[float, float]:
    """Smallest and largest value of the activation over a wide grid; a value still growing at the
    grid's end is reported as +-inf (the function is unbounded that way)."""
    act = GALLERY[name]
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    y = act.f(x)
    ymin, ymax = float(y.min()), float(y.max())
    # still sloped at the grid's edge -> unbounded that way (saturating functions have slope ~e^-60 there)
    if float(act.df(_t(hi))) > 1e-6:
        ymax = math.inf
    if float(act.df(_t(lo))) > 1e-6:
        ymin = -math.inf
    return ymin, ymax


def mean_output(name: str, z) -> float:
    """Mean activation over the given pre-activations (a zero-centred function gives ~0 on symmetric input)."""
    return float(GALLERY[name].f(_t(z)).mean())


#: How many N(0,1) draws the sample mean of an activation is taken over (an estimate: ``mean_on_normal_exact``).
NORMAL_SAMPLES = 200_000


def mean_on_normal_exact(name: str) -> float:
    """E[f(z)] for z ~ N(0,1), by the trapezoid rule on [-12, 12] with step 1e-4 (the tails beyond hold less than
    1e-32 of the mass; the rule's error is below 1e-9 for these smooth or piecewise-linear functions)."""
    z = torch.linspace(-12.0, 12.0, 240_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    # rounded to 1e-12, well under the rule's error, so an odd function's 1e-17 of float noise reads as 0
    return round(float(torch.trapezoid(GALLERY[name].f(z) * pdf, z)), 12) + 0.0


def describe(name: str, z_sample=None, seed: int = 0) -> dict:
    """Numbers for one activation: range, f(0), max slope, mean output on N(0,1) input, zero-centredness.

    ``z_sample`` (optional, e.g. a real layer's pre-activations) adds the mean output and the share of
    near-zero gradients (|f'(z)| < 0.01: learning stalls there) on that real distribution.
    """
    act = GALLERY[name]
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(NORMAL_SAMPLES, generator=g, dtype=torch.float64)
    grid = torch.linspace(-10, 10, 20_001, dtype=torch.float64)
    lo, hi = value_range(name)
    mean_normal = mean_output(name, normal)
    out = {
        "name": name,
        "formula": act.formula,
        "note": act.note,
        "min": lo,
        "max": hi,
        "f0": float(act.f(_t(0.0))),
        "max_slope": float(act.df(grid).abs().max()),
        "mean_on_normal": mean_normal,
        "normal_samples": NORMAL_SAMPLES,
        "mean_on_normal_exact": mean_on_normal_exact(name),
        # zero-centred: the output is centred on 0 when the input is (f(0) = 0 and mean ~ 0 on N(0,1))
        "zero_centred": abs(float(act.f(_t(0.0)))) < 1e-12 and abs(mean_normal) < 0.02,
    }
    if z_sample is not None:
        z = _t(z_sample).flatten()
        out["mean_on_layer"] = float(act.f(z).mean())
        out["small_grad_fraction_on_layer"] = float((act.df(z).abs() < 0.01).to(torch.float64).mean())
    return out


def describe_all(z_sample=None) -> list[dict]:
    """``describe`` for every activation in the gallery, in gallery order."""
    return [describe(name, z_sample) for name in GALLERY]
