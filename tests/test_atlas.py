"""The channel atlas against oracles that share no code with it.

- stored top-k values and z: a fresh ``YOLO.predict`` with a plain forward hook at that block (Ultralytics only);
- the top-k itself: brute force over every photo's hooked map;
- the streaming tables (top-k, class sums, histogram, Dissection IoU at the chosen edge): numpy brute force;
- a planted channel (a checkpoint whose model.0 channel 0 copies the red input) ranks red patches first;
- bad input: an unreadable photo is one line and the atlas is still written; photos without labels give the
  atlas without selectivity and say so; memory: the tables do not grow with the number of photos.
"""

from __future__ import annotations

import copy
import math
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from checkpoints import save_checkpoint

from pipeline.atlas.build import build_atlas
from pipeline.atlas.crops import TILE, TILE_BUDGET
from pipeline.cli import main
from pipeline.model.load import load_model
from pipeline.probe.atlas_stats import BINS, ChannelAtlas, bin_edges
from pipeline.probe.receptive_field import receptive_field, to_photo

IMGSZ = 128
LAYERS = ["model.0", "model.2.cv1", "model.8.cv2"]
K = 3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("atlas_ckpt") / "best.pt", seed=3, imgsz=IMGSZ)


@pytest.fixture(scope="module")
def built(ckpt, sample_images, tmp_path_factory):
    """The atlas of 5 labelled CarDD photos at 128 px over three blocks."""
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    photos = sample_images[:5]
    res = build_atlas(load_model(str(ckpt)), [str(p) for p in photos], out, imgsz=IMGSZ, k=K, layers=LAYERS,
                      progress=False)
    return res, json.loads((out / "atlas.json").read_text()), photos, out


def hooked_maps(ckpt, photos, layers):
    """Each photo's SiLU output and z at each layer, from ``YOLO.predict`` with plain hooks (no project code)."""
    from ultralytics import YOLO

    yolo = YOLO(str(ckpt))
    yolo.predict(str(photos[0]), imgsz=IMGSZ, verbose=False)  # sets up the predictor's fused model
    net = yolo.predictor.model.model
    maps, handles = {}, []
    for layer in layers:
        block = net.get_submodule(layer)
        handles.append(block.conv.register_forward_hook(
            lambda m, i, o, layer=layer: maps.__setitem__((layer, "z"), o.detach().clone())))
        handles.append(block.register_forward_hook(
            lambda m, i, o, layer=layer: maps.__setitem__((layer, "a"), o.detach().clone())))
    out = []
    for p in photos:
        maps.clear()
        yolo.predict(str(p), imgsz=IMGSZ, verbose=False)
        out.append(dict(maps))
    for h in handles:
        h.remove()
    return out


def test_top_values_equal_a_plain_hook_and_brute_force(built, ckpt):
    res, doc, photos, _ = built
    truth = hooked_maps(ckpt, photos, LAYERS)
    for layer in LAYERS:
        for ch in doc["layers"][layer]["channels"][:12]:
            c = ch["channel"]
            for t in ch["top"]:
                m = truth[t["photo"]]
                assert abs(float(m[(layer, "a")][0, c, t["y"], t["x"]]) - t["value"]) <= 1e-5
                assert abs(float(m[(layer, "z")][0, c, t["y"], t["x"]]) - t["z"]) <= 1e-5
            # brute force: every photo's maximum of this channel, the k largest, highest first
            best = sorted(((float(m[(layer, "a")][0, c].max()), i) for i, m in enumerate(truth)), key=lambda v: -v[0])[:K]
            assert [t["photo"] for t in ch["top"]] == [i for _, i in best]
            np.testing.assert_allclose([t["value"] for t in ch["top"]], [v for v, _ in best], atol=1e-5)
            assert [t["value"] for t in ch["top"]] == sorted((t["value"] for t in ch["top"]), reverse=True)


def test_crop_box_is_the_receptive_field_on_the_photo(built, ckpt):
    res, doc, photos, out = built
    yolo = load_model(str(ckpt))
    for layer in LAYERS:
        for ch in doc["layers"][layer]["channels"][:4]:
            for t in ch["top"]:
                hw = tuple(doc["input_shapes"][t["photo"]])
                rf = receptive_field(yolo, layer, hw, t["y"], t["x"])
                assert t["box_xyxy"] == to_photo(rf, hw, cv2.imread(str(photos[t["photo"]])).shape)
            strip = cv2.imread(str(out / ch["crops"]))
            assert strip.shape == (TILE, TILE * len(ch["top"]), 3)
    tiles = sum(len(ch["top"]) for layer in doc["layers"].values() for ch in layer["channels"])
    assert res["bytes"]["crops"] / tiles < TILE_BUDGET  # the size budget docs/atlas.md states


@pytest.mark.parametrize("bins", [BINS, 64])
def test_the_bin_lookup_is_bucketize_at_every_edge_and_between(bins):
    """The 16-bit lookup that bins an activation (a third of bucketize's time) against torch.bucketize itself:
    every inner edge, the float32 on each side of it, zeros of both signs, SiLU's floor, huge values, and a
    million values spread over the whole range."""
    acc = ChannelAtlas(1, bins=bins)
    inner = bin_edges(bins)[1:-1].float()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([inner, torch.nextafter(inner, torch.tensor(-math.inf)), torch.nextafter(inner, torch.tensor(math.inf)),
                   torch.tensor([0.0, -0.0, -0.2785, -0.3, -1.0, 1e-30, -1e-30, 999.99, 1000.0, 5e4, 3e38, math.inf]),
                   torch.randn(500_000, generator=g) * 4, torch.sinh(torch.rand(500_000, generator=g) * 12) * 0.05]).contiguous()
    assert torch.equal(acc.bin_index(x), torch.bucketize(x, inner, right=True))


@pytest.mark.parametrize("path", ["compiled", "torch"])
def test_streaming_tables_equal_numpy_brute_force(path, monkeypatch):
    """Both ways of filling the tables, the C kernel's one read of the map and torch's ops, against numpy."""
    import pipeline.probe.atlas_stats as atlas_stats

    if path == "torch":
        monkeypatch.setattr(atlas_stats, "_channel_stats", None)
    elif atlas_stats._channel_stats is None:
        pytest.skip("the C kernel was not built (no compiler at install time)")
    g = torch.Generator().manual_seed(0)
    c, classes, k = 5, 3, 4
    acc = ChannelAtlas(c, classes, k=k, bins=64)
    maps, masks = [], []
    for i in range(7):
        z = torch.randn(1, c, 6, 5, generator=g) * 2
        a = torch.nn.functional.silu(z)
        m = torch.rand(classes, 6, 5, generator=g) > 0.7 if i != 3 else None  # photo 3 has no labels
        if i == 5:
            a[0, 2] = a[0, 2].max()  # a channel flat at its maximum: the first position is kept, as torch.max does
        acc.update(a.contiguous(memory_format=torch.channels_last) if i == 4 else a, z, i, m)
        maps.append(a[0].numpy().astype(np.float64))
        masks.append(None if m is None else m.numpy())
    all_a = np.stack(maps)  # N x C x H x W
    for ch in range(c):
        per_photo = all_a[:, ch].reshape(len(maps), -1).max(1)
        order = np.argsort(-per_photo, kind="stable")[:k]
        assert acc.top_photo[ch].tolist() == order.tolist()
        first = [np.unravel_index(np.argmax(all_a[i, ch]), all_a.shape[2:]) for i in order]  # numpy: the first max
        assert list(zip(acc.top_y[ch].tolist(), acc.top_x[ch].tolist())) == [(int(y), int(x)) for y, x in first]
        np.testing.assert_allclose(acc.top_value[ch].numpy(), per_photo[order], rtol=0, atol=1e-6)
    lab = [i for i, m in enumerate(masks) if m is not None]
    la = np.stack([maps[i] for i in lab])
    lm = np.stack([masks[i] for i in lab])  # L x classes x H x W
    inside = np.einsum("nchw,nkhw->ck", la, lm) / lm.sum((0, 2, 3))
    np.testing.assert_allclose(acc.inside_means().numpy(), inside, atol=1e-9)
    out = ~lm.any(1)
    np.testing.assert_allclose(acc.outside_mean().numpy(), (la * out[:, None]).sum((0, 2, 3)) / out.sum(), atol=1e-9)
    # Dissection IoU at the threshold edge the table chose, by brute force over labelled photos
    edges = bin_edges(64).numpy()
    thr = acc.thresholds(0.1).numpy()
    iou = acc.dissection_iou(0.1).numpy()
    for ch in range(c):
        assert (all_a[:, ch] >= thr[ch]).mean() <= 0.1  # at most the quantile share is "on"
        lower = edges[max(0, int(np.searchsorted(edges, thr[ch])) - 1)]
        assert (all_a[:, ch] >= lower).mean() > 0.1 or thr[ch] == edges[0]  # and it is the lowest such edge
        on = la[:, ch] >= thr[ch]
        for cls in range(classes):
            box = lm[:, cls]
            assert iou[ch, cls] == pytest.approx((on & box).sum() / max((on | box).sum(), 1), abs=1e-12)
    np.testing.assert_allclose(acc.active_fraction().numpy(), (all_a >= 0).mean((0, 2, 3)))
    # two halves merged equal one pass
    a1, a2 = ChannelAtlas(c, classes, k=k, bins=64), ChannelAtlas(c, classes, k=k, bins=64)
    g = torch.Generator().manual_seed(0)  # the same seven photos again, split 4 + 3
    for i in range(7):
        z = torch.randn(1, c, 6, 5, generator=g) * 2
        m = torch.rand(classes, 6, 5, generator=g) > 0.7 if i != 3 else None
        a = torch.nn.functional.silu(z)
        if i == 5:
            a[0, 2] = a[0, 2].max()
        (a1 if i < 4 else a2).update(a, z, i, m)
    a1.absorb(a2.state())
    for key in ("top_value", "top_photo", "hist", "hist_class", "class_sum", "outside_sum"):
        assert torch.equal(getattr(a1, key), getattr(acc, key)), key
    # each class's histogram, cell by cell (boxes of different classes overlap here): numpy's digitize
    inner = bin_edges(64)[1:-1].float().numpy()
    for cls in range(classes):
        for ch in range(c):
            vals = np.concatenate([maps[i][ch][masks[i][cls]] for i in lab]).astype(np.float32)
            want = np.bincount(np.digitize(vals, inner, right=False), minlength=64)
            assert acc.hist_class[ch, cls].tolist() == want.tolist(), (ch, cls)


def _planted_checkpoint(src: Path, dst: Path) -> Path:
    """``src`` with model.0 channel 0 made to copy the red input: z = R (centre tap 1, BN the identity)."""
    ckpt = torch.load(src, weights_only=False)
    net = copy.deepcopy(ckpt["ema"]).float()
    block = net.model[0]
    with torch.no_grad():
        block.conv.weight[0].zero_()
        block.conv.weight[0, 0, 1, 1] = 1.0  # input channel 0 is R (the model input is RGB)
        block.bn.weight[0], block.bn.bias[0] = 1.0, 0.0
        block.bn.running_mean[0], block.bn.running_var[0] = 0.0, 1.0 - block.bn.eps
    ckpt["ema"] = net.half()  # R in [0, 1] and weight 1 survive half precision exactly
    torch.save(ckpt, dst)
    return dst


@pytest.mark.slow
def test_planted_red_channel_ranks_red_patches_first(ckpt, tmp_path):
    planted = _planted_checkpoint(ckpt, tmp_path / "planted.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    patches = {}
    for i, colour in enumerate([(0, 0, 255), (0, 200, 0), (255, 0, 0), (0, 0, 255), (40, 40, 40), (0, 0, 255)]):
        img = np.full((128, 160, 3), 90, np.uint8)  # BGR grey; red = (0, 0, 255)
        x0, y0 = 20 + 15 * i, 30 + 5 * i
        img[y0:y0 + 24, x0:x0 + 24] = colour
        cv2.imwrite(str(photos / f"p{i}.png"), img)
        patches[i] = (x0, y0, x0 + 24, y0 + 24)
    res = build_atlas(load_model(str(planted)), [str(photos)], tmp_path / "atlas", imgsz=IMGSZ, k=3, layers=["model.0"],
                      progress=False)
    doc = json.loads(res["json"].read_text())
    top = doc["layers"]["model.0"]["channels"][0]["top"]
    names = [Path(doc["photos"][t["photo"]]).name for t in top]
    assert sorted(names) == ["p0.png", "p3.png", "p5.png"]  # the three red patches, nothing else
    for t in top:
        i = int(Path(doc["photos"][t["photo"]]).stem[1:])
        x0, y0, x1, y1 = t["box_xyxy"]
        px0, py0, px1, py1 = patches[i]
        assert px0 <= (x0 + x1) / 2 <= px1 and py0 <= (y0 + y1) / 2 <= py1  # the neuron sits on the patch
        assert t["value"] == pytest.approx(float(torch.nn.functional.silu(torch.tensor(1.0))), abs=1e-3)


@pytest.mark.slow
def test_unreadable_photo_is_one_line_and_no_labels_says_so(ckpt, sample_images, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sample_images[:2]:
        shutil.copy(p, photos / p.name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["atlas", "--weights", str(ckpt), str(photos), "--out", str(tmp_path / "atlas"), "--imgsz", str(IMGSZ),
                 "--top", "2", "--layers", "0"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {photos / 'broken.jpg'}: ")
    assert "no class selectivity" in err
    doc = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert len(doc["photos"]) == 2 and doc["selectivity"] is False and len(doc["errors"]) == 1
    ch = doc["layers"]["model.0"]["channels"][0]
    assert ch["classes"] == {} and ch["best_class"] is None and ch["best_iou"] is None
    assert 'id=no-labels' in (tmp_path / "atlas" / "index.html").read_text()


def test_memory_does_not_grow_with_photos(ckpt, sample_images):
    from pipeline.analysis.atlas import AtlasPass

    def held(n):
        p = AtlasPass(load_model(str(ckpt)), imgsz=64, layers=["model.0", "model.9"], k=2)
        for f in sample_images[:n]:
            p.add(f)
        tensors = [v for t in p.tables.values() for v in t.state().values() if torch.is_tensor(v)]
        return len(tensors), sum(v.numel() * v.element_size() for v in tensors), len(p._rec.activations)

    assert held(2) == held(6)  # same tables, same bytes, no feature map kept between photos


def test_json_schema_and_pages_match(built):
    res, doc, photos, out = built
    assert doc["imgsz"] == IMGSZ and doc["photos"] == [str(p) for p in photos] and doc["selectivity"] is True
    names = doc["names"]
    for layer, entry in doc["layers"].items():
        page = (out / f"layer-{layer}.html").read_text()
        for ch in entry["channels"]:
            assert set(ch["classes"]) == set(names)
            assert set(ch["classes"][names[0]]) >= {"inside_mean", "iou"}
            best = max(ch["classes"].values(), key=lambda v: v["iou"])["iou"]
            assert ch["best_iou"] == best
            assert (ch["best_class"] is None) == (best < doc["iou_floor"])
            assert f"id=c{ch['channel']} data-channel={ch['channel']} data-best-iou='{ch['best_iou']:.6f}'" in page
        # channels are listed by best IoU, highest first
        shown = [float(v) for v in __import__("re").findall(r"data-best-iou='([0-9.]+)'", page)]
        assert shown == sorted(shown, reverse=True)
    index = (out / "index.html").read_text()
    assert "id=lesson" in index and doc["lesson"]["text"][0].split(":")[0] in index
    assert "http://" not in index and "https://" not in index


def test_lesson_is_computed_from_the_atlas(built):
    _, doc, _, out = built
    rows = {r["layer"]: r for r in doc["lesson"]["rows"]}
    means = []
    for layer, entry in doc["layers"].items():
        ious = [c["best_iou"] for c in entry["channels"]]
        assert rows[layer]["mean_best_iou"] == pytest.approx(np.mean(ious), abs=1e-12)
        assert rows[layer]["selective_share"] == pytest.approx(np.mean([i >= doc["iou_floor"] for i in ious]))
        means.append(np.mean(ious))
    thirds = [float(np.mean(p)) for p in np.array_split(np.array(means), 3)]
    assert doc["lesson"]["thirds"] == pytest.approx(thirds)
    index = (out / "index.html").read_text()
    for name, v in zip(("early", "middle", "deep"), thirds):
        assert f"{name} {v:.3f}" in index
    assert index.count("<rect ") == len(doc["layers"])  # one bar per block
    assert "What dataset examples cannot prove" in index
    # the sentence about depth agrees with the order of the thirds it quotes (a new user read a rise as "no rise")
    early, middle, deep = thirds
    said = " ".join(doc["lesson"]["text"])
    if early < middle < deep:
        assert "rises with depth" in said
    elif early < deep:
        assert "higher deep than early" in said and "not step by step" in said
    else:
        assert "does not hold here: the deep third's IoU is not above the early third's" in said


@pytest.mark.parametrize("thirds, words", [((0.041, 0.038, 0.069), "middle third is below the early one"),
                                           ((0.02, 0.09, 0.05), "middle third is above the deep one"),
                                           ((0.07, 0.05, 0.03), "does not hold here"),
                                           ((0.01, 0.02, 0.03), "rises with depth")])
def test_the_depth_sentence_says_what_the_order_of_its_numbers_is(thirds, words):
    from pipeline.atlas.page import _depth_sentence

    assert words in _depth_sentence(*thirds)


def test_a_negative_class_mean_is_drawn_apart_from_a_positive_one(built):
    """A mean SiLU below 0 inside a class's boxes is the channel held off there: its bar is red (``neg``),
    a positive one blue, so the longest bar is not read as the class the channel follows."""
    _, doc, _, out = built
    path = next(iter(doc["layers"]))
    page = (out / f"layer-{path}.html").read_text()
    means = [v["inside_mean"] for ch in doc["layers"][path]["channels"] for v in ch["classes"].values()]
    assert page.count("class='bar neg'") == sum(m is not None and m < 0 for m in means) > 0
    assert page.count("class='bar'") == sum(m is None or m >= 0 for m in means)  # None: a class never labelled


@pytest.mark.slow
def test_demo_builds_the_atlas_of_its_val_set(ckpt, synth_data, tmp_path):
    from types import SimpleNamespace

    from pipeline.cli.demo import _atlas
    from pipeline.data.labels import dataset_splits

    timings = {}
    folder = _atlas(SimpleNamespace(no_atlas=False), str(ckpt), synth_data, tmp_path, IMGSZ, timings, layers=["model.0"])
    doc = json.loads((folder / "atlas.json").read_text())
    assert doc["photos"] == [str(p) for p in dataset_splits(synth_data)["val"]]
    assert doc["selectivity"] is True and all(doc["labelled"]) and timings["atlas_s"] > 0
    assert _atlas(SimpleNamespace(no_atlas=True), str(ckpt), synth_data, tmp_path, IMGSZ, {}) is None


def test_a_bad_label_file_is_named_and_its_photo_counts_as_unlabelled(ckpt, sample_dir, sample_images, tmp_path,
                                                                       capsys):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels").mkdir()
    for p in sample_images[:2]:
        shutil.copy(p, tmp_path / "ds" / "images" / p.name)
        shutil.copy(sample_dir / "labels" / f"{p.stem}.txt", tmp_path / "ds" / "labels" / f"{p.stem}.txt")
    bad = tmp_path / "ds" / "labels" / f"{sample_images[1].stem}.txt"
    bad.write_text("9 0.5 0.5 0.2 0.2\n")  # class 9 of 6
    assert main(["atlas", "--weights", str(ckpt), str(tmp_path / "ds" / "images"), "--out", str(tmp_path / "atlas"),
                 "--imgsz", "64", "--top", "1", "--layers", "0"]) == 0
    err = capsys.readouterr().err
    doc = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert doc["labelled"] == [True, False] and doc["selectivity"] is True
    assert len(doc["label_problems"]) == 1 and str(bad) in doc["label_problems"][0]
    assert f"note: label file not used: {doc['label_problems'][0]}" in err


@pytest.mark.parametrize("compiled", [True, False])
def test_the_top_k_over_many_photos_is_numpys_with_ties_to_the_earlier_photo(compiled, monkeypatch):
    """150 photos (the table merges pending photos 64 at a time), values on a coarse grid so that photos tie:
    per channel, numpy's stable sort of each photo's maximum (its first position) gives the same k photos, in
    the same order, as the table."""
    from pipeline.probe import atlas_stats

    if not compiled:
        monkeypatch.setattr(atlas_stats, "_channel_stats", None)
    rng = np.random.default_rng(5)
    c, h, w, k, n = 4, 3, 5, 9, 150
    maps = np.round(rng.normal(size=(n, c, h, w)), 1).astype(np.float32)  # ties across photos and inside one
    acc = ChannelAtlas(c, classes=0, k=k)
    for i in range(n):
        a = torch.from_numpy(maps[i][None])
        acc.update(a, a * 2, photo=i, masks=None)
    flat = maps.reshape(n, c, -1)
    best, where = flat.max(2), flat.argmax(2)  # argmax: the first position holding the maximum
    for ch in range(c):
        order = np.argsort(-best[:, ch], kind="stable")[:k]
        assert acc.top_photo[ch].tolist() == order.tolist()
        assert acc.top_value[ch].tolist() == best[order, ch].tolist()
        assert acc.top_y[ch].tolist() == (where[order, ch] // w).tolist()
        assert acc.top_x[ch].tolist() == (where[order, ch] % w).tolist()
        assert acc.top_z[ch].tolist() == (2 * best[order, ch]).tolist()
