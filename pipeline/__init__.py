"""cardamage: a YOLOv8 car-damage pipeline that shows its own insides.

The data path reads one way; the README's "Layout" table names the module of each stage::

    input (io.py, synth.py, data.py, coco.py, dataset_view.py) -> preprocess (preprocess.py) -> model
    (model.py, train.py, predict.py, engine.py) -> hooks (inspector.py, trace.py) -> lesson (activations.py,
    gradients.py) -> plots (plots/, report.py) -> command line (cli.py, options.py)

Importing this package first configures the offline-safe Ultralytics runtime (``runtime.py``), so
``import pipeline`` must come before any ``import ultralytics``.
"""

from pipeline import runtime as _runtime  # noqa: F401  (side effect: offline environment for Ultralytics)

__version__ = "0.1.0"

#: The six CarDD classes, in CarDD's own order (ids 0..5).
CLASS_NAMES = ("crack", "dent", "glass shatter", "lamp broken", "scratch", "tire flat")

#: |z| above this is an outlier, for pixels (preprocess) and for whole images (outliers) alike.
Z_THRESHOLD = 3.0
