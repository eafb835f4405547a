"""The recorder, BN folding, parameter counts and the ``inspect`` command, with torch as the oracle.

Two models: an untrained one built from ``yolov8n.yaml`` (seeded) and a "trained" checkpoint: a yaml
build whose BatchNorm statistics and affine parameters are randomized (so folding is not the identity
and activations do not vanish with depth), saved in the layout Ultralytics' trainer writes
(``{"model": half model, "ema": None, "train_args": {...}, ...}``) and loaded back with ``load_model``.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
from checkpoints import save_checkpoint
import torch
import torch.nn.functional as F

import pipeline  # noqa: F401  (offline env before ultralytics)
from pipeline.cli import main
from pipeline.core.io import WRITTEN_LIST
from pipeline.probe.statistics import inspect_image
from pipeline.probe.channel_stats import STATS_COLUMNS
from pipeline.probe.recorder import LayerRecorder
from pipeline.data.preprocess import model_input
from pipeline.probe.layers import conv_blocks, select_layers
from pipeline.probe.fold import conv_params, fold_bn, param_counts
from pipeline.model.load import load_model, model_stride

IMGSZ = 256


def make_checkpoint(path, seed: int = 1):
    """The shared trained-looking checkpoint (tests/checkpoints.py) in the older ``model`` layout."""
    return save_checkpoint(path, seed=seed, imgsz=IMGSZ, key="model")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


@pytest.fixture(params=["yaml", "trained"])
def yolo(request, ckpt_path):
    if request.param == "yaml":
        torch.manual_seed(0)
        return load_model("yolov8n.yaml", nc=6)
    return load_model(ckpt_path)


def independent_pre(block, x):
    """z = bn(conv(x)) straight from torch.nn.functional with the block's raw parameters (the oracle)."""
    conv = block.conv
    z = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if hasattr(block, "bn"):
        bn = block.bn
        z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return z


def no_hooks_left(net) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("fused", [False, True])
def test_recorder_pre_post_equal_torch_recompute(yolo, fused, sample_images):
    net = yolo.model
    if fused:
        net.fuse(verbose=False)
    x, _ = model_input(sample_images[3], IMGSZ, stride=model_stride(net))
    net.train()  # the recorder must switch to eval and give the flag back
    with torch.no_grad():
        net.eval()
        plain = net(x)[0]
        net.train()
    with LayerRecorder(yolo, mode="tensors", keep_inputs=True) as rec:
        assert not torch.is_grad_enabled() and not net.training
        out = rec(x)[0]
    assert torch.is_grad_enabled() and net.training
    assert no_hooks_left(net)
    net.eval()
    assert torch.equal(out, plain)  # hooks observe, they change nothing
    blocks = conv_blocks(net)
    assert len(rec.layers) == len(blocks) == 57
    with torch.no_grad():
        for path in rec.layers:
            z, a = rec.activations[path]
            assert not z.requires_grad and not a.requires_grad
            oracle = independent_pre(blocks[path], rec.inputs[path])
            torch.testing.assert_close(z, oracle, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a, F.silu(z), rtol=1e-6, atol=1e-7)
            assert rec.shapes[path]["output"] == list(z.shape)
    # the head: the decoded scores are the sigmoid of the recorded logits, scale by scale
    logits = torch.cat([t.flatten(2) for t in rec.head["cls_logits"]], dim=2)
    torch.testing.assert_close(rec.head["decoded"][:, 4:], logits.sigmoid(), rtol=0, atol=1e-7)
    torch.testing.assert_close(rec.head["decoded"], plain)
    assert [t.shape[-1] * s for t, s in zip(rec.head["cls_logits"], rec.head["strides"])] == [IMGSZ] * 3


def test_stats_mode_equals_torch_oracle(ckpt_path, sample_images):
    yolo = load_model(ckpt_path)
    inputs = [model_input(p, s, stride=model_stride(yolo))[0] for p, s in ((sample_images[0], IMGSZ), (sample_images[7], 192))]
    layers = ["model.0", "model.4.m.1.cv2", "model.9.cv2", "model.22.cv3.1.1"]
    with LayerRecorder(yolo, layers=layers, mode="stats", head=False) as rec:
        for x in inputs:
            rec(x)
    assert not rec.activations  # stats mode keeps no feature maps
    tensors = {p: [] for p in layers}
    with LayerRecorder(yolo, layers=layers, mode="tensors", head=False) as rec2:
        for x in inputs:
            rec2(x)
            for p in layers:
                tensors[p].append(rec2.activations[p])
    rows = rec.stats_table()
    assert len(rows) == sum(rec.stats[p].channels for p in layers)
    assert list(rows[0]) == list(STATS_COLUMNS)
    for p in layers:
        z = torch.cat([t[0].double().transpose(0, 1).flatten(1) for t in tensors[p]], dim=1)  # C x all values
        a = torch.cat([t[1].double().transpose(0, 1).flatten(1) for t in tensors[p]], dim=1)
        s = rec.stats[p]
        assert s.count == z.shape[1]
        torch.testing.assert_close(s.mean, z.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.std, z.std(1, unbiased=False), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(s.min, z.amin(1), rtol=0, atol=0)
        torch.testing.assert_close(s.max, z.amax(1), rtol=0, atol=0)
        torch.testing.assert_close(s.frac_negative, (z < 0).double().mean(1), rtol=0, atol=1e-12)
        torch.testing.assert_close(s.frac_dead, (a.abs() < s.dead_eps).double().mean(1), rtol=0, atol=1e-12)
        torch.testing.assert_close(s.post_mean, a.mean(1), rtol=1e-5, atol=1e-6)
        summary = s.summary()
        assert summary["std"] == pytest.approx(float(z.std(unbiased=False)), rel=1e-4)
        assert summary["frac_negative"] == pytest.approx(float((z < 0).double().mean()), abs=1e-12)
    # randomized BN: the statistics are not degenerate
    assert 0.05 < rec.stats["model.9.cv2"].summary()["frac_negative"] < 0.95


def test_fold_bn_equals_ultralytics_fuse(ckpt_path):
    yolo = load_model(ckpt_path)
    params = conv_params(yolo)
    fused = copy.deepcopy(yolo.model).fuse(verbose=False)
    fused_blocks = conv_blocks(fused)
    assert set(params) == set(fused_blocks)
    for path, p in params.items():
        conv = fused_blocks[path].conv
        torch.testing.assert_close(p["folded.weight"], conv.weight, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p["folded.bias"], conv.bias, rtol=1e-6, atol=1e-6)
        assert not torch.equal(p["folded.weight"], p["conv.weight"])  # randomized BN: folding is real work
    # a fused block is its own fold
    w, b = fold_bn(fused_blocks["model.0"])
    assert torch.equal(w, fused_blocks["model.0"].conv.weight) and torch.equal(b, fused_blocks["model.0"].conv.bias)


@pytest.mark.parametrize("fused", [False, True])
def test_param_counts_equal_model_info(yolo, fused):
    from ultralytics.utils.torch_utils import model_info

    net = yolo.model
    if fused:
        net.fuse(verbose=False)
    counts = param_counts(yolo)
    _, n_params, _, _ = model_info(net, verbose=True, imgsz=IMGSZ)
    assert counts["total"] == n_params
    assert sum(layer["params"] for layer in counts["layers"]) == n_params
    for layer, module in zip(counts["layers"], net.model):
        assert layer["type"] == type(module).__name__
        if not fused:  # Ultralytics' summary table column ("params"), stored at build time
            assert layer["params"] == module.np
    blocks = conv_blocks(net)
    for path, n in counts["blocks"].items():
        conv = blocks[path].conv
        expected = conv.weight.numel() + (conv.bias.numel() if conv.bias is not None else 0)
        expected += 0 if fused else 2 * conv.out_channels  # gamma and beta
        assert n == expected


def test_select_layers(yolo):
    assert select_layers(yolo, [0]) == ["model.0"]
    assert select_layers(yolo, ["model.2.cv1"]) == ["model.2.cv1"]
    assert select_layers(yolo, ["SPPF"]) == ["model.9.cv1", "model.9.cv2"]
    both = select_layers(yolo, ["2", "model.0"])
    assert both[0] == "model.0" and all(p.startswith("model.2.") for p in both[1:]) and len(both) == 1 + 4  # C2f(n=1): cv1, cv2, m.0.cv1, m.0.cv2
    assert len(select_layers(yolo, ["Detect"])) == 12
    with pytest.raises(ValueError, match="matches no Conv block"):
        select_layers(yolo, ["model.99"])
    with pytest.raises(ValueError, match=r"selector 99 matches no Conv block \(try an index 0-22, "):  # model.0-22
        select_layers(yolo, [99])
    assert len(yolo.model.model) == 23
    with pytest.raises(ValueError):
        LayerRecorder(yolo, mode="everything")


def test_inspect_cli_writes_the_contract(ckpt_path, sample_images, tmp_path, capsys):
    from safetensors.torch import load_file

    image = sample_images[11]
    out = tmp_path / "inspect"
    assert main(["inspect", "--weights", str(ckpt_path), str(image), "--out", str(out), "--imgsz", str(IMGSZ)]) == 0
    names = ["input.safetensors", "activations.safetensors", "params.safetensors", "index.json", "stats.csv"]
    assert all((out / n).is_file() for n in names)
    x = load_file(out / "input.safetensors")["input"]
    acts = load_file(out / "activations.safetensors")
    params = load_file(out / "params.safetensors")
    index = json.loads((out / "index.json").read_text())

    # input.safetensors is exactly what Ultralytics' predictor feeds the network
    yolo = load_model(ckpt_path)
    seen = {}
    yolo.predict(str(image), imgsz=IMGSZ, verbose=False, save=False)
    net = yolo.predictor.model.model
    h = net.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].clone()))
    yolo.predict(str(image), imgsz=IMGSZ, verbose=False, save=False)
    h.remove()
    assert torch.equal(x, seen["x"])

    # every Conv block has pre and post; post = SiLU(pre); the first block recomputed from the files alone
    assert len(index["layers"]) == 57 and index["totals"]["params"] == sum(p.numel() for p in yolo.model.parameters())
    for entry in index["layers"]:
        p = entry["path"]
        z, a = acts[f"{p}.pre"], acts[f"{p}.post"]
        assert list(z.shape) == entry["output_shape"] and z.dtype == torch.float32
        torch.testing.assert_close(a, F.silu(z), rtol=1e-6, atol=1e-7)
        for key in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "folded.weight", "folded.bias"):
            assert f"{p}.{key}" in params
    z0 = F.conv2d(x, params["model.0.folded.weight"], params["model.0.folded.bias"], stride=2, padding=1)
    torch.testing.assert_close(acts["model.0.pre"], z0, rtol=1e-5, atol=1e-5)
    # the head: logits at each scale = the final 1x1 conv applied to the recorded post of the block before it
    for i in range(3):
        feat = acts[f"model.22.cv3.{i}.1.post"]
        logit = F.conv2d(feat, params[f"model.22.cv3.{i}.2.weight"], params[f"model.22.cv3.{i}.2.bias"])
        torch.testing.assert_close(acts[f"model.22.cls_logits.{i}"], logit, rtol=1e-5, atol=1e-5)
    assert index["head"]["grids"] == [[IMGSZ // s] * 2 for s in (8, 16, 32)]

    # stats.csv agrees with the dumped tensors
    with open(out / "stats.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(e["out_channels"] for e in index["layers"])
    by_key = {(r["layer"], int(r["channel"])): r for r in rows}
    for p, c in (("model.0", 3), ("model.8.cv2", 100), ("model.21.m.0.cv1", 7)):
        z = acts[f"{p}.pre"][0, c].double()
        a = acts[f"{p}.post"][0, c].double()
        r = by_key[(p, c)]
        assert float(r["mean"]) == pytest.approx(float(z.mean()), rel=1e-5, abs=1e-6)
        assert float(r["std"]) == pytest.approx(float(z.std(unbiased=False)), rel=1e-4)
        assert float(r["max"]) == pytest.approx(float(z.max()), rel=1e-7)
        assert float(r["frac_negative"]) == pytest.approx(float((z < 0).double().mean()), abs=1e-9)
        assert float(r["frac_dead"]) == pytest.approx(float((a.abs() < index["dead_eps"]).double().mean()), abs=1e-9)
        assert float(r["post_mean"]) == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-6)


def test_inspect_image_selected_layers_float16(ckpt_path, sample_images, tmp_path):
    from safetensors.torch import load_file

    paths = inspect_image(ckpt_path, sample_images[2], tmp_path, layers=["0", "SPPF"], dtype="float16", imgsz=IMGSZ)
    acts = load_file(paths["activations"])
    layer_keys = sorted(k for k in acts if not k.startswith("model.22."))
    assert layer_keys == sorted(f"{p}.{s}" for p in ("model.0", "model.9.cv1", "model.9.cv2") for s in ("pre", "post"))
    assert all(t.dtype == torch.float16 for t in acts.values())
    assert load_file(paths["input"])["input"].dtype == torch.float32


def test_inspect_bad_input_one_line(tmp_path, sample_images, capsys):
    corrupt = tmp_path / "broken.pt"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    assert main(["inspect", "--weights", str(corrupt), str(sample_images[0]), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {corrupt}")

    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo")
    assert main(["inspect", "--weights", "yolov8n.yaml", str(text), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {text}")

    assert main(["inspect", str(sample_images[0]), "--out", str(tmp_path / "o"), "--layers", "NoSuchLayer"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NoSuchLayer" in err[0]
    assert not (tmp_path / "o" / "index.json").exists()


def test_inspect_folder_gives_statistics_over_all_photos(ckpt_path, sample_images, tmp_path, capsys):
    """A folder: stats.csv per channel over every value of every photo (each at its own letterbox shape)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_images[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(sample_images[3].read_bytes()[:2000])  # truncated JPEG
    out = tmp_path / "stats"
    rc = main(["inspect", "--weights", str(ckpt_path), str(folder), "--out", str(out), "--imgsz", str(IMGSZ)])
    err = capsys.readouterr().err
    assert rc == 1  # one photo failed; the others still ran
    assert sum("broken.jpg" in line and line.startswith("error:") for line in err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN_LIST, "index.json", "stats.csv"]  # no feature maps
    index = json.loads((out / "index.json").read_text())
    assert [Path(e["image"]).name for e in index["images"]] == sorted(p.name for p in sample_images[:3])
    assert len(index["errors"]) == 1 and "broken.jpg" in index["errors"][0]
    assert len(index["layers"]) == 57 and index["totals"]["images"] == 3

    # the oracle: tensors mode on each photo, values of all three concatenated per channel
    yolo = load_model(ckpt_path)
    layers = ["model.0", "model.6.m.0.cv2", "model.22.cv2.2.1"]
    zs, as_ = {p: [] for p in layers}, {p: [] for p in layers}
    with LayerRecorder(yolo, layers=layers, mode="tensors", head=False) as rec:
        for e in index["images"]:
            x, _ = model_input(e["image"], IMGSZ, stride=model_stride(yolo))
            assert list(x.shape) == e["input_shape"]
            rec(x)
            for p in layers:
                z, a = rec.activations[p]
                zs[p].append(z[0].flatten(1).double())
                as_[p].append(a[0].flatten(1).double())
    with open(out / "stats.csv", newline="") as f:
        rows = {(r["layer"], int(r["channel"])): r for r in csv.DictReader(f)}
    for p in layers:
        z, a = torch.cat(zs[p], 1), torch.cat(as_[p], 1)
        for c in (0, z.shape[0] // 2, z.shape[0] - 1):
            r = rows[(p, c)]
            assert int(r["count"]) == z.shape[1]
            assert float(r["mean"]) == pytest.approx(float(z[c].mean()), rel=1e-5, abs=1e-6)
            assert float(r["std"]) == pytest.approx(float(z[c].std(unbiased=False)), rel=1e-4)
            assert float(r["min"]) == pytest.approx(float(z[c].min()), rel=1e-7)
            assert float(r["frac_negative"]) == pytest.approx(float((z[c] < 0).double().mean()), abs=1e-9)
            assert float(r["frac_dead"]) == pytest.approx(float((a[c].abs() < index["dead_eps"]).double().mean()), abs=1e-9)
            assert float(r["post_mean"]) == pytest.approx(float(a[c].mean()), rel=1e-5, abs=1e-6)


def test_inspect_stats_only_one_photo_and_nothing_readable(ckpt_path, sample_images, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["inspect", "--weights", str(ckpt_path), str(sample_images[5]), "--out", str(out), "--stats-only",
                 "--imgsz", str(IMGSZ), "--layers", "SPPF"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert [e["path"] for e in index["layers"]] == ["model.9.cv1", "model.9.cv2"] and index["totals"]["images"] == 1
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN_LIST, "index.json", "stats.csv"]
    capsys.readouterr()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["inspect", "--weights", str(ckpt_path), str(bad), str(tmp_path / "missing.jpg"), "--out",
                 str(tmp_path / "none"), "--imgsz", str(IMGSZ)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error:") for line in err)  # each file, then the verdict
    assert "missing.jpg: file not found" in err[0] and "bad.jpg" in err[1] and "no photo could be read" in err[2]
    assert not (tmp_path / "none").exists()


def test_inspect_one_photo_whose_name_looks_like_a_glob(ckpt_path, sample_images, tmp_path):
    """An existing file named 'photo[1].jpg' is one photo (full dump), not a glob."""
    photo = tmp_path / "photo[1].jpg"
    photo.write_bytes(sample_images[4].read_bytes())
    out = tmp_path / "dump"
    assert main(["inspect", "--weights", str(ckpt_path), str(photo), "--out", str(out), "--imgsz", str(IMGSZ),
                 "--layers", "0"]) == 0
    assert (out / "activations.safetensors").is_file()
