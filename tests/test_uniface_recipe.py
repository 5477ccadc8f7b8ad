"""UniFace's literal clamps have a dead zone, and the trainer says how the authors stay out of it.

Once the learned bias passes s*(1 + cos - m) for a row's target and s*(1 + cos) for its non-targets,
both clamps of the authors' formula saturate: the loss is s (plus (C-1)*log(1 + e^-s)) and no
gradient reaches the cosines or the bias. UniFace's own trainer clips the global gradient norm at 10
(CVI-SZU/UniFace train.py), which keeps the bias out of that zone; docs/training.md has the runs."""
from __future__ import annotations

import logging
import math

import torch

from fresnet.train.losses import build_margin
from test_margin_training import tiny_config


def _loss_and_grads(bias: float):
    torch.manual_seed(0)
    module = build_margin("uniface", num_classes=6).double()
    with torch.no_grad():
        module.bias.fill_(bias)
    cos = (torch.rand(4, 6, dtype=torch.float64) * 2 - 1).requires_grad_()
    loss = module(cos, torch.tensor([0, 3, 5, 3]))
    loss.backward()
    return loss, cos.grad, module.bias.grad


def test_past_the_clamps_the_loss_is_s_and_nothing_learns():
    s = 64.0
    loss, grad_cos, grad_bias = _loss_and_grads(2 * s + 1)  # beyond s*(1 + cos) for every cos in [-1, 1]
    assert math.isclose(float(loss.detach()), s + 6 * math.log1p(math.exp(-s)), rel_tol=1e-12)
    assert torch.count_nonzero(grad_cos) == 0 and float(grad_bias) == 0.0
    loss, grad_cos, grad_bias = _loss_and_grads(math.log(60))  # the initial bias, log(10 * C)
    assert torch.count_nonzero(grad_cos) > 0 and float(grad_bias) != 0.0


def test_training_uniface_without_clipping_warns(tmp_path, caplog):
    import fresnet.train

    with caplog.at_level(logging.WARNING, logger="fresnet.train.loop"):
        fresnet.train.run(tiny_config(tmp_path / "a", "uniface", max_steps=1, checkpoint_every=0))
    assert "clip_grad_norm=10 as the authors do" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fresnet.train.loop"):
        fresnet.train.run(tiny_config(tmp_path / "b", "uniface", max_steps=1, checkpoint_every=0, clip_grad_norm=10))
        fresnet.train.run(tiny_config(tmp_path / "c", "cosface", max_steps=1, checkpoint_every=0))
    assert "clip_grad_norm" not in caplog.text
