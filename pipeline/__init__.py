"""cardamage: a YOLOv8 car-damage pipeline that shows its own insides.

The package reads one way, along the data path; each layer imports only the layers below it
(``lint-imports`` checks this in ``make test``; docs/architecture.md draws it)::

    core -> data -> model -> probe -> lesson -> report -> cli

Importing this package first configures the offline-safe Ultralytics runtime (``core/runtime.py``), so
``import pipeline`` must come before any ``import ultralytics``.
"""

from pipeline.core import runtime as _runtime  # noqa: F401  (side effect: offline environment for Ultralytics)

__version__ = "0.1.0"
