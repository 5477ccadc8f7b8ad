"""Structure of the residual units and heads: stride positions, shortcuts, dropout, GNAP coupling."""
from __future__ import annotations

import torch
from torch import nn

from fresnet import create_model
from fresnet.network.units import UnitV1, UnitV1Bottleneck, UnitV2, UnitV3, UnitV3Bottleneck


def tiny(**options):
    options.setdefault("input_size", (32, 32))
    return create_model(num_layers=None, units=[1, 2, 1, 1], **options)


def test_v1_vs_v1_L_stride_position():
    v1_l = tiny(net_unit=1).stage2.unit1
    v1 = tiny(net_unit=1, net_input=0, input_size=(64, 64)).stage2.unit1
    assert isinstance(v1_l, UnitV1) and isinstance(v1, UnitV1)
    assert v1_l.conv1.stride == (1, 1) and v1_l.conv2.stride == (2, 2)
    assert v1.conv1.stride == (2, 2) and v1.conv2.stride == (1, 1)
    b_l = tiny(net_unit=1, bottle_neck=True).stage2.unit1
    b = tiny(net_unit=1, bottle_neck=True, net_input=0, input_size=(64, 64)).stage2.unit1
    assert isinstance(b_l, UnitV1Bottleneck)
    assert b_l.conv3.stride == (2, 2) and b_l.conv1.stride == (1, 1)
    assert b.conv1.stride == (2, 2) and b.conv3.stride == (1, 1)


def test_v2_shortcut_is_bare_conv_on_act1():
    unit = tiny(net_unit=2).stage2.unit1
    assert isinstance(unit, UnitV2) and isinstance(unit.sc, nn.Conv2d) and not hasattr(unit, "conv1sc")
    unit.eval()
    x = torch.randn(2, 64, 8, 8)
    act1 = unit.relu1(unit.bn1(x))
    body = unit.conv2(unit.relu2(unit.bn2(unit.conv1(act1))))
    torch.testing.assert_close(unit(x), body + unit.sc(act1))


def test_v3_has_no_activation_after_add():
    unit = tiny(net_unit=3).stage1.unit1
    assert isinstance(unit, UnitV3) and unit.conv2.stride == (2, 2)
    unit.eval()
    x = torch.randn(2, 64, 8, 8)
    out = unit(x)
    assert (out < 0).any()  # a trailing ReLU/PReLU-free sum keeps negative values
    body = unit.bn3(unit.conv2(unit.relu1(unit.bn2(unit.conv1(unit.bn1(x))))))
    torch.testing.assert_close(out, body + unit.sc(unit.conv1sc(x)))


def test_resnext_groups_and_width():
    unit = tiny(net_unit="3x", bottle_neck=True).stage2.unit1
    assert isinstance(unit, UnitV3Bottleneck)
    assert unit.conv1.groups == 32 and unit.conv2.groups == 32 and unit.conv3.groups == 1
    assert unit.conv2.out_channels == 256  # 0.5 * 512
    assert unit.conv3.stride == (2, 2)


def test_bottleneck_trunk_ends_with_convd():
    model = tiny(bottle_neck=True)
    assert model.reduce.convd.out_channels == 512 and model.reduce.convd.bias is None


def test_dropout_only_where_the_original_has_it():
    for head, has in [("E", True), ("Z", True), ("F", True), ("FC", False), ("I", False), ("G", False), ("J", False)]:
        drops = [m for m in tiny(net_output=head).head.modules() if isinstance(m, nn.Dropout)]
        assert bool(drops) == has, head
        assert all(m.p == 0.4 for m in drops)


def test_biases_only_where_the_original_has_them():
    model = tiny(net_output="SFC", net_se=1)
    with_bias = sorted(
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None
    )
    assert all(".se." in n or n in ("head.convf2", "head.pre_fc1") for n in with_bias)
    assert "head.convf2" in with_bias and "head.pre_fc1" in with_bias


def test_gnap_couples_samples_in_a_batch():
    model = tiny(net_output="GNAP").eval()
    x = torch.rand(2, 3, 32, 32) * 255
    together = model(x)
    alone = torch.cat([model(x[:1]), model(x[1:])])
    assert not torch.allclose(together, alone, atol=1e-6)
    # the mean of the per-position norms over the whole batch is what couples them
    head = model.head
    feats = head.bn6f(model.forward_features(x))
    norm = feats.pow(2).sum(1, keepdim=True).sqrt()
    expected = head.fc1((feats * (norm.mean() / norm)).mean(dim=(2, 3)))
    torch.testing.assert_close(together, expected)


def test_non_square_input_and_z_head():
    model = create_model("r18", input_size=(112, 96)).eval()
    assert model.head.pre_fc1.in_features == 512 * 7 * 6
    assert model(torch.rand(1, 3, 112, 96) * 255).shape == (1, 512)
    z = create_model("r18", net_output="Z", input_size=(32, 32)).eval()
    assert z(torch.rand(2, 3, 32, 32)).shape == (2, 512, 2, 2)


def test_grad_checkpointing_by_unit_names_keeps_gradients():
    torch.manual_seed(0)
    model = tiny(net_output="FC")
    x = torch.rand(4, 3, 32, 32) * 255
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    ref_stats = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    model.zero_grad()
    model.set_grad_checkpointing(["stage1.unit1", "stage2.unit2"])
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():  # BN moving stats updated once, not twice
        torch.testing.assert_close(v, ref_stats[k])
