"""The facts every layer shares, each stated once: class names, thresholds, the sigmoid and its inverse.

Examples:
    >>> from pipeline.core.facts import CLASS_NAMES, logit, sigmoid
    >>> CLASS_NAMES[5], round(sigmoid(0.0), 3)
    ('tire flat', 0.5)
    >>> sigmoid(-1000.0), sigmoid(1000.0)      # no overflow at either end
    (0.0, 1.0)
    >>> round(logit(sigmoid(2.5)), 12)
    2.5
"""

from __future__ import annotations

import math

#: The six CarDD classes, in CarDD's own order (ids 0..5).
CLASS_NAMES = ("crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat")

#: |z| above this is an outlier, for pixels (preprocess) and for whole images (outliers) alike.
Z_THRESHOLD = 3.0

#: Setting this environment variable to 1 is the same as passing --trust-weights.
TRUST_ENV = "CARDAMAGE_TRUST_WEIGHTS"

#: The largest input side any command accepts: a 4096 px input already needs several GB of activations.
MAX_IMGSZ = 4096


def sigmoid(z: float) -> float:
    """sigma(z) = 1 / (1 + e^-z) in float64: a class logit to its score (YOLOv8 has one sigmoid per class).

    Written in the form that never overflows: ``e^-z`` for ``z >= 0``, ``e^z / (1 + e^z)`` below, so
    ``exp`` only ever sees a non-positive argument (``sigmoid(-1000.0) == 0.0``, not an OverflowError).
    """
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float) -> float:
    """The inverse of ``sigmoid``: log(p / (1 - p)), a score back to its logit; -inf at 0 and +inf at 1.

    Computed as ``log(p) - log1p(-p)``: for p near 0 it keeps the digits ``log(p / (1 - p))`` keeps too,
    and for p near 1 ``log1p(-p)`` is exact because ``1 - p`` is. A score is only as precise as its float,
    so the logit of a float32 score above ~0.99999994 (z > ~16.6) cannot be recovered: callers that write
    JSON clamp p first (``pipeline.model.predict``).

    Raises:
        ValueError: p outside [0, 1].
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability lies in [0, 1], got {p!r}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)
