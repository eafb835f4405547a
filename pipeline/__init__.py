"""cardamage: a YOLOv8 car-damage pipeline that shows its own insides.

The data path reads one way, one module per stage::

    input (images.py, synth.py, data.py) -> preprocess (preprocess.py) -> model (model.py, train.py,
    predict.py) -> hooks (inspector.py) -> dumps -> plots (plots/, report.py) -> report

Importing this package first configures the offline-safe Ultralytics runtime (``runtime.py``), so
``import pipeline`` must come before any ``import ultralytics``.
"""

from pipeline import runtime as _runtime  # noqa: F401  (side effect: offline environment for Ultralytics)

__version__ = "0.1.0"

#: The six CarDD classes, in CarDD's own order (ids 0..5).
CLASS_NAMES = ("crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat")
