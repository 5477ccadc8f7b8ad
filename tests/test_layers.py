"""MXNet semantics of the building blocks: BatchNorm, activations, SE, input normalisation, init."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fresnet import create_model
from fresnet.network.layers import MXBatchNorm, SEBlock, make_act


def test_batchnorm_training_updates_with_biased_variance_and_mxnet_momentum():
    bn = MXBatchNorm(3, momentum=0.9)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    bn.train()
    y = bn(x)
    mean = x.mean(dim=(0, 2, 3))
    var_biased = x.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var_biased)
    # output uses batch statistics
    ref = (x - mean.view(1, 3, 1, 1)) / torch.sqrt(var_biased.view(1, 3, 1, 1) + 2e-5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_batchnorm_eval_formula_and_fix_gamma():
    bn = MXBatchNorm(2, eps=1e-3, fix_gamma=True).eval()
    assert bn.weight is None and [n for n, _ in bn.named_parameters()] == ["bias"]
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    x = torch.randn(3, 2)
    expected = (x - bn.running_mean) / torch.sqrt(bn.running_var + 1e-3) + bn.bias
    torch.testing.assert_close(bn(x), expected)


def test_frozen_stats_do_not_move():
    bn = MXBatchNorm(3).train()
    bn.freeze_stats = True
    bn(torch.randn(4, 3, 2, 2))
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))


def test_activations():
    prelu = make_act("prelu", 7)
    assert isinstance(prelu, nn.PReLU) and prelu.weight.shape == (7,) and torch.all(prelu.weight == 0.25)
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(make_act("softrelu", 1)(x), torch.log1p(torch.exp(x)))
    torch.testing.assert_close(make_act("softsign", 1)(x), x / (1 + x.abs()))
    assert isinstance(make_act("relu", 3), nn.ReLU)


def test_se_block_has_biases_and_network_activation():
    se = SEBlock(64, lambda c: make_act("prelu", c))
    assert se.conv1.bias is not None and se.conv2.bias is not None
    assert se.conv1.out_channels == 4 and isinstance(se.relu1, nn.PReLU) and se.relu1.weight.numel() == 4
    x = torch.randn(2, 64, 5, 5)
    w = torch.sigmoid(se.conv2(se.relu1(se.conv1(x.mean(dim=(2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * w)


def test_input_is_normalised_by_the_network_with_1_over_128():
    model = create_model("r18", input_size=(32, 32)).eval()
    x = torch.full((1, 3, 32, 32), 255.0)
    torch.testing.assert_close(model.stem.norm(x), torch.full_like(x, (255 - 127.5) / 128))


def test_input_mode_2_uses_bn_data_on_raw_pixels():
    model = create_model("r18", net_input=2, input_size=(32, 32))
    assert model.stem.norm is None and model.stem.bn_data.fix_gamma and model.stem.bn_data.weight is None


def test_default_initialisation_matches_original_training():
    torch.manual_seed(0)
    model = create_model("r50")
    conv = model.stage3.unit5.conv1  # 256 -> 256, 3x3: fan_out = 256*9
    std = conv.weight.std().item()
    assert std == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    fc = model.head.pre_fc1  # (512, 25088): fan_out = 512
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    assert torch.all(fc.bias == 0)
    for m in model.modules():
        if isinstance(m, MXBatchNorm):
            assert m.weight is None or torch.all(m.weight == 1)
            assert torch.all(m.bias == 0)
        if isinstance(m, nn.PReLU):
            assert torch.all(m.weight == 0.25)
