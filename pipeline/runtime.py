"""Offline-safe Ultralytics runtime: the one place that decides how Ultralytics may touch the outside world.

Ultralytics 8.4 reaches for the network in several places: a DNS probe at import (``is_online``), a HEAD
request for ``Arial.ttf`` at the start of every training run (``check_font``, not stopped by
``YOLO_OFFLINE``), downloads of weights named without a path (``yolov8n.pt``), and pip installs of
missing packages. This module is imported by ``pipeline/__init__.py`` before anything imports
``ultralytics``, and it makes every one of those impossible:

- ``YOLO_OFFLINE=1`` turns the import-time probe off, ``YOLO_AUTOINSTALL=0`` stops pip installs;
- ``YOLO_CONFIG_DIR`` points inside the project's cache folder, so nothing lands in ``~/.config``;
- a local font copied to ``$YOLO_CONFIG_DIR/Ultralytics/Arial.ttf`` makes ``check_font`` return early;
- settings get ``sync=False`` (no telemetry) once Ultralytics is imported (see ``ultralytics_settings``).

Weights are resolved by ``resolve_model`` in ``pipeline/model.py``, which refuses bare hub names.

Examples:
    >>> import pipeline  # noqa: F401  (sets the environment first)
    >>> from pipeline.runtime import cache_dir
    >>> cache_dir().name
    '.cache'
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Return the project's cache folder (``$CARDAMAGE_CACHE`` or ``<repo>/.cache``), created if needed."""
    env = os.environ.get("CARDAMAGE_CACHE")
    path = Path(env).expanduser() if env else PROJECT_ROOT / ".cache"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only install: fall back to the user's cache
        path = Path.home() / ".cache" / "cardamage"
        path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _install_local_font(config_dir: Path) -> None:
    """Give Ultralytics an Arial.ttf so check_font never does its HEAD request (matplotlib ships DejaVu)."""
    target_dir = config_dir / "Ultralytics"
    target_dir.mkdir(parents=True, exist_ok=True)
    wanted = [target_dir / "Arial.ttf", target_dir / "Arial.Unicode.ttf"]
    if all(p.exists() for p in wanted):
        return
    import matplotlib  # only on first use; importing matplotlib costs ~0.2 s

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for dst in wanted:
        if not dst.exists():
            tmp = dst.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dst)


def configure() -> Path:
    """Set the Ultralytics environment before it is imported; return the config dir. Idempotent."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or cache_dir() / "ultralytics")
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    _install_local_font(config_dir)
    return config_dir


def ultralytics_settings() -> None:
    """Switch Ultralytics' telemetry off and keep its datasets/runs folders inside our cache."""
    from ultralytics.utils import SETTINGS

    wanted = {
        "sync": False,
        "datasets_dir": str(cache_dir() / "datasets"),
        "runs_dir": str(cache_dir() / "runs"),
        "weights_dir": str(cache_dir() / "weights"),
    }
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)


configure()
