"""The inference fast paths compute the eager model's embeddings: float32 paths to 1e-4 (max abs),
bfloat16 / float16 paths to cosine >= 0.9995; GNAP keeps its batch coupling; the automatic choice
calibrates and falls back honestly. Tiny networks: the behaviour does not depend on size."""
from __future__ import annotations

import warnings

import pytest
import torch

import fresnet
from fresnet import FresnetError, create_model
from fresnet.inference import candidates as policy
from fresnet.inference import compiling, fast_model
from fresnet.inference import fast as fast_module
from fresnet.inference.fast import FastModel, compiler_available, optimize_for_inference
from fresnet.network.layers import MXBatchNorm

COSINE_BOUND = 0.9995
FP32_BOUND = 1e-4
TINY = dict(num_layers=None, units=[1, 1, 1, 1], filter_list=[8, 8, 16, 16, 32], emb_size=32)


def settled(model: torch.nn.Module, size, seed: int = 0) -> torch.nn.Module:
    """Realistic BN statistics (one train-mode pass with momentum 0) and non-trivial BN affines,
    so activations keep a trained network's scale and folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, MXBatchNorm)]
        for bn in bns:
            bn.momentum = 0.0
            if bn.weight is not None:
                bn.weight.copy_(0.8 + 0.4 * torch.rand(bn.num_features, generator=gen))
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=gen))
        model.train()
        model(images(6, size, seed + 100))
        for bn in bns:
            bn.momentum = 0.9
    return model.eval()


def images(n: int, size=(32, 32), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, size[0] // 4), max(2, size[1] // 4), generator=gen)
    return torch.nn.functional.interpolate(coarse, size=tuple(size), mode="bilinear", align_corners=False) * 255


def tiny(size=(32, 32), **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return settled(create_model(input_size=size, **{**TINY, **options}), size)


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1).min().item()


VARIANTS = [
    dict(),  # the default IR unit, head E
    dict(net_unit=1, net_output="GAP", net_act="relu"),
    dict(net_unit=2, net_se=1, net_output="F", filter_list=[16, 16, 16, 32, 32]),  # SE needs >= 16 channels
    dict(net_unit=3, net_input=0, net_output="FC", size=(64, 64)),
    dict(net_unit=3, net_input=2, net_output="J"),
    dict(net_unit=3, net_output="GNAP", emb_size=64),
    dict(net_unit=3, net_output="Z"),
    dict(net_unit="3x", bottle_neck=True, filter_list=[32, 64, 64, 64, 64], net_output="E"),
]


def _id(options):
    return "-".join(f"{k}{v}" for k, v in options.items()) or "default"


@pytest.mark.parametrize("options", VARIANTS, ids=_id)
def test_float32_path_matches_eager(options):
    options = dict(options)
    size = options.pop("size", (32, 32))
    model = tiny(size, **options)
    x = images(3, size, seed=1)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, dtype="float32", compile=False)
    out = fast(x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert (out - expected).abs().max().item() <= FP32_BOUND
    assert fast.choice.channels_last and fast.choice.fold_bn
    # BN really was folded: the fast network has fewer BatchNorms than the original
    assert sum(isinstance(m, MXBatchNorm) for m in fast.modules()) < sum(
        isinstance(m, MXBatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    "options",
    [dict(), dict(net_output="GNAP", emb_size=64), dict(net_unit=1, net_se=1, filter_list=[16, 16, 16, 32, 32])],
    ids=_id,
)
def test_bfloat16_path_cosine_on_cpu(options):
    model = tiny(**options)
    x = images(4, seed=2)
    with torch.no_grad():
        expected = model(x)
    out = optimize_for_inference(model, dtype="bfloat16", compile=False)(x)
    assert out.dtype == torch.float32  # embeddings come back in float32
    assert min_cosine(out, expected) >= COSINE_BOUND


@pytest.mark.parametrize("residual", ["float32", "bfloat16"])
def test_r18_bfloat16_at_full_size(residual):
    """A real-width network at 112x112: 18 layers of bf16 error still meet the bound, with either stream."""
    torch.manual_seed(0)
    model = settled(create_model("r18", emb_size=128), (112, 112))
    x = images(2, (112, 112), seed=3)
    with torch.no_grad():
        expected = model(x)
    out = optimize_for_inference(model, dtype="bfloat16", residual_dtype=residual, compile=False)(x)
    assert min_cosine(out, expected) >= COSINE_BOUND


def test_gnap_batch_coupling_is_preserved():
    """GNAP divides by the mean L2 norm over the whole batch: a sample's embedding depends on its
    batch-mates, in the fast path exactly as in the original."""
    model = tiny(net_output="GNAP", emb_size=64)
    x = images(4, seed=4)
    fast = optimize_for_inference(model, dtype="float32", compile=False)
    with torch.no_grad():
        expected_batch = model(x)
        expected_alone = model(x[:1])
    assert (expected_batch[0] - expected_alone[0]).abs().max() > 1e-3  # the coupling is real
    assert (fast(x) - expected_batch).abs().max().item() <= FP32_BOUND
    assert (fast(x[:1]) - expected_alone).abs().max().item() <= FP32_BOUND
    bf16 = optimize_for_inference(model, dtype="bfloat16", compile=False)
    assert min_cosine(bf16(x), expected_batch) >= COSINE_BOUND
    assert min_cosine(bf16(x[:1]), expected_alone) >= COSINE_BOUND


def fixed_times(monkeypatch, **ms):
    """Make auto's timing return these milliseconds per path name (anything else: 1 s), so the
    choice it makes from them is tested without timing anything."""
    def fake(runners, x, device, rounds=fast_module.TIMED_ROUNDS):
        for runner in runners.values():
            runner(x)  # each candidate still runs
        return {name: ms.get(name.replace("/", "_"), 1000.0) / 1e3 for name in runners}

    monkeypatch.setattr(fast_model, "_time_paths", fake)


def test_auto_without_native_bf16_times_eager_and_float32(monkeypatch):
    """An AVX2-only CPU has no native bf16: auto's candidates are eager and the two float32 layouts,
    and the fastest one on the first batch wins."""
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: False)
    assert fast_module.default_candidates(torch.device("cpu")) == [(torch.float32, torch.float32, 0)]
    fixed_times(monkeypatch, eager=30.0, float32=20.0, float32_nchw=25.0)
    model = tiny()
    x = images(2, seed=5)
    fast = optimize_for_inference(model, compile=False)
    assert "calibrates on first call" in repr(fast)
    out = fast(x)
    assert fast.choice.name == "float32" and fast.choice.channels_last
    assert "float32 20.0 ms" in fast.choice.describe() and "eager 30.0 ms" in fast.choice.describe()
    assert (out - model(x).detach()).abs().max().item() <= FP32_BOUND
    assert (fast(x) - model(x).detach()).abs().max().item() <= FP32_BOUND


def test_auto_never_returns_something_slower_than_eager(monkeypatch):
    """When eager is fastest on the first batch (it was once on a 2-core AVX2 EPYC at batch 1), auto
    keeps the model as given: same numbers, bit for bit."""
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: False)
    fixed_times(monkeypatch, eager=10.0, float32=11.5, float32_nchw=12.0)
    model = tiny()
    x = images(3, seed=5)
    fast = optimize_for_inference(model, compile=False)
    out = fast(x)
    assert fast.choice.eager and fast.choice.name == "eager"
    assert "eager (the model as given)" in fast.choice.describe()
    assert torch.equal(out, model(x).detach()) and torch.equal(fast(x), model(x).detach())


def test_auto_calibrates_on_first_call(monkeypatch):
    # forced, so this branch runs on every CPU: bf16 is emulated (slow, same numbers) without AVX512-BF16
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: True)
    first = fast_module.default_candidates(torch.device("cpu"))[0]
    fixed_times(monkeypatch, **{"bfloat16_bfloat16": 5.0, "eager": 10.0, "float32": 8.0})
    model = tiny()
    x = images(3, seed=5)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, compile=False)
    assert "calibrates on first call" in repr(fast)
    out = fast(x)
    assert (
        fast.choice.dtype,
        fast.choice.residual_dtype,
        fast.choice.float32_units,
    ) == first  # a tiny settled network passes the check
    assert fast.choice.cosine is not None and fast.choice.cosine >= fast_module.CALIBRATION_COSINE
    assert min_cosine(out, expected) >= COSINE_BOUND
    # later calls use the chosen path directly
    assert min_cosine(fast(images(2, seed=6)), model(images(2, seed=6)).detach()) >= COSINE_BOUND


def test_auto_falls_back_to_float32_when_low_precision_misses(monkeypatch):
    monkeypatch.setattr(policy, "CALIBRATION_COSINE", 1.01)  # nothing low-precision can pass
    monkeypatch.setattr(policy, "default_candidates", lambda device: [
        (torch.bfloat16, torch.bfloat16, 0), (torch.bfloat16, torch.float32, 0), (torch.bfloat16, torch.float32, 1),
        (torch.float32, torch.float32, 0)])
    fixed_times(monkeypatch, eager=30.0, float32=20.0)
    model = tiny()
    x = images(2, seed=7)
    fast = optimize_for_inference(model, compile=False)
    out = fast(x)
    assert fast.choice.dtype == torch.float32
    for name in ("bfloat16/bfloat16 rejected", "; bfloat16 rejected", "; bfloat16+1 rejected"):
        assert name in fast.choice.reason
    assert (out - model(x).detach()).abs().max().item() <= FP32_BOUND


def test_original_model_is_untouched_and_fast_stays_in_eval():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model, dtype="float32", compile=False)
    fast.train()  # an inference module ignores train mode: no BN updates, no dropout
    x = images(2, seed=8)
    assert torch.equal(fast(x), fast(x))
    assert not any(m.training for m in fast.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_public_name_and_errors():
    assert fresnet.optimize_for_inference is optimize_for_inference
    model = tiny()
    with pytest.raises(FresnetError, match="dtype"):
        optimize_for_inference(model, dtype="int4")
    with pytest.raises(FresnetError, match="int8 is a CPU path"):
        optimize_for_inference(model, dtype="int8", device="cuda" if torch.cuda.is_available() else "meta")
    with pytest.raises(FresnetError, match="GPU path"):
        optimize_for_inference(model, dtype="float16", device="cpu")
    with pytest.raises(FresnetError, match="compile"):
        optimize_for_inference(model, compile="fastest")
    with pytest.raises(FresnetError, match="fresnet network"):
        optimize_for_inference(torch.nn.Linear(2, 2))
    if not torch.cuda.is_available():
        with pytest.raises(FresnetError, match="CUDA is not available"):
            optimize_for_inference(model, device="cuda")


def test_compile_without_a_compiler_runs_uncompiled(monkeypatch):
    monkeypatch.setattr(compiling, "compiler_available", lambda device: False)
    model = tiny()
    with pytest.warns(RuntimeWarning, match="compiler"):
        fast = optimize_for_inference(model, dtype="float32", compile=True)
    assert fast.choice.compile is False
    x = images(2, seed=9)
    assert (fast(x) - model(x).detach()).abs().max().item() <= FP32_BOUND


def test_compile_failure_at_first_call_falls_back(monkeypatch):
    def broken(net, choice):
        raise RuntimeError("no inductor here")

    monkeypatch.setattr(compiling, "compiler_available", lambda device: True)
    monkeypatch.setattr(compiling, "compile_path", broken)
    model = tiny()
    fast = optimize_for_inference(model, dtype="float32", compile=True)
    x = images(2, seed=10)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        out = fast(x)
    assert fast.choice.compile is False
    assert (out - model(x).detach()).abs().max().item() <= FP32_BOUND


@pytest.mark.skipif(not compiler_available(torch.device("cpu")), reason="inductor needs a C++ compiler")
def test_compiled_cpu_paths():
    """torch.compile (inductor, weight freezing) keeps both bounds. One tiny net, both dtypes."""
    import torch._inductor.config as inductor_config

    model = tiny(filter_list=[4, 4, 8, 8, 16], emb_size=16)
    x = images(2, seed=11)
    with torch.no_grad():
        expected = model(x)
    # no worker pool: ~10 s of CPU, not a minute. config.patch, not monkeypatch: monkeypatch's undo
    # deletes the setting from inductor's config module, and later tests can no longer set it
    with warnings.catch_warnings(), inductor_config.patch(compile_threads=1):
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to eager would hide a failure
        fp32 = optimize_for_inference(model, dtype="float32", compile=True)
        assert (fp32(x) - expected).abs().max().item() <= FP32_BOUND
        bf16 = optimize_for_inference(model, dtype="bfloat16", compile=True)
        assert min_cosine(bf16(x), expected) >= COSINE_BOUND
    assert fp32.choice.compile and bf16.choice.compile


def cuda(test):
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


@cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_cuda_paths(dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = tiny(net_output="GNAP", emb_size=64)
    x = images(4, seed=12)
    with torch.no_grad():
        expected = model.double()(x.double()).float()
        model.float()
    fast = optimize_for_inference(model, device="cuda", dtype=dtype, compile=False)
    out = fast(x).cpu()
    if dtype == "float32":
        assert (out - expected).abs().max().item() <= FP32_BOUND
    else:
        assert min_cosine(out, expected) >= COSINE_BOUND


@cuda
def test_cuda_auto_path():
    model = tiny()
    x = images(4, seed=13)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model, device="cuda")
    assert isinstance(fast, FastModel)
    assert min_cosine(fast(x).cpu(), expected) >= COSINE_BOUND
    assert fast.choice.dtype in (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------------
# the mixed-precision network: what stays float32, the residual stream, pre-packed convolutions

from fresnet.inference.mixed_precision import (
    DtypeFollowingPReLU,
    InferenceConv2d,
    InferenceLinear,
    MixedPrecisionNet,
    onednn_can_pack,
)

packing = pytest.mark.skipif(not onednn_can_pack(torch.float32), reason="needs oneDNN (mkldnn) on CPU")


@packing
@pytest.mark.parametrize("stride,groups,bias", [(1, 1, False), (2, 1, True), (1, 4, False)])
def test_prepacked_conv_matches_conv2d_for_any_later_shape(stride, groups, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, stride=stride, padding=1, groups=groups, bias=bias).eval()
    packed = InferenceConv2d(conv, torch.float32, pack=True)
    with torch.no_grad():
        for shape in [(1, 8, 12, 12), (5, 8, 12, 12), (2, 8, 9, 7)]:  # packed for the first shape
            x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
            assert torch.allclose(packed(x), conv(x), atol=1e-5, rtol=1e-5)
    assert packed._packed is not None  # it really took the oneDNN path
    assert "pre-packed" in repr(packed)


@packing
def test_prepacked_conv_repacks_after_a_move_and_keeps_a_plain_state_dict():
    conv = torch.nn.Conv2d(4, 4, 1).eval()
    packed = InferenceConv2d(conv, torch.float32)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        packed(x)
        assert packed._packed is not None
        packed.to("cpu", torch.float32)
        assert packed._packed is None  # dropped: packed again from the (possibly new) weight
        assert torch.allclose(packed(x), conv(x), atol=1e-6)
    assert set(packed.state_dict()) == {"weight", "bias"}
    assert all(t.layout == torch.strided for t in packed.state_dict().values())


def test_unpacked_low_precision_conv_casts_in_and_out():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False).eval()
    low = InferenceConv2d(conv, torch.bfloat16, out_dtype=torch.float32, pack=False)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        y = low(x)
    assert y.dtype == torch.float32
    expected = torch.nn.functional.conv2d(x.bfloat16(), conv.weight.bfloat16(), padding=1).float()
    assert torch.equal(y, expected)


def test_low_precision_linear_keeps_float32_bias_and_output():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 8).eval()
    low = InferenceLinear(linear, torch.bfloat16)
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = low(x)
        assert y.dtype == torch.float32
        assert min_cosine(y, linear(x)) > 0.9999
        product = torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16()).float()
        assert torch.equal(y, product + linear.bias)  # the bias is added in float32, not rounded


def test_prelu_follows_the_input_dtype():
    prelu = torch.nn.PReLU(3, init=0.25)
    follow = DtypeFollowingPReLU(prelu, torch.bfloat16)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(follow(x), prelu(x))
        assert follow(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("residual", [torch.float32, torch.bfloat16])
def test_mixed_net_keeps_stem_bn_and_head_in_float32(residual):
    from fresnet.inference.fuse import fold_batchnorm

    model = tiny()
    net = MixedPrecisionNet(fold_batchnorm(model), torch.bfloat16, residual)
    assert net.stem[0].dtype == torch.float32  # the stem conv
    convs = [m for m in net.trunk.modules() if isinstance(m, InferenceConv2d)]
    assert convs and all(c.dtype == torch.bfloat16 for c in convs)
    shortcuts = [c for c in convs if c.out_dtype != c.dtype]
    assert len(shortcuts) == (sum(not u.dim_match for u in net.trunk.modules() if hasattr(u, "dim_match"))
                              if residual == torch.float32 else 0)
    assert all(b.running_mean.dtype == torch.float32 for b in net.modules() if isinstance(b, MXBatchNorm))
    head_fc = [m for m in net.head.modules() if isinstance(m, InferenceLinear)]
    assert len(head_fc) == 1 and head_fc[0].weight.dtype == torch.bfloat16 and head_fc[0].bias.dtype == torch.float32
    assert all(
        t.dtype == torch.float32 for name, t in net.head.state_dict().items() if not name.endswith("pre_fc1.weight")
    )
    # the stream really has the asked-for dtype between units
    seen = []
    hooks = [u.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for u in net.trunk.modules() if hasattr(u, "dim_match")]
    with torch.no_grad():
        net(images(2, seed=20))
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {residual}


def test_float32_residual_stream_is_at_least_as_accurate_on_a_deeper_net():
    """The point of the float32 stream: on a deeper network the bf16-everywhere trunk loses more."""
    torch.manual_seed(0)
    model = settled(create_model(input_size=(32, 32), num_layers=None, units=[2, 3, 6, 2],
                                 filter_list=[16, 16, 32, 32, 64], emb_size=64), (32, 32))
    x = images(24, seed=21)
    with torch.no_grad():
        expected = model(x)
    stream32 = optimize_for_inference(model, dtype="bfloat16", compile=False)
    stream16 = optimize_for_inference(model, dtype="bfloat16", residual_dtype="bfloat16", compile=False)
    assert stream32.choice.residual_dtype == torch.float32 and stream16.choice.residual_dtype == torch.bfloat16
    out32, out16 = stream32(x), stream16(x)
    assert min_cosine(out32, expected) >= COSINE_BOUND and min_cosine(out16, expected) >= COSINE_BOUND

    def mean_error(out):
        return (1 - torch.nn.functional.cosine_similarity(out, expected, dim=1)).mean().item()

    assert mean_error(out32) < 0.9 * mean_error(out16)


def test_residual_dtype_choices_and_errors():
    model = tiny()
    both = optimize_for_inference(model, dtype="bfloat16", residual_dtype="bf16", compile=False)
    assert both.choice.name == "bfloat16/bfloat16"
    assert "bfloat16 residual stream" in both.choice.describe()
    with pytest.raises(FresnetError, match="residual_dtype"):
        optimize_for_inference(model, dtype="float32", residual_dtype="bfloat16")
    with pytest.raises(FresnetError, match="dtype"):
        optimize_for_inference(model, dtype="bfloat16", residual_dtype="int8")


LADDER = [(torch.bfloat16, torch.bfloat16, 0), (torch.bfloat16, torch.float32, 0), (torch.bfloat16, torch.float32, 1),
          (torch.float32, torch.float32, 0)]


@pytest.mark.parametrize("options,expected", [
    (dict(residual_dtype="float32"), LADDER[1:]),
    (dict(residual_dtype="bfloat16"), [LADDER[0], (torch.bfloat16, torch.bfloat16, 1), LADDER[3]]),
    (dict(float32_units=0), [LADDER[0], LADDER[1], LADDER[3]]),
    (dict(float32_units=2, residual_dtype="float32"), [(torch.bfloat16, torch.float32, 2), LADDER[3]]),
])
def test_auto_with_fixed_options_keeps_the_float32_fallback(monkeypatch, options, expected):
    monkeypatch.setattr(policy, "default_candidates", lambda device: list(LADDER))
    fast = optimize_for_inference(tiny(), compile=False, **options)
    assert [(c.dtype, c.residual_dtype, c.float32_units) for c in fast._candidates] == expected


def test_float32_units_run_in_float32_and_are_checked():
    model = tiny()
    fast = optimize_for_inference(model, dtype="bfloat16", float32_units=2, compile=False)
    net = fast.net
    assert list(net.precise_units._modules) == ["stage1_unit1", "stage2_unit1"]
    assert all(c.dtype == torch.float32 for c in net.precise_units.modules() if isinstance(c, InferenceConv2d))
    assert all(c.dtype == torch.bfloat16 for c in net.trunk.modules() if isinstance(c, InferenceConv2d))
    assert fast.choice.name == "bfloat16+2" and "first 2 units" in fast.choice.describe()
    x = images(3, seed=22)
    assert min_cosine(fast(x), model(x).detach()) >= COSINE_BOUND
    with pytest.raises(FresnetError, match="4 residual units"):
        optimize_for_inference(model, dtype="bfloat16", float32_units=5)
    with pytest.raises(FresnetError, match="whole number"):
        optimize_for_inference(model, dtype="bfloat16", float32_units=-1)


def test_calibration_keeps_a_margin_over_the_promise():
    assert fast_module.CALIBRATION_COSINE > fast_module.PROMISED_COSINE == COSINE_BOUND


def test_fast_model_can_be_copied_after_packing():
    """Packed weights are opaque oneDNN tensors; a copy (or a pickle) packs again on first use."""
    import copy
    import io

    model = tiny()
    fast = optimize_for_inference(model, dtype="bfloat16", compile=False)
    x = images(2, seed=23)
    expected = fast(x)
    clone = copy.deepcopy(fast)
    assert torch.equal(clone(x), expected)
    buffer = io.BytesIO()
    torch.save(fast, buffer)  # whole-module pickling must not trip over the packed tensors
    assert buffer.tell() > 0
