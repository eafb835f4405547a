"""The facts every layer shares, each stated once: class names, thresholds, the sigmoid and its inverse.

Examples:
    >>> from pipeline.core.facts import CLASS_NAMES, sigmoid
    >>> CLASS_NAMES[5], round(sigmoid(0.0), 3)
    ('tire flat', 0.5)
"""

from __future__ import annotations

#: The six CarDD classes, in CarDD's own order (ids 0..5).
CLASS_NAMES = ("crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat")

#: |z| above this is an outlier, for pixels (preprocess) and for whole images (outliers) alike.
Z_THRESHOLD = 3.0

#: Setting this environment variable to 1 is the same as passing --trust-weights.
TRUST_ENV = "CARDAMAGE_TRUST_WEIGHTS"

#: The largest input side any command accepts: a 4096 px input already needs several GB of activations.
MAX_IMGSZ = 4096
