"""Duplicate images across dataset splits: exact (same bytes) and near (perceptual hash within a few bits).

The same photo in train and val is leakage: the model is graded on a picture it trained on. Two kinds
are found, only *across* splits by default (a duplicate inside one split is not leakage):

- ``exact``: the files have the same SHA-1 of their bytes;
- ``near``:  the 64-bit perceptual hashes (DCT of a 32x32 grey thumbnail, ``imagehash.phash``) differ in
  at most ``near_threshold`` bits. The same pixels saved in another format or JPEG quality, a slight
  resize or a re-upload all land here, usually at distance 0-2. Pairs at 3 or more bits must also agree
  in colour layout (``thumb_distance`` <= ``THUMB_MAX``): the grey hash alone confuses pictures with the
  same composition, e.g. three pairs of different synthetic cars at distance 4 among 800 x 100 pairs,
  while a real CarDD leak (same scene, camera moved a little, distance 4) has thumbnail distance 0.26
  against 0.53-0.76 for those cars and 0.9-1.3 for unrelated photos.

The same file listed by two splits (both point at one folder) is not a "duplicate", it is an overlap of
the split lists: ``split_overlaps`` reports it once per pair of splits instead of once per image.

Distances are computed as a popcount of XORed 64-bit hashes with numpy, one block of rows at a time,
so 4,000 images (16 M pairs) take well under a second after hashing.

Examples:
    >>> from pipeline.data.labels import dataset_splits
    >>> from pipeline.data.duplicates import find_duplicates, split_overlaps
    >>> splits = dataset_splits("datasets/cardd/data.yaml")
    >>> for d in find_duplicates(splits):
    ...     print(d["kind"], d["distance"], d["path_a"], d["path_b"])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.files import real_path
from pipeline.core.io import InputError, file_digest, read_image
from pipeline.core.runtime import progress_bar

_BLOCK = 1024  # rows of the distance matrix computed at once (1024 x 4000 x 8 bytes = 33 MB)


def sha1_of_file(path: str | Path) -> str | None:
    """SHA-1 hex digest of a file's bytes (the exact-duplicate key); None for a file that cannot be read
    (reported by whoever decodes it; a scan goes on past it)."""
    try:
        return file_digest(path, "sha1")
    except (OSError, InputError):  # InputError: not a regular file (a FIFO), which read_image names
        return None


#: Rows that ``pil_grey`` converts at a time: 256 rows of an 8000-pixel-wide photo are 6 MB as RGB.
STRIP_ROWS = 256


def pil_grey(image_bgr: np.ndarray) -> np.ndarray:
    """``Image.fromarray(rgb).convert("L")`` of a BGR photo, as an HxW uint8 array, a strip of rows at a time.

    PIL's RGB -> L (ITU-R 601-2 luma with its own rounding) is computed pixel by pixel, so strips give
    exactly the whole-photo result, without its full-size RGB and 4-byte-per-pixel PIL copies (430 MB
    for an 8000x8000 photo).
    """
    import cv2
    from PIL import Image

    grey = np.empty(image_bgr.shape[:2], np.uint8)
    for r in range(0, image_bgr.shape[0], STRIP_ROWS):
        rgb = cv2.cvtColor(image_bgr[r : r + STRIP_ROWS], cv2.COLOR_BGR2RGB)  # [..., ::-1] without a strided copy
        grey[r : r + STRIP_ROWS] = np.asarray(Image.fromarray(rgb).convert("L"))
    return grey


def phash_of(image_bgr: np.ndarray) -> int:
    """64-bit perceptual hash of a decoded BGR image, as an int (bit i = imagehash's bit i, row-major).

    ``imagehash.phash`` of the RGB photo starts with ``convert("L")``; we hand it that grey image
    (``pil_grey``), so the hash is the same, bit for bit.

    Examples:
        >>> a = phash_of(read_image("a.jpg")); b = phash_of(read_image("a.png"))
        >>> hamming(a, b)  # same pixels, other encoding
        0
    """
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(pil_grey(image_bgr))).hash.reshape(-1)
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


#: Hash distances up to this are near duplicates without a second look.
NEAR_SURE = 2
#: Above NEAR_SURE, the largest ``thumb_distance`` that still counts as a near duplicate.
THUMB_MAX = 0.4


def thumb_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |difference| of two 16x16 colour thumbnails, each channel standardised to mean 0, std 1.

    Standardising per channel forgives brightness, contrast and colour-cast edits; what is left is where
    the colours sit. Same photo re-encoded: ~0.01; same scene re-shot: ~0.3; unrelated photos: ~1.
    """

    def thumb(image):
        t = thumb16(image).astype(np.float32)
        return (t - t.mean((0, 1))) / (t.std((0, 1)) + 1e-6)

    return float(np.abs(thumb(a) - thumb(b)).mean())


def thumb16(image: np.ndarray) -> np.ndarray:
    """The 16x16 thumbnail ``thumb_distance`` compares (area average). A 16x16 image is its own thumbnail,
    so ``thumb_distance`` gives the same number on thumbnails as on the photos they came from."""
    import cv2

    return cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes."""
    return (a ^ b).bit_count()


def fingerprint(path: str | Path) -> tuple[str, int | None]:
    """(SHA-1 of the bytes, perceptual hash or None when the image cannot be decoded)."""
    digest = sha1_of_file(path)
    try:
        return digest, phash_of(read_image(path))
    except InputError:
        return digest, None


def split_overlaps(images_by_split: dict[str, list[Path]]) -> list[dict]:
    """Files that two splits both list (same file on disk), one entry per pair of splits.

    Returns:
        list of {split_a, split_b, shared, same_list, files}: ``shared`` files are in both; ``same_list``
        is True when the two splits list exactly the same files (e.g. ``train: images`` and ``val: images``);
        ``files`` holds up to 20 of them.

    Examples:
        >>> split_overlaps({"train": [Path("images/a.jpg")], "val": [Path("images/a.jpg")]})[0]["same_list"]
        True
    """
    resolved = {s: {real_path(p) for p in ps} for s, ps in images_by_split.items()}
    names = list(images_by_split)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(resolved[a] & resolved[b])
            if shared:
                out.append(
                    {
                        "split_a": a,
                        "split_b": b,
                        "shared": len(shared),
                        "same_list": resolved[a] == resolved[b],
                        "files": [str(p) for p in shared[:20]],
                    }
                )
    return out


def _pairs_within_distance(ha: np.ndarray, hb: np.ndarray, threshold: int, upper_only: bool) -> np.ndarray:
    """Index pairs (i, j) with popcount(ha[i] ^ hb[j]) <= threshold, plus the distances; blockwise."""
    found = []
    for start in range(0, len(ha), _BLOCK):
        block = ha[start : start + _BLOCK, None] ^ hb[None, :]
        dist = np.bitwise_count(block)
        i, j = np.nonzero(dist <= threshold)
        i = i + start
        if upper_only:  # same list on both sides: keep i < j only
            keep = i < j
            i, j = i[keep], j[keep]
        found.append(np.stack([i, j, dist[i - start, j]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)


def find_duplicates(
    images_by_split: dict[str, list[Path]],
    near_threshold: int = 4,
    *,
    within_split: bool = False,
    hashes: dict[Path, tuple[str, int | None]] | None = None,
    progress: bool = False,
    confirm: bool = True,
) -> list[dict]:
    """Exact and near-duplicate image pairs across splits.

    Args:
        images_by_split: split name -> image paths (as from ``pipeline.data.dataset_splits``).
        near_threshold: largest Hamming distance between 64-bit perceptual hashes that counts as "near".
        within_split: also report pairs inside one split (not leakage, but useful for cleaning).
        hashes: optional precomputed ``path -> (sha1, phash)`` (``fingerprint``), e.g. from ``check``,
            which already decoded every image; missing paths are hashed here.
        progress: show a progress bar while hashing.
        confirm: check hash distances above ``NEAR_SURE`` with ``thumb_distance`` (decodes those pairs).

    Returns:
        list of {kind: 'exact'|'near', split_a, path_a, split_b, path_b, distance}, exact pairs first.
        ``split_a`` comes before ``split_b`` in the dict's order. The same file listed twice is skipped
        (see ``split_overlaps``); a pair that is exact is not reported again as near.

    Examples:
        >>> dups = find_duplicates({"train": train_paths, "val": val_paths}, near_threshold=4)
        >>> [d for d in dups if d["kind"] == "exact"][:1]
        [{'kind': 'exact', 'split_a': 'train', 'path_a': '...', 'split_b': 'val', 'path_b': '...', 'distance': 0}]
    """
    names = list(images_by_split)
    paths = {s: [Path(p) for p in images_by_split[s]] for s in names}
    hashes = dict(hashes or {})
    todo = sorted({p for ps in paths.values() for p in ps} - hashes.keys())
    for p in progress_bar(todo, desc="hashing images", disable=not progress):
        hashes[p] = fingerprint(p)
    split_pairs = [(a, b) for k, a in enumerate(names) for b in names[k + (0 if within_split else 1) :]]
    pairing = _Pairing(paths, hashes)
    return pairing.exact(split_pairs) + pairing.near(split_pairs, near_threshold, confirm)


class _Pairing:
    """The images of every split with their fingerprints, paired exactly (digest) or nearly (perceptual hash)."""

    def __init__(self, paths: dict[str, list[Path]], hashes: dict[Path, tuple[str, int | None]]):
        self.paths, self.hashes = paths, hashes
        self.sha = {s: [hashes[p][0] for p in ps] for s, ps in paths.items()}
        self.real: dict[Path, Path] = {}  # resolved only for candidate pairs: resolve() is a syscall per path
        self.thumbs: dict[Path, np.ndarray] = {}  # 16x16 thumbnails, not photos: a photo may be in many pairs

    def same_file(self, a: str, i: int, b: str, j: int) -> bool:
        for p in (self.paths[a][i], self.paths[b][j]):
            if p not in self.real:
                self.real[p] = real_path(p)
        return self.real[self.paths[a][i]] == self.real[self.paths[b][j]]

    def same_colours(self, pa: Path, pb: Path) -> bool:
        for p in (pa, pb):
            if p not in self.thumbs:
                self.thumbs[p] = thumb16(read_image(p))
        return thumb_distance(self.thumbs[pa], self.thumbs[pb]) <= THUMB_MAX

    def pair(self, kind: str, a: str, i: int, b: str, j: int, d) -> dict:
        return {"kind": kind, "split_a": a, "path_a": str(self.paths[a][i]),
                "split_b": b, "path_b": str(self.paths[b][j]), "distance": int(d)}

    def exact(self, split_pairs) -> list[dict]:
        """Group by digest, then pair members of different splits (or of the same, when asked)."""
        by_digest: dict[str, dict[str, list[int]]] = {}
        for s, digests in self.sha.items():
            for i, d in enumerate(digests):
                if d is not None:  # unreadable files are no duplicates of each other
                    by_digest.setdefault(d, {}).setdefault(s, []).append(i)
        out = []
        for a, b in split_pairs:
            for members in by_digest.values():
                if a not in members or b not in members:
                    continue
                for i in members[a]:
                    for j in members[b]:
                        if not ((a == b and j <= i) or self.same_file(a, i, b, j)):
                            out.append(self.pair("exact", a, i, b, j, 0))
        return out

    def near(self, split_pairs, near_threshold: int, confirm: bool) -> list[dict]:
        """Popcount of XORed perceptual hashes, skipping undecodable images and exact pairs."""
        paths, hashes, out = self.paths, self.hashes, []
        for a, b in split_pairs:
            ia = [i for i, p in enumerate(paths[a]) if hashes[p][1] is not None]
            ib = [j for j, p in enumerate(paths[b]) if hashes[p][1] is not None]
            if not ia or not ib:
                continue
            ha = np.array([hashes[paths[a][i]][1] for i in ia], dtype=np.uint64)
            hb = np.array([hashes[paths[b][j]][1] for j in ib], dtype=np.uint64)
            for ki, kj, d in _pairs_within_distance(ha, hb, near_threshold, upper_only=a == b):
                i, j = ia[ki], ib[kj]
                if self.sha[a][i] == self.sha[b][j] or self.same_file(a, i, b, j):
                    continue
                if confirm and d > NEAR_SURE and not self.same_colours(paths[a][i], paths[b][j]):
                    continue
                out.append(self.pair("near", a, i, b, j, d))
        return out
