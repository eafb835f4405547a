"""The shared facts: the scalar sigmoid and its inverse against torch (the oracle), at the extremes too."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.facts import logit, sigmoid
from pipeline.lesson import activations
from pipeline.model.predict import _logits_of_scores

# from deep in the tails (where a naive exp overflows) through the middle
Z = [-1000.0, -745.0, -709.0, -100.0, -30.0, -16.6, -5.0, -0.5, -1e-9, 0.0, 1e-9, 0.5, 5.0, 16.6, 30.0, 100.0, 709.0,
     710.0, 1000.0]


@pytest.mark.parametrize("z", Z)
def test_sigmoid_matches_torch_and_never_overflows(z):
    expected = float(torch.sigmoid(torch.tensor(z, dtype=torch.float64)))
    assert sigmoid(z) == pytest.approx(expected, rel=1e-15, abs=1e-300)
    assert 0.0 <= sigmoid(z) <= 1.0


def test_lesson_sigmoid_agrees_with_torch_and_with_facts_in_the_tails():
    # the lesson writes the formula as taught, 1 / (1 + e^-z); float64 torch keeps it finite at both ends
    z = torch.tensor(Z, dtype=torch.float64)
    lesson = activations.sigmoid(z)
    assert torch.isfinite(lesson).all()
    torch.testing.assert_close(lesson, torch.sigmoid(z), rtol=1e-15, atol=1e-300)
    assert [float(v) for v in lesson] == pytest.approx([sigmoid(v) for v in Z], rel=1e-15, abs=1e-300)


@pytest.mark.parametrize("p", [1e-300, 1e-12, 1e-6, 0.01, 0.25, 0.5, 0.75, 0.99, 1 - 1e-6, 1 - 1e-12])
def test_logit_matches_torch(p):
    assert logit(p) == pytest.approx(float(torch.logit(torch.tensor(p, dtype=torch.float64))), rel=1e-14)


@pytest.mark.parametrize("z", [-700.0, -40.0, -16.6, -3.0, -0.1, 0.0, 0.1, 3.0, 16.6])
def test_logit_inverts_sigmoid(z):
    # below zero the round trip is exact to float64; above, 1 - sigmoid(z) loses digits as e^-z shrinks
    assert logit(sigmoid(z)) == pytest.approx(z, rel=1e-9, abs=1e-12)


def test_logit_ends_and_domain():
    assert logit(0.0) == -math.inf and logit(1.0) == math.inf
    with pytest.raises(ValueError):
        logit(1.5)
    with pytest.raises(ValueError):
        logit(-0.1)


def test_exported_backend_logits_match_torch_logit_with_the_same_clamp():
    # what predict writes when an exported model gives only scores: torch.logit(p, eps) clamps the same way
    scores = torch.tensor([0.0, 1e-13, 0.001, 0.25, 0.5, 0.9, 0.99999994, 1.0], dtype=torch.float32)
    got = _logits_of_scores(scores)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.logit(scores.double(), eps=1e-12).float(), rtol=1e-6, atol=1e-6)
