"""The model input equals Ultralytics' own, bit for bit; the scalings and pixel outliers match numpy.

The oracle for the tensor is Ultralytics itself: a forward pre-hook on the DetectionModel records what
``YOLO.predict`` really feeds the network, and ``predictor.preprocess`` is called on images read by
Ultralytics' own reader. Both must equal ``model_input`` with a max abs difference of exactly 0.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import pipeline  # noqa: F401  (offline env before ultralytics)
from pipeline.cli import main
from pipeline.data.preprocess import content_mask, load_bgr, model_input, tensor_to_bgr
from pipeline.lesson.input_scaling import dataset_channel_stats, pixel_outliers, scalings

IMGSZ = 256


@pytest.fixture(scope="module")
def yolo():
    """A from-scratch YOLOv8n whose forward inputs are recorded in ``yolo.seen``."""
    from pipeline.model.load import load_model

    model = load_model("yolov8n.yaml", nc=6)
    model.seen = []
    model.model.register_forward_pre_hook(lambda m, args: model.seen.append(args[0].detach().clone()))
    return model


def fed_to_model(yolo, source, imgsz, rect=True) -> torch.Tensor:
    """The tensor YOLO.predict actually passes to the network for one source."""
    yolo.seen.clear()
    yolo.predict(source, imgsz=imgsz, device="cpu", save=False, verbose=False, rect=rect)
    assert len(yolo.seen) == 1
    return yolo.seen[0]


def assert_identical(a: torch.Tensor, b: torch.Tensor):
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max().item() == 0.0


def test_sample_photos_equal_the_predictor_tensor(yolo, sample_images):
    from ultralytics.utils.patches import imread

    first = fed_to_model(yolo, str(sample_images[0]), IMGSZ)
    assert_identical(model_input(sample_images[0], IMGSZ)[0], first)
    # the predictor is now set up for IMGSZ: its own preprocess on its own reader's image, every sample photo
    for path in sample_images:
        x, meta = model_input(path, IMGSZ)
        assert_identical(x, yolo.predictor.preprocess([imread(str(path))]))
        assert meta["orig_shape"] == [640, 640] and meta["ratio"] == IMGSZ / 640
    assert len(sample_images) == 100


def _write(path, array):
    assert cv2.imwrite(str(path), array)
    return path


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    u8 = lambda *s: rng.integers(0, 256, s, dtype=np.uint8)  # noqa: E731
    return {
        "1x1": _write(d / "one.png", u8(1, 1, 3)),
        "37x1000": _write(d / "thin.png", u8(37, 1000, 3)),
        "1000x37 tall": _write(d / "tall.png", u8(1000, 37, 3)),
        "480x640 jpeg": _write(d / "photo43.jpg", u8(480, 640, 3)),
        "grayscale png": _write(d / "grey.png", u8(123, 77)),
        "rgba png": _write(d / "rgba.png", u8(50, 90, 4)),
        "16-bit png": _write(d / "deep.png", rng.integers(0, 65536, (61, 83, 3), dtype=np.uint16)),
        "16-bit grey png": _write(d / "deep_grey.png", rng.integers(0, 65536, (40, 300), dtype=np.uint16)),
    }


@pytest.mark.parametrize("rect", [True, False], ids=["stride-rect", "square"])
def test_odd_shapes_and_formats_equal_the_predictor_tensor(yolo, odd_images, rect):
    for name, path in odd_images.items():
        x, meta = model_input(path, IMGSZ, auto=rect)
        assert_identical(x, fed_to_model(yolo, str(path), IMGSZ, rect=rect))
        h, w = meta["input_shape"]
        if rect:
            assert h % 32 == 0 and w % 32 == 0 and max(h, w) == IMGSZ, name
        else:
            assert (h, w) == (IMGSZ, IMGSZ), name
        p = meta["pad"]
        assert [h - p["top"] - p["bottom"], w - p["left"] - p["right"]] == meta["resized_shape"], name
        # the padding is Ultralytics' grey 114 and nothing else is
        inside = content_mask(meta)
        assert (x[0][:, ~torch.from_numpy(inside)] == 114 / 255).all(), name


def test_four_by_three_photo_at_640_is_480x640(yolo, odd_images):
    x, meta = model_input(odd_images["480x640 jpeg"], 640)
    assert tuple(x.shape) == (1, 3, 480, 640) and meta["ratio"] == 1.0
    assert_identical(x, fed_to_model(yolo, str(odd_images["480x640 jpeg"]), 640))
    x_sq, meta_sq = model_input(odd_images["480x640 jpeg"], 640, auto=False)
    assert tuple(x_sq.shape) == (1, 3, 640, 640) and meta_sq["pad"] == {"top": 80, "bottom": 80, "left": 0, "right": 0}


def test_arrays_are_handled_like_the_predictor_handles_arrays(yolo):
    rng = np.random.default_rng(1)
    arrays = {
        "bgr": rng.integers(0, 256, (70, 130, 3), dtype=np.uint8),
        "grey 2-D": rng.integers(0, 256, (90, 40), dtype=np.uint8),
        "bgra": rng.integers(0, 256, (64, 64, 4), dtype=np.uint8),
        "uint16": rng.integers(0, 65536, (33, 65, 3), dtype=np.uint16),
    }
    for name, a in arrays.items():
        assert_identical(model_input(a, IMGSZ)[0], fed_to_model(yolo, a, IMGSZ))


def test_letterbox_round_trips_to_the_bytes_and_rgb_order(sample_images):
    image, _ = load_bgr(sample_images[3])
    x, meta = model_input(image, 640)  # ratio 1: no resampling, so the bytes must come back
    assert meta["ratio"] == 1.0
    assert np.array_equal(tensor_to_bgr(x), image)
    assert torch.equal(x[0, 0], torch.from_numpy(image[..., 2]).float() / 255)  # channel 0 is red


@pytest.fixture(scope="module")
def padded_photo(sample_images):
    """A real photo cropped to 4:3 portrait so the input carries letterbox padding."""
    image, _ = load_bgr(sample_images[7])
    return model_input(np.ascontiguousarray(image[:, 100:580]), 320, auto=False)


def test_scalings_match_numpy(padded_photo):
    x, meta = padded_photo
    assert meta["pad"]["left"] > 0
    s = scalings(x, bins=32)
    a = x[0].numpy().astype(np.float64).reshape(3, -1)  # numpy oracle
    mn, mx = a.min(1, keepdims=True), a.max(1, keepdims=True)
    mu, sd = a.mean(1, keepdims=True), a.std(1, keepdims=True)
    expected = {"divide255": a, "minmax": (a - mn) / (mx - mn), "zscore": (a - mu) / sd}
    for name, v in expected.items():
        got = s[name]
        for key, fn in [("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)]:
            np.testing.assert_allclose(got[key], fn(v, axis=1), rtol=0, atol=2e-7, err_msg=f"{name} {key}")
        edges = np.asarray(got["hist"]["edges"])
        for c in range(3):
            ref = np.histogram(v[c], bins=edges)[0]
            assert abs(ref - np.asarray(got["hist"]["counts"][c])).sum() <= 2, (name, c)  # float32 vs float64 at edges
            assert sum(got["hist"]["counts"][c]) == v.shape[1]
    share = (np.abs((a - mu) / sd) > 3).mean(1)
    for name in expected:  # affine per channel: the same pixels are outliers under every scaling
        np.testing.assert_allclose(s[name]["frac_abs_z_gt_3"], share, atol=0)
    np.testing.assert_allclose(s["minmax"]["min"], 0)  # two statements: `a() and b()` never ran b (a returns None)
    np.testing.assert_allclose(s["minmax"]["max"], 1)
    np.testing.assert_allclose(s["zscore"]["std"], 1, atol=1e-6)
    np.testing.assert_allclose(s["zscore"]["mean_used"], mu[:, 0])


def test_dataset_statistics_and_dataset_zscore(sample_images):
    paths = sample_images[:4]
    ds = dataset_channel_stats(paths, 128, auto=False)
    pixels = np.concatenate([model_input(p, 128, auto=False)[0][0].numpy().reshape(3, -1) for p in paths], axis=1)
    np.testing.assert_allclose(ds["mean"], pixels.astype(np.float64).mean(1), atol=1e-12)
    np.testing.assert_allclose(ds["std"], pixels.astype(np.float64).std(1), atol=1e-9)
    assert ds["images"] == 4 and ds["pixels"] == 4 * 128 * 128 and ds["errors"] == []
    x, _ = model_input(paths[0], 128, auto=False)
    s = scalings(x, ds["mean"], ds["std"])
    a = x[0].numpy().astype(np.float64).reshape(3, -1)
    z = (a - np.array(ds["mean"])[:, None]) / np.array(ds["std"])[:, None]
    np.testing.assert_allclose(s["zscore_dataset"]["mean"], z.mean(1), atol=1e-6)
    np.testing.assert_allclose(s["zscore_dataset"]["min"], z.min(1), atol=1e-6)


def test_constant_image_gives_zeros_not_nan():
    x, _ = model_input(np.zeros((64, 64, 3), np.uint8), 64)
    s = scalings(x)
    assert s["divide255"]["max"] == [0.0, 0.0, 0.0]
    assert s["minmax"]["max"] == [0.0, 0.0, 0.0] and s["zscore"]["std"] == [0.0, 0.0, 0.0]
    assert pixel_outliers(x)["count"] == 0


def test_pixel_outliers_match_numpy_on_a_real_photo(padded_photo):
    x, meta = padded_photo
    out = pixel_outliers(x, meta=meta)
    a = x[0].numpy().astype(np.float64)
    z = (a - a.mean(axis=(1, 2), keepdims=True)) / a.std(axis=(1, 2), keepdims=True)
    assert np.array_equal(out["mask"], (np.abs(z) > 3).any(0))
    assert np.array_equal(out["bright"], (z > 3).any(0)) and np.array_equal(out["dark"], (z < -3).any(0))
    assert out["count"] == int((np.abs(z) > 3).any(0).sum())
    assert out["per_channel_count"] == [int(v) for v in (np.abs(z) > 3).reshape(3, -1).sum(1)]
    assert out["fraction"] == out["count"] / (a.shape[1] * a.shape[2])
    assert out["in_padding"] == int((out["mask"] & ~content_mask(meta)).sum())


def test_planted_glare_is_found_where_it_was_planted():
    rng = np.random.default_rng(2)
    image = rng.normal(110, 12, (200, 300, 3)).clip(0, 255).astype(np.uint8)
    image[10:40, 200:260] = 255  # glare patch, 1800 of 60000 pixels: far above mean + 3 std
    image[150:160, 10:30] = 0  # a deep shadow
    x, meta = model_input(image, 300, stride=1, auto=False)  # ratio 1 on the width, no resampling
    assert meta["ratio"] == 1.0
    out = pixel_outliers(x, meta=meta)
    top = meta["pad"]["top"]
    assert out["bright"][top + 10 : top + 40, 200:260].all() and out["dark"][top + 150 : top + 160, 10:30].all()
    assert out["bbox"][0] <= 10 and out["bbox"][2] >= 259
    assert out["bright_count"] >= 1800 and out["dark_count"] >= 200
    assert out["in_padding"] == 0  # grey 114 padding sits near the mean, never an outlier here
    ys, xs = np.nonzero(out["mask"])  # where they sit: share per ninth of the input, recomputed
    grid = np.histogram2d(ys, xs, bins=3, range=[[0, 300], [0, 300]])[0] / out["count"]
    np.testing.assert_allclose(out["grid3x3"], grid, atol=1e-12)
    assert out["grid3x3"][0][2] * out["count"] >= 1800  # the glare sits in the top-right ninth


def test_preprocess_cli_writes_tensor_stats_and_plots(tmp_path, sample_images):
    from safetensors.torch import load_file

    out = tmp_path / "pp"
    assert main(["preprocess", str(sample_images[5]), "--out", str(out), "--imgsz", "200"]) == 0
    saved = load_file(str(out / "input.safetensors"))
    x, meta = model_input(sample_images[5], 200)
    assert list(saved) == ["input"] and tuple(saved["input"].shape) == (1, 3, 224, 224)
    assert_identical(saved["input"], x)
    stats = json.loads((out / "stats.json").read_text())
    for key in ("divide255", "minmax", "zscore"):
        assert all(len(stats[key][k]) == 3 for k in ("min", "max", "mean", "std"))
    np.testing.assert_allclose(stats["divide255"]["mean"], x[0].double().reshape(3, -1).mean(1).numpy(), rtol=0, atol=2e-7)
    assert set(stats["outliers"]) >= {"count", "fraction", "threshold"} and stats["outliers"]["threshold"] == 3.0
    assert stats["input"]["input_shape"] == [224, 224]
    for png in ("letterbox.png", "histograms.png", "outliers.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preprocess_cli_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    assert main(["preprocess", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}:")
    assert main(["preprocess", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 1
    assert "file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:
        main(["preprocess", str(bad), "--out", str(tmp_path / "o"), "--imgsz", "0"])
    assert e.value.code == 2
