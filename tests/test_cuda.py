"""Training on CUDA: every unit and head forward and backward against the CPU in float64, no host
syncs in a steady step, ``fresnet train`` in each precision (with and without compile, CUDA graphs,
grad checkpointing, class sampling), resume after SIGKILL, torchrun with nccl, JPEG decode on the GPU.

Skipped, with the reason, where CUDA is absent (every CPU machine: CI). ``benchmarks/gpu_check.sh``
runs this file on a GPU machine: ``pytest -m cuda``.
"""
from __future__ import annotations

import copy
import csv
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

# FRESNET_CUDA_TESTS_ON=cpu runs the same tests on the CPU (minus the CUDA-only ones): the dry run of
# benchmarks/gpu_check.sh uses it to check the tests themselves where no GPU is at hand.
DEVICE = os.environ.get("FRESNET_CUDA_TESTS_ON", "cuda")
DRY = DEVICE == "cpu"
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (DRY or torch.cuda.is_available()), reason="needs CUDA")]
cuda_only = pytest.mark.skipif(DRY, reason="CUDA-only behaviour (dry run on the CPU)")

NARROW = {"filter_list": [16, 16, 32, 32, 64], "emb_size": 32}


@pytest.fixture
def exact_fp32():
    """TF32 off: the float32 comparison with float64 must not see 10-bit-mantissa convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # masks differ between devices; the rest must agree
    return model


def _close(a: torch.Tensor, b: torch.Tensor, rel: float, floor: float = 0.0) -> bool:
    """max |a - b| within ``rel`` of b's own scale, or of ``floor`` (for tensors that are ~0 in exact
    arithmetic, e.g. the bias gradient of a BN that another BN follows)."""
    scale = max(b.abs().max().item(), floor) or 1.0
    return (a.double().cpu() - b.double().cpu()).abs().max().item() <= rel * scale


UNIT_CASES = [
    dict(net_unit=1), dict(net_unit=1, net_input=0, size=64), dict(net_unit=2), dict(net_unit=3),
    dict(net_unit=3, net_se=1), dict(net_unit=2, net_se=1, net_act="relu"), dict(net_unit=3, net_input=2),
    dict(net_unit=1, bottle_neck=True, filter_list=[16, 32, 32, 64, 64]),
    dict(net_unit=2, bottle_neck=True, filter_list=[16, 32, 32, 64, 64]),
    dict(net_unit=3, bottle_neck=True, filter_list=[16, 32, 32, 64, 64], net_se=1),
    dict(net_unit="3x", bottle_neck=True, filter_list=[32, 64, 64, 128, 128]),  # groups of 32 channels
    dict(net_unit=3, net_act="sigmoid"), dict(net_unit=3, net_act="softrelu"),
]
HEADS = ["Z", "E", "FC", "SFC", "GAP", "GNAP", "GDC", "F", "G", "H", "I", "J"]


def _case_model(case: dict):
    from fresnet.network import create_model

    case = dict(case)
    size = case.pop("size", 32)
    if case.get("net_output") == "GDC":
        size = 112  # GDC's 7x7 depthwise kernel needs a 7x7 trunk
    options = {**NARROW, "units": [1, 1, 1, 1], "input_size": (size, size), **case}
    torch.manual_seed(0)
    return _no_dropout(create_model(**options)), size


@pytest.mark.parametrize("case", UNIT_CASES + [dict(net_output=h) for h in HEADS],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items() if k != "filter_list"))
def test_forward_backward_on_cuda_matches_cpu_float64(case, exact_fp32):
    model, size = _case_model(case)
    ref = copy.deepcopy(model).double().train()
    gpu = model.to(DEVICE).train()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, size, size, generator=gen, dtype=torch.float64) * 255
    out_ref = ref(x)
    out_gpu = gpu(x.float().to(DEVICE))
    assert _close(out_gpu, out_ref, 2e-4), (out_gpu.double().cpu() - out_ref).abs().max()
    weights = torch.randn(out_ref.shape, generator=gen, dtype=torch.float64)
    (out_ref * weights).sum().backward()
    (out_gpu * weights.float().to(DEVICE)).sum().backward()
    floor = 1e-3 * max(p.grad.abs().max().item() for p in ref.parameters() if p.grad is not None)
    for (name, p_ref), (_, p_gpu) in zip(ref.named_parameters(), gpu.named_parameters()):
        if p_ref.grad is None:
            assert p_gpu.grad is None, name
            continue
        # float32 vs float64 through a batch of 4 (BN over few values amplifies rounding): 5e-3 of the
        # scale still catches a wrong kernel, whose error is of the order of the gradient itself
        assert _close(p_gpu.grad, p_ref.grad, 5e-3, floor), (name, (p_gpu.grad.double().cpu() - p_ref.grad).abs().max())
    for (name, b_ref), (_, b_gpu) in zip(ref.named_buffers(), gpu.named_buffers()):
        # BN moving statistics (MXNet's rule); a mean near 0 is compared at the activations' scale (~1)
        assert _close(b_gpu, b_ref, 1e-4, floor=1.0), (name, (b_gpu.double().cpu() - b_ref).abs().max())


@cuda_only
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_low_precision_forward_backward_stays_close(amp):
    from fresnet.network import create_model

    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    torch.manual_seed(0)
    model = _no_dropout(create_model("r18", input_size=(64, 64), **NARROW)).cuda().train()
    low = copy.deepcopy(model)
    x = torch.rand(8, 3, 64, 64, device="cuda") * 255
    out = model(x)
    with torch.autocast("cuda", dtype=dtype):
        out_low = low(x)
    cos = torch.nn.functional.cosine_similarity(out.float(), out_low.float(), dim=1)
    assert cos.min().item() > 0.99
    out.square().sum().backward()
    out_low.float().square().sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), low.named_parameters()):
        c = torch.nn.functional.cosine_similarity(p.grad.flatten().float(), q.grad.flatten().float(), dim=0)
        assert c.item() > 0.95, (name, c.item())


def _steady_steps_on_cuda(margin, amp: str) -> list:
    """Three steady steps (after one warm-up) of the narrow r18 with Partial FC at sample rate 0.5
    and ``margin``, under ``torch.cuda.set_sync_debug_mode('error')``: any device-to-host sync raises."""
    from fresnet.network import create_model
    from fresnet.train.partial_fc import PartialFC
    from fresnet.train.step import StepSettings, TrainStep

    torch.manual_seed(0)
    model = create_model("r18", input_size=(32, 32), **NARROW).cuda().train().to(memory_format=torch.channels_last)
    fc = PartialFC(32, 100, margin, sample_rate=0.5, rank=0, world_size=1).cuda()
    opt = torch.optim.SGD(list(model.parameters()) + list(fc.parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4,
                          fused=True)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    step = TrainStep(model, model, fc, opt, scaler, StepSettings(amp, True, None, 5.0), torch.device("cuda"))
    images = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8).pin_memory()
    labels = torch.randint(0, 100, (16,)).pin_memory()
    step(images, labels, 0.1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        return [step(images, labels, 0.1) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda_only
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_steady_step_never_waits_for_the_host(amp):
    """``torch.cuda.set_sync_debug_mode('error')`` raises on any device-to-host sync: after the
    first (warm-up) step, the step -- autocast, margin loss, GradScaler, clipping, fused SGD -- has none."""
    from fresnet.train.losses import margin_spec

    losses = _steady_steps_on_cuda(margin_spec("arcface"), amp)
    assert all(torch.isfinite(loss).item() for loss in losses)


# ---- every margin loss on the device --------------------------------------------------------------

MARGIN_NAMES = ["combined", "arcface", "cosface", "subcenter_arcface", "adaface", "magface", "curricularface",
                "elasticface_arc", "elasticface_arc_plus", "elasticface_cos", "elasticface_cos_plus", "sphereface",
                "sphereface2", "uniface", "sface"]


@pytest.mark.parametrize("name", MARGIN_NAMES)
def test_margin_loss_backward_matches_the_cpu(name):
    """Each build_margin loss, forward and backward on the device in float64, equals the CPU (the
    loss, d loss / d cos, d loss / d norms, the learned bias's gradient, the updated buffers); in
    float32 within 1e-5."""
    from fresnet.train.losses import MARGIN_LOSSES, build_margin

    assert MARGIN_NAMES == list(MARGIN_LOSSES)
    gen = torch.Generator().manual_seed(0)
    columns = 40 * (3 if name == "subcenter_arcface" else 1)
    cos = torch.rand(16, columns, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, 40, (16,), generator=gen)
    labels[3] = -1  # a row whose class lives on another rank
    norms = torch.rand(16, generator=gen, dtype=torch.float64) * 120 + 2
    margins = torch.rand(16, generator=gen, dtype=torch.float64) * 0.1 + 0.4
    results = {}
    for device in ("cpu", DEVICE):
        for dtype in (torch.float64, torch.float32):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                module = build_margin(name, num_classes=40).to(device)
            finally:
                torch.set_default_dtype(previous)
            c = cos.to(device, dtype).detach().clone().requires_grad_()
            n = norms.to(device, dtype).detach().clone().requires_grad_()
            extra = {"margins": margins.to(device, dtype)} if name.startswith("elasticface") else {}
            loss = module(c, labels.to(device), n, **extra)
            loss.backward()
            bias = getattr(module, "bias", None)
            results[device, dtype] = [loss.detach(), c.grad, n.grad, None if bias is None else bias.grad,
                                      *[b for _, b in sorted(module.named_buffers())]]
    for dtype, rel in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for ours, ref in zip(results[DEVICE, dtype], results["cpu", torch.float64]):
            if ref is None:
                assert ours is None
                continue
            assert torch.isfinite(ours).all(), name
            assert _close(ours, ref, rel, floor=1e-12), (name, dtype)


@cuda_only
@pytest.mark.parametrize("name", MARGIN_NAMES)
def test_each_loss_steps_without_waiting_for_the_host(name):
    """The steady fp16 step with each loss (class sampling on) has no device-to-host sync."""
    from fresnet.train.losses import build_margin

    losses = _steady_steps_on_cuda(build_margin(name, num_classes=100), "fp16")
    assert all(torch.isfinite(loss).item() for loss in losses), name


# ---- fresnet train on CUDA --------------------------------------------------------------------

TINY_NET = {"units": [1, 1, 1, 1], "filter_list": [16, 16, 32, 32, 64], "input_size": [32, 32], "emb_size": 32}


def tiny_run(output, **overrides):
    cfg = {"network": "r18", "net": dict(TINY_NET), "loss": "arcface", "loss_s": 16.0, "dataset": "synthetic",
           "synthetic": {"num_identities": 40, "images_per_identity": 8, "holdout_identities": 8, "seed": 1},
           "output": str(output), "max_steps": 8, "batch_size": 32, "lr": 0.05, "progress": False, "log_every": 1,
           "device": DEVICE, "seed": 2, "warmup_steps": 1}
    cfg.update(overrides)
    return cfg


TRAIN_CASES = [
    dict(amp="none", compile="none"),
    dict(amp="bf16", compile="none"),
    dict(amp="fp16", compile="none", clip_grad_norm=5.0),
    dict(amp="bf16", compile="default"),
    dict(amp="fp16", compile="default", sample_rate=0.1),
    dict(amp="bf16", compile="reduce-overhead", clip_grad_norm=5.0),
    dict(amp="bf16", compile="none", grad_checkpointing=True, sample_rate=0.1),
    dict(amp="bf16", compile="default", grad_checkpointing=True),
    dict(amp="none", compile="none", channels_last=False, loss="combined"),
    dict(amp="bf16", compile="none", loss="softmax"),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_fresnet_train_runs_on_cuda(case, tmp_path, capsys, caplog):
    import fresnet.train

    if DRY and (case["amp"] == "fp16" or case["compile"] != "none"):
        pytest.skip("fp16 and compile cases run on CUDA only (the CPU dry run would take minutes to compile)")

    result = fresnet.train.run(tiny_run(tmp_path, **case))
    printed = capsys.readouterr().out + caplog.text  # the step logs (fresnet.train.step) its fallback
    assert "failed at the first step" not in printed, printed  # compile did not fall back silently
    losses = [float(r["loss"]) for r in result.history]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert result.model_path.is_file()


@pytest.mark.parametrize("head", [h for h in HEADS if h != "Z"])
def test_every_head_trains_on_cuda(head, tmp_path):
    import fresnet.train

    net = dict(TINY_NET, net_output=head)
    if head == "GDC":
        net["input_size"] = [112, 112]
    result = fresnet.train.run(tiny_run(tmp_path, net=net, amp="bf16", compile="none", max_steps=3,
                                        synthetic={"num_identities": 40, "images_per_identity": 4,
                                                   "holdout_identities": 8, "seed": 1}))
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_loss))


@cuda_only
def test_cuda_follows_cpu_in_float32(tmp_path, exact_fp32):
    """Same config, float32, no dropout: the CUDA loss curve is the CPU one."""
    import fresnet.train

    net = dict(TINY_NET, net_output="FC")
    common = dict(net=net, amp="none", compile="none", max_steps=5, loss="cosface")
    cpu = fresnet.train.run(tiny_run(tmp_path / "cpu", device="cpu", **common))
    gpu = fresnet.train.run(tiny_run(tmp_path / "gpu", **common))
    a = [float(r["loss"]) for r in cpu.history]
    b = [float(r["loss"]) for r in gpu.history]
    assert b == pytest.approx(a, rel=2e-3, abs=2e-3)


KILLED_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import fresnet.train

    cfg = eval(sys.argv[1])
    marker = Path(sys.argv[2])

    def stall_after_checkpoint(event, trainer):
        if event == "checkpoint" and trainer.step == 4:
            marker.write_text("4")
            time.sleep(600)

    fresnet.train.run(cfg, callbacks=[stall_after_checkpoint])
""")


def test_sigkill_then_resume_on_cuda(tmp_path):
    import fresnet.train

    cfg = tiny_run(tmp_path / "killed", amp="bf16", compile="none", checkpoint_every=4, max_steps=8,
                   net=dict(TINY_NET, net_output="FC"))
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, repr(cfg), str(marker)])
    try:
        deadline = time.time() + 240
        while not marker.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the child never reached its checkpoint"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    resumed = fresnet.train.run({**cfg, "resume": True})
    straight = fresnet.train.run(tiny_run(tmp_path / "straight", amp="bf16", compile="none", checkpoint_every=4,
                                          max_steps=8, net=dict(TINY_NET, net_output="FC")))
    assert resumed.steps == straight.steps == 8
    rows = list(csv.DictReader(open(resumed.log_path)))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    a = [float(r["loss"]) for r in rows]
    b = [float(r["loss"]) for r in straight.history]
    assert a == pytest.approx(b, rel=1e-2, abs=1e-2)  # cuDNN's backward is not bitwise deterministic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cuda_only
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="nccl needs one GPU per process: this machine has fewer than 2"
)
def test_torchrun_nccl(tmp_path):
    nproc = min(torch.cuda.device_count(), 4)
    net = "{units: [1,1,1,1], filter_list: [16,16,32,32,64], input_size: [32,32], emb_size: 32, net_output: FC}"
    args = ["network=r18", f"net={net}", "loss=arcface", "loss_s=16", "dataset=synthetic",
            "synthetic={num_identities: 40, images_per_identity: 8, holdout_identities: 8}", "max_steps=4",
            "val_targets=[]", "device=cuda", "amp=bf16", f"batch_size={32 // nproc}", "log_every=1",
            "sample_rate=0.5", f"output={tmp_path}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "fresnet", "train", "synthetic-r18", *args,
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == nproc and ckpt["step"] == 4


@cuda_only
def test_decode_on_the_gpu_matches_the_cpu_pipeline(tmp_path):
    pytest.importorskip("torchvision", reason="decode=gpu uses torchvision.io.decode_jpeg")
    import fresnet.train
    from fresnet.data.synthetic import write_synthetic_dataset

    folder = tmp_path / "data"
    write_synthetic_dataset(folder, num_identities=40, images_per_identity=8, holdout_identities=8, pairs=20,
                            seed=0, size=32)
    common = dict(dataset=str(folder), net=dict(TINY_NET, net_output="FC"), amp="none", compile="none", max_steps=4)
    cpu = fresnet.train.run(tiny_run(tmp_path / "cpu", decode="cpu", num_workers=2, **common))
    gpu = fresnet.train.run(tiny_run(tmp_path / "gpu", decode="gpu", num_workers=2, **common))
    a = [float(r["loss"]) for r in cpu.history]
    b = [float(r["loss"]) for r in gpu.history]
    assert b == pytest.approx(a, rel=5e-2)  # nvJPEG and libjpeg round a few pixels differently
