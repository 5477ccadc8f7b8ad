"""Training config loading, the schedules, clipping, AMP and the command line (no long runs)."""
import math
import subprocess
import sys

import pytest
import torch

from fresnet.errors import FresnetError
from fresnet.train.config import TrainConfig, builtin_names, load_config
from fresnet.train.optim import build_optimizer, clip_grad_norm, lr_at

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32}


def tiny(output, **overrides):
    cfg = {"network": "r18", "net": dict(TINY_NET), "loss": "cosface", "loss_s": 16.0, "dataset": "synthetic",
           "synthetic": {"num_identities": 10, "images_per_identity": 4, "holdout_identities": 6},
           "output": str(output), "max_steps": 2, "batch_size": 8, "progress": False}
    cfg.update(overrides)
    return cfg


def test_builtin_synthetic_r18_exists_and_loads():
    assert "synthetic-r18" in builtin_names()
    cfg = load_config("synthetic-r18")
    assert cfg.network == "r18" and cfg.dataset == "synthetic" and cfg.output and cfg.max_steps > 0
    assert cfg.net_config().num_layers == 18


def test_original_keys_and_overrides():
    cfg = load_config({"network": "r50", "loss": "cosface", "dataset": "/data/faces_emore", "per_batch_size": 32,
                       "lr_steps": "100000,160000", "emb_size": 256, "net_output": "GDC", "mom": 0.8})
    assert cfg.batch_size == 32 and cfg.momentum == 0.8 and cfg.lr_steps == [100000, 160000]
    net = cfg.net_config()
    assert (net.num_layers, net.emb_size, net.net_output) == (50, 256, "GDC")
    cfg = load_config("synthetic-r18", ["max_steps=7", "loss=combined", "loss_m2=0.25", "output=/tmp/x", "emb_size=64"])
    assert cfg.max_steps == 7 and cfg.margin().m2 == 0.25 and cfg.margin().m3 == 0.2 and cfg.output == "/tmp/x"
    assert cfg.net_config().emb_size == 64 and cfg.net_config().input_size == (32, 32)  # YAML net keys kept


@pytest.mark.parametrize("bad,match", [
    ({"lossy": 1}, "unknown key 'lossy'"),
    ({"loss": "sphere"}, "unknown loss"),
    ({"network": "r7"}, "unknown model"),
    ({"amp": "fp8"}, "unknown amp"),
    ({"max_steps": 0}, "max_steps"),
    ({"num_epoch": 3}, "max_steps"),
    ({"sample_rate": 0}, "sample_rate"),
])
def test_bad_keys_are_clear_errors(bad, match):
    with pytest.raises(FresnetError, match=match):
        load_config(bad)


def test_unknown_config_name_lists_builtins():
    with pytest.raises(FresnetError, match="synthetic-r18"):
        load_config("no-such-config")


def test_lr_schedules():
    cfg = TrainConfig(lr=0.1, lr_steps=[10, 20], max_steps=30).validate()
    assert [lr_at(cfg, s) for s in (0, 9, 10, 19, 20)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    cfg = TrainConfig(lr=0.1, lr_schedule="poly", warmup_steps=4, max_steps=14).validate()
    assert [lr_at(cfg, s) for s in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lr_at(cfg, 9) == pytest.approx(0.1 * 0.5 ** 2) and lr_at(cfg, 14) == 0.0


def test_fc7_multipliers_make_their_own_param_group():
    from fresnet.network.model import create_model
    from fresnet.train.losses import margin_spec
    from fresnet.train.partial_fc import PartialFC

    cfg = TrainConfig(fc7_lr_mult=10, fc7_wd_mult=0.5, wd=5e-4).validate()
    model = create_model("r18", **TINY_NET)
    fc = PartialFC(32, 5, margin_spec("arcface"), rank=0, world_size=1)
    opt = build_optimizer(cfg, model, fc)
    backbone, fc7 = opt.param_groups
    assert fc7["params"] == [fc.weight] and fc7["lr_mult"] == 10 and fc7["weight_decay"] == pytest.approx(2.5e-4)
    assert backbone["momentum"] == 0.9 and backbone["weight_decay"] == 5e-4


def test_clip_grad_norm_scales_to_the_limit():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    a.grad, b.grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    norm = clip_grad_norm([a], [b], 1.0)
    assert float(norm) == pytest.approx(math.sqrt(27 + 64))
    assert math.sqrt(a.grad.pow(2).sum() + b.grad.pow(2).sum()) == pytest.approx(1.0, rel=1e-4)


def test_bf16_autocast_clipping_and_checkpointing_run_on_cpu(tmp_path):
    import fresnet.train

    result = fresnet.train.run(tiny(tmp_path, amp="bf16", clip_grad_norm=5.0, grad_checkpointing=True,
                                    sample_rate=0.5, fc7_lr_mult=2.0))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert result.model_path.is_file()


def test_fp16_on_cpu_is_refused(tmp_path):
    import fresnet.train

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(FresnetError, match="fp16 needs CUDA"):
        fresnet.train.run(tiny(tmp_path, amp="fp16"))


def test_cli_help_and_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fresnet", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "torchrun" in out.stdout and "--resume" in out.stdout
    out = subprocess.run([sys.executable, "-m", "fresnet", "train", "synthetic-r18", "bogus_key=1"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown key 'bogus_key'" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "fresnet", "train", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "missing.yaml" in out.stderr


def test_warmup_as_a_fraction_of_max_steps():
    cfg = TrainConfig(lr=1.0, lr_schedule="poly", warmup_steps=0.1, max_steps=100).validate()
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    short = load_config("synthetic-r18", ["max_steps=3"])  # the built-in's warm-up scales with the run
    assert 0 < lr_at(short, 0) <= short.lr
