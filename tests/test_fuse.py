"""BN folding is exact for every unit type and head, and folds what it claims to."""
from __future__ import annotations

import pytest
import torch

from fresnet import create_model
from fresnet.inference.fuse import count_batchnorms, fold_batchnorm
from fresnet.network.layers import MXBatchNorm

CASES = [
    dict(net_unit=1, net_output="E"),
    dict(net_unit=1, net_input=0, net_output="FC", input_size=(64, 64)),
    dict(net_unit=2, net_output="F", net_se=1),
    dict(net_unit=3, net_output="SFC"),
    dict(net_unit=3, net_output="GAP", net_act="relu"),
    dict(net_unit=3, net_output="GNAP", emb_size=128),
    dict(net_unit=3, net_output="GNAP", emb_size=1024),
    dict(net_unit=3, net_output="J", net_input=2),
    dict(net_unit=3, net_output="H"),
    dict(net_unit=3, net_output="Z"),
    dict(net_unit=1, bottle_neck=True, net_output="G"),
    dict(net_unit=2, bottle_neck=True, net_output="I"),
    dict(net_unit=3, bottle_neck=True, net_output="E", net_se=1),
    dict(net_unit="3x", bottle_neck=True, net_output="E"),
]


def randomize_bn_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN parameters and statistics, so a wrong fold cannot hide."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MXBatchNorm):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(1 + 0.3 * torch.randn(n, generator=generator))
                m.bias.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_fold_is_exact(options):
    size = options.pop("input_size", (112, 112) if options.get("net_output") in ("GDC",) else (32, 32))
    model = create_model(units=[1, 2, 1, 1], num_layers=None, input_size=size, **options).double().eval()
    generator = torch.Generator().manual_seed(0)
    randomize_bn_(model, generator)
    x = torch.rand(3, 3, *size, generator=generator, dtype=torch.float64) * 255
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) < count_batchnorms(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    # the original is untouched
    assert count_batchnorms(model) == sum(isinstance(m, MXBatchNorm) for m in model.modules())


def test_fold_gdc_and_leaves_only_unfoldable_bns():
    model = create_model("r18", net_output="GDC").double().eval()
    randomize_bn_(model, torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model)
    x = torch.rand(2, 3, 112, 112, dtype=torch.float64) * 255
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    # in an IR (unit 3) basic net only each unit's bn1, in front of a padded 3x3 conv, must remain
    remaining = [n for n, m in folded.named_modules() if isinstance(m, MXBatchNorm)]
    assert remaining and all(n.endswith(".bn1") for n in remaining)
