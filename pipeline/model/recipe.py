"""Training recipes (``configs/*.yaml``): a flat mapping of Ultralytics' train() arguments, each checked alone.

``load_recipe`` reads one and holds every key to ``recipe_key_error``: no file, folder or run (``RECIPE_REFUSED``),
only arguments Ultralytics knows, of its types and of ranges it does not check itself (``RECIPE_RANGES``), and
no ``compile``. A resume holds its checkpoint's ``train_args`` to the same rules (``pipeline.model.train``).

Examples:
    >>> from pipeline.model.recipe import load_recipe
    >>> load_recipe("configs/cardd.yaml")["model"]
    'yolov8n.yaml'
"""

from __future__ import annotations

from pathlib import Path

from ultralytics.cfg import DEFAULT_CFG_DICT, check_cfg, check_dict_alignment
from ultralytics.utils import LOGGER

from pipeline.core.facts import MAX_IMGSZ
from pipeline.core.io import InputError, one_line
from pipeline.core.yamlfile import read_yaml

#: Recipe keys that are this project's, not Ultralytics' train() arguments.
OWN_KEYS = ("model", "demo", "cpu_channels_last", "watch")  # watch: read by the train command (probe.watch)


#: Train arguments that name files, folders or other runs, refused in a recipe with what does it instead.
#: A recipe holds settings; the command says what a run reads and where it writes, and the trainer gets
#: only that: ``save_dir``/``project``/``name`` would send the run outside --out, ``cfg`` would make
#: Ultralytics read (or download) a YAML past the one reader, ``data``/``pretrained``/``exist_ok``/``resume``
#: were silently overridden. From ultralytics/cfg/default.yaml (8.4): every argument that takes a path.
RECIPE_REFUSED = {
    "save_dir": "--out says where the run writes",
    "project": "--out says where the run writes",
    "name": "--out says where the run writes",
    "exist_ok": "--overwrite trains over an earlier run",
    "data": "--data names the dataset",
    "resume": "--resume continues the run in --out",
    "pretrained": "--model names the weights to start from",
    "cfg": "write its keys into this recipe",
    "source": "train reads only the dataset",
    "tracker": "train reads only the dataset",
    "distill_model": "train reads only --model",
    "task": "this project trains detection models only",
    "mode": "the command is the mode",
}


def load_recipe(path: str | Path | None) -> dict:
    """Read a ``configs/*.yaml`` recipe: a flat mapping of Ultralytics train() arguments plus ``OWN_KEYS``.

    Checked whole before any model or dataset is built, so a bad key is one line and nothing is written.

    Raises:
        InputError: ``RECIPE: key: reason`` for a key in ``RECIPE_REFUSED``, a key Ultralytics does not
            know, or a value of the wrong type or range (Ultralytics' own ``check_dict_alignment`` and
            ``check_cfg`` decide; their exceptions become the reason).
    """
    if not path:
        return {}
    path = Path(path)
    recipe = read_yaml(path, "config file") or {}
    if not isinstance(recipe, dict):
        raise InputError(path, "config must be a mapping of train arguments")
    for key, value in recipe.items():
        reason = recipe_key_error(key, value)
        if reason:
            raise InputError(path, f"{key}: {reason}")
    return recipe


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: Ranges Ultralytics' ``check_cfg`` does not hold (it checks types and fractions): each value that would
#: fail later, or run something this project does not support, gets its reason here instead.
RECIPE_RANGES = {
    "imgsz": (lambda v: _is_int(v) and 32 <= v <= MAX_IMGSZ, f"an integer size in pixels from 32 to {MAX_IMGSZ}"),
    "batch": (lambda v: (_is_int(v) and (v >= 1 or v == -1)) or (isinstance(v, float) and 0 < v < 1),
              "an integer >= 1, -1 (auto), or a fraction of GPU memory in (0, 1)"),
    "workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
}


def recipe_key_error(key, value) -> str | None:
    """Why one recipe key cannot go to the trainer, or None."""
    if key in ("task", "mode"):
        return f"not a recipe's to choose: {RECIPE_REFUSED[key]}"
    if key in RECIPE_REFUSED:
        return f"a recipe holds settings, not files, folders or runs ({RECIPE_REFUSED[key]})"
    if key in ("watch", "cpu_channels_last"):
        return None if isinstance(value, bool) else f"must be true or false, not {value!r}"
    if key == "model" and not (isinstance(value, str) and value.strip()):
        return f"must name a model YAML or a weights file, not {str(value)[:40]!r} ({type(value).__name__})"
    if key == "model" and one_line(value) != value:  # the trainer's own log prints it raw: a forged line
        return f"{one_line(value)[:80]} holds a control, line-break or bidirectional character: choose a plainer name"
    if key in OWN_KEYS:
        return None  # model: read as --model is; demo: the demo's own dataset settings
    if not isinstance(key, str):
        return "not a train argument (keys are names)"
    disabled, LOGGER.disabled = LOGGER.disabled, True  # check_dict_alignment logs the whole `yolo` CLI help
    try:
        check_dict_alignment(DEFAULT_CFG_DICT, {key: value}, allowed_custom_keys=set())  # save_dir allowed else
        check_cfg({key: value})
    except (SyntaxError, TypeError, ValueError) as e:
        return " ".join(str(e).split())
    finally:
        LOGGER.disabled = disabled
    if key == "compile" and value not in (False, None):
        return (f"{value!r} is not supported: this project does not train compiled models (its probes and the film "
                "hook the modules that torch.compile replaces)")
    if key in RECIPE_RANGES and value is not None and not RECIPE_RANGES[key][0](value):
        return f"must be {RECIPE_RANGES[key][1]}, not {value!r}"
    return None
