"""Gradient flow and the one-neuron SGD step, checked against autograd and Ultralytics' own loss."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.data.labels import label_path, photo_labels
from pipeline.data.preprocess import model_input
from pipeline.lesson.gradients import activation_comparison, build_variant, gradient_flow, make_batch, sgd_step, step_direction
from pipeline.model.load import load_model
from pipeline.probe.fold import fold_bn
from pipeline.probe.layers import conv_blocks

IMGSZ = 256


@pytest.fixture(scope="module")
def batch(sample_images):
    samples = []
    for p in sample_images[:2]:
        labels, _ = photo_labels(p, nc=6)
        assert labels, f"no labels found for {p}"
        samples.append((cv2.imread(str(p)), labels))
    return make_batch(samples, IMGSZ)


@pytest.fixture(scope="module")
def yolo():
    torch.manual_seed(0)
    return load_model("yolov8n.yaml", nc=6)


def test_labels_from_polygons_and_batch_layout(sample_images, batch):
    p = sample_images[0]
    rows = [line.split() for line in label_path(p).read_text().splitlines() if line.strip()]
    labels, _ = photo_labels(p, nc=6)
    assert len(labels) == len(rows)
    pts = np.asarray(rows[0][1:], dtype=float).reshape(-1, 2)
    c, x, y, w, h = labels[0]
    assert c == int(rows[0][0])
    assert (x, y, w, h) == pytest.approx(((pts[:, 0].min() + pts[:, 0].max()) / 2, (pts[:, 1].min() + pts[:, 1].max()) / 2,
                                          np.ptp(pts[:, 0]), np.ptp(pts[:, 1])))
    assert batch["img"].shape == (2, 3, IMGSZ, IMGSZ) and batch["img"].dtype == torch.float32
    assert 0 <= float(batch["img"].min()) and float(batch["img"].max()) <= 1
    n = batch["cls"].shape[0]
    assert batch["bboxes"].shape == (n, 4) and batch["batch_idx"].shape == (n,)
    assert set(batch["batch_idx"].tolist()) == {0.0, 1.0}
    # RGB order: the first channel is the image's red = BGR's last channel, resized
    im = cv2.resize(cv2.imread(str(p)), (IMGSZ, IMGSZ), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(batch["img"][0, 0], torch.from_numpy(im[..., 2]).float() / 255)


def test_gradient_flow_is_the_autograd_gradient_of_ultralytics_loss(yolo, batch):
    before = {k: v.clone() for k, v in yolo.model.state_dict().items()}
    flow = gradient_flow(yolo.model, batch)
    # the caller's model is untouched: same weights and BN statistics, no gradients
    after = yolo.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in yolo.model.parameters())

    # oracle: the same loss built directly from Ultralytics' v8DetectionLoss, torch.autograd.grad
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import v8DetectionLoss

    m = copy.deepcopy(yolo.model).float().train()
    m.args = get_cfg()
    for p in m.parameters():
        p.requires_grad_(True)
    loss, items = v8DetectionLoss(m)(m(batch["img"]), batch)
    params = dict(m.named_parameters())
    names = ["model.0.conv.weight", "model.9.cv2.conv.weight", "model.22.cv3.2.2.weight"]
    grads = torch.autograd.grad(loss.sum(), [params[n] for n in names])
    got = dict(zip(flow["layers"], flow["mean_abs_grad"]))
    for n, g in zip(names, grads):
        layer = n[: -len(".conv.weight")] if n.endswith(".conv.weight") else n[: -len(".weight")]
        assert got[layer] == pytest.approx(float(g.abs().mean()), rel=1e-5)
    assert flow["loss"] == pytest.approx(float(loss.sum().detach()), rel=1e-6)
    assert flow["loss_names"] == ["box_loss", "cls_loss", "dfl_loss"]
    # every conv kernel that trains is listed, stem first, head last
    n_conv = sum(1 for n, p in m.named_parameters() if p.ndim == 4 and p.requires_grad and "dfl" not in n)
    assert len(flow["layers"]) == n_conv and flow["layers"][0] == "model.0" and flow["layers"][-1].startswith("model.22.")
    # the class branch and the backbone always get gradient; a box branch gets none at a scale where the
    # assigner put no target (box and DFL losses only count foreground anchors)
    for layer, g in zip(flow["layers"], flow["mean_abs_grad"]):
        assert g > 0 or layer.startswith("model.22.cv2."), layer


def test_variants_share_init_and_only_differ_in_activation(yolo):
    cfg = yolo.model.yaml
    models = {name: build_variant(cfg, 6, name, seed=3) for name in ("silu", "sigmoid", "relu")}
    ref = models["silu"].state_dict()
    for name, m in models.items():
        sd = m.state_dict()
        assert all(torch.equal(ref[k], sd[k]) for k in ref), name
        acts = {type(mod.act) for mod in m.modules() if hasattr(mod, "act") and isinstance(mod.act, nn.Module)}
        assert acts == {type(models[name].model[0].act)}
    assert isinstance(models["sigmoid"].model[0].act, nn.Sigmoid)
    assert not any(isinstance(mod, nn.SiLU) for mod in models["relu"].modules())


def test_comparison_is_each_variant_built_on_its_own(yolo, batch):
    """activation_comparison builds the fresh model once: each flow equals the one of a variant built alone."""
    comp = activation_comparison(yolo.model.yaml, 6, batch, seed=2, variants=("relu", "tanh"))
    for name in ("relu", "tanh"):
        alone = gradient_flow(build_variant(yolo.model.yaml, 6, name, seed=2), batch)
        assert comp[name]["layers"] == alone["layers"]
        assert comp[name]["loss"] == alone["loss"]
        np.testing.assert_array_equal(comp[name]["mean_abs_grad"], alone["mean_abs_grad"])


def test_sigmoid_gradient_vanishes_toward_the_stem(yolo, batch):
    comp = activation_comparison(yolo.model.yaml, 6, batch, seed=0, variants=("silu", "sigmoid"))
    silu, sig = (np.asarray(comp[k]["mean_abs_grad"]) for k in ("silu", "sigmoid"))
    ratio = sig / np.where(silu > 0, silu, np.nan)
    # same batch, same init: sigmoid's gradient at the stem is a small fraction of SiLU's,
    # and the shortfall is much larger at the stem than at the head (it compounds layer by layer)
    assert ratio[0] < 0.2
    assert ratio[0] < np.nanmean(ratio[-9:]) / 5
    # the stem's gradient relative to the head's (the Detect head, model.22, of yolov8n) shrinks more with sigmoid
    def stem_over_head(flow):
        g = np.asarray(flow["mean_abs_grad"])
        return g[0] / g[[i for i, n in enumerate(flow["layers"]) if n.startswith("model.22.")]].mean()

    assert stem_over_head(comp["sigmoid"]) < stem_over_head(comp["silu"])


def test_sgd_step_on_a_real_stem_neuron(yolo, sample_images):
    x, _ = model_input(sample_images[0], imgsz=IMGSZ)
    block = conv_blocks(yolo)["model.0"]
    w, b = fold_bn(block, torch.float64)
    c, y0, x0 = 5, 40, 61
    stride, pad = block.conv.stride[0], block.conv.padding[0]
    xp = torch.nn.functional.pad(x.double(), (pad, pad, pad, pad))
    patch = xp[0, :, y0 * stride : y0 * stride + 3, x0 * stride : x0 * stride + 3]
    step = sgd_step(patch, w[c], b[c], lr=0.01)
    with torch.no_grad():
        block.eval()  # inference BatchNorm: running statistics, as folded
        z_model = block.bn(block.conv(x))[0, c, y0, x0]
    assert step["z"] == pytest.approx(float(z_model), rel=1e-4, abs=1e-5)  # the neuron the model computed
    assert step["max_abs_grad_diff"] < 1e-12  # hand chain rule == autograd
    assert step["autograd_loss"] == pytest.approx(step["loss"], rel=1e-12)
    assert step["loss_new"] < step["loss"]  # the step helps
    # the update is exactly w - lr * dL/dw, and dL/dw = (a - t) SiLU'(z) x
    sig = 1 / (1 + np.exp(-step["z"]))
    dz = (step["a"] - step["target"]) * sig * (1 + step["z"] * (1 - sig))
    assert np.allclose(step["dL_dw"], dz * patch.numpy(), atol=1e-14)
    assert np.allclose(step["weight_new"], w[c].numpy() - 0.01 * np.asarray(step["dL_dw"]), atol=1e-14)
    # a too-large learning rate overshoots: the same formula, the loss goes up
    assert sgd_step(patch, w[c], b[c], lr=50.0)["loss_new"] > step["loss"]


@pytest.mark.parametrize("w0", [-3.0, -2.0, 0.5, 1.0])  # z left of SiLU's minimum (-1.278), and right of it
def test_the_step_says_which_way_z_and_a_moved_and_why(w0):
    """The sentence under the SGD step follows torch: z moves against dL/dz, and a follows z only where SiLU's
    slope is positive; left of the minimum the step lowers z and a still rises (a new user found it unsaid)."""
    x = torch.tensor([1.0, 0.5], dtype=torch.float64)
    w = torch.tensor([w0, w0 / 2], dtype=torch.float64, requires_grad=True)
    z = (w * x).sum()
    a = torch.nn.functional.silu(z)
    z.retain_grad()
    (0.5 * (a - (a.detach() + 1)) ** 2).backward()
    slope = float(torch.autograd.functional.jacobian(torch.nn.functional.silu, z.detach()))
    step = sgd_step(x.reshape(2, 1, 1).tolist(), w.detach().reshape(2, 1, 1).tolist(), 0.0, lr=0.01)
    words = step_direction(step)
    z_new = float(((w.detach() - 0.01 * w.grad) * x).sum())  # torch's own step (b = 0 moves by 0.01 * dL/dz too)
    z_new -= 0.01 * float(z.grad)
    lowered = z_new < float(z)
    assert (("lowered z" in words) == lowered) and (("raised z" in words) == (not lowered))
    assert ("negative here, left of SiLU's minimum" in words) == (slope < 0)
    assert "a rose" in words  # the target asks one unit more, and a small step always gets some of it
    assert lowered == (slope < 0)
