"""Dataset-level outliers: statistics vs numpy, planted black/white photos flagged, ordinary ones not,
planted cross-split exact and near duplicates found, bad inputs reported one line each.

The dataset is built in tmp_path from copies of real sample photos (never inside the repo).
"""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

import pipeline  # noqa: F401  (offline env before ultralytics)
from pipeline.cli import main
from pipeline.core.io import read_image
from pipeline.data.outliers import STATISTICS, black_border_fraction, image_stats, thumbnail, zscores


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def planted(tmp_path_factory, sample_images):
    """train: 12 real photos + an all-black and an all-white one; val: 4 real photos, an exact copy of a
    train photo and a near duplicate of another (downscaled, upscaled, re-encoded at JPEG quality 70)."""
    root = tmp_path_factory.mktemp("planted")
    train, val = root / "train" / "images", root / "val" / "images"
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    ordinary = []
    for p in sample_images[:12]:
        ordinary.append(_copy(p, train / p.name))
    for p in sample_images[12:16]:
        ordinary.append(_copy(p, val / p.name))
    black = train / "planted_black.jpg"
    white = train / "planted_white.jpg"
    cv2.imwrite(str(black), np.zeros((640, 640, 3), np.uint8))
    cv2.imwrite(str(white), np.full((640, 640, 3), 255, np.uint8))
    exact = _copy(sample_images[0], val / "copy_of_train_photo.jpg")
    src = read_image(sample_images[1])
    small = cv2.resize(src, (400, 400), interpolation=cv2.INTER_AREA)
    near = val / "reencoded_train_photo.jpg"
    cv2.imwrite(str(near), cv2.resize(small, (640, 640)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    (root / "data.yaml").write_text(
        "train: train/images\nval: val/images\nnc: 6\n"
        "names: ['crack', 'dent', 'glass shatter', 'lamp broken', 'scratch', 'tire flat']\n"
    )
    out = root / "out"
    rc = main(["outliers", str(root / "data.yaml"), "--out", str(out)])
    return {"root": root, "out": out, "rc": rc, "black": black, "white": white, "ordinary": ordinary,
            "exact": exact, "near": near, "train0": train / sample_images[0].name, "train1": train / sample_images[1].name}


def _copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


def test_planted_black_and_white_photos_are_flagged_and_ordinary_ones_are_not(planted):
    assert planted["rc"] == 0
    flags = _rows(planted["out"] / "outliers.csv")
    assert list(flags[0])[:4] == ["path", "statistic", "value", "z"]
    by_path = {}
    for f in flags:
        by_path.setdefault(f["path"], {})[f["statistic"]] = float(f["z"])
    assert by_path[str(planted["black"])]["brightness"] < -3
    assert by_path[str(planted["white"])]["brightness"] > 3
    assert by_path[str(planted["black"])]["black_border"] > 3  # all rows dark: the whole frame is "border"
    assert not set(map(str, planted["ordinary"] + [planted["exact"], planted["near"]])) & set(by_path)
    reason = next(f["reason"] for f in flags if f["path"] == str(planted["black"]) and f["statistic"] == "brightness")
    assert reason.startswith("brightness 0 is") and "below the median" in reason


def test_planted_cross_split_duplicates_are_found(planted):
    dups = _rows(planted["out"] / "duplicates.csv")
    pairs = {(d["kind"], d["path_a"], d["path_b"]) for d in dups}
    assert ("exact", str(planted["train0"]), str(planted["exact"])) in pairs
    near = [d for d in dups if d["kind"] == "near" and d["path_b"] == str(planted["near"])]
    assert len(near) == 1 and near[0]["path_a"] == str(planted["train1"]) and int(near[0]["distance"]) <= 4
    assert all(d["split_a"] == "train" and d["split_b"] == "val" for d in dups)
    # the exact copy is also a near pair at distance 0 but is reported once, as exact
    assert not [d for d in dups if d["kind"] == "near" and d["path_b"] == str(planted["exact"])]


def test_z_scores_in_the_table_match_numpy(planted):
    rows = _rows(planted["out"] / "image_stats.csv")
    assert len(rows) == 20
    flags = _rows(planted["out"] / "outliers.csv")
    for stat in ("brightness", "saturation"):
        v = np.array([float(r[stat]) for r in rows])
        med = np.median(v)
        z = (v - med) / (1.4826 * np.median(np.abs(v - med)))
        expected = {r["path"]: zi for r, zi in zip(rows, z) if abs(zi) > 3}
        got = {f["path"]: float(f["z"]) for f in flags if f["statistic"] == stat}
        assert set(got) == set(expected)
        for p, zi in got.items():
            assert zi == pytest.approx(expected[p], rel=1e-5)


def test_outputs_and_plots_exist(planted):
    for name in ("image_stats.csv", "outliers.csv", "duplicates.csv", "summary.json"):
        assert (planted["out"] / name).stat().st_size > 0
    for png in ("dataset_stats.png", "flagged.png", "duplicates.png"):
        assert (planted["out"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_statistics_match_numpy(sample_images):
    image = read_image(sample_images[9])
    s = image_stats(image)
    small = thumbnail(image).astype(np.float64)
    assert small.shape == (256, 256, 3)
    b, g, r = small[..., 0], small[..., 1], small[..., 2]
    assert s["brightness"] == pytest.approx((0.299 * r + 0.587 * g + 0.114 * b).mean(), abs=0.5)
    mx, mn = small.max(2), small.min(2)
    sat = np.where(mx > 0, 255 * (mx - mn) / np.where(mx > 0, mx, 1), 0)
    assert s["saturation"] == pytest.approx(sat.mean(), abs=0.6)
    grey = cv2.cvtColor(thumbnail(image), cv2.COLOR_BGR2GRAY).astype(np.float64)
    assert s["contrast"] == pytest.approx(grey.std(), rel=1e-9)
    p = np.pad(grey, 1, mode="reflect")  # OpenCV's default border, reflect-101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * grey
    assert s["blur"] == pytest.approx(lap.var(), rel=1e-9)
    assert (s["megapixels"], s["aspect"], s["width"], s["height"]) == (0.4096, 1.0, 640, 640)


def test_black_border_fraction():
    grey = np.full((100, 200), 120, np.uint8)
    assert black_border_fraction(grey) == 0.0
    grey[:10] = 0  # 10 dark rows at the top
    grey[:, 190:] = 3  # 10 dark columns at the right
    assert black_border_fraction(grey) == pytest.approx(1 - 90 * 190 / (100 * 200))
    grey[50] = 0  # a dark row in the middle is not a border
    assert black_border_fraction(grey) == pytest.approx(1 - 90 * 190 / (100 * 200))


def test_plain_z_cannot_reach_3_on_ten_images_but_robust_z_can():
    values = np.array([100, 101, 99, 102, 98, 100, 101, 99, 100, 0.0])  # one black photo among ten
    plain, mean, std = zscores(values, robust=False)
    assert np.abs(plain).max() <= np.sqrt(len(values) - 1) == 3  # Samuelson: |z| <= sqrt(n-1) with population std
    assert (mean, std) == (values.mean(), values.std())
    robust, med, spread = zscores(values, robust=True)
    assert med == 100 and spread == pytest.approx(1.4826 * 1.0)
    assert robust[-1] < -3 and np.abs(robust[:-1]).max() < 3
    # over half equal (MAD 0): the mean absolute deviation takes over; all equal: every z is 0
    z, _, spread = zscores([640, 640, 640, 640, 1000])
    assert spread == pytest.approx(1.2533 * 72) and z[-1] > 3 and (z[:-1] == 0).all()
    assert (zscores([5, 5, 5])[0] == 0).all()
    assert set(STATISTICS) == {"brightness", "contrast", "saturation", "black_border", "blur", "megapixels", "aspect"}


def test_unreadable_image_is_reported_and_the_rest_processed(tmp_path, sample_images, capsys):
    train, val = tmp_path / "train" / "images", tmp_path / "val" / "images"
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    for p in sample_images[:3]:
        shutil.copyfile(p, train / p.name)
    shutil.copyfile(sample_images[3], val / sample_images[3].name)
    broken = train / "broken.jpg"
    broken.write_bytes(sample_images[4].read_bytes()[:2000])  # cut-off download
    (tmp_path / "data.yaml").write_text("train: train/images\nval: val/images\nnc: 1\nnames: ['dent']\n")
    out = tmp_path / "out"
    assert main(["outliers", str(tmp_path / "data.yaml"), "--out", str(out), "--no-plots"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(f"error: {broken}: corrupt image: image file is truncated")
    assert len(_rows(out / "image_stats.csv")) == 4


def test_missing_data_yaml_is_one_line(tmp_path, capsys):
    assert main(["outliers", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nope.yaml" in err[0]
