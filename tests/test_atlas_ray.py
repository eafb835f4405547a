"""``atlas --ray``: the atlas merged from Ray workers equals the one a single process writes.

Top-k entries (values, photos, positions, receptive fields), histograms and everything read off them (thresholds,
IoU, activity) must be equal exactly; the float64 class sums to their rounding. A broken photo in the middle of
the set checks that photos are numbered as one process numbers them.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from checkpoints import save_checkpoint

from pipeline.atlas.build import build_atlas
from pipeline.model.load import load_model
from pipeline.scale.atlas import ray_parts

ray = pytest.importorskip("ray")
LAYERS = ["model.0", "model.8.cv2"]


@pytest.mark.slow
def test_ray_atlas_equals_the_local_one(sample_dir, sample_images, tmp_path):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    for p in sample_images[:5]:
        shutil.copy(p, ds / "images" / p.name)
        shutil.copy(sample_dir / "labels" / f"{p.stem}.txt", ds / "labels" / f"{p.stem}.txt")
    broken = ds / "images" / f"{sample_images[2].stem}_broken.jpg"  # sorts between real photos
    broken.write_bytes(sample_images[2].read_bytes()[:300])
    yolo = load_model(str(save_checkpoint(tmp_path / "w.pt", seed=4, imgsz=128)))
    local = build_atlas(yolo, [str(ds / "images")], tmp_path / "local", imgsz=128, k=3, layers=LAYERS, progress=False)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        remote = build_atlas(yolo, [str(ds / "images")], tmp_path / "ray", imgsz=128, k=3, layers=LAYERS,
                             progress=False, parts=ray_parts(workers=2))
    finally:
        ray.shutdown()
    assert [str(e) for e in local["errors"]] == [str(e) for e in remote["errors"]] and len(local["errors"]) == 1
    a, b = (json.loads(r["json"].read_text()) for r in (local, remote))
    for key in ("photos", "photo_shapes", "input_shapes", "labelled", "selectivity"):
        assert a[key] == b[key], key
    for layer in LAYERS:
        la, lb = a["layers"][layer], b["layers"][layer]
        assert {k: v for k, v in la.items() if k not in ("channels", "mean_best_iou")} == \
               {k: v for k, v in lb.items() if k not in ("channels", "mean_best_iou")}
        assert la["mean_best_iou"] == pytest.approx(lb["mean_best_iou"], rel=1e-12)
        for ca, cb in zip(la["channels"], lb["channels"]):
            for key in ("top", "threshold", "active_fraction", "activity", "best_class", "filter", "crops"):
                assert ca[key] == cb[key], (layer, ca["channel"], key)
            assert ca["best_iou"] == pytest.approx(cb["best_iou"], rel=1e-12)
            assert ca["mean"] == pytest.approx(cb["mean"], rel=1e-12)
            assert ca["outside_mean"] == pytest.approx(cb["outside_mean"], rel=1e-12)
            for name, v in ca["classes"].items():
                assert v["iou"] == cb["classes"][name]["iou"]
                other = cb["classes"][name]["inside_mean"]
                assert (v["inside_mean"] is None and other is None) or v["inside_mean"] == pytest.approx(other, rel=1e-12)
    for layer in LAYERS:  # the crops show the same neurons: the same strips, byte for byte
        for ch in a["layers"][layer]["channels"][:8]:
            assert (tmp_path / "local" / ch["crops"]).read_bytes() == (tmp_path / "ray" / ch["crops"]).read_bytes()
