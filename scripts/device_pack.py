"""Pack what a lent GPU needs for the CarDD rows into pieces that each fit one device call (<= 64 MiB).

A device call carries the working tree plus at most 64 MiB in all, and the machine stays warm only ~30 s
between calls, so everything is staged in a few back-to-back calls (docs/benchmarks.md, issue 6):

- ``dataset``: CarDD ``train/`` and ``valid/`` (never ``test/``), original JPEG bytes (re-encoding the
  Roboflow JPEGs makes them larger and would change the data the anchor was measured on), as
  self-contained ``.tar.gz`` parts of at most ``--max-mib`` each, image and label kept together, one
  folder per part with a ``sha256sum`` file. Any part can be unpacked alone, in any order, and re-sent.
- ``wheels``: the Python 3.12 wheels the device lacks (Ultralytics 8.4.190 and what it imports there)
  plus this project's own wheel, downloaded with the pip command of the device README.

Everything lands under ``build/devpack/`` and ``.whl/``, both git-ignored. The script prints the device
commands, one per call, with the ``carry`` list each needs.

Run:
    .venv/bin/python scripts/device_pack.py dataset datasets/cardd-roboflow-check
    .venv/bin/python scripts/device_pack.py wheels
    .venv/bin/python scripts/device_pack.py dataset datasets/cardd-roboflow-check --max-mib 8 --limit 40  # quick try

Examples:
    >>> from device_pack import pack_dataset
    >>> parts = pack_dataset("datasets/cardd-roboflow-check", "build/devpack")
    >>> [p.parent.name for p in parts]
    ['part1', 'part2', 'part3']
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
CALL_LIMIT_MIB = 64  # what one device call may carry, working tree included
SPLITS = ("train", "valid")  # test/ is kept back for acceptance checks: never packed
DEVICE_DATA = "/tmp/cardd"  # where parts unpack on the device (outside the tree the tool re-syncs)

#: Wheels the device image lacks, pinned to what this project is tested with (Python 3.12, x86-64).
WHEELS = (
    "ultralytics==8.4.190",
    "ultralytics-thop==2.2.3",
    "ultralytics-platform==0.1.99",
    "polars==2.1.0",
    "polars-runtime-32==2.1.0",
)
PIP_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64", "manylinux1_x86_64")


def _pairs(src: Path, limit: int | None = None) -> list[tuple[Path, Path | None]]:
    """(image, label or None) for every train/valid image, sorted; ``limit`` per split for quick tries."""
    from pipeline.core.io import IMAGE_SUFFIXES

    pairs = []
    for split in SPLITS:
        images = sorted(p for p in (src / split / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SystemExit(f"error: {src / split / 'images'}: no images (expected a Roboflow export)")
        for im in images[:limit]:
            label = src / split / "labels" / f"{im.stem}.txt"
            pairs.append((im, label if label.is_file() else None))
    return pairs


def _cost(pair: tuple[Path, Path | None]) -> int:
    """Upper estimate of a pair's bytes in a gzip'd tar: JPEG does not compress, labels shrink ~2.6x (CarDD:
    10.4 MB of polygon text -> 4.0 MB at gzip level 1), and the 512-byte tar headers to ~100 bytes each."""
    image, label = pair
    return image.stat().st_size + 256 + (label.stat().st_size // 2 + 256 if label else 0)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def pack_dataset(src: str | Path, out: str | Path, max_mib: float = 60, limit: int | None = None) -> list[Path]:
    """Write ``out/partK/cardd-KofN.tar.gz`` (+ ``.sha256``) and ``out/MANIFEST.json``; return the part paths.

    Args:
        src: the extracted Roboflow export (``train/``, ``valid/``; ``test/`` is ignored).
        out: output folder (git-ignored, e.g. ``build/devpack``); old parts in it are replaced.
        max_mib: cap per part file in MiB; leave room for the working tree under the 64 MiB per call.
        limit: only the first ``limit`` images of each split (a quick try of the mechanics).

    Raises:
        SystemExit: a part came out over ``max_mib`` (the estimate was off; lower ``max_mib``).
    """
    src, out = Path(src), Path(out)
    cap = int(max_mib * MIB)
    groups: list[list] = [[]]
    size = 0
    for pair in _pairs(src, limit):  # greedy, in name order: deterministic parts for the same input
        c = _cost(pair)
        if groups[-1] and size + c > cap:
            groups.append([])
            size = 0
        groups[-1].append(pair)
        size += c
    for old in out.glob("part*"):
        shutil.rmtree(old)
    out.mkdir(parents=True, exist_ok=True)
    n = len(groups)
    parts, manifest = [], {"source": str(src.resolve()), "splits": list(SPLITS), "max_mib": max_mib, "parts": []}
    for k, group in enumerate(groups, 1):
        path = out / f"part{k}" / f"cardd-{k}of{n}.tar.gz"
        path.parent.mkdir(parents=True)
        tmp = path.with_suffix(".tmp")
        # mtime 0 and sorted members: the same dataset packs to the same bytes (and checksums)
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for image, label in group:
                for f in (image, label) if label else (image,):
                    info = tarfile.TarInfo(str(f.relative_to(src)))  # a plain file even if f is a link
                    info.size, info.mode = f.stat().st_size, 0o644
                    with open(f, "rb") as fh:
                        tar.addfile(info, fh)
        os.replace(tmp, path)
        if path.stat().st_size > cap:
            raise SystemExit(f"error: {path}: {path.stat().st_size / MIB:.1f} MiB is over --max-mib {max_mib}; lower it")
        digest = _sha256(path)
        (path.parent / f"{path.name}.sha256").write_text(f"{digest}  {path.name}\n")
        counts = {s: sum(1 for im, _ in group if im.parent.parent.name == s) for s in SPLITS}
        manifest["parts"].append({"file": str(path.relative_to(out)), "bytes": path.stat().st_size,
                                  "sha256": digest, "images": counts})
        parts.append(path)
    manifest["images"] = {s: sum(p["images"][s] for p in manifest["parts"]) for s in SPLITS}
    text = json.dumps(manifest, indent=2) + "\n"
    tmp = out / ".MANIFEST.json.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "MANIFEST.json")
    return parts


def unpack_commands(parts: list[Path], dest: str = DEVICE_DATA) -> list[tuple[str, list[str]]]:
    """(device command, carry list) per part: verify the checksum, unpack under ``dest``, count images."""
    cmds = []
    for p in parts:
        rel = p.parent.relative_to(ROOT) if p.is_absolute() and ROOT in p.parents else p.parent
        cmd = (f"set -e; mkdir -p {dest}; cd {rel} && sha256sum -c {p.name}.sha256 && tar xzf {p.name} -C {dest}; "
               f"for s in {' '.join(SPLITS)}; do echo $s $(ls {dest}/$s/images 2>/dev/null | wc -l) images; done")
        cmds.append((cmd, [str(rel)]))
    return cmds


def tree_mib() -> float:
    """MiB of the working tree that travels with every call (tracked + untracked-not-ignored files)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file()) / MIB


def download_wheels(dest: str | Path = ROOT / ".whl") -> list[Path]:
    """pip-download the device's missing wheels for CPython 3.12 x86-64 and build this project's wheel."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PIP_PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *plat, "-d", str(dest), *WHEELS], check=True)
    for old in dest.glob("cardamage-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dest),
                    str(ROOT)], check=True, capture_output=True)
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dataset", help="pack train/ and valid/ into <= --max-mib parts")
    d.add_argument("src", help="extracted Roboflow export with train/ and valid/")
    d.add_argument("--out", default=str(ROOT / "build" / "devpack"), help="output folder (default build/devpack)")
    d.add_argument("--max-mib", type=float, default=60, help="cap per part in MiB (default 60)")
    d.add_argument("--limit", type=int, default=None, help="first N images per split only (quick try)")
    w = sub.add_parser("wheels", help="download the Python 3.12 wheels the device lacks into .whl/")
    w.add_argument("--out", default=str(ROOT / ".whl"))
    args = p.parse_args(argv)

    tree = tree_mib()
    if args.what == "wheels":
        wheels = download_wheels(args.out)
        total = sum(f.stat().st_size for f in wheels) / MIB
        for f in wheels:
            print(f"{f.stat().st_size / MIB:7.2f} MiB  {f.name}")
        print(f"wheels {total:.1f} MiB + working tree {tree:.1f} MiB = {total + tree:.1f} MiB (limit {CALL_LIMIT_MIB})")
        print('device: carry [".whl"], command starts with: python3 -m pip install -q --no-index --no-deps '
              "--no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site")
        return 0 if total + tree < CALL_LIMIT_MIB else 1

    parts = pack_dataset(args.src, args.out, args.max_mib, args.limit)
    manifest = json.loads((Path(args.out) / "MANIFEST.json").read_text())
    print(f"{len(parts)} parts, images {manifest['images']}, working tree {tree:.1f} MiB per call:")
    worst = 0.0
    for (cmd, carry), part in zip(unpack_commands(parts), parts):
        mib = part.stat().st_size / MIB
        worst = max(worst, mib)
        print(f"\n# {part.name}: {mib:.1f} MiB (+ tree = {mib + tree:.1f} MiB)\ncarry: {json.dumps(carry)}\ncommand: {cmd}")
    if worst + tree >= CALL_LIMIT_MIB:
        print(f"error: a part plus the working tree is over {CALL_LIMIT_MIB} MiB; lower --max-mib", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
