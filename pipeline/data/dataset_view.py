"""A training view of a YOLO dataset: links to the user's files, so training never writes into them.

Ultralytics' dataset scan rewrites, in place, every JPEG whose last two bytes are not the end marker
("corrupt JPEG restored and saved"), and it saves ``labels.cache`` beside the label folders. Both would
change the user's dataset. Training therefore reads a view under its own run folder::

    OUT/dataset/data.yaml              names and nc from the user's yaml, splits pointing here
    OUT/dataset/<split>/images/...     symbolic links to the user's images (same relative layout)
    OUT/dataset/<split>/labels/...     symbolic links to their label files

Ultralytics replaces an image it restores with ``os.replace``, which swaps the link, never its target,
and its caches land in the view. Every image is decoded first (``pipeline.core.io.validate_image``, the rule
all commands share), and its label file parsed as ``cardamage check`` parses it: an image Ultralytics would
drop (damaged photo, bad label line) is reported on its own line and left out of the view. Only the
``train`` and ``val`` splits are viewed: a ``test`` split is never opened, so it stays held out.

Examples:
    >>> view = stage_dataset("datasets/cardd/data.yaml", "runs/cardd/dataset")
    >>> view.data_yaml, len(view.errors)
    (PosixPath('runs/cardd/dataset/data.yaml'), 0)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import yaml

from pipeline.core.files import check_regular_file
from pipeline.core.io import (IMAGE_SUFFIXES, InputError, atomic_write_text, is_ours, one_line, validate_image,
                              warn_if_repaired)
from pipeline.core.yamlfile import read_yaml
from pipeline.data.labels import (check_names, dataset_splits, label_path, load_names, parse_label_text, read_label_text,
                                  too_many_boxes)


@dataclass
class DatasetView:
    """What ``stage_dataset`` made: the view's yaml, images linked per split, and the images left out."""

    data_yaml: Path
    images: dict[str, int] = field(default_factory=dict)
    errors: list[InputError] = field(default_factory=list)


def _common_root(files: list[Path]) -> Path:
    return Path(os.path.commonpath([str(f.parent) for f in files]))


ULTRALYTICS_COORD_TOL = 0.01  # its scan keeps coordinates up to 1.01 (and down to -0.01) and trains on them


def _check_label(label: Path, nc: int) -> None:
    """Raise ``InputError`` for a label file Ultralytics would drop its image for (first problem only)."""
    if not label.is_file():
        if label.is_symlink() or label.exists():  # a device, FIFO, folder or dangling link: trained as background
            what = ("a link to nothing" if not label.exists() else "a folder" if label.is_dir()
                    else "a device, FIFO or socket, not a regular file")
            raise InputError(label, f"is {what}: Ultralytics would read no labels from it and train the image as "
                                    "background")
        return
    try:
        text = read_label_text(label)  # a file over its size limit: InputError, unread
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(label, f"unreadable label file ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    boxes, errors, info = parse_label_text(text, nc, coord_tol=ULTRALYTICS_COORD_TOL)
    if too_many_boxes(boxes):
        raise InputError(label, too_many_boxes(boxes))
    if errors:
        line, _, reason = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InputError(f"{label}:{line}", f"{reason}{more}")
    if info["box_rows"] and info["polygon_rows"]:
        raise InputError(label, "mixes box rows and polygon rows")


#: The splits a training run reads. A ``test`` split is left out of the view, never opened or decoded:
#: it stays held out for an independent check after training.
TRAINING_SPLITS = ("train", "val")


def stage_dataset(data_yaml: str | Path, dest: str | Path, on_error=None, keep=TRAINING_SPLITS) -> DatasetView:
    """Build the view of ``data_yaml`` in ``dest`` (replacing an earlier view there) and return it.

    Args:
        data_yaml: the user's dataset YAML (resolved as Ultralytics resolves it; nothing is downloaded).
        dest: the view's folder, inside the run folder.
        on_error: called with each ``InputError`` (a damaged image) as it is found.
        keep: the splits the view holds (default train and val; the others are not read at all).

    Raises:
        InputError: the yaml is malformed, a split is missing, or a split has no usable image left.
    """
    dest = Path(dest)
    splits = dataset_splits(data_yaml)
    names = load_names(data_yaml)
    if os.path.lexists(dest):
        check_view_folder(dest)
        shutil.rmtree(dest)  # an earlier view of (maybe) another version of the dataset: links, its yaml, caches
    view = DatasetView(data_yaml=dest / "data.yaml")
    entries = {}
    for split, files in splits.items():
        if split not in keep:
            continue
        root = _common_root(files)
        kept = 0
        for image in files:
            label = label_path(image)
            try:
                if one_line(image) != str(image):  # the trainer's own log prints it raw (a duplicate label's warning)
                    raise InputError(image, "holds a control, line-break, bidirectional or zero-width character that "
                                            "the trainer's log would print raw (a forged line): left out; rename it")
                validate_image(image)
                warn_if_repaired(image)  # trained on, as predict reads it, with one warning naming it
                _check_label(label, len(names))
            except InputError as e:
                view.errors.append(e)
                if on_error:
                    on_error(e)
                continue
            staged = dest / split / "images" / image.relative_to(root)
            staged.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(image.resolve(), staged)
            if label.is_file():  # an image without a label file is a background image, as in the source
                staged_label = label_path(staged)
                staged_label.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(label.resolve(), staged_label)
            kept += 1
        if not kept:
            raise InputError(data_yaml, f"'{split}' has no readable image left")
        view.images[split] = kept
        entries[split] = f"{split}/images"
    spec = {"path": str(dest.resolve()), **entries, "nc": len(names), "names": dict(enumerate(names))}
    atomic_write_text(view.data_yaml, f"# Training view of {Path(data_yaml).resolve()} (links; see pipeline/data/dataset_view.py)\n"
                      + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return view


def check_view_folder(dest: str | Path) -> None:
    """Refuse ``dest`` unless all it holds is a dataset view this project made, which training replaces whole.

    A view holds links (to the user's files: removing a link leaves its target), folders, its ``data.yaml``
    (in the run folder's list of what cardamage wrote) and the label caches Ultralytics' scan writes beside
    ``labels/`` or inside it. Any other file, or a ``dataset`` that is a file or a link, is the user's: one line,
    and nothing removed.

    Raises:
        InputError: the first thing in ``dest`` (in sorted order) that is not part of a view.
    """
    dest = Path(dest)
    if dest.is_symlink() or not dest.is_dir():
        raise InputError(dest, "is not a dataset view this project made (a file or a link where training puts its "
                               "view of the dataset): move it, or choose another --out")
    for parent, dirs, files in os.walk(dest):  # links to folders are listed, not entered
        dirs.sort()
        for name in sorted(files + [d for d in dirs if (Path(parent) / d).is_symlink()]):
            path = Path(parent) / name
            rel = path.relative_to(dest)
            if path.is_symlink() or (rel.suffix == ".cache" and len(rel.parts) >= 2 and path.is_file()):
                continue
            if rel == PurePath("data.yaml") and is_ours(path):
                continue
            raise InputError(path, "is not part of a dataset view this project made, and training replaces the run's "
                                   "dataset/ folder whole: move it, or choose another --out")


def own_view(dest: str | Path) -> Path:
    """The view in ``dest`` made to point at itself again; return its yaml.

    A view's yaml names its own folder as ``path:`` (absolute, as Ultralytics wants it). In a run folder that
    was copied or moved, that is still the *original* folder: training would read the original's links and
    save its ``labels.cache`` files there. The yaml is rewritten (atomically, it is the run's own file) to
    name ``dest``; the links themselves point at the user's files by absolute path and move unchanged.
    The run folder may have been edited by anyone, so the yaml is read as untrusted input and rewritten
    from what a view holds, and every link must still reach a regular file.

    Raises:
        InputError: ``dest`` holds no view yaml, or one that is not a view's mapping.
    """
    dest = Path(dest).resolve()
    view_yaml = dest / "data.yaml"
    spec = read_yaml(view_yaml, "the run's dataset view")  # no aliases, no deep nesting, a regular file
    if not isinstance(spec, dict) or "path" not in spec:
        raise InputError(view_yaml, "not a dataset view (no 'path:' mapping)")
    check_names(spec, view_yaml)
    splits = {}
    for split in TRAINING_SPLITS:  # the view's own form, as stage_dataset writes it, and nothing else
        if spec.get(split) != f"{split}/images":
            raise InputError(view_yaml, f"not a dataset view: '{split}' should be '{split}/images'")
        splits[split] = f"{split}/images"
    _check_link_targets(dest)
    # Rewritten from what a view holds, whatever else the file says: a key such as 'download' would be run
    # by Ultralytics' dataset check (a script, a shell line or a URL), and a resume runs no code it was given.
    names = spec["names"] if isinstance(spec["names"], dict) else dict(enumerate(spec["names"]))
    clean = {"path": str(dest), **splits, "nc": len(names), "names": {int(k): str(v) for k, v in names.items()}}
    atomic_write_text(view_yaml, "# Training view (links; see pipeline/data/dataset_view.py)\n"
                      + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True))
    return view_yaml


def drop_view_caches(dest: str | Path) -> None:
    """Remove the label caches Ultralytics' scan wrote in the view ``dest`` (``<split>/labels.cache``, or inside
    ``labels/`` for a nested layout); the next scan writes them again in seconds.

    Ultralytics reads a cache with ``np.load(allow_pickle=True)``: a file planted in a run folder's view (a copied
    or downloaded run) would run its code when training resumes. A view holds only links, its yaml and these
    caches (``check_view_folder``), so nothing else is removed.
    """
    for parent, _, files in os.walk(dest):
        for name in files:
            path = Path(parent) / name
            if path.suffix == ".cache" and not path.is_symlink():
                path.unlink()


def _check_link_targets(dest: Path) -> None:
    """Every image and label the view links to is still a regular file: a link re-pointed at a FIFO or a
    device would hang the trainer's first read (a view is made of regular files only, by stage_dataset)."""
    for split in TRAINING_SPLITS:
        for kind in ("images", "labels"):
            for parent, _, files in os.walk(dest / split / kind):
                for name in files:
                    check_regular_file(Path(parent) / name, "an image or label file of the run's dataset view")


def view_link(rel: PurePath) -> bool:
    """Whether a link at ``rel`` (relative to a view's folder) is one of the view's own links to the user's files.

    Those are ``<split>/images/**/<image>`` and ``<split>/labels/**/<name>.txt``, which training only reads
    (a restored JPEG replaces the link, not its target). Everything else in a view is written: ``data.yaml``
    (``own_view``), ``labels.cache`` beside ``labels/`` (or inside it, ``labels/<sub>.cache``, for a nested
    layout), and the folders they lie in, so a link there, or a link named like an image but pointing at a
    folder (``pipeline.core.io.refuse_links`` checks that), would send a write outside the run.

    Examples:
        >>> view_link(PurePath("train/images/a/car.jpg")), view_link(PurePath("train/labels.cache"))
        (True, False)
    """
    parts = rel.parts
    if len(parts) < 3:
        return False
    kind, suffix = parts[1], rel.suffix.lower()
    return (kind == "images" and suffix in IMAGE_SUFFIXES) or (kind == "labels" and suffix == ".txt")
