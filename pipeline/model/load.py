"""The model: build YOLOv8 from a YAML (from scratch) or load a checkpoint path, never a hub name.

Offline, Ultralytics would try to download ``yolov8n.pt`` when it is named without a path. We only
load weights from a file that exists; a bare ``*.pt`` name that is not a file gets one line saying how
to get it. A ``*.yaml`` name builds a fresh, randomly initialised model (Ultralytics ships the YAMLs).

Examples:
    >>> from pipeline.model.load import load_model
    >>> yolo = load_model("yolov8n.yaml", nc=6)  # from scratch, six CarDD classes
    >>> yolo = load_model("runs/demo/train/weights/best.pt")
"""

from __future__ import annotations

import contextlib
import copy
import re
import weakref
import zipfile
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from ultralytics import YOLO
from ultralytics.nn import tasks
from ultralytics.nn.modules.head import Detect

from pipeline.core.facts import CLASS_NAMES, MAX_IMGSZ, TRUST_ENV
from pipeline.core.files import check_regular_file, os_reason
from pipeline.core.errors import one_line
from pipeline.core.io import InputError
from pipeline.core.yamlfile import read_yaml
from pipeline.data.labels import check_names

DEFAULT_MODEL = "yolov8n.yaml"
DEFAULT_IMGSZ = 640  # Ultralytics' default inference size, for a model that carries no training size
#: The largest architecture a model YAML may describe: YOLOv8x, the largest YOLOv8, has 68,229,648 (80 classes).
MAX_PARAMETERS = 100_000_000
#: Modules (layers, blocks and their parts) a model YAML may build: YOLOv8x has 460; a depth_multiple of 1e9
#: would make a billion Python objects before any parameter count could stop it.
MAX_MODULES = 5_000
#: The side of the blank image Ultralytics' ``DetectionModel`` runs through a new model to learn its strides
#: (``s = 256`` in ``ultralytics/nn/tasks.py``), on the real device, before any check of ours could stop it.
PROBE_SIZE = 256
#: The activation values (the numel of every module's output, the input included) that trial forward may make:
#: under four times YOLOv8x's own (``YOLOV8X_ACTIVATIONS``). The probe holds about 4 bytes a counted value
#: (docs/robustness.md, "Checked before the long work": a one-Conv YAML 3600 channels wide), so this bound keeps
#: a model's build near a GB. An ``Upsample`` factor of 256 or ``channels: 20000`` in a 3 KB YAML asks for far
#: more, and the real probe would allocate it.
MAX_ACTIVATIONS = 250_000_000
#: YOLOv8x's count by the same meta-device method at ``PROBE_SIZE`` (80 classes); a test recomputes it.
YOLOV8X_ACTIVATIONS = 67_931_136
#: The values one tensor made *inside* a layer may hold in that trial forward (400 MB of float32). Outputs are
#: counted above; this bounds what a layer makes and drops on the way: ``nn.LocalResponseNorm(10**6)`` pads its
#: input by a million channels, an attention block at full resolution makes a (pixels x pixels) matrix (sixth
#: hostile retest: 8 GB from a 1 KB YAML). YOLOv8x's largest is far below (a test recomputes it).
MAX_TENSOR = 100_000_000


#: Ultralytics layers that download while they are built (``TorchVision`` fetches a torchvision model's weights
#: into ~/.cache/torch): refused in a model YAML (a DNS query and a write outside --out, seventh hostile retest).
NETWORK_LAYERS = frozenset({"TorchVision"})


class _TooManyModules(Exception):
    pass


class _LargestTensor(TorchDispatchMode):
    """Note the largest tensor any operation makes (numel) and the layer making it, on the meta device."""

    def __init__(self):
        super().__init__()
        self.largest, self.where, self.layers = 0, "", []

    def name_layers(self, rows) -> list:
        """Hooks on ``rows`` (the YAML's layers) that name the layer running; the caller removes them."""
        def enter(module, inputs):
            self.layers.append(f"layer {getattr(module, 'i', '?')} ({type(module).__name__})")

        def leave(module, inputs, output):
            self.layers.pop()

        return [m.register_forward_pre_hook(enter) for m in rows] + [m.register_forward_hook(leave) for m in rows]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.where = t.numel(), self.layers[-1] if self.layers else "the input"
        return out


class _ArangeOffMeta(TorchFunctionMode):
    """Answer ``torch.arange`` on the CPU and hand back a meta copy: its meta kernel imports torch's compiler
    (seconds, and a MemoryError in a capped address space) for a tensor whose values a count never reads.
    Ultralytics' DFL makes one arange of 16 values; every other constructor stays on the meta device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.arange:
            return func(*args, **{**kwargs, "device": "cpu"}).to("meta")
        return func(*args, **kwargs)


def _yaml_error(spec, e: Exception) -> InputError:
    """A malformed or hostile model YAML's exception as one line (Ultralytics' parser raises many kinds)."""
    if isinstance(e, (FileNotFoundError, OSError)):
        return InputError(spec, f"model YAML not found ({e})")
    reason = re.sub(r"^.*?ERROR\W*", "", " ".join(str(e).split())) or type(e).__name__
    return InputError(spec, f"not a valid model YAML ({type(e).__name__}: {reason[:200]})")


def model_yaml_parameters(spec: str | Path, nc: int | None = None) -> int:
    """The parameter count a model YAML describes, found without memory, or one line refusing the file.

    The file is read as every user YAML is (``read_yaml``: no aliases, a regular file, at most 1 MiB), then
    Ultralytics' own ``parse_model`` builds it on torch's meta device, where a tensor has a shape and no
    storage, so ``width_multiple: 1000`` costs nothing to count. A module registration hook stops a build
    past ``MAX_MODULES`` (a huge ``depth_multiple`` or repeat count) before Python runs out of memory. Then
    Ultralytics' stride probe runs there too (``probe_activations``): what it would allocate is refused
    above ``MAX_ACTIVATIONS``, and a shape mismatch is found before the real probe allocates.

    Args:
        spec: a model YAML path, or a name Ultralytics ships (``yolov8n.yaml``).
        nc: the class count the model will be built with (the YAML's own otherwise).

    Raises:
        InputError: the YAML is hostile or malformed, describes more than ``MAX_PARAMETERS`` parameters
            (the line names the count and the budget), more than ``MAX_MODULES`` modules, or a stride probe
            of more than ``MAX_ACTIVATIONS`` activation values.

    Examples:
        >>> model_yaml_parameters("yolov8n.yaml", nc=6)
        3012018
    """
    # every user file is read safely before Ultralytics' yaml_load (which recurses without a limit and expands
    # aliases) sees it; Ultralytics' own names resolve below. yaml_model_load first tries the name without
    # its scale letter (yolov8n.yaml -> yolov8.yaml), so that file is read too where the user has one.
    unscaled = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", str(spec))
    for path in dict.fromkeys((str(spec), unscaled)):
        if Path(path).exists() or Path(path).is_symlink():
            read_yaml(path, "model YAML")
    try:
        cfg = tasks.yaml_model_load(spec)
    except Exception as e:
        raise _yaml_error(spec, e) from None
    if nc is not None:
        cfg["nc"] = nc
    for row in [*(cfg.get("backbone") or []), *(cfg.get("head") or [])]:
        name = row[2] if isinstance(row, (list, tuple)) and len(row) > 2 else None
        if isinstance(name, str) and name in NETWORK_LAYERS:
            raise InputError(spec, f"layer {name} builds a torchvision model and fetches its weights from the "
                                   "internet; this project runs offline: put its weights in a checkpoint instead")
    modules = 0

    def count(module, name, submodule):
        nonlocal modules
        modules += 1
        if modules > MAX_MODULES:
            raise _TooManyModules

    hook = torch.nn.modules.module.register_module_module_registration_hook(count)
    try:
        with torch.device("meta"), _ArangeOffMeta():
            model, save = tasks.parse_model(copy.deepcopy(cfg), ch=cfg.get("channels", 3), verbose=False)
    except _TooManyModules:
        raise InputError(spec, f"describes more than {MAX_MODULES:,} modules (YOLOv8x has 460); "
                               "check depth_multiple and the repeat counts") from None
    except Exception as e:
        raise _yaml_error(spec, e) from None
    finally:
        hook.remove()
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise InputError(spec, f"describes {n:,} parameters, over the budget of {MAX_PARAMETERS:,} "
                               "(YOLOv8x has 68,229,648); check width_multiple, the channel numbers and nc")
    acts, largest, where = probe_activations(spec, model, save, cfg.get("channels", 3))
    if acts > MAX_ACTIVATIONS:
        raise InputError(spec, f"its {PROBE_SIZE}x{PROBE_SIZE} trial forward (Ultralytics' stride probe) makes "
                               f"{acts:,} activation values, over the budget of {MAX_ACTIVATIONS:,} (YOLOv8x makes "
                               f"{YOLOV8X_ACTIVATIONS:,}); check channels, the Upsample factors and the strides")
    if largest > MAX_TENSOR:
        raise InputError(spec, f"its {PROBE_SIZE}x{PROBE_SIZE} trial forward (Ultralytics' stride probe) makes one "
                               f"tensor of {largest:,} values inside {where}, over the budget of {MAX_TENSOR:,} a "
                               "tensor; check that layer's arguments and where it sits")
    return n


def probe_activations(spec, model: torch.nn.Sequential, save: list[int], ch: int) -> tuple[int, int, str]:
    """The activation values Ultralytics' stride probe would make with ``model`` (built by ``parse_model`` on
    the meta device), counted by running that probe on the meta device: shapes, no memory. Also the largest
    single tensor any operation makes on the way (a layer's inside included) and the layer that makes it.

    The parameter count misses a layer with no parameters that makes a huge output (``nn.Upsample`` with
    a factor of 256) and a huge input (``channels``); the probe, a ``PROBE_SIZE`` blank image through the
    model, allocates all of it on the real device. The routing is ``BaseModel._predict_once``'s, with the
    head in training mode as the probe runs it. A shape the layers cannot join (a bad factor usually gives
    one) raises here, on the meta device, instead of after the real allocation.

    Raises:
        InputError: the forward fails (named as an invalid model YAML).
    """
    from ultralytics.nn.modules import Detect

    total = 0

    def count(module, inputs, output):
        nonlocal total
        stack = [output]
        while stack:
            v = stack.pop()
            if isinstance(v, torch.Tensor):
                total += v.numel()
            elif isinstance(v, (list, tuple)):
                stack += list(v)
            elif isinstance(v, dict):
                stack += list(v.values())

    if not len(model) or not isinstance(model[-1], Detect):  # Ultralytics runs no probe without a Detect head
        return 0, 0, ""
    largest = _LargestTensor()
    hooks = [m.register_forward_hook(count) for m in model.modules()]
    hooks += largest.name_layers(model)  # the YAML's own rows, by their index
    try:
        with torch.device("meta"), _ArangeOffMeta(), torch.no_grad(), largest:
            model.eval()
            model[-1].training = True  # as the probe: the head returns its feature maps
            x = torch.zeros(1, ch, PROBE_SIZE, PROBE_SIZE)
            total += x.numel()
            y = []
            for m in model:
                if m.f != -1:
                    x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
                x = m(x)
                y.append(x if m.i in save else None)
    except Exception as e:
        raise _yaml_error(spec, e) from None
    finally:
        for h in hooks:
            h.remove()
    return total, largest.largest, largest.where


def load_model(spec: str | Path = DEFAULT_MODEL, nc: int | None = None, names=None, trust: bool = False):
    """Return an ``ultralytics.YOLO`` for a model YAML or an existing weights file.

    Args:
        spec: ``yolov8n.yaml`` (any Ultralytics model YAML, or a path to one) or a path to a ``.pt`` file.
        nc: number of classes for a YAML build (the YAML's own ``nc`` otherwise). Ignored for weights.
        names: class names to attach to a YAML build (defaults to the CarDD names when ``nc`` is 6).
        trust: load a checkpoint that safe loading refuses (it may run code while loading). Only for
            files the user said they trust (``--trust-weights``).

    Raises:
        InputError: weights named without an existing file, a file that is not a valid checkpoint, or
            one that safe loading refuses (unless ``trust``).
    """
    spec = str(spec)
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")):
        # counted on the meta device, refused before anything is allocated: as the YAML says (Ultralytics
        # builds that first), then with ``nc`` (the rebuild below)
        for classes in (None, nc) if nc is not None else (None,):
            model_yaml_parameters(spec, classes)
        try:
            yolo = YOLO(spec, task="detect")
        except Exception as e:
            raise _yaml_error(spec, e) from None
        check_detect_head(yolo, spec)
        if nc is not None and yolo.model.yaml.get("nc") != nc:
            yolo.model = tasks.DetectionModel(yolo.model.yaml, nc=nc, verbose=False)
        n = yolo.model.yaml["nc"]
        if names is None and n == len(CLASS_NAMES):
            names = CLASS_NAMES
        if names is not None:
            yolo.model.names = {i: str(name) for i, name in enumerate(names)}
        return yolo
    if path.exists() or path.is_symlink():  # there, but maybe a folder, FIFO, device or link loop: say which
        check_regular_file(path, "a weights file")
    if not path.is_file():
        if path.parent != Path("."):  # a path, likely to a run of one's own: no download advice
            raise InputError(spec, "weights file not found" + (" (a training run keeps them in "
                                                             "OUT/weights/, a demo in OUT/train/weights/)"
                                                             if path.name in ("best.pt", "last.pt") else ""))
        raise InputError(
            spec,
            "weights file not found; this project never downloads weights. Get them while online "
            "(e.g. `wget https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8n.pt`) "
            "and pass the path, or pass yolov8n.yaml to build from scratch",
        )
    try:  # unreadable (permissions): said as such, not as the loader's "PermissionError: ''"
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputError(path, f"cannot read the weights file ({os_reason(e)})") from None
    check_archive(path)
    with weights_policy(trust):
        try:
            yolo = YOLO(str(path), task="detect")
        except Exception as e:  # torch.load / pickle / zip errors on corrupt files, refusals of safe loading
            raise InputError(path, weights_error(path, e, trust)) from None
    if getattr(yolo, "model", None) is None or not hasattr(yolo.model, "names"):
        raise InputError(path, "not a valid YOLO checkpoint (no model inside)")
    # a checkpoint's class names are printed in every command's lines, as a data.yaml's are: the same rule
    # (strings, unique, no newline or control character), so a name cannot forge an error line or clear a screen
    check_names({"names": yolo.model.names}, path, yaml=False)
    check_detect_head(yolo, path)
    return yolo


#: What a checkpoint's zip members may unpack to beyond the file's own size: torch writes every member stored
#: (uncompressed), so a real checkpoint unpacks to its size; this slack is for a pickle someone re-zipped.
ARCHIVE_SLACK = 64 << 20


def check_archive(path: str | Path) -> None:
    """Refuse a checkpoint whose zip members would unpack to more than the file holds (plus ``ARCHIVE_SLACK``):
    a 4 MB file of deflated zeros named ``data.pkl`` unpacks to gigabytes before unpickling can fail on it.
    Member sizes are read from the zip's central directory; nothing is decompressed. A file that is not a zip
    (an old-style torch file, an image named .pt) is left to the loader, which reads no more than its bytes.

    Raises:
        InputError: one line with the sizes.
    """
    try:
        size = Path(path).stat().st_size
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # the loader names what is wrong with it
    if unpacked > size + ARCHIVE_SLACK:
        raise InputError(path, f"a zip archive of {size / 1e6:.1f} MB whose members unpack to {unpacked / 1e9:.1f} GB: "
                               "torch writes checkpoints uncompressed, so this is not one")


def check_detect_head(yolo, where) -> None:
    """Raise ``InputError`` unless the model ends in a plain ``Detect`` head: a segmentation, pose, OBB or
    classification model (their YAMLs ship with Ultralytics) builds, then fails deep in any command with a
    traceback about shapes. Its subclasses (Segment, Pose, OBB...) answer other questions than boxes' scores."""
    net = getattr(yolo, "model", None)
    head = net.model[-1] if getattr(net, "model", None) is not None and len(net.model) else None
    if type(head) is not Detect:
        kind = type(head).__name__ if head is not None else "no"
        raise InputError(where, f"a model with a {kind} head: this project reads detection models "
                                "(a YOLOv8 Detect head, e.g. yolov8n.yaml or a detection checkpoint)")


@contextlib.contextmanager
def weights_policy(trust: bool = False):
    """Within the block, Ultralytics loads checkpoints safely (``weights_only`` + its allow-list) unless ``trust``.

    A ``.pt`` file is a pickle, and unpickling can run any code the file's author put there. Ultralytics
    8.4 ships a restricted loader that rebuilds only the known model classes; it is off by default, so
    this switches it on for every load in the block: ``YOLO(path)``, the trainer's resume and fine-tune
    loads. Ultralytics reads the switch (``SAFE_LOAD``) from its module at each load.
    """
    old = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = not trust
    try:
        yield
    finally:
        tasks.SAFE_LOAD = old


def unsafe_globals(path: str | Path) -> list[str]:
    """The names a checkpoint would import while unpickling that Ultralytics' safe loader does not allow."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a torch zip archive: nothing to list
        return []
    allowed = tasks._SafeLoad._registry or {}
    known = ("torch.", "ultralytics.nn.", "ultralytics.utils.", "collections.", "numpy.", "pathlib.", "builtins.set")
    return [n for n in needed if n not in allowed and not n.startswith(known)]


def weights_error(path: str | Path, error: Exception, trust: bool) -> str:
    """One line for a checkpoint that did not load: what is wrong and, for a refusal, how to opt in.

    A refusal is said only where the file really names code outside the allow-list (so a broken file
    never teaches anyone to reach for --trust-weights); Ultralytics' own wrapper hides the reason, so the
    innermost cause is the one reported.
    """
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    text = " ".join(str(root).split())
    names = [] if trust else unsafe_globals(path)
    if names or (not trust and "Unsupported global" in text):
        what = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        return (f"refused: this weights file holds objects outside the YOLO checkpoint format{what}, and loading "
                f"it could run code; if you trust its source, pass --trust-weights (or set {TRUST_ENV}=1)")
    if root is error and "outside the supported" in text:  # loaded fine, but no YOLO model in it
        return "not a YOLO checkpoint (no model inside)"
    if m := re.search(r"invalid load key, '[^']*'|Unsupported operand \d+", text):  # an image or text named .pt
        return f"not a torch checkpoint file ({m.group(0)})"
    text = re.sub(r"^.*?ERROR\W*", "", text).replace(str(path), "").strip(" :.")  # Ultralytics' "ERROR ❌️ <path>"
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    return f"not a valid YOLO checkpoint ({type(root).__name__}: {first or 'unreadable'})"


def detection_model(model) -> torch.nn.Module:
    """The ``DetectionModel`` of a ``YOLO`` wrapper, or the model itself if it already is one."""
    return model if isinstance(model, tasks.BaseModel) else model.model


def trained_imgsz(yolo, imgsz: int | None = None) -> int:
    """The inference size to use: ``imgsz`` when given, else the size the weights were trained at.

    Ultralytics' own ``YOLO(best.pt).predict()`` does the same (the checkpoint's ``train_args.imgsz``): a
    model trained at 320 px and run at 640 sees every object twice as large as it learned them, and finds
    other boxes. A YAML build has no training size: 640.

    Examples:
        >>> trained_imgsz(load_model("runs/cardd-cpu/train/weights/best.pt"))  # trained at 320
        320
        >>> trained_imgsz(load_model("yolov8n.yaml", nc=6)), trained_imgsz(load_model("yolov8n.yaml"), 416)
        (640, 416)
    """
    if imgsz:
        size = int(imgsz)
    else:
        size = getattr(yolo, "overrides", {}).get("imgsz")
        if size is None or isinstance(size, (list, tuple)):  # no training size, or a rectangle: the default
            size = DEFAULT_IMGSZ
        elif type(size) is not int or not 32 <= size <= MAX_IMGSZ:  # an edited checkpoint: as --imgsz is checked
            where = getattr(yolo, "ckpt_path", None) or "the weights"
            raise InputError(where, f"its train_args.imgsz is {one_line(repr(size))[:40]}, not an integer size in "
                                    f"pixels from 32 to {MAX_IMGSZ}: pass --imgsz")
    check_forward(yolo, size)
    return size


#: The values one tensor of a forward pass may hold, per input pixel at the run's size (at least ``MAX_TENSOR``):
#: YOLOv8x's largest is 25 per pixel (a test recomputes it). A layer that makes far more inside itself (a
#: ``LocalResponseNorm`` of thousands, attention over every pixel) is refused before the real pass allocates it.
MAX_TENSOR_PER_PIXEL = 100
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> sizes already checked


def check_forward(model, imgsz: int) -> None:
    """Refuse a model whose forward pass at ``imgsz`` would make a tensor past ``MAX_TENSOR_PER_PIXEL`` values a
    pixel (or ``MAX_TENSOR``), found by running that pass on torch's meta device: shapes, no memory.

    A model YAML's layers are checked at 256 px when it is built (``model_yaml_parameters``); a checkpoint may
    hold any torch module, and a layer whose insides grow faster than the image (attention: with the square of
    its pixels) passes at 256 px and not at 640. So every command checks at the size it runs at, once per model
    and size.

    Raises:
        InputError: one line naming the layer, the tensor's size and the budget.
    """
    net = detection_model(model)
    done = _CHECKED.setdefault(net, set())
    if imgsz in done:
        return
    largest = _LargestTensor()
    ghost = copy.deepcopy(net).to("meta").eval()
    for m in ghost.modules():  # a probe's hooks copied with the model would run on meta tensors
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    rows = list(ghost.model) if isinstance(getattr(ghost, "model", None), torch.nn.Sequential) else [ghost]
    if isinstance(rows[-1], Detect):
        rows[-1].training = True  # the head's feature maps, as the stride probe: its box decoding reads strides
    hooks = largest.name_layers(rows)
    yaml = getattr(net, "yaml", None)
    channels = yaml.get("channels", 3) if isinstance(yaml, dict) else 3
    try:
        with torch.device("meta"), _ArangeOffMeta(), torch.no_grad(), largest:
            ghost(torch.zeros(1, channels, imgsz, imgsz))
    except NotImplementedError:
        return  # an operation with no meta kernel: its shapes cannot be found without memory; nothing to say
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # layers whose shapes do not fit together
        name = getattr(model, "ckpt_path", None) or "the model"
        where = f" in {largest.layers[-1]}" if largest.layers else ""
        raise InputError(name, f"its layers do not fit together at {imgsz} px{where} "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    finally:
        for h in hooks:
            h.remove()
    limit = max(MAX_TENSOR, MAX_TENSOR_PER_PIXEL * imgsz * imgsz)
    if largest.largest > limit:
        name = getattr(model, "ckpt_path", None) or "the model"
        raise InputError(name, f"at {imgsz} px its forward pass makes one tensor of {largest.largest:,} values inside "
                               f"{largest.where}, over the budget of {limit:,} at that size ({MAX_TENSOR_PER_PIXEL} a "
                               "pixel); check that layer, or a smaller --imgsz")
    done.add(imgsz)


def model_stride(model) -> int:
    """The letterbox stride the predictor uses for a PyTorch model: ``max(int(stride.max()), 32)``."""
    m = detection_model(model)
    return max(int(m.stride.max()), 32) if hasattr(m, "stride") else 32
