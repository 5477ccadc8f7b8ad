"""The training step as the GPU runs it, checked on the CPU: no host syncs in the captured step
(``fullgraph`` compile), channels_last equal to NCHW, the compile fallback, deferred NaN checks,
the data pipeline (uint8 batches, workers, the device-decode path with a stand-in decoder)."""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

import fresnet.train
from fresnet.errors import FresnetError
from fresnet.network import create_model
from fresnet.network.layers import MXBatchNorm
from fresnet.train.config import load_config
from fresnet.train.losses import MARGIN_LOSSES, FullFCLoss, build_margin, margin_logits, margin_spec
from fresnet.train.optim import clip_grad_norm
from fresnet.train.partial_fc import PartialFC
from fresnet.train.step import StepSettings, TrainStep

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16], "emb_size": 32}


def tiny_model(head: str = "FC", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("r18", **{**TINY_NET, "net_output": head, **options}).train()


def batch(n: int = 8, classes: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, 16, 16, generator=gen) * 255).to(torch.uint8)
    return images, torch.randint(0, classes, (n,), generator=gen)


def make_step(model, fc, settings: StepSettings, **kwargs) -> TrainStep:
    opt = torch.optim.SGD(list(model.parameters()) + list(fc.parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return TrainStep(model, model, fc, opt, None, settings, torch.device("cpu"), **kwargs)


# ---- no host synchronisation in the step -----------------------------------------------------


def margin_for(loss: str, num_classes: int = 40):
    return margin_spec(loss) if loss == "softmax" else build_margin(loss, num_classes=num_classes)


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
@pytest.mark.parametrize("loss", [*MARGIN_LOSSES, "softmax"])
def test_loss_captures_as_one_graph(loss, sample_rate):
    """``fullgraph=True`` fails on anything that needs a value on the host (``nonzero``, ``item``,
    ``unique`` sizes): no margin loss has one, with or without class sampling."""
    torch._dynamo.reset()  # one compile per loss: no recompile limit across the parametrisation
    fc = PartialFC(32, 40, margin_for(loss), sample_rate=sample_rate, rank=0, world_size=1)
    eager = copy.deepcopy(fc)  # the same state (EMA buffers) for the eager reference
    compiled = torch.compile(fc, backend="aot_eager", fullgraph=True)
    embeddings = torch.randn(8, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = batch(classes=40)[1]
    torch.manual_seed(1)
    loss_value = compiled(embeddings, labels)
    torch.manual_seed(1)
    expected = eager(embeddings, labels)
    for name, value in eager.state_dict().items():  # the state moved the same way
        assert torch.allclose(fc.state_dict()[name], value, rtol=1e-5, atol=1e-6), name
    loss_value.backward()
    assert torch.allclose(loss_value, expected, rtol=1e-5, atol=1e-5) and embeddings.grad is not None


def test_backbone_and_loss_capture_as_one_graph():
    """The whole forward of a step (uint8 to float, MXNet BatchNorm with its moving statistics,
    dropout, PReLU, the sampled ArcFace loss) is one graph: nothing in it waits for the host."""
    model = tiny_model("E")
    fc = PartialFC(32, 40, margin_spec("arcface"), sample_rate=0.5, rank=0, world_size=1)

    def forward_loss(images, labels):
        return fc(model(images.float()).float(), labels)

    images, labels = batch(classes=40)
    loss = torch.compile(forward_loss, backend="aot_eager", fullgraph=True)(images, labels)
    loss.backward()
    assert math.isfinite(float(loss)) and model.stem.conv0.weight.grad is not None


def test_clip_grad_norm_captures_as_one_graph_and_clips():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad, params[1].grad = torch.full((3,), 3.0), torch.full((4,), 4.0)

    def clip():
        return clip_grad_norm(params[:1], params[1:], 1.0)

    norm = torch.compile(clip, backend="aot_eager", fullgraph=True)()
    assert float(norm) == pytest.approx(math.sqrt(27 + 64))
    assert math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params)) == pytest.approx(1.0, rel=1e-4)
    # a non-finite norm leaves the gradients alone (the loss check stops the run)
    params[0].grad = torch.tensor([float("inf"), 1.0, 1.0])
    clip_grad_norm(params[:1], params[1:], 1.0)
    assert params[0].grad[1] == 1.0


def test_sync_free_margin_logits_equal_the_indexed_rewrite():
    torch.manual_seed(0)
    cos = (torch.rand(12, 9) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 3, -1, 8, 3, -1, 1, 2, 5, 5, 0, -1])
    for s, m1, m2, m3 in [(64, 1, 0.5, 0), (64, 1, 0.3, 0.2), (30, 1, 0, 0.35), (64, 1.35, 0, 0)]:
        out = margin_logits(cos, labels, s, m1, m2, m3)
        rows = (labels >= 0).nonzero().squeeze(1)
        expected = cos.detach().clone() * s
        from fresnet.train.losses import target_logit

        expected[rows, labels[rows]] = target_logit(cos.detach()[rows, labels[rows]], m1, m2, m3) * s
        assert torch.equal(out.detach(), expected)


def test_static_class_sampling_keeps_every_positive_and_the_size():
    fc = PartialFC(8, 50, margin_spec("arcface"), sample_rate=0.3, rank=0, world_size=1)
    for seed in range(50):
        gen = torch.Generator().manual_seed(seed)
        labels = torch.randint(-1, 50, (int(torch.randint(1, 15, (1,), generator=gen)),), generator=gen)
        index, remapped = fc._sample(labels)
        assert index.numel() == 15 and set(labels[labels >= 0].tolist()) <= set(index.tolist())
        assert torch.equal(index, index.sort().values)
        owned = labels >= 0
        assert torch.equal(index[remapped[owned]], labels[owned]) and bool((remapped[~owned] == -1).all())


# ---- the step itself --------------------------------------------------------------------------


def test_channels_last_step_equals_nchw():
    images, labels = batch()
    results = []
    for channels_last in (False, True):
        model = tiny_model()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        fc = FullFCLoss(
            32, 20, margin_spec("arcface"), weight=torch.randn(20, 32, generator=torch.Generator().manual_seed(3))
        )
        step = make_step(model, fc, StepSettings(channels_last=channels_last))
        losses = [float(step(images, labels, 0.1)) for _ in range(3)]
        results.append((losses, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (l0, s0), (l1, s1) = results
    assert l0 == pytest.approx(l1, rel=1e-4)
    for key in s0:
        assert torch.allclose(s0[key], s1[key], rtol=1e-3, atol=1e-4), key


def test_uint8_and_float_batches_train_identically():
    images, labels = batch()
    losses = []
    for as_float in (False, True):
        model = tiny_model()
        fc = FullFCLoss(32, 20, margin_spec("cosface"), weight=torch.ones(20, 32))
        step = make_step(model, fc, StepSettings())
        losses.append([float(step(images.float() if as_float else images, labels, 0.1)) for _ in range(2)])
    assert losses[0] == losses[1]


def test_a_failing_compile_falls_back_and_restores_bn_statistics(monkeypatch, caplog):
    images, labels = batch()
    model, reference = tiny_model(), tiny_model()
    fc = FullFCLoss(32, 20, margin_spec("arcface"), weight=torch.ones(20, 32))
    fc_ref = copy.deepcopy(fc)

    def broken_compile(fn, mode=None, **kwargs):
        def run(*args):
            fn(*args)  # the failed attempt touches the BN statistics before failing
            raise RuntimeError("inductor: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    step = make_step(model, fc, StepSettings(compile="default"))
    with caplog.at_level("WARNING", logger="fresnet.train.step"):
        loss = float(step(images, labels, 0.1))
    warnings = [r.getMessage() for r in caplog.records if r.name == "fresnet.train.step"]
    assert len(warnings) == 1 and "torch.compile(default) failed" in warnings[0] and "no C++ compiler" in warnings[0]
    assert step.settings.compile is None
    expected = float(make_step(reference, fc_ref, StepSettings())(images, labels, 0.1))
    assert loss == pytest.approx(expected, rel=1e-6)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.allclose(a, b, atol=1e-6), name  # updated once, not twice


def test_bad_step_settings_are_refused_at_the_config():
    """amp and compile are checked once, where the config is read (not again in TrainStep)."""
    with pytest.raises(FresnetError, match="unknown compile 'fastest'"):
        load_config(tiny_run("/tmp/x", compile="fastest"))
    with pytest.raises(FresnetError, match="unknown amp 'fp8'"):
        load_config(tiny_run("/tmp/x", amp="fp8"))


def test_fixed_gamma_bn_trains_with_an_explicit_unit_scale():
    """CUDA's batch-norm backward rejects a missing weight; the fix_gamma BN passes ones instead,
    and the result equals the normalisation without any scale."""
    bn = MXBatchNorm(6, fix_gamma=True).train()
    assert bn.weight is None
    x = torch.randn(5, 6, requires_grad=True)
    y = bn(x)
    y.square().sum().backward()
    mean, var = x.detach().mean(0), x.detach().var(0, unbiased=False)
    assert torch.allclose(y.detach(), (x.detach() - mean) / torch.sqrt(var + bn.eps), atol=1e-5)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * var, atol=1e-6)
    assert x.grad is not None and bn.bias.grad is not None


# ---- the configuration and the loop -----------------------------------------------------------


def tiny_run(output, **overrides):
    cfg = {"network": "r18", "net": dict(TINY_NET), "loss": "cosface", "loss_s": 16.0, "dataset": "synthetic",
           "synthetic": {"num_identities": 10, "images_per_identity": 4, "holdout_identities": 6},
           "output": str(output), "max_steps": 4, "batch_size": 8, "progress": False, "log_every": 1}
    cfg.update(overrides)
    return cfg


def test_gpu_keys_resolve_per_device():
    cfg = load_config(tiny_run("/tmp/x"))
    assert cfg.compile_mode("cpu") is None and cfg.compile_mode("cuda") == "default"
    assert cfg.compile_mode("cuda", compiler_available=False) is None
    assert cfg.uses_channels_last("cuda") and not cfg.uses_channels_last("cpu")
    cfg = load_config(tiny_run("/tmp/x", compile="reduce-overhead", channels_last=True, num_workers=2))
    assert cfg.compile_mode("cpu") == "reduce-overhead" and cfg.uses_channels_last("cpu")
    assert load_config(tiny_run("/tmp/x", compile="none")).compile_mode("cuda") is None
    assert load_config(tiny_run("/tmp/x", compile=False)).compile_mode("cuda") is None
    assert load_config(tiny_run("/tmp/x"), ["compile=none"]).compile_mode("cuda") is None


@pytest.mark.parametrize("bad,match", [
    ({"compile": "fastest"}, "unknown compile"),
    ({"channels_last": "sometimes"}, "channels_last"),
    ({"decode": "tpu"}, "unknown decode"),
    ({"num_workers": -1}, "num_workers"),
])
def test_bad_gpu_keys_are_clear_errors(bad, match):
    with pytest.raises(FresnetError, match=match):
        load_config(tiny_run("/tmp/x", **bad))


def test_decode_gpu_on_cpu_is_refused(tmp_path):
    with pytest.raises(FresnetError, match="decode=gpu"):
        fresnet.train.run(tiny_run(tmp_path, decode="gpu", device="cpu"))


def test_deferred_loss_checks_name_the_step_that_diverged(tmp_path, monkeypatch):
    """With losses read every 3 steps (as on CUDA), a NaN is still reported at its own step, and
    no checkpoint holds weights from after it."""
    from fresnet.train import loop

    monkeypatch.setattr(loop.Trainer, "sync_interval", lambda self: 3)
    seen = []

    def poison(event, trainer):
        seen.append(trainer.step)

    real_launch = loop.Trainer._launch_step

    def launch(self, images, labels):
        loss = real_launch(self, images, labels)
        return loss * float("nan") if self.step == 5 else loss

    monkeypatch.setattr(loop.Trainer, "_launch_step", launch)
    with pytest.raises(loop.TrainingDiverged, match="at step 5"):
        fresnet.train.run(tiny_run(tmp_path, max_steps=9, log_every=9, checkpoint_every=6), callbacks=[poison])
    assert seen == [3]  # losses were read at step 3, then at 6, where step 5's NaN stopped the run
    assert not (tmp_path / "checkpoint.pt").exists()


def test_losses_are_read_in_batches_but_logged_per_row(tmp_path, monkeypatch):
    from fresnet.train import loop

    monkeypatch.setattr(loop.Trainer, "sync_interval", lambda self: 4)
    result = fresnet.train.run(tiny_run(tmp_path, max_steps=6, log_every=2))
    assert [int(r["step"]) for r in result.history] == [2, 4, 6]
    assert all(math.isfinite(float(r["loss"])) for r in result.history)


def test_explicit_workers_give_the_same_batches(tmp_path):
    """Worker processes decode the same samples in the same order (the batch plan is the sampler's)."""
    from fresnet.data import RecordIODataset
    from fresnet.data.synthetic import write_synthetic_dataset

    folder = tmp_path / "data"
    write_synthetic_dataset(folder, num_identities=6, images_per_identity=4, holdout_identities=4, pairs=10,
                            seed=0, size=16)
    a = fresnet.train.run(tiny_run(tmp_path / "a", dataset=str(folder), num_workers=0, max_steps=3))
    b = fresnet.train.run(tiny_run(tmp_path / "b", dataset=str(folder), num_workers=2, max_steps=3))
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert isinstance(RecordIODataset(folder).read_raw(0)[0], bytes)


def test_device_decoded_batches_equal_the_cpu_pipeline(tmp_path):
    """decode=gpu's loader, run with a CPU stand-in for the JPEG decoder, yields the batches the CPU
    pipeline yields: same samples, same mirror flips, same resize."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from fresnet.data import RecordIODataset
    from fresnet.data.synthetic import write_synthetic_dataset
    from fresnet.train.data import DeviceDecodedLoader, EncodedView, GlobalBatchSampler, TrainView, collate_encoded

    folder = tmp_path / "data"
    write_synthetic_dataset(folder, num_identities=6, images_per_identity=4, holdout_identities=4, pairs=10,
                            seed=0, size=24)
    dataset = RecordIODataset(folder)

    def pil_decode(encoded):
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(e.numpy().tobytes())).convert("RGB"))).permute(2, 0, 1)
                for e in encoded]

    for size in ((24, 24), (16, 16)):
        sampler = GlobalBatchSampler(len(dataset), 5, 0, 1, seed=1, start_step=0, max_steps=3, mirror=True)
        cpu = list(DataLoader(TrainView(dataset, size), batch_sampler=sampler))
        sampler = GlobalBatchSampler(len(dataset), 5, 0, 1, seed=1, start_step=0, max_steps=3, mirror=True)
        encoded = DataLoader(EncodedView(dataset), batch_sampler=sampler, collate_fn=collate_encoded)
        device = list(DeviceDecodedLoader(encoded, size, torch.device("cpu"), decode=pil_decode))
        assert len(cpu) == len(device) == 3
        for (x, y), (xd, yd) in zip(cpu, device):
            assert torch.equal(y, yd) and x.dtype == xd.dtype == torch.uint8
            assert (x.int() - xd.int()).abs().max() <= 1  # PIL's decoder on both sides; resize rounding


def test_decode_gpu_needs_encoded_records():
    from fresnet.train.data import EncodedView, InMemoryImages

    with pytest.raises(FresnetError, match="RecordIO"):
        EncodedView(InMemoryImages(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), np.zeros(2), 1))
