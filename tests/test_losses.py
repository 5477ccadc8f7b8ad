"""Margin-softmax losses: values against the closed forms, gradients with gradcheck (float64)."""
import math

import pytest
import torch
import torch.nn.functional as F

from fresnet.errors import FresnetError
from fresnet.train.losses import (
    LOSS_PRESETS,
    FullFCLoss,
    MarginSoftmaxLoss,
    margin_logits,
    margin_spec,
    target_logit,
    triplet_loss,
)


def test_presets_are_the_original_defaults():
    assert LOSS_PRESETS["softmax"].normalize is False
    assert (LOSS_PRESETS["nsoftmax"].s, LOSS_PRESETS["nsoftmax"].has_margin) == (64.0, False)
    arc = LOSS_PRESETS["arcface"]
    assert (arc.s, arc.m1, arc.m2, arc.m3) == (64.0, 1.0, 0.5, 0.0)
    cos = LOSS_PRESETS["cosface"]
    assert (cos.s, cos.m1, cos.m2, cos.m3) == (64.0, 1.0, 0.0, 0.35)
    comb = LOSS_PRESETS["combined"]
    assert (comb.s, comb.m1, comb.m2, comb.m3) == (64.0, 1.0, 0.3, 0.2)


def test_margin_logits_values():
    torch.manual_seed(0)
    cos = torch.rand(5, 7, dtype=torch.float64) * 1.6 - 0.8
    labels = torch.tensor([0, 3, 6, 2, 2])
    s, m1, m2, m3 = 30.0, 1.2, 0.3, 0.2
    out = margin_logits(cos, labels, s, m1, m2, m3)
    for i, y in enumerate(labels.tolist()):
        for j in range(7):
            c = cos[i, j].item()
            want = s * (math.cos(m1 * math.acos(c) + m2) - m3) if j == y else s * c
            assert out[i, j].item() == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined"])
def test_both_margins_at_once_and_each_alone(name):
    spec = LOSS_PRESETS[name]
    c = torch.tensor([0.6], dtype=torch.float64)
    got = target_logit(c, spec.m1, spec.m2, spec.m3).item()
    assert got == pytest.approx(math.cos(math.acos(0.6) + spec.m2) - spec.m3, abs=1e-12)
    assert got < 0.6  # a margin makes the target harder


def test_label_minus_one_gets_no_margin():
    cos = torch.full((2, 3), 0.5)
    out = margin_logits(cos, torch.tensor([-1, 1]), 10.0, 1.0, 0.5, 0.0)
    assert torch.allclose(out[0], torch.full((3,), 5.0))
    assert out[1, 1] < 5.0 and out[1, 0] == 5.0


def test_continuation_past_pi_is_continuous_and_decreasing():
    """The explicit continuation option (the default follows MXNet literally)."""
    m2 = 0.5
    theta = torch.linspace(0.01, math.pi - 0.01, 2001, dtype=torch.float64)
    values = target_logit(torch.cos(theta), 1.0, m2, 0.0, continuation=True)
    assert torch.all(values[1:] < values[:-1])  # strictly decreasing in theta
    t = math.pi - m2
    eps = 1e-7
    left = target_logit(torch.tensor([math.cos(t - eps)], dtype=torch.float64), 1.0, m2, continuation=True).item()
    right = target_logit(torch.tensor([math.cos(t + eps)], dtype=torch.float64), 1.0, m2, continuation=True).item()
    assert left == pytest.approx(-1.0, abs=1e-6) and right == pytest.approx(-1.0, abs=1e-6)
    # combined with m1 > 1 passes pi earlier; still monotone
    values = target_logit(torch.cos(theta), 1.5, 0.3, 0.2, continuation=True)
    assert torch.all(values[1:] < values[:-1])


def test_default_target_logit_is_the_mxnet_formula_past_pi():
    theta = torch.tensor([2.9, 3.0, 3.1], dtype=torch.float64)
    got = target_logit(torch.cos(theta), 1.0, 0.5, 0.0)
    assert torch.allclose(got, torch.cos(theta + 0.5), atol=1e-12)  # no switch: it rises again past pi


@pytest.mark.parametrize(
    "m1,m2,m3", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.0, 0.3, 0.2), (1.3, 0.2, 0.1), (1.0, 0.0, 0.0)]
)
def test_gradcheck_margin_logits(m1, m2, m3):
    torch.manual_seed(1)
    # include targets beyond the pi threshold (cos near -1) but away from the kink itself
    cos = (torch.rand(4, 6, dtype=torch.float64) * 1.8 - 0.9)
    cos[0, 2] = -0.99
    cos.requires_grad_(True)
    labels = torch.tensor([2, 0, 5, -1])
    assert torch.autograd.gradcheck(lambda c: margin_logits(c, labels, 8.0, m1, m2, m3), (cos,))


@pytest.mark.parametrize("name", list(LOSS_PRESETS))
def test_gradcheck_full_fc_losses(name):
    torch.manual_seed(2)
    spec = margin_spec(name, s=4.0) if name != "softmax" else margin_spec(name)
    w = torch.randn(6, 5, dtype=torch.float64)
    loss = FullFCLoss(5, 6, spec, weight=w).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 5, 3])
    params = [x, loss.weight] + ([loss.bias] if loss.bias is not None else [])

    assert torch.autograd.gradcheck(lambda *p: _functional(loss, p[0], p[1], p[2:], labels), tuple(params))
    # the module computes the same value as the functional form
    assert loss(x, labels).item() == pytest.approx(_functional(loss, x, loss.weight, params[2:], labels).item())


def _functional(loss, x, w, b, labels):
    if not loss.spec.normalize:
        logits = F.linear(x, w, b[0] if b else None)
    else:
        logits = loss.margin.logits(F.linear(F.normalize(x), F.normalize(w)), labels)
    return F.cross_entropy(logits, labels)


def test_softmax_preset_is_a_plain_fc_with_bias():
    spec = margin_spec("softmax")
    fc = FullFCLoss(4, 3, spec)
    assert fc.bias is not None
    assert FullFCLoss(4, 3, spec, no_bias=True).bias is None
    assert FullFCLoss(4, 3, margin_spec("arcface")).bias is None
    x = torch.randn(2, 4) * 10
    labels = torch.tensor([0, 2])
    want = F.cross_entropy(x @ fc.weight.T + fc.bias, labels)
    assert torch.allclose(fc(x, labels), want)


def test_arcface_loss_value_matches_hand_computation():
    spec = margin_spec("arcface")
    cos = torch.tensor([[0.8, 0.1, -0.2]])
    labels = torch.tensor([0])
    target = 64 * math.cos(math.acos(0.8) + 0.5)
    logits = torch.tensor([[target, 6.4, -12.8]])
    want = F.cross_entropy(logits, labels)
    assert MarginSoftmaxLoss(spec)(cos, labels).item() == pytest.approx(want.item(), rel=1e-5)


def test_margin_spec_errors():
    with pytest.raises(FresnetError, match="unknown loss"):
        margin_spec("sphereface")
    with pytest.raises(FresnetError, match="no margin"):
        margin_spec("softmax", m2=0.5)
    assert margin_spec("arcface", m2=0.4).m2 == 0.4


def test_triplet_loss_prefers_separated_classes():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    bad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [0.1, 0.99]])
    assert triplet_loss(good, labels).item() == 0.0
    assert triplet_loss(bad, labels).item() > 0.3
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: triplet_loss(x, labels), (x,))
