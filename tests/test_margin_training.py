"""Every build_margin loss in the trainer: Partial FC on two gloo ranks equals one process (sample
rate 1), sampling (< 1) keeps the ranks in step, the loss state resumes bit-exactly, configs select
losses by name with their options, and ``fresnet train --list-losses`` prints them."""
from __future__ import annotations

import copy
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fresnet.errors import FresnetError
from fresnet.train.config import load_config
from fresnet.train.distributed import gather_rows
from fresnet.train.losses import MARGIN_LOSSES, build_margin
from fresnet.train.partial_fc import PartialFC

LOSSES = list(MARGIN_LOSSES)
CLASSES, EMB, ROWS = 9, 6, 8  # 9 classes: shards of 5 and 4


def _inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(ROWS, EMB, generator=gen) * torch.tensor([3, 8, 15, 25, 40, 60, 90, 130.0])[:, None] / 6
    labels = torch.tensor([0, 8, 4, 5, 1, 8, 3, 6])
    return x, labels


def _classifier(name, rank=None, world_size=None, sample_rate=1.0):
    margin = build_margin(name, num_classes=CLASSES, **({"s": 16.0} if "s" in MARGIN_LOSSES[name].defaults else {}))
    rows = CLASSES * getattr(margin, "K", 1)
    weight = torch.randn(rows, EMB, generator=torch.Generator().manual_seed(2)) * 0.1
    return PartialFC(EMB, CLASSES, margin, sample_rate, rank=rank, world_size=world_size, init_weight=weight)


def _one_step(fc, x):
    torch.manual_seed(7)  # ElasticFace's draws (rank 0's, broadcast)
    mine = x.clone().requires_grad_()
    fc.train()
    return mine


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, labels = _inputs()
        half = ROWS // 2
        for name in LOSSES:
            fc = _classifier(name)  # rank and world from the group
            mine = _one_step(fc, x[rank * half:(rank + 1) * half])
            loss = fc(mine, labels[rank * half:(rank + 1) * half])
            loss.backward()
            grad_w = gather_rows(fc.weight.grad, fc.counts)
            bias_grad = None if getattr(fc.margin, "bias", None) is None else fc.margin.bias.grad.clone()
            out[(rank, name)] = (loss.detach(), mine.grad / 2, grad_w, fc.margin_state(), bias_grad)  # /2: DDP's mean
            sampled = _classifier(name, sample_rate=0.5)
            torch.manual_seed(11 + rank)  # the class sampling differs per rank, as in training
            value = sampled(
                x[rank * half : (rank + 1) * half].clone().requires_grad_(), labels[rank * half : (rank + 1) * half]
            )
            value.backward()
            out[(rank, name, "sampled")] = value.detach()
        # data-parallel without Partial FC: each rank has its own rows, the statistics span the group
        cos = torch.rand(ROWS, CLASSES, generator=torch.Generator().manual_seed(4)) * 2 - 1
        norms = x.norm(dim=1)
        mine = slice(rank * half, (rank + 1) * half)
        for name in ("adaface", "curricularface"):
            module = build_margin(name, t_alpha=1.0) if name == "adaface" else build_margin(name, alpha=1.0)
            module.process_group = dist.group.WORLD
            module(cos[mine], labels[mine], norms[mine])
            out[(rank, name, "group")] = {k: v.clone() for k, v in module.state_dict().items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_rank_for_every_loss():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    x, labels = _inputs()
    for name in LOSSES:
        fc = _classifier(name, 0, 1)
        mine = _one_step(fc, x)
        ref = fc(mine, labels)
        ref.backward()
        for rank in (0, 1):
            loss, grad_x, grad_w, state, bias_grad = out[(rank, name)]
            assert loss.item() == pytest.approx(ref.item(), rel=1e-5), name
            want = mine.grad[rank * 4:(rank + 1) * 4]
            assert torch.allclose(grad_x, want, atol=1e-6 * want.abs().max(), rtol=1e-4), name
            assert torch.allclose(grad_w, fc.weight.grad, atol=1e-6 * fc.weight.grad.abs().max(), rtol=1e-4), name
            for key, value in fc.margin_state().items():
                assert torch.allclose(state[key], value, rtol=1e-6), (name, key)
            if bias_grad is not None:
                assert torch.allclose(bias_grad, fc.margin.bias.grad, rtol=1e-5), name
        a, b = out[(0, name, "sampled")], out[(1, name, "sampled")]
        assert torch.isfinite(a) and torch.equal(a, b), name  # every rank computes the same loss
    cos = torch.rand(ROWS, CLASSES, generator=torch.Generator().manual_seed(4)) * 2 - 1
    for name in ("adaface", "curricularface"):
        whole = build_margin(name, t_alpha=1.0) if name == "adaface" else build_margin(name, alpha=1.0)
        whole(cos, labels, x.norm(dim=1))
        for rank in (0, 1):
            for key, value in whole.state_dict().items():
                assert torch.allclose(out[(rank, name, "group")][key], value, rtol=1e-6), (name, key)


def test_sub_center_sampling_keeps_whole_classes():
    fc = _classifier("subcenter_arcface", 0, 1, sample_rate=0.5)
    torch.manual_seed(3)  # the forward below draws the same random classes as this call
    index, _remapped = fc._sample(torch.tensor([0, 4, 4, 8]))
    rows = fc._rows(index)
    assert rows.tolist() == [r for c in index.tolist() for r in range(3 * c, 3 * c + 3)]
    x = torch.randn(4, EMB)
    torch.manual_seed(3)
    loss = fc(x, torch.tensor([0, 4, 4, 8]))
    loss.backward()
    touched = (fc.weight.grad.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert set(touched) <= set(rows.tolist())


def test_margin_state_lives_in_the_classifier():
    fc = _classifier("adaface", 0, 1)
    assert set(fc.state_dict()) == {"weight", "margin.batch_mean", "margin.batch_std"}
    fc2 = _classifier("sphereface2", 0, 1)
    assert [n for n, _ in fc2.named_parameters()] == ["weight", "margin.bias"]
    snapshot = copy.deepcopy(fc.state_dict())
    x, labels = _inputs()
    fc(x, labels)
    assert not torch.equal(fc.margin.batch_mean, snapshot["margin.batch_mean"])  # updated in training mode


# ---- the config --------------------------------------------------------------------------------
def test_config_selects_losses_by_name_with_options():
    cfg = load_config({"loss": "adaface", "loss_options": {"m": 0.5, "t_alpha": 0.1}})
    margin = cfg.margin(num_classes=10)
    assert margin.name == "adaface" and (margin.m, margin.t_alpha) == (0.5, 0.1)
    cfg = load_config({"loss": "arcface", "loss_s": 32, "loss_m2": 0.4, "loss_options": {"grad": "straight_through"}})
    assert cfg.margin_options() == ("arcface", {"s": 32.0, "m": 0.4, "grad": "straight_through"})
    assert load_config({"loss": "cosface", "loss_m3": 0.3}).margin_options() == ("cosface", {"m": 0.3})
    assert load_config({"loss": "nsoftmax"}).margin_options() == ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.0})
    assert load_config({"loss": "sphereface2"}).margin(num_classes=5).num_classes == 5
    assert load_config({"loss": "softmax"}).margin().normalize is False
    assert load_config(None, ["loss=magface", "loss_options={lambda_g: 0}"]).margin().lambda_g == 0.0


@pytest.mark.parametrize("bad,match", [
    ({"loss": "arcfce"}, "unknown loss 'arcfce'; choose one of combined, arcface"),
    ({"loss": "adaface", "loss_options": {"margin": 0.4}}, r"unknown option\(s\) margin"),
    ({"loss": "arcface", "loss_m2": 0.4, "loss_options": {"m": 0.3}}, "set twice"),
    ({"loss": "adaface", "loss_m2": 0.4}, "loss_m2 does not apply to loss adaface"),
    ({"loss": "curricularface", "loss_options": {"process_group": 1}}, "set by the trainer"),
    ({"loss": "arcface", "loss_options": {"grad": "fast"}}, "not one of exact, straight_through"),
    ({"loss": "softmax", "loss_options": {"s": 3}}, "takes no loss_options"),
])
def test_bad_loss_configs_are_clear_errors(bad, match):
    with pytest.raises(FresnetError, match=match):
        load_config(bad)


def test_list_losses_prints_every_name_and_default(capsys):
    from fresnet.cli import main

    assert main(["train", "--list-losses"]) == 0
    text = capsys.readouterr().out
    for name in MARGIN_LOSSES:
        assert name in text
    assert "t_alpha=0.01" in text and "num_classes (required" in text and "grad=exact" in text


# ---- resume ------------------------------------------------------------------------------------
TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32,
            "net_output": "FC"}


def tiny_config(output, loss, **overrides):
    cfg = {
        "network": "r18", "net": dict(TINY_NET), "loss": loss, "dataset": "synthetic",
        "synthetic": {"num_identities": 12, "images_per_identity": 4, "holdout_identities": 4, "seed": 3},
        "output": str(output), "max_steps": 4, "batch_size": 8, "lr": 0.05, "log_every": 1,
        "progress": False, "seed": 5, "checkpoint_every": 2, "val_targets": [],
    }
    cfg.update(overrides)
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["adaface", "curricularface", "sphereface2", "uniface", "subcenter_arcface",
                                  "elasticface_arc_plus", "magface", "sphereface"])
def test_resume_is_bit_exact_with_the_loss_state(tmp_path, loss):
    import fresnet.train

    saved = tmp_path / "at2"

    def keep_step_two(event, trainer):
        if event == "checkpoint" and trainer.step == 2:
            saved.mkdir()
            shutil.copy(trainer.ckpt_path, saved / "checkpoint.pt")

    straight = fresnet.train.run(tiny_config(tmp_path / "straight", loss), callbacks=[keep_step_two])
    resumed = fresnet.train.run(tiny_config(saved, loss), resume=True)
    assert resumed.final_loss == straight.final_loss
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(saved / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["fc"]["weight"], b["fc"]["weight"])
    assert a["margin"].keys() == b["margin"].keys()
    for key in a["margin"]:
        assert torch.equal(a["margin"][key], b["margin"][key]), key
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    if loss in ("adaface", "curricularface", "sphereface2", "uniface"):
        assert a["margin"]  # the state is there, and it moved
        fresh = build_margin(loss, num_classes=12).state_dict()
        assert any(not torch.equal(a["margin"][k], fresh[k].float()) for k in fresh)


def test_resume_refuses_another_losss_state(tmp_path):
    import fresnet.train

    fresnet.train.run(tiny_config(tmp_path, "adaface", max_steps=2))
    with pytest.raises(FresnetError, match="loss state"):
        fresnet.train.run(tiny_config(tmp_path, "curricularface", max_steps=3), resume=True)


def test_subcenter_drop_keeps_the_dominant_centre_and_close_samples():
    from fresnet.train.subcenter_drop import subcenter_drop

    torch.manual_seed(0)
    classes, K, dim = 4, 3, 16
    weight = torch.randn(classes * K, dim)
    dominant = torch.tensor([2, 0, 1, 2])
    embeddings, labels = [], []
    for c in range(classes):
        centre = weight[c * K + int(dominant[c])]
        embeddings += [centre + 0.1 * torch.randn(dim) for _ in range(6)]  # clean samples
        embeddings.append(-centre)  # a mislabelled one, 180 degrees away
        labels += [c] * 7
    drop = subcenter_drop(weight, torch.stack(embeddings), torch.tensor(labels), K)
    assert torch.equal(drop.dominant, dominant)
    assert torch.equal(drop.centres, weight.reshape(classes, K, dim)[torch.arange(classes), dominant])
    assert drop.keep.tolist() == ([True] * 6 + [False]) * classes
    assert float(drop.angle_deg.max()) == pytest.approx(180.0, abs=1e-3)
    with pytest.raises(FresnetError, match="C\\*K"):
        subcenter_drop(weight[:-1], torch.stack(embeddings), torch.tensor(labels), K)
