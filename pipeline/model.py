"""The model: build YOLOv8 from a YAML (from scratch) or load a checkpoint path, never a hub name.

Offline, Ultralytics would try to download ``yolov8n.pt`` when it is named without a path. We only
load weights from a file that exists; a bare ``*.pt`` name that is not a file gets one line saying how
to get it. A ``*.yaml`` name builds a fresh, randomly initialised model (Ultralytics ships the YAMLs).

Examples:
    >>> from pipeline.model import load_model
    >>> yolo = load_model("yolov8n.yaml", nc=6)  # from scratch, six CarDD classes
    >>> yolo = load_model("runs/demo/train/weights/best.pt")
"""

from __future__ import annotations

from pathlib import Path

from pipeline import CLASS_NAMES, runtime  # noqa: F401  (offline env before ultralytics)
from pipeline.io import InputError

DEFAULT_MODEL = "yolov8n.yaml"


def load_model(spec: str | Path = DEFAULT_MODEL, nc: int | None = None, names=None):
    """Return an ``ultralytics.YOLO`` for a model YAML or an existing weights file.

    Args:
        spec: ``yolov8n.yaml`` (any Ultralytics model YAML, or a path to one) or a path to a ``.pt`` file.
        nc: number of classes for a YAML build (the YAML's own ``nc`` otherwise). Ignored for weights.
        names: class names to attach to a YAML build (defaults to the CarDD names when ``nc`` is 6).

    Raises:
        InputError: weights named without an existing file, or a file that is not a valid checkpoint.
    """
    from ultralytics import YOLO

    spec = str(spec)
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")):
        try:
            yolo = YOLO(spec, task="detect")
        except (FileNotFoundError, OSError) as e:
            raise InputError(spec, f"model YAML not found ({e})") from None
        if nc is not None and yolo.model.yaml.get("nc") != nc:
            from ultralytics.nn.tasks import DetectionModel

            yolo.model = DetectionModel(yolo.model.yaml, nc=nc, verbose=False)
        n = yolo.model.yaml["nc"]
        if names is None and n == len(CLASS_NAMES):
            names = CLASS_NAMES
        if names is not None:
            yolo.model.names = {i: str(name) for i, name in enumerate(names)}
        return yolo
    if not path.is_file():
        raise InputError(
            spec,
            "weights file not found; this project never downloads weights. Get them while online "
            "(e.g. `wget https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8n.pt`) "
            "and pass the path, or pass yolov8n.yaml to build from scratch",
        )
    try:
        yolo = YOLO(str(path), task="detect")
    except Exception as e:  # torch.load / pickle / zip errors on corrupt files
        raise InputError(path, f"not a valid YOLO checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if getattr(yolo, "model", None) is None or not hasattr(yolo.model, "names"):
        raise InputError(path, "not a valid YOLO checkpoint (no model inside)")
    return yolo


def detection_model(yolo):
    """The underlying ``DetectionModel`` (``nn.Module``) of a YOLO wrapper, or the module itself."""
    return getattr(yolo, "model", yolo)
