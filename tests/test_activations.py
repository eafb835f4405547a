"""Activation functions: every formula and derivative against torch (autograd is the oracle)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.lesson import activations as A

Z = torch.cat([torch.linspace(-12, 12, 2401, dtype=torch.float64), torch.tensor([-1e-3, 1e-3, 0.37, -2.9])])
Z_NONZERO = Z[Z.abs() > 1e-9]  # ReLU-family derivatives are undefined exactly at 0


@pytest.mark.parametrize("name", list(A.GALLERY))
def test_function_matches_torch(name):
    act = A.GALLERY[name]
    assert torch.allclose(act.f(Z), act.torch_f(Z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(A.GALLERY))
def test_derivative_by_formula_matches_autograd(name):
    act = A.GALLERY[name]
    z = Z_NONZERO.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(act.torch_f(z).sum(), z)
    assert torch.allclose(act.df(Z_NONZERO), grad, rtol=1e-10, atol=1e-12)


def test_softmax_vector_against_torch():
    logits = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0, -4.0], dtype=torch.float64)
    assert torch.allclose(A.softmax(logits), torch.softmax(logits, 0), atol=1e-15)
    assert math.isclose(float(A.softmax(logits).sum()), 1.0, abs_tol=1e-15)
    # huge logits: the max-shift keeps it finite where a naive exp overflows
    big = torch.tensor([1000.0, 999.0], dtype=torch.float64)
    assert torch.isfinite(A.softmax(big)).all()


def test_second_derivative_of_silu_against_autograd():
    z = Z.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(torch.nn.functional.silu(z).sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    assert torch.allclose(A.d2_silu(Z), d2, atol=1e-12)


def test_silu_minimum_is_solved_and_is_the_minimum():
    x_min, y_min = A.silu_minimum()
    assert abs(float(A.d_silu(x_min))) < 1e-12  # a stationary point...
    dense = torch.linspace(-10, 10, 2_000_001, dtype=torch.float64)
    y = torch.nn.functional.silu(dense)
    assert y_min <= float(y.min()) + 1e-12  # ...and nothing on a 1e-5 grid goes lower
    assert abs(x_min - float(dense[y.argmin()])) < 2e-5
    assert round(x_min, 3) == -1.278 and round(y_min, 3) == -0.278
    # the closed form: x* solves 1 + x (1 - sigmoid(x)) = 0, i.e. x* = -1 - W(1/e) (Lambert W)
    assert abs(1 + x_min * (1 - 1 / (1 + math.exp(-x_min)))) < 1e-12
    # a different start converges to the same point
    assert abs(A.silu_minimum(x0=-0.1)[0] - x_min) < 1e-10


def test_ranges_and_zero_centredness():
    d = {r["name"]: r for r in A.describe_all()}
    # sigmoid's range is (0, 1): the grid reaches both ends to within e^-60, as tanh reaches -1 and 1
    assert d["sigmoid"]["min"] == pytest.approx(0, abs=1e-20) and d["sigmoid"]["max"] == pytest.approx(1, abs=1e-15)
    assert not d["sigmoid"]["zero_centred"]
    assert d["tanh"]["min"] == pytest.approx(-1) and d["tanh"]["max"] == pytest.approx(1) and d["tanh"]["zero_centred"]
    assert d["relu"]["min"] == 0 and d["relu"]["max"] == math.inf and not d["relu"]["zero_centred"]
    assert d["leaky_relu"]["min"] == -math.inf and d["prelu"]["min"] == -math.inf
    assert d["silu"]["min"] == pytest.approx(A.silu_minimum()[1], abs=1e-7) and d["silu"]["max"] == math.inf
    assert d["softmax"]["f0"] == pytest.approx(1 / A.SOFTMAX_CLASSES)
    assert d["sigmoid"]["max_slope"] == pytest.approx(0.25) and d["tanh"]["max_slope"] == pytest.approx(1.0)
    assert d["silu"]["max_slope"] > 1.09  # SiLU overshoots slope 1 near z = 2.4
    # mean output on N(0,1) matches numpy-free quadrature of the same integral
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    pdf = torch.exp(-x**2 / 2) / math.sqrt(2 * math.pi)
    for name in ("sigmoid", "relu", "silu"):
        exact = float(torch.trapezoid(A.GALLERY[name].f(x) * pdf, x))
        assert d[name]["mean_on_normal"] == pytest.approx(exact, abs=5e-3)


def test_describe_on_a_real_sample_counts_flat_gradients():
    z = torch.tensor([-20.0, -10.0, 0.0, 10.0, 20.0], dtype=torch.float64)
    r = A.describe("sigmoid", z)
    # sigmoid'(+-10), sigmoid'(+-20) < 0.01; sigmoid'(0) = 0.25
    assert r["small_grad_fraction_on_layer"] == pytest.approx(4 / 5)
    assert r["mean_on_layer"] == pytest.approx(float(torch.sigmoid(z).mean()))
