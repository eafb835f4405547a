"""Offline-safe Ultralytics runtime: the one place that decides how Ultralytics may touch the outside world.

Ultralytics 8.4 reaches for the network in several places: a DNS probe at import (``is_online``), a HEAD
request for ``Arial.ttf`` at the start of every training run (``check_font``, not stopped by
``YOLO_OFFLINE``), downloads of weights named without a path (``yolov8n.pt``), and pip installs of
missing packages. This module is imported by ``pipeline/__init__.py`` before anything imports
``ultralytics``, and it makes every one of those impossible:

- ``YOLO_OFFLINE=1`` turns the import-time probe off, ``YOLO_AUTOINSTALL=0`` stops pip installs;
- ``YOLO_CONFIG_DIR`` points inside the project's cache folder (whatever it was), so nothing lands in ``~/.config`` or in a user's own;
- a local font copied to ``$YOLO_CONFIG_DIR/Ultralytics/Arial.ttf`` makes ``check_font`` return early;
- settings get ``sync=False`` (no telemetry) once Ultralytics is imported (see ``ultralytics_settings``);
- its first-run banner ("Creating new Ultralytics Settings ... 'yolo settings'") is dropped: the file lives in
  our cache and this module sets it, so the banner's advice does not apply (``QuietSettingsBanner``);
- the trainer's AMP check (which downloads ``yolo26n.pt`` on a GPU) is replaced by ``pipeline.core.amp.offline_check_amp``;
- ``ULTRALYTICS_SAFE_LOAD=1``: checkpoints load without running code (``pipeline.model.weights_policy``);
- progress bars redraw in place on a terminal only: in a log file each bar writes its final line, not a
  carriage-return frame per update (``plain_progress_off_terminal``);
- a photo may hold at most ``max_pixels()`` pixels (``CARDAMAGE_MAX_PIXELS``, default ``DEFAULT_MAX_PIXELS``):
  Pillow's bomb guard and OpenCV's ``OPENCV_IO_MAX_IMAGE_PIXELS`` are set to it before either is imported,
  and ``pipeline.core.io.validate_image`` refuses a larger photo from its header, before decoding.

ONNX Runtime (the engine's CPU backend) is native code that Python's socket guards never see: release 1.32
stores telemetry events under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime`` as it loads and uploads them
to ``mobile.events.data.microsoft.com`` about 9 s later (strace). ``ORT_DISABLE_TELEMETRY=1``, set here before
anything loads it, turns that off; ``import_onnxruntime`` is the one way this package imports it.

Weights are loaded by ``load_model`` in ``pipeline/model.py``, which refuses bare hub names.

Examples:
    >>> import pipeline  # noqa: F401  (sets the environment first)
    >>> from pipeline.core.runtime import cache_dir
    >>> cache_dir().name
    '.cache'
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import PIL.Image

from pipeline.core import amp

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # pipeline/core/runtime.py -> the checkout


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


class QuietSettingsBanner(logging.Filter):
    """Drop the one record Ultralytics logs when it creates its settings file; every other record passes."""

    BANNER = "Creating new Ultralytics Settings"

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.BANNER)


# --------------------------------------------------------------------------------------- ONNX Runtime, offline
#: Read by ONNX Runtime once, as its library loads: "1" keeps its telemetry from starting ("0" or unset: on).
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"
log = logging.getLogger(__name__)


def onnxruntime_telemetry_off() -> None:
    """Set ``ORT_DISABLE_TELEMETRY=1`` for this process and the ones it starts (Ray workers), before any load."""
    os.environ[ORT_TELEMETRY_ENV] = "1"


def import_onnxruntime():
    """ONNX Runtime with its telemetry off (``ImportError`` when it is not installed).

    Examples:
        >>> ort = import_onnxruntime()
        >>> session = ort.InferenceSession(graph_bytes, providers=["CPUExecutionProvider"])
    """
    onnxruntime_telemetry_off()
    import onnxruntime  # optional dependency, and slow to import: loaded only by the ONNX backend

    # The in-process switch too (releases that honour only it); alone it comes too late, the store is
    # opened as the library loads.
    disable = getattr(onnxruntime, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    return onnxruntime


#: Most pixels a photo may have unless ``CARDAMAGE_MAX_PIXELS`` says otherwise: 150 megapixels. Every camera
#: photo up to medium format fits (a 100 MP GFX100 frame is 102 MP; the 8000x8000 photo of docs/robustness.md
#: is 64 MP); a 200 MP phone's full-resolution mode needs the variable. What it stops: a small file that
#: decodes to gigabytes (a PNG of under a megabyte can hold 30000x30000 grey: 900 MP, three bytes each as BGR).
DEFAULT_MAX_PIXELS = 150_000_000
MAX_PIXELS_ENV = "CARDAMAGE_MAX_PIXELS"
#: The most the variable may raise it to: far beyond any photo, far inside what OpenCV's own parser takes.
MAX_PIXELS_CEILING = 10**12


def max_pixels() -> int:
    """The pixel limit for one photo: ``$CARDAMAGE_MAX_PIXELS`` (a positive integer; ``200e6`` is read as
    200000000) or ``DEFAULT_MAX_PIXELS``.

    Raises:
        ValueError: the variable is set but is not a positive whole number (``pipeline.core.io`` turns this
            into one line naming the variable).
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    # NaN fails both tests; inf and 1e400 fail the upper bound (OpenCV parses its copy as a 64-bit count)
    if not (1 <= value <= MAX_PIXELS_CEILING and value == int(value)):
        raise ValueError(f"must be a whole number of pixels from 1 to {MAX_PIXELS_CEILING:.0e}, got {raw[:40]!r}")
    return int(value)


def _set_pixel_limits() -> None:
    """Give Pillow and OpenCV the pixel limit. OpenCV reads its variable once, when cv2 is loaded, so this
    runs before anything imports cv2; Pillow's is read at every open (it refuses above twice the value)."""
    try:
        limit = max_pixels()
    except ValueError:
        limit = DEFAULT_MAX_PIXELS  # every photo is refused with the reason (validate_image); the decoders keep a bound
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(limit)
    PIL.Image.MAX_IMAGE_PIXELS = limit
    # Pillow warns between the limit and twice it: validate_image refuses those photos itself, in one line
    warnings.filterwarnings("ignore", category=PIL.Image.DecompressionBombWarning)


def configure() -> Path:
    """Set the Ultralytics environment before it is imported; return the config dir. Idempotent."""
    if "onnxruntime" in sys.modules and os.environ.get(ORT_TELEMETRY_ENV) != "1":
        # Loaded before ``import pipeline``: its store is open and its uploader armed; nothing here can stop it.
        log.warning("onnxruntime was imported before pipeline, so its telemetry is on in this process; "
                    "import pipeline first (or set ORT_DISABLE_TELEMETRY=1)")
    onnxruntime_telemetry_off()
    _set_pixel_limits()
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    # Every checkpoint load is weights_only + Ultralytics' allow-list unless a caller opts in for one
    # file (pipeline.model.weights_policy): a .pt file is a pickle and could otherwise run code.
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "1"
    # always the project's own: a YOLO_CONFIG_DIR of the user's would get this project's settings (sync off,
    # folders in its cache) and a font written into it; their Ultralytics keeps its own
    config_dir = cache_dir() / "ultralytics"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    _install_local_font(config_dir)
    # A filter on the logger itself survives Ultralytics' set_logging, which only swaps handlers.
    logger = logging.getLogger("ultralytics")
    if not any(isinstance(f, QuietSettingsBanner) for f in logger.filters):
        logger.addFilter(QuietSettingsBanner())
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
    amp.install_offline_amp_check()
    plain_progress_off_terminal()


def _on_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def plain_progress_off_terminal() -> None:
    """Make Ultralytics' progress bars non-interactive whenever stdout is not a terminal. Idempotent.

    Ultralytics redraws each bar behind a carriage return unless it runs under GitHub Actions, so a training
    log written to a file held ~3,600 frames (0.5 MB) per 30-minute run. Its non-interactive mode, chosen here
    by what stdout is at the moment a bar is made, writes each bar's final line once.
    """
    from ultralytics.utils import tqdm as ultralytics_tqdm

    decide = ultralytics_tqdm.is_noninteractive_console
    if getattr(decide, "_cardamage", False):
        return
    stock = getattr(decide, "__wrapped__", decide)  # the lru_cache'd original, read fresh each bar

    def noninteractive() -> bool:
        return bool(stock()) or not _on_terminal(sys.stdout)

    noninteractive._cardamage = True
    ultralytics_tqdm.is_noninteractive_console = noninteractive


def progress_bar(*args, **kwargs):
    """Ultralytics' progress bar (``TQDM``, same arguments) for this project's own loops: redrawn in place on a
    terminal, one final line in a log (``plain_progress_off_terminal``)."""
    plain_progress_off_terminal()
    from ultralytics.utils import TQDM

    return TQDM(*args, **kwargs)


configure()
