"""int8 inference: the PT2E model builds, runs and stays within the cosine bound on random-weight and
trained networks; what stays float32 stays float32; auto considers int8 only with calibration data;
bad calibration sets are refused; the int8 ONNX export runs in onnxruntime close to the PyTorch
int8 model. Tiny networks, uncompiled (PyTorch's reference int8 kernels) except one compiled check."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fresnet import FresnetError, create_model
from fresnet.inference import candidates as policy
from fresnet.inference import compiling, fast_model
from fresnet.inference import fast as fast_module
from fresnet.inference import int8 as int8_module
from fresnet.inference.calibration import CalibrationWarning, calibration_batches
from fresnet.inference.fast import INT8_CALIBRATION_COSINE, compiler_available, optimize_for_inference
from fresnet.inference.int8 import Int8Net, float_module_names, int8_unavailable
from test_fast import TINY, fixed_times, images, min_cosine, settled, tiny

needs_int8 = pytest.mark.skipif(int8_unavailable() is not None, reason=str(int8_unavailable()))
pytestmark = needs_int8
WIDE = dict(filter_list=[16, 16, 32, 32, 64], emb_size=64)  # 8-channel layers are too coarse for 8 bits


def faces(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    from fresnet.inference.calibration import synthetic_faces

    return synthetic_faces(n, (size, size), seed=seed)


@pytest.fixture
def uncompiled(monkeypatch):
    """int8 on the reference kernels: no inductor build in the fast tests (one test compiles)."""
    monkeypatch.setattr(compiling, "compiler_available", lambda device: False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "int8 without a C\\+\\+ compiler", RuntimeWarning)
        warnings.filterwarnings("ignore", category=CalibrationWarning)
        yield


@pytest.fixture(scope="module")
def trained():
    """A tiny network trained (softmax over 16 synthetic identities) until it separates them: its
    weights and activations are a trained network's, not random ones."""
    from fresnet.data.synthetic import SyntheticFaces

    torch.manual_seed(0)
    model = create_model(input_size=(32, 32), **{**TINY, **WIDE})
    data = SyntheticFaces(num_identities=16, images_per_identity=8, seed=3, size=32)
    x = torch.from_numpy(data.render(list(range(128)))).permute(0, 3, 1, 2).float()
    y = torch.arange(128) // 8
    classifier = torch.nn.Linear(64, 16)
    params = list(model.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only waits at barriers (minutes on a loaded machine)
    try:
        for _ in range(50):
            idx = torch.randperm(128, generator=gen)[:32]
            loss = torch.nn.functional.cross_entropy(classifier(model(x[idx])), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])  # it really learned
    return model.eval()


def test_int8_builds_runs_and_meets_the_bound_on_a_random_network(uncompiled):
    model = tiny(**WIDE)
    fast = optimize_for_inference(model, dtype="int8", calibration=faces(64, seed=1), int8_backend="pytorch")
    x = faces(8, seed=2)
    out = fast(x)
    assert out.shape == (8, 64) and out.dtype == torch.float32
    assert isinstance(fast.net, Int8Net) and fast.choice.name == "int8"
    assert min_cosine(out, model(x).detach()) >= INT8_CALIBRATION_COSINE
    assert "int8" in fast.choice.describe() and "calibrated on 64 images" in fast.choice.describe()
    # .eval()/.train() work though the PT2E graph itself refuses them (every embedder calls .eval())
    assert fast.eval() is fast and fast.train() is fast and not any(m.training for m in fast.modules())
    assert torch.equal(fast(x), out)


@pytest.mark.parametrize("int8_dot_product", [False, True], ids=["avx2", "vnni"])
def test_int8_meets_the_bound_on_a_trained_network(uncompiled, trained, monkeypatch, int8_dot_product):
    """Both activation widths this CPU class decides between (7-bit without VNNI, 8-bit with it)."""
    monkeypatch.setattr(int8_module, "cpu_has_int8_dot_product", lambda: int8_dot_product)
    fast = optimize_for_inference(trained, dtype="int8", calibration=faces(64, seed=1), int8_backend="pytorch")
    assert fast.choice.reduce_range is not int8_dot_product and fast.net.reduce_range is not int8_dot_product
    # the width reached the quantiser: every activation quantises to 0..255, or 0..127 without VNNI
    assert _activation_quant_max(fast.net.graph) == {255 if int8_dot_product else 127}
    assert f"{8 if int8_dot_product else 7}-bit activations" in fast.choice.describe()
    x = faces(16, seed=4)
    out = fast(x)
    cosine = torch.nn.functional.cosine_similarity(out, trained(x).detach(), dim=1)
    assert cosine.min().item() >= INT8_CALIBRATION_COSINE
    assert cosine.mean().item() >= 0.99


def _activation_quant_max(graph) -> set[int]:
    """quant_max of every per-tensor (activation) quantise node of a converted PT2E graph."""
    return {int(node.args[4]) for node in graph.graph.nodes
            if node.op == "call_function" and "quantize_per_tensor" in str(node.target)
            and "dequantize" not in str(node.target)}


def test_int8_keeps_stem_and_first_unit_in_float32(uncompiled):
    model = tiny(**WIDE)
    assert float_module_names(model) == ["stem", "stage1.unit1"]
    fast = optimize_for_inference(model, dtype="int8", calibration=faces(32, seed=1), int8_backend="pytorch")
    net = fast.net
    # stem conv0 + stage1.unit1's conv1, conv2, conv1sc stay float; 3 other units x 3 convs + the FC are int8
    assert (net.float_layers, net.int8_layers) == (4, 10)
    # the residual stream is float: no residual add reads a dequantised tensor
    adds = [n for n in net.graph.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.add.Tensor]
    assert adds and not any("dequantize" in str(getattr(a, "target", "")) for n in adds for a in n.args)


def test_int8_works_for_other_units_and_heads(uncompiled):
    for options in (dict(net_unit=1, net_output="GAP", net_act="relu"), dict(net_unit=3, net_output="GNAP")):
        model = tiny(**WIDE, **options)
        fast = optimize_for_inference(model, dtype="int8", calibration=faces(32, seed=1), int8_backend="pytorch")
        x = faces(4, seed=5)
        assert min_cosine(fast(x), model(x).detach()) >= INT8_CALIBRATION_COSINE


def test_int8_without_calibration_uses_synthetic_faces_with_a_warning(monkeypatch):
    monkeypatch.setattr(compiling, "compiler_available", lambda device: False)
    with pytest.warns(UserWarning, match="synthetic faces"):
        fast = optimize_for_inference(tiny(**WIDE), dtype="int8", int8_backend="pytorch")
    assert fast.choice.calibration_images >= 16


def test_int8_options_that_do_not_apply_are_refused():
    with pytest.raises(FresnetError, match="residual_dtype and float32_units"):
        optimize_for_inference(tiny(), dtype="int8", residual_dtype="float32", calibration=faces(16))


# ---------------------------------------------------------------------------------------------------
# auto and int8


def test_auto_never_considers_int8_without_calibration(monkeypatch):
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: False)
    fixed_times(monkeypatch, int8=0.001, eager=30.0, float32=20.0, float32_nchw=25.0)
    fast = optimize_for_inference(tiny(), compile=False)
    assert all(c.dtype != torch.int8 for c in fast._candidates + fast._extras)
    fast(images(2, seed=1))
    assert fast.choice.name == "float32" and "int8" not in fast.choice.reason


def test_auto_with_calibration_picks_int8_when_it_is_fastest(monkeypatch, uncompiled):
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: False)
    fixed_times(monkeypatch, int8=5.0, eager=30.0, float32=20.0, float32_nchw=25.0)
    model = tiny(**WIDE)
    fast = optimize_for_inference(model, compile=False, calibration=faces(32, seed=1), int8_backend="pytorch")
    x = faces(4, seed=6)
    out = fast(x)
    assert fast.choice.name == "int8"
    assert "int8 5.0 ms" in fast.choice.describe() and "int8 min cosine" in fast.choice.describe()
    assert min_cosine(out, model(x).detach()) >= INT8_CALIBRATION_COSINE


def test_auto_rejects_int8_that_misses_its_gate(monkeypatch, uncompiled):
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(policy, "INT8_CALIBRATION_COSINE", 1.01)
    fixed_times(monkeypatch, int8=1.0, eager=30.0, float32=20.0)
    fast = optimize_for_inference(tiny(**WIDE), compile=False, calibration=faces(32, seed=1), int8_backend="pytorch")
    fast(faces(4, seed=6))
    assert fast.choice.name == "float32" and "int8 rejected: min cosine" in fast.choice.reason


@pytest.mark.skipif(not compiler_available(torch.device("cpu")), reason="inductor needs a C++ compiler")
def test_compiled_int8():
    """The real int8 kernels (inductor, oneDNN u8s8). Without VNNI the activations are 7-bit (the
    int16 pair sums of AVX2's kernels saturate at 8), a bit coarser than the reference kernels' 8,
    so the bound here is looser; a saturating kernel would land far below it."""
    import torch._inductor.config as inductor_config

    model = tiny(**WIDE)
    # no worker pool, as test_fast's compiled test (config.patch: see there)
    with warnings.catch_warnings(), inductor_config.patch(compile_threads=1):
        warnings.simplefilter("ignore", CalibrationWarning)
        warnings.simplefilter(
            "error", RuntimeWarning
        )  # a silent fallback to the reference kernels would hide a failure
        fast = optimize_for_inference(model, dtype="int8", calibration=faces(64, seed=1), int8_backend="pytorch")
        x = faces(4, seed=7)
        out = fast(x)
    assert fast.choice.compile and fast._compiled
    assert min_cosine(out, model(x).detach()) >= 0.95


# ---------------------------------------------------------------------------------------------------
# calibration sets


def test_calibration_from_tensors_iterables_and_limits():
    data = faces(40, seed=1)
    with pytest.warns(CalibrationWarning, match="40 images"):
        batches = calibration_batches(data, (32, 32))
    assert sum(b.shape[0] for b in batches) == 40
    with pytest.warns(CalibrationWarning):
        batches = calibration_batches(iter([data[:20], data[20:].to(torch.uint8)]), (32, 32), limit=30)
    assert sum(b.shape[0] for b in batches) == 30 and all(b.dtype == torch.float32 for b in batches)


@pytest.mark.parametrize("bad,match", [
    (lambda: faces(1, seed=1), "too few"),
    (lambda: torch.zeros(64, 3, 32, 32), "blank"),
    (lambda: faces(1, seed=1).repeat(32, 1, 1, 1), "same image"),
    (lambda: faces(32, size=48), "48x48 but the network takes 32x32"),
    (lambda: torch.rand(32, 1, 32, 32), "shape"),
    (lambda: faces(32, seed=1) / 255.0, "multiply the images by 255"),
    (lambda: "not-a-file.xyz", "not a calibration source"),
    (lambda: 3.5, "calibration= takes"),
])
def test_degenerate_calibration_sets_are_refused(bad, match):
    with pytest.raises(FresnetError, match=match):
        calibration_batches(bad(), (32, 32))


def test_weak_calibration_sets_warn():
    mixed = torch.cat([faces(16, seed=1), torch.zeros(16, 3, 32, 32)])
    with pytest.warns(CalibrationWarning, match="16 of 32 images are blank"):
        calibration_batches(mixed, (32, 32))


def test_calibration_from_bin_recordio_and_image_folder(tmp_path):
    from PIL import Image

    from fresnet.data.synthetic import write_synthetic_dataset
    from fresnet.data.verification_bin import save_bin

    pixels = faces(24, size=40, seed=3).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    save_bin(tmp_path / "val.bin", list(pixels), [True, False] * 6)
    paths = write_synthetic_dataset(tmp_path / "rec", num_identities=4, images_per_identity=5, holdout_identities=2,
                                    pairs=4, size=32)
    folder = tmp_path / "folder"
    for i, image in enumerate(pixels[:20]):
        (folder / f"id{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"id{i % 4}" / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        for source, count in ((tmp_path / "val.bin", 24), (tmp_path / "rec", 20), (str(folder), 20)):
            batches = calibration_batches(source, (32, 32), limit=100)
            assert sum(b.shape[0] for b in batches) == count, source
            assert batches[0].shape[1:] == (3, 32, 32) and batches[0].max() > 1.0
        assert sum(b.shape[0] for b in calibration_batches(tmp_path / "val.bin", (32, 32), limit=16)) == 16
    assert paths  # the RecordIO writer really wrote a dataset


# ---------------------------------------------------------------------------------------------------
# int8 ONNX export


def test_int8_onnx_export_runs_in_onnxruntime_close_to_the_pytorch_int8_model(tmp_path, uncompiled, trained):
    pytest.importorskip("onnxruntime.quantization")
    from fresnet.interop.onnx_int8 import export_onnx_int8, onnx_session

    calibration = faces(64, seed=1)
    path = export_onnx_int8(trained, tmp_path / "int8.onnx", calibration)
    import onnx

    proto = onnx.load(path)
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(p.key == "fresnet_int8" for p in proto.metadata_props)
    x = faces(8, seed=9)
    ort_out = torch.from_numpy(onnx_session(path).run(None, {"input": x.numpy()})[0])
    torch_int8 = optimize_for_inference(trained, dtype="int8", calibration=calibration, int8_backend="pytorch")(x)
    reference = trained(x).detach()
    assert min_cosine(ort_out, reference) >= INT8_CALIBRATION_COSINE
    assert min_cosine(ort_out, torch_int8) >= INT8_CALIBRATION_COSINE  # parity: same recipe, two runtimes


def test_export_cli_int8(tmp_path, capsys):
    pytest.importorskip("onnxruntime.quantization")
    from fresnet.cli import main
    from fresnet.interop.native import save as save_model

    torch.manual_seed(0)
    model = settled(create_model(input_size=(32, 32), **{**TINY, **WIDE}), (32, 32))
    save_model(model, tmp_path / "m.safetensors")
    save_bin_path = tmp_path / "cal.bin"
    from fresnet.data.verification_bin import save_bin

    save_bin(save_bin_path, list(faces(48, seed=2).permute(0, 2, 3, 1).to(torch.uint8).numpy()), [True, False] * 12)
    code = main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "m-int8.onnx"), "--int8",
                 "--calibration", str(save_bin_path), "--weight-bits", "7"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cosine to PyTorch float32 min" in out and "(ok" in out and "warning:     " in out
    assert "7-bit weights" in out
    import onnx

    notes = {p.key: p.value for p in onnx.load(str(tmp_path / "m-int8.onnx")).metadata_props}
    assert "int8 weights (7-bit)" in notes["fresnet_int8"]
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "y.onnx"), "--weight-bits", "8"]) != 0
    assert "--weight-bits is for --int8" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.safetensors"), str(tmp_path / "x.onnx"), "--calibration",
                 str(save_bin_path)]) != 0
    assert "--calibration is for --int8" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# the per-CPU choices: activation width and backend (forced both ways, whatever this CPU has)


@pytest.mark.parametrize("capabilities,expected", [
    ({"avx2": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}, False),
    ({"avx2": True, "avx_vnni": True}, True),
    ({"avx512_f": True, "avx512_vnni": True}, True),
    ({"amx_int8": True}, True),
    ({}, False),
])
def test_cpu_has_int8_dot_product_reads_the_cpu_capabilities(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert int8_module.cpu_has_int8_dot_product() is expected
    assert int8_module.reduce_range_for_this_cpu() is (not expected)  # 7-bit activations only without VNNI


def _activation_quant_max(graph) -> set[int]:
    """quant_max of every per-tensor (activation) quantise node of a converted PT2E graph."""
    return {int(node.args[4]) for node in graph.graph.nodes
            if node.op == "call_function" and "quantize_per_tensor" in str(node.target)
            and "dequantize" not in str(node.target)}


def _backends(monkeypatch, *, compiler=True, dot_product=False, pytorch=None, onnxruntime=None):
    monkeypatch.setattr(compiling, "compiler_available", lambda device: compiler)
    monkeypatch.setattr(int8_module, "cpu_has_int8_dot_product", lambda: dot_product)
    monkeypatch.setattr(policy, "int8_backends_unavailable",
                        lambda: {"pytorch": pytorch, "onnxruntime": onnxruntime})


@pytest.mark.parametrize("case,expected", [
    (dict(dot_product=True), "pytorch"),
    (dict(dot_product=False), fast_module.INT8_BACKEND_WITHOUT_VNNI),
    (dict(compiler=False, dot_product=True), "onnxruntime"),
    (dict(dot_product=False, onnxruntime="no onnxruntime"), "pytorch"),
    (dict(dot_product=True, pytorch="no torchao"), "onnxruntime"),
])
def test_default_int8_backend_per_cpu_class(monkeypatch, case, expected):
    _backends(monkeypatch, **case)
    backend, why = fast_module.default_int8_backend(torch.device("cpu"))
    assert backend == expected and why


def test_no_int8_backend_is_a_clear_error(monkeypatch):
    _backends(monkeypatch, pytorch="no torchao", onnxruntime="no onnxruntime")
    with pytest.raises(FresnetError, match="no int8 backend here: no torchao; no onnxruntime"):
        fast_module.default_int8_backend(torch.device("cpu"))
    with pytest.raises(FresnetError, match="no torchao"):
        optimize_for_inference(tiny(), dtype="int8", calibration=faces(16), int8_backend="pytorch")


def test_unknown_int8_backend_is_refused():
    with pytest.raises(FresnetError, match="unknown int8_backend 'tflite'; choose one of pytorch, onnxruntime"):
        optimize_for_inference(tiny(), dtype="int8", calibration=faces(16), int8_backend="tflite")


def test_dtype_int8_names_the_backend_it_picked_and_why(monkeypatch):
    _backends(monkeypatch, compiler=False)
    monkeypatch.setattr(policy, "_int8_calibration", lambda model, calibration: [faces(16)])
    monkeypatch.setattr(fast_model, "build_path", lambda model, choice, calibration=None: torch.nn.Identity())
    fast = optimize_for_inference(tiny(), dtype="int8", calibration=faces(16))
    assert fast.choice.int8_backend == "onnxruntime" and fast.choice.name == "int8/onnxruntime"
    assert "onnxruntime backend: no C++ compiler" in fast.choice.describe()


@pytest.mark.parametrize("seven", [True, False])
def test_reduce_range_forces_the_int8_bit_width(monkeypatch, seven):
    _backends(monkeypatch, compiler=False, dot_product=seven)  # the CPU's default is the other width
    monkeypatch.setattr(fast_model, "build_path", lambda model, choice, calibration=None: torch.nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fast = optimize_for_inference(tiny(), dtype="int8", calibration=faces(16), int8_backend="pytorch",
                                      reduce_range=seven)
    assert fast.choice.reduce_range is seven
    assert f"{7 if seven else 8}-bit activations" in fast.choice.describe()
    with pytest.raises(FresnetError, match="reduce_range is True \\(7-bit int8\\) or False"):
        optimize_for_inference(tiny(), dtype="float32", reduce_range=seven)


@pytest.mark.parametrize("case,expected", [
    (dict(), ["pytorch", "onnxruntime"]),
    (dict(compiler=False), ["onnxruntime"]),  # PyTorch's reference kernels are slower than float32
    (dict(compiler=False, onnxruntime="no onnxruntime"), ["pytorch"]),
    (dict(pytorch="no torchao"), ["onnxruntime"]),
    (dict(pytorch="no torchao", compiler=False), ["onnxruntime"]),  # was list.remove's ValueError
])
def test_auto_times_every_int8_backend_that_can_run(monkeypatch, case, expected):
    _backends(monkeypatch, **case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        choices = policy.int8_candidates(torch.device("cpu"), True, [faces(16)], "", None)
    assert [c.int8_backend for c in choices] == expected


# ---------------------------------------------------------------------------------------------------
# the onnxruntime backend


needs_onnxruntime_int8 = pytest.mark.skipif(
    fast_module.int8_backends_unavailable()["onnxruntime"] is not None,
    reason=str(fast_module.int8_backends_unavailable()["onnxruntime"]))


@needs_onnxruntime_int8
def test_onnxruntime_backend_is_close_to_float32_at_any_batch_size(trained):
    from fresnet.inference.onnxruntime_int8 import OnnxRuntimeInt8Net

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        fast = optimize_for_inference(trained, dtype="int8", calibration=faces(64, seed=1), int8_backend="onnxruntime")
    assert isinstance(fast.net, OnnxRuntimeInt8Net) and fast.choice.name == "int8/onnxruntime"
    assert "onnxruntime QDQ" in fast.choice.describe() and "calibrated on 64 images" in fast.choice.describe()
    for batch in (1, 16):
        x = faces(batch, seed=10 + batch)
        out = fast(x)
        assert out.shape == (batch, 64) and out.dtype == torch.float32
        cosine = torch.nn.functional.cosine_similarity(out, trained(x).detach(), dim=1)
        assert cosine.min().item() >= INT8_CALIBRATION_COSINE and cosine.mean().item() >= 0.99
    import onnx

    ops = {node.op_type for node in onnx.load_from_string(fast.net.graph).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops  # really quantised, not the float graph


@needs_onnxruntime_int8
def test_auto_with_calibration_can_pick_the_onnxruntime_backend(monkeypatch):
    monkeypatch.setattr(policy, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(compiling, "compiler_available", lambda device: False)
    fixed_times(monkeypatch, int8_onnxruntime=5.0, eager=30.0, float32=20.0, float32_nchw=25.0)
    model = tiny(**WIDE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        fast = optimize_for_inference(model, compile=False, calibration=faces(32, seed=1))
    x = faces(4, seed=6)
    out = fast(x)
    assert fast.choice.name == "int8/onnxruntime"
    assert "int8/onnxruntime 5.0 ms" in fast.choice.describe()
    assert min_cosine(out, model(x).detach()) >= INT8_CALIBRATION_COSINE


@needs_onnxruntime_int8
def test_onnxruntime_quantiser_output_goes_to_the_log(capfd, caplog):
    """onnxruntime's quantiser logs ~10 ``WARNING:root:`` lines and prints its calibration steps;
    they reach fresnet's log at DEBUG, not the terminal, and the root logger is left as it was."""
    import logging

    from fresnet.inference.fuse import fold_batchnorm
    from fresnet.inference.onnxruntime_int8 import OnnxRuntimeInt8Net

    root = logging.getLogger()
    handlers, filters = list(root.handlers), list(root.filters)
    with caplog.at_level(logging.DEBUG, logger="fresnet.inference.onnxruntime_int8"):
        OnnxRuntimeInt8Net(fold_batchnorm(tiny(**WIDE).eval()), [faces(16)])
    out, err = capfd.readouterr()
    assert "Collecting tensor data" not in out and "WARNING" not in err and "Expected bias" not in err
    assert not [r for r in caplog.records if r.name == "root"]
    assert any("onnxruntime: " in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert root.handlers == handlers and root.filters == filters


def test_int8_backend_without_int8_is_refused():
    with pytest.raises(FresnetError, match="int8_backend applies to dtype='int8' or 'auto'"):
        optimize_for_inference(tiny(), dtype="float32", int8_backend="onnxruntime")


def test_onnxruntime_histogram_calibration_is_capped_to_its_memory(tmp_path, monkeypatch):
    """onnxruntime's Percentile calibrator keeps every intermediate tensor of every image (r100 with
    256 images: 23.4 GB): the images are subsampled to fit the budget, with a warning that says so."""
    import onnx

    from fresnet.inference import onnxruntime_int8 as ort_int8
    from fresnet.inference.fuse import fold_batchnorm

    model = fold_batchnorm(tiny(**WIDE).eval())
    float_path = tmp_path / "float.onnx"
    ort_int8._float_onnx(model, str(float_path))
    proto = onnx.load(str(float_path))
    per_image = ort_int8.held_bytes_per_image(proto)
    # every Conv/Gemm input and output, from the torch model's own shapes
    seen: list[torch.Tensor] = []  # kept alive, so that a tensor feeding two convolutions counts once

    def keep(module, inputs, output):
        seen.extend(t for t in (inputs[0], output) if not any(t is other for other in seen))

    hooks = [
        m.register_forward_hook(keep) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(faces(1))
    for hook in hooks:
        hook.remove()
    assert per_image == 4 * sum(t.numel() for t in seen)

    batches = [faces(16, seed=0), faces(16, seed=1)]
    monkeypatch.setattr(ort_int8, "CALIBRATION_MEMORY_BYTES", 10 * per_image)
    with pytest.warns(CalibrationWarning, match=r"calibrating on 10 of the 32 images"):
        kept = ort_int8._within_calibration_memory(proto, batches, "Percentile")
    assert sum(len(b) for b in kept) == 10
    everything = torch.cat(batches)
    assert torch.equal(kept[0][0], everything[0]) and torch.equal(kept[0][-1], everything[-1])  # evenly spread
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ort_int8._within_calibration_memory(proto, batches, "MinMax") == batches  # MinMax flushes itself
    monkeypatch.setattr(ort_int8, "CALIBRATION_MEMORY_BYTES", 32 * per_image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ort_int8._within_calibration_memory(proto, batches, "Percentile") == batches
