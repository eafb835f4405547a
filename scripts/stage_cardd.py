"""Stage a CarDD folder for training: a ``data.yaml`` over ``train/`` and ``valid/`` only, never ``test/``.

The full set (the Roboflow re-upload, cloned and extracted as datasets/README.md says) has
``SRC/{train,valid,test}/{images,labels}``; the 100-photo sample has a flat ``SRC/{images,labels}``.
Staging links, it never copies: every image and label gets its own symbolic link under ``DST/train`` and
``DST/val``, so the photos stay where they are and Ultralytics writes its ``labels.cache`` inside DST, not
beside the (possibly shared, read-only) source. (Linking whole folders would not do: Ultralytics resolves
the split folder's path, and the cache would land in the source again.)
``DST/data.yaml`` names train and val and nothing else: ``test/`` is kept back for acceptance checks.

Run:
    .venv/bin/python scripts/stage_cardd.py datasets/cardd-roboflow-check --out datasets/cardd-staged
    .venv/bin/python scripts/stage_cardd.py ../shared/data/cardd-sample --out /tmp/tiny --train 16 --val 8

Examples:
    >>> from stage_cardd import stage_dataset
    >>> yaml_path = stage_dataset("../shared/data/cardd-sample", "/tmp/tiny", n_train=16, n_val=8)
    >>> yaml_path.name
    'data.yaml'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a plain checkout without installing the package
    sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402,F401  (offline Ultralytics environment first)
from pipeline.core.facts import CLASS_NAMES  # noqa: E402
from pipeline.core.io import IMAGE_SUFFIXES, InputError, atomic_write_text  # noqa: E402

#: Where each split we train on lives in a Roboflow export; ``test`` is deliberately absent.
ROBOFLOW_SPLITS = {"train": "train", "val": "valid"}


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _link(target: Path, link: Path) -> None:
    """Point ``link`` at ``target`` (absolute); never overwrite a real file (``--out`` must not be the source)."""
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise InputError(link, "is a real file, not a staging link: --out must be a separate folder")
    link.symlink_to(target.resolve())


def _link_files(images: list[Path], labels_dir: Path, dst_split: Path) -> int:
    """Link each image and its label file (when present) into ``dst_split/{images,labels}``."""
    for sub in ("images", "labels"):
        d = dst_split / sub
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():  # staging again replaces the earlier links (a smaller subset leaves none behind)
            if old.is_symlink():
                old.unlink()
    for im in images:
        _link(im, dst_split / "images" / im.name)
        label = labels_dir / f"{im.stem}.txt"
        if label.is_file():
            _link(label, dst_split / "labels" / label.name)
    return len(images)


def stage_dataset(
    src: str | Path,
    dst: str | Path,
    n_train: int | None = None,
    n_val: int | None = None,
    names: list[str] | tuple[str, ...] = CLASS_NAMES,
) -> Path:
    """Link a CarDD folder's train/valid splits into ``dst`` and write ``dst/data.yaml``; return its path.

    Args:
        src: a Roboflow export (``train/``, ``valid/`` with ``images/`` and ``labels/``) or a flat
            ``images/`` + ``labels/`` folder such as the sample.
        dst: staging folder (created); gets ``train/``, ``val/``, ``data.yaml`` and later Ultralytics' caches.
        n_train: take only the first ``n_train`` train images (sorted by name); all when None.
        n_val: take only the first ``n_val`` val images. For a flat folder, which has no splits, val is the
            ``n_val`` images after the train ones (disjoint), or the same images when both are None.
        names: class names in id order (CarDD's six by default).

    Raises:
        InputError: ``src`` has neither layout, a split has no images, or ``dst`` is ``src``.

    Examples:
        >>> stage_dataset("datasets/cardd-roboflow-check", "datasets/cardd-staged")
        PosixPath('datasets/cardd-staged/data.yaml')
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise InputError(dst, "is the source folder itself; stage into a separate --out")
    dst.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    if all((src / s / "images").is_dir() for s in ROBOFLOW_SPLITS.values()):
        for split, folder in ROBOFLOW_SPLITS.items():
            images = _images(src / folder / "images")
            if not images:
                raise InputError(src / folder / "images", "holds no images")
            limit = n_train if split == "train" else n_val
            counts[split] = _link_files(images[:limit], src / folder / "labels", dst / split)
    elif (src / "images").is_dir():
        images = _images(src / "images")
        if not images:
            raise InputError(src / "images", "holds no images")
        if n_train is None and n_val is None:
            picks = {"train": images, "val": images}  # the sample's own convention: one folder for both
        else:
            k = n_train if n_train is not None else len(images) - (n_val or 0)
            picks = {"train": images[:k], "val": images[k : k + n_val] if n_val else images[k:]}
        for split, chosen in picks.items():
            if not chosen:
                raise InputError(src / "images", f"too few images for a {split} subset")
            counts[split] = _link_files(chosen, src / "labels", dst / split)
    else:
        raise InputError(src, "expected train/ and valid/ (Roboflow export) or images/ and labels/")

    text = "\n".join(
        [
            f"# Staged from {src.resolve()} by scripts/stage_cardd.py: train and val only, never test.",
            f"# images: train {counts['train']}, val {counts['val']}",
            f"path: {dst.resolve()}",
            "train: train/images",
            "val: val/images",
            f"nc: {len(names)}",
            f"names: {json.dumps(list(names))}",
            "",
        ]
    )
    return atomic_write_text(dst / "data.yaml", text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="CarDD folder: Roboflow export (train/ valid/) or flat images/ labels/")
    p.add_argument("--out", required=True, help="staging folder; gets data.yaml")
    p.add_argument("--train", type=int, default=None, help="first N train images only")
    p.add_argument("--val", type=int, default=None, help="first N val images only")
    args = p.parse_args(argv)
    try:
        path = stage_dataset(args.src, args.out, args.train, args.val)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
