"""The stats-mode C kernel (pipeline/probe/_channel_stats.c) against torch in float64, on maps made to break it.

``ChannelStats(kernel=True)`` reads each map once in C; ``kernel=False`` takes the same numbers with torch
reductions. Both are checked against a float64 torch oracle, on shapes with SIMD tails, several images
per batch, a mean that dwarfs the spread (the cancellation fallback), NaN and inf, and values exactly at
the dead threshold.
"""

from __future__ import annotations

import os

import pytest
import torch

import pipeline  # noqa: F401  (offline env before ultralytics)
from pipeline.probe import channel_stats
from pipeline.probe.channel_stats import DEAD_EPS, ChannelStats
from pipeline.probe.recorder import LayerRecorder


def test_kernel_is_built_in_ci():
    """`pip install -e .` compiles the kernel; in CI a silent fallback to torch would hide a broken build."""
    if os.environ.get("CI") == "true":
        assert channel_stats._channel_stats is not None, "pipeline.probe._channel_stats was not built by the install"
    elif channel_stats._channel_stats is None:
        pytest.skip("the C kernel is not built here (no compiler at install time)")


needs_kernel = pytest.mark.skipif(channel_stats._channel_stats is None, reason="C kernel not built")


def oracle(batches):
    """Per-channel statistics of a list of (z, a) batches, in float64 over all values at once."""
    z = torch.cat([b[0].double().transpose(0, 1).flatten(1) for b in batches], dim=1)
    a = torch.cat([b[1].double().transpose(0, 1).flatten(1) for b in batches], dim=1)
    return dict(count=z.shape[1], mean=z.mean(1), std=z.std(1, unbiased=False), min=z.amin(1), max=z.amax(1),
                frac_negative=(z < 0).double().mean(1), frac_dead=(a.float().abs() < DEAD_EPS).double().mean(1),
                post_mean=a.mean(1))


def stats_of(batches, kernel):
    s = ChannelStats(batches[0][0].shape[1], kernel=kernel)
    for z, a in batches:
        s.update(z, a)
    return s


def check(s, want, rtol=1e-5):
    assert s.count == want["count"]
    torch.testing.assert_close(s.mean, want["mean"], rtol=rtol, atol=1e-6)
    torch.testing.assert_close(s.std, want["std"], rtol=rtol, atol=1e-6)
    torch.testing.assert_close(s.min, want["min"], rtol=0, atol=0)
    torch.testing.assert_close(s.max, want["max"], rtol=0, atol=0)
    torch.testing.assert_close(s.frac_negative, want["frac_negative"], rtol=0, atol=1e-12)
    torch.testing.assert_close(s.frac_dead, want["frac_dead"], rtol=0, atol=1e-12)
    torch.testing.assert_close(s.post_mean, want["post_mean"], rtol=rtol, atol=1e-6)


def silu_pair(z):
    return z, torch.nn.functional.silu(z)


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 5, 3, 5), (2, 4, 17, 19), (3, 2, 64, 65), (1, 7, 160, 161)])
def test_random_maps_equal_float64_oracle(shape, kernel):
    if kernel and channel_stats._channel_stats is None:
        pytest.skip("C kernel not built")
    g = torch.Generator().manual_seed(sum(shape))
    batches = [silu_pair(torch.randn(shape, generator=g) * 3 - 0.5) for _ in range(2)]
    check(stats_of(batches, kernel), oracle(batches))


@needs_kernel
def test_kernel_used_and_equal_to_torch_path():
    g = torch.Generator().manual_seed(1)
    batches = [silu_pair(torch.randn(2, 6, 33, 40, generator=g)) for _ in range(3)]
    fast, slow = stats_of(batches, True), stats_of(batches, False)
    assert fast.kernel and not slow.kernel
    assert all(pre.dtype == torch.float64 and pre.shape == (6, 5) for _, pre, _ in fast._batches)  # kernel tables
    assert all(pre.dtype == torch.float32 for _, pre, _ in slow._batches)  # torch reductions
    for key in ("mean", "std", "min", "max", "frac_negative", "frac_dead", "post_mean"):
        torch.testing.assert_close(getattr(fast, key), getattr(slow, key), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", [True, False])
def test_large_mean_small_spread_keeps_its_digits(kernel):
    """A channel at 1000 +- 0.01: sum(z^2) - n*mean^2 alone would lose the spread; the exact pass keeps it."""
    if kernel and channel_stats._channel_stats is None:
        pytest.skip("C kernel not built")
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 50, 50, generator=g) * 0.01
    z[:, 0] += 1000.0
    z[:, 1] -= 300.0
    z[0, 2, 0, 0] = 50.0  # the kernel's pivot (first value) far out in the tail of its channel
    batches = [silu_pair(z)]
    check(stats_of(batches, kernel), oracle(batches), rtol=1e-4)


@needs_kernel
def test_dead_threshold_and_signed_zero_exact():
    """|a| < eps and z < 0 counted exactly as torch counts them in float32, at the boundaries themselves."""
    eps = torch.tensor(DEAD_EPS, dtype=torch.float32)
    edge = [eps, -eps, torch.nextafter(eps, torch.tensor(0.0)), -torch.nextafter(eps, torch.tensor(0.0)),
            torch.nextafter(eps, torch.tensor(1.0)), torch.tensor(0.0), torch.tensor(-0.0), torch.tensor(1e-45)]
    row = torch.stack(edge).repeat(5)  # 40 values: SIMD body and tail
    z = torch.stack([row, -row, row * 7]).reshape(1, 3, 5, 8)
    for kernel in (True, False):
        s = stats_of([(z, z.clone())], kernel)  # a = z: the thresholds apply to the values themselves
        torch.testing.assert_close(s.frac_dead, (z.abs() < eps).transpose(0, 1).flatten(1).double().mean(1),
                                   rtol=0, atol=0)
        torch.testing.assert_close(s.frac_negative, (z < 0).transpose(0, 1).flatten(1).double().mean(1),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [True, False])
def test_nan_and_inf_reach_the_statistics(kernel):
    """A broken map must look broken: NaN makes its channel's stats NaN, inf shows in min/max."""
    if kernel and channel_stats._channel_stats is None:
        pytest.skip("C kernel not built")
    z = torch.randn(1, 3, 8, 9, generator=torch.Generator().manual_seed(3))
    z[0, 0, 4, 4] = float("nan")
    z[0, 1, 2, 3] = float("inf")
    s = stats_of([silu_pair(z)], kernel)
    assert torch.isnan(s.mean[0]) and torch.isnan(s.min[0]) and torch.isnan(s.max[0])
    assert s.max[1] == float("inf") and torch.isfinite(s.min[1])
    assert torch.isnan(s.std[1])  # the spread of a map holding inf is undefined, not 0
    want = oracle([silu_pair(z)])
    torch.testing.assert_close(s.mean[2], want["mean"][2], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(s.min[2], want["min"][2], rtol=0, atol=0)


@pytest.mark.parametrize("kernel", [True, False])
def test_inf_first_value_and_huge_values(kernel):
    """inf where the kernel takes its pivot (the channel's first value), and finite values near float32's
    limit whose squares overflow float32: the same answers as torch in float64."""
    if kernel and channel_stats._channel_stats is None:
        pytest.skip("C kernel not built")
    z = torch.randn(2, 6, 9, 11, generator=torch.Generator().manual_seed(5))
    z[0, 0, 0, 0] = float("inf")  # channel 0: +inf first
    z[0, 1, 0, 0] = float("-inf")  # channel 1: -inf first
    z[:, 2] *= 1e20  # channel 2: finite, but z^2 overflows float32
    z[1, 4, 3, 3], z[1, 4, 5, 5] = float("inf"), float("-inf")  # channel 4: both infinities, no NaN
    z[:, 5] = torch.sign(z[:, 5]) * 3e38  # channel 5: finite, sums overflow both ways
    s = stats_of([silu_pair(z)], kernel)
    assert torch.isnan(s.mean[4]) and s.min[4] == float("-inf") and s.max[4] == float("inf")  # as torch says
    big = float(torch.tensor(3e38))  # 3e38 rounded to float32
    assert s.min[5] == -big and s.max[5] == big  # not NaN: nothing there is NaN
    assert s.mean[0] == float("inf") and s.max[0] == float("inf") and torch.isfinite(s.min[0])
    assert s.mean[1] == float("-inf") and s.min[1] == float("-inf") and torch.isfinite(s.max[1])
    want = oracle([silu_pair(z)])
    for c in (2, 3):
        torch.testing.assert_close(s.min[c], want["min"][c], rtol=0, atol=0)
        torch.testing.assert_close(s.max[c], want["max"][c], rtol=0, atol=0)
    if kernel:  # torch's own float32 reductions overflow here too; the kernel redoes the sums in float64
        torch.testing.assert_close(s.mean[2], want["mean"][2], rtol=1e-6, atol=0)
        torch.testing.assert_close(s.std[2], want["std"][2], rtol=1e-6, atol=0)
    torch.testing.assert_close(s.std[3], want["std"][3], rtol=1e-5, atol=1e-6)


@needs_kernel
def test_layouts_the_kernel_cannot_read_fall_back_to_torch():
    z = torch.randn(2, 8, 12, 12, generator=torch.Generator().manual_seed(4))
    cl = z.to(memory_format=torch.channels_last)  # same values, NHWC memory
    s = ChannelStats(8)
    assert s._kernel_can(z) and not s._kernel_can(cl) and not s._kernel_can(z.half()) and not s._kernel_can(z[:, :4])
    for t in (cl, z.double()):
        got = stats_of([silu_pair(t)], True)
        check(got, oracle([silu_pair(z)]))


@needs_kernel
@pytest.mark.parametrize("fused", [False, True])
def test_recorder_kernel_switch(fused):
    """The recorder passes ``kernel`` on: both settings give the same per-channel rows on a real model,
    unfused (z from the BatchNorm) and fused (z from the conv that BatchNorm was folded into)."""
    from pipeline.model.load import load_model

    torch.manual_seed(0)
    yolo = load_model("yolov8n.yaml", nc=6)
    if fused:
        yolo.model.fuse(verbose=False)
    x = torch.rand(2, 3, 96, 128)
    rows = {}
    for kernel in (True, False):
        with LayerRecorder(yolo, mode="stats", head=False, kernel=kernel) as rec:
            rec(x)
        assert all(s.kernel is kernel for s in rec.stats.values())
        rows[kernel] = rec.stats_table()
    assert len(rows[True]) == len(rows[False]) == sum(s.channels for s in rec.stats.values())
    for r1, r2 in zip(rows[True], rows[False]):
        assert (r1["layer"], r1["channel"], r1["count"]) == (r2["layer"], r2["channel"], r2["count"])
        for k in ("mean", "std", "post_mean"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-5, abs=1e-6), (r1["layer"], k)
        for k in ("min", "max", "frac_negative", "frac_dead"):
            assert r1[k] == r2[k], (r1["layer"], k)


@pytest.mark.parametrize("kernel", [True, False])
def test_long_passes_fold_into_running_totals(kernel, monkeypatch):
    """Per-batch tables are folded every FOLD_EVERY batches (memory stays bounded over a big dataset),
    and reading the statistics mid-way does not change the final answer."""
    if kernel and channel_stats._channel_stats is None:
        pytest.skip("C kernel not built")
    monkeypatch.setattr(channel_stats, "FOLD_EVERY", 3)
    g = torch.Generator().manual_seed(6)
    batches = [silu_pair(torch.randn(1 + i % 2, 5, 7 + i, 9, generator=g) * (1 + i) + i) for i in range(8)]
    s = ChannelStats(5, kernel=kernel)
    for i, (z, a) in enumerate(batches):
        s.update(z, a)
        assert len(s._batches) < 3
        if i == 4:
            check(s, oracle(batches[:5]))  # a mid-way read folds too
    check(s, oracle(batches))
