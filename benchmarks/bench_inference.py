#!/usr/bin/env python
"""Inference speed of fresnet networks: eager float32 vs every fast path vs ONNX Runtime, in ONE run.

For each model and batch size it builds every path from the same weights (a random network with
settled BatchNorm statistics, see ``common.realistic_model``), checks each path's accuracy
against eager float32 (fp32 paths: max abs diff <= 1e-4; bf16/fp16: min cosine >= 0.9995), then
times all paths *interleaved* and reports images/s, the speed-up over eager, and the achieved
GFLOP/s as a fraction of a 4096^3 matmul peak measured in the same run.

    python benchmarks/bench_inference.py                          # r18 r50 r100, batch 1 and 32
    python benchmarks/bench_inference.py --models r50 --batches 1 --no-compile   # quick look
    python benchmarks/bench_inference.py --device cuda --batches 1,32,256 --json out.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from common import (
    cosine_and_maxdiff,
    face_images,
    interleaved_timing,
    machine_info,
    matmul_gflops,
    open_device,
    print_table,
    realistic_model,
    set_threads,
    write_json,
)

COSINE_BOUND = 0.9995
INT8_BOUND = 0.98  # fresnet.inference.fast.INT8_CALIBRATION_COSINE
FP32_BOUND = 1e-4
R50_SPEEDUP_TARGET = 2.0
PEAK_FRACTION_TARGET = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", default="r18,r50,r100", help="comma-separated presets (default: r18,r50,r100)")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2, as the MXNet baseline)")
    p.add_argument("--rounds", type=int, default=0, help="timed rounds per path (default: 7 at batch 1, 4 above)")
    p.add_argument(
        "--paths",
        default="",
        help="comma-separated subset of: eager, auto, fp32, bf16, bf16-all, bf16+1, fp16, fp16-all, "
        "fp16+1, and any of these with -compiled, onnxruntime, int8 (dtype='int8': this CPU's default "
        "backend), int8-8bit / int8-7bit (PT2E, compiled, 8- or 7-bit activations), int8-onnxruntime "
        "(optimize_for_inference's onnxruntime backend), auto-int8 (auto with calibration), "
        "onnxruntime-int8 (QDQ), arcface (arcface_torch's "
        "eager iresnet, same weights; tests/arcface_iresnet_ref.py) (default: all that apply "
        "to the device). bf16/fp16: low-precision convolutions, float32 residual stream; -all: "
        "the stream in low precision too; +N: the first N residual units in float32; auto: "
        "optimize_for_inference's defaults (timed against eager on the first batch)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile paths (they take minutes)")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    p.add_argument("--calibration", default=None, metavar="DATA",
                   help="int8 calibration images (.bin, RecordIO, image folder); default: synthetic faces")
    p.add_argument("--input-size", type=int, default=112, help="square input size (default: 112)")
    p.add_argument("--matmul-size", type=int, default=4096, help="n of the n^3 peak matmul (default: 4096)")
    p.add_argument("--json", type=Path, help="write all results to this JSON file")
    p.add_argument("--markdown", type=Path, help="write the result table as Markdown to this file")
    return p.parse_args(argv)


def default_paths(device: torch.device) -> list[str]:
    low = ["fp16", "fp16-all", "bf16"] if device.type == "cuda" else ["bf16", "bf16-all"]
    precise = ["fp16+1"] if device.type == "cuda" else ["bf16+1"]
    int8 = [] if device.type == "cuda" else ["int8", "auto-int8", "onnxruntime-int8"]
    return (["eager", "arcface", "auto", "fp32"] + low + precise + ["fp32-compiled"] + [f"{d}-compiled" for d in low]
            + ["onnxruntime"] + int8)


def build_arcface(model, x: torch.Tensor) -> Optional[Callable]:
    """arcface_torch's eager iresnet (the reference copy in tests/) with the same weights, fed as
    arcface_torch feeds it ((x/255 - 0.5)/0.5): the baseline users compare against."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from arcface_iresnet_ref import ARCFACE_LAYERS, IResNet, preprocess
    except ImportError:
        return None
    from fresnet.interop.arcface_torch import check_exportable, export_arcface_torch

    check_exportable(model.config)
    units = tuple(model.config.units)
    depth = next((d for d, layers in ARCFACE_LAYERS.items() if tuple(layers) == units), None)
    ref = IResNet(units, num_features=model.config.emb_size, input_size=tuple(model.config.input_size)).eval()
    ref.load_state_dict(export_arcface_torch(model.cpu()))
    ref = ref.to(x.device)
    xp = preprocess(x)
    return (lambda: ref(xp)) if depth is not None or units else None


def build_fast(model, name: str, device: torch.device, calibration=None):
    """One fast path. 'auto' is the library default (decision table + calibration on the first
    batch); every other path is explicitly configured, and the benchmark checks its accuracy itself."""
    from fresnet.inference.fast import optimize_for_inference

    if name == "auto":
        return optimize_for_inference(model, device=device)
    if name in ("int8", "auto-int8"):
        return optimize_for_inference(model, device=device, dtype="int8" if name == "int8" else "auto",
                                      calibration=calibration)
    if name == "int8-onnxruntime":
        return optimize_for_inference(model, device=device, dtype="int8", calibration=calibration,
                                      int8_backend="onnxruntime")
    if name in ("int8-8bit", "int8-7bit"):  # PT2E with the activation width forced, whatever this CPU's default
        return optimize_for_inference(model, device=device, dtype="int8", calibration=calibration,
                                      int8_backend="pytorch", reduce_range=name == "int8-7bit")
    tokens = name.split("-")
    base, _, units = tokens[0].partition("+")
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[base]
    residual = dtype if "all" in tokens else "float32"
    mode: Any = False
    if "compiled" in tokens:
        mode = "reduce-overhead" if device.type == "cuda" else True
    return optimize_for_inference(model, device=device, dtype=dtype, residual_dtype=residual,
                                  float32_units=int(units or 0), compile=mode)


def build_onnxruntime(model, x: torch.Tensor, device: torch.device, threads: int, workdir: str) -> Optional[Callable]:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = os.path.join(workdir, "model.onnx")
    try:
        from fresnet.interop.onnx_export import export_onnx
    except ImportError:  # the exporter module not there yet: plain torch.onnx.export
        export_onnx = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if export_onnx is not None:
            export_onnx(model, path, dynamic_batch=True)
        else:
            torch.onnx.export(model.eval(), x[:1].cpu(), path, input_names=["input"], output_names=["embedding"],
                              dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None
        providers = ["CUDAExecutionProvider"]
    session = ort.InferenceSession(path, options, providers=providers)
    name = session.get_inputs()[0].name
    array = x.detach().cpu().numpy()
    return lambda: torch.from_numpy(session.run(None, {name: array})[0])


def build_onnxruntime_int8(model, x: torch.Tensor, args, workdir: str) -> Optional[Callable]:
    """The int8 ONNX export (onnxruntime static QDQ, same recipe as the PyTorch int8 path) run by
    onnxruntime with non-spinning threads."""
    try:
        from fresnet.interop.onnx_int8 import export_onnx_int8, onnx_session
    except ImportError:
        return None
    path = os.path.join(workdir, "model-int8.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx_int8(model.cpu(), path, args.calibration_batches)
    session = onnx_session(path, threads=args.threads)
    array = x.detach().cpu().numpy()
    return lambda: torch.from_numpy(session.run(None, {"input": array})[0])


def mean_cosine(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.detach().float().cpu().flatten(1), reference.detach().float().cpu().flatten(1)
    return torch.nn.functional.cosine_similarity(out, reference, dim=1).mean().item()


def run_case(model_name: str, batch: int, args, device: torch.device, peaks: dict[str, float], log) -> list[dict]:
    import fresnet

    model = realistic_model(model_name, input_size=(args.input_size, args.input_size)).to(device)
    calibration = None
    if any("int8" in p for p in args.path_list):
        from fresnet.inference.calibration import calibration_batches

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calibration = calibration_batches(args.calibration, model.config.input_size)
        args.calibration_batches = calibration
    gflop_per_image = fresnet.summarize(model.config).flops / 1e9
    x = face_images(batch, (args.input_size, args.input_size), seed=batch).to(device)
    with torch.no_grad():
        reference = model(x)
    paths = args.path_list
    runners: dict[str, Callable] = {}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for path in paths:
            start = time.perf_counter()
            try:
                if path == "eager":
                    runner = lambda: model(x)
                elif path == "arcface":
                    runner = build_arcface(model, x)
                elif path == "onnxruntime-int8":
                    runner = build_onnxruntime_int8(model, x, args, workdir)
                elif path == "onnxruntime":
                    runner = build_onnxruntime(model, x, device, args.threads, workdir)
                    if runner is None:
                        log(f"  {path}: not available on {device.type}, skipped")
                        continue
                else:
                    fast = build_fast(model, path, device, calibration)
                    runner = (lambda f: (lambda: f(x)))(fast)
                with torch.no_grad():
                    out = runner()  # first call: compile / calibrate / warm up
                if path in ("auto", "auto-int8"):
                    log(f"  {path} picked: {fast.choice.describe()}")
            except Exception as error:  # one broken path must not lose the whole run
                log(f"  {path}: FAILED ({type(error).__name__}: {str(error)[:300]})")
                continue
            setup = time.perf_counter() - start
            cosine, maxdiff = cosine_and_maxdiff(out, reference)
            low_precision = path[:4] in ("bf16", "fp16") or (
                path.startswith("auto") and fast.choice.dtype != torch.float32)
            int8 = "int8" in path and (path != "auto-int8" or fast.choice.dtype == torch.int8)
            ok = (cosine >= INT8_BOUND if int8 else cosine >= COSINE_BOUND if low_precision
                  else maxdiff <= FP32_BOUND * max(1.0, float(reference.abs().max())) if path == "arcface"
                  else maxdiff <= FP32_BOUND)
            info_extra = dict(mean_cosine=mean_cosine(out, reference))
            info[path] = dict(setup_s=round(setup, 2), cosine=cosine, max_abs_diff=maxdiff, accurate=ok, **info_extra)
            if path in ("auto", "auto-int8"):
                info[path]["choice"] = fast.choice.describe()
            runners[path] = runner
            log(f"  {path}: ready in {setup:.1f} s, min cosine {cosine:.6f}, max abs diff {maxdiff:.2e}"
                + ("" if ok else "  ** misses the accuracy bound **"))
        # the matmul peak is timed in the same rounds as the models, so it sees the same load
        matmuls = {
            f"matmul-{name}": matmul_runner(dtype, args.matmul_size, device) for name, dtype in peak_dtypes(device)
        }
        rounds = args.rounds or (7 if batch == 1 else 4)
        with torch.no_grad():
            timings = interleaved_timing({**runners, **matmuls}, rounds=rounds, warmup=1, device=device)
    flop = 2.0 * args.matmul_size ** 3
    case_peaks = {name: flop / timings.pop(f"matmul-{name}").median / 1e9 for name, _ in peak_dtypes(device)}
    eager_time = timings["eager"].median if "eager" in timings else None
    rows = []
    for path, timing in timings.items():
        seconds = timing.median
        gflops = gflop_per_image * batch / seconds
        rows.append(dict(
            model=model_name, batch=batch, path=path, images_per_s=batch / seconds, ms_per_batch=seconds * 1e3,
            best_images_per_s=batch / timing.best, speedup=(eager_time / seconds) if eager_time else None,
            gflops=gflops, peaks_same_rounds=case_peaks,
            fraction_fp32_peak=gflops / case_peaks["fp32"],
            fraction_bf16_peak=gflops / case_peaks["bf16"] if "bf16" in case_peaks else None,
            fraction_fp16_peak=gflops / case_peaks["fp16"] if "fp16" in case_peaks else None,
            fraction_bf16_best_peak=gflops / peaks["bf16"] if "bf16" in peaks else None,
            fraction_int8_peak=gflops / case_peaks["int8"] if "int8" in case_peaks else None,
            speedup_vs_arcface=(timings["arcface"].median / seconds) if "arcface" in timings else None,
            rounds=rounds, samples_s=[round(s, 5) for s in timing.seconds], **info[path],
        ))
    log("  matmul peak in the same rounds: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in case_peaks.items()))
    return rows


def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls run natively (CUDA, or a CPU with AVX512-BF16/AMX); emulated ones take minutes at 4096^3."""
    if device.type == "cuda":
        return True
    from fresnet.inference.mixed_precision import onednn_can_pack

    return onednn_can_pack(torch.bfloat16)


def peak_dtypes(device: torch.device) -> list[tuple[str, torch.dtype]]:
    names = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if native_bf16(device) else [])
    return names + ([("fp16", torch.float16)] if device.type == "cuda" else [("int8", torch.int8)])


def matmul_runner(dtype: torch.dtype, n: int, device: torch.device) -> Callable:
    if dtype == torch.int8:
        return int8_gemm_runner(n)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return lambda: a @ b


def int8_gemm_runner(n: int) -> Callable:
    """The machine's int8 GEMM peak as the int8 network's kernels reach it: oneDNN's u8s8 int8
    linear (``onednn.qlinear_pointwise``, what inductor lowers a quantised FC to) on n x n, int32
    accumulation, uint8 output. Falls back to ``torch._int_mm`` where that op is missing."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 255, (n, n), dtype=torch.uint8, generator=gen)
    w = torch.randint(-127, 127, (n, n), dtype=torch.int8, generator=gen)
    try:
        scales = torch.full((n,), 0.01)
        zeros = torch.zeros(n, dtype=torch.int64)
        packed = torch.ops.onednn.qlinear_prepack(w, [n, n])
        def run():
            return torch.ops.onednn.qlinear_pointwise(a, 0.02, 128, packed, scales, zeros, None, 1.0, 0,
                                                      torch.uint8, "none", [], "")
        run()
        return run
    except (AttributeError, RuntimeError, TypeError):
        a8 = (a.to(torch.int16) - 128).to(torch.int8)
        return lambda: torch._int_mm(a8, w)


def targets(rows: list[dict]) -> list[str]:
    """The issues' targets, judged on this run's numbers: r50's best path vs eager, and every
    network's best accurate int8 path vs arcface_torch's eager iresnet (>= 2x)."""
    lines = []
    for model_name in dict.fromkeys(r["model"] for r in rows):
        for batch in sorted({r["batch"] for r in rows if r["model"] == model_name}):
            int8 = [r for r in rows if r["model"] == model_name and r["batch"] == batch and "int8" in r["path"]
                    and r["accurate"] and r.get("speedup_vs_arcface")]
            if not int8:
                continue
            best = max(int8, key=lambda r: r["images_per_s"])
            ok = best["speedup_vs_arcface"] >= R50_SPEEDUP_TARGET
            frac = best.get("fraction_int8_peak")
            lines.append(
                f"{model_name} batch {batch}: best int8 path {best['path']} {best['images_per_s']:.1f} img/s = "
                f"{best['speedup_vs_arcface']:.2f}x arcface_torch eager (target 2.0x: {'met' if ok else 'NOT met'})"
                + (f", {frac:.0%} of the int8 GEMM peak" if frac is not None else "")
                + f", cosine min {best['cosine']:.4f} mean {best.get('mean_cosine', 1):.4f}"
            )
    for batch in sorted({r["batch"] for r in rows if r["model"] == "r50"}):
        candidates = [r for r in rows if r["model"] == "r50" and r["batch"] == batch and r["path"] != "eager"
                      and r["accurate"] and r["speedup"]]
        if not candidates:
            continue
        best = max(candidates, key=lambda r: r["images_per_s"])
        speed_ok = best["speedup"] >= R50_SPEEDUP_TARGET
        lines.append(f"r50 batch {batch}: best path {best['path']} {best['images_per_s']:.1f} img/s = "
                     f"{best['speedup']:.2f}x eager (target {R50_SPEEDUP_TARGET}x: {'met' if speed_ok else 'NOT met'})")
        fraction = best.get("fraction_bf16_peak")
        if fraction is not None:
            frac_ok = fraction >= PEAK_FRACTION_TARGET
            lines.append(f"r50 batch {batch}: {best['gflops']:.0f} GFLOP/s = {fraction:.0%} of the bf16 matmul peak "
                         f"(target {PEAK_FRACTION_TARGET:.0%}: {'met' if frac_ok else 'NOT met'})")
    return lines


def markdown(rows: list[dict], peaks: dict[str, float], meta: dict) -> str:
    head = (f"Measured {meta['date']} on {meta.get('gpu') or meta['cpu']} ({meta['threads']} threads, torch "
            f"{meta['torch']}; CPU flags {', '.join(meta.get('cpu_isa') or []) or '-'}, torch capability "
            f"{meta.get('torch_cpu_capability')}; load average at start {meta.get('load_average_start')}, at end "
            f"{meta.get('load_average_end')}).\n"
            f"Matmul peak ({meta['matmul_size']}^3) at the start of the run: "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
            + "; the '% peak' columns use the peak timed in the same interleaved rounds as each row.\n\n")
    cols = ("| model | batch | path | img/s | x eager | x arcface | GFLOP/s | fp32 / bf16 / int8 peak (same rounds) | "
            "% fp32 peak | % bf16 peak | % int8 peak | min cosine | mean cosine | max abs diff |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""

    def pct(value):
        return f"{value:.0%}" if value is not None else "-"

    for r in rows:
        pk = r["peaks_same_rounds"]
        peaks_text = " / ".join(f"{pk[k]:.0f}" if k in pk else "-" for k in ("fp32", "bf16", "int8"))
        arc = f"{r['speedup_vs_arcface']:.2f}" if r.get("speedup_vs_arcface") else "-"
        body += (
            f"| {r['model']} | {r['batch']} | {r['path']} | {r['images_per_s']:.3g} | "
            f"{r['speedup']:.2f} | {arc} | {r['gflops']:.0f} | {peaks_text} | "
            f"{pct(r['fraction_fp32_peak'])} | {pct(r['fraction_bf16_peak'])} | {pct(r.get('fraction_int8_peak'))} | "
            f"{r['cosine']:.6f} | {r.get('mean_cosine', 1.0):.6f} | {r['max_abs_diff']:.1e} |\n"
        )
    return head + cols + body


def _seconds(run: Callable) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    device = open_device(args.device)
    if device is None:
        return 2
    threads = set_threads(args.threads)
    paths = [p for p in (args.paths.split(",") if args.paths else default_paths(device)) if p]
    if args.no_compile:
        paths = [p for p in paths if not p.endswith("-compiled")]
    if args.no_onnx:
        paths = [p for p in paths if p != "onnxruntime"]
    if "eager" not in paths:
        paths.insert(0, "eager")
    args.path_list = paths
    meta = machine_info(device)
    meta["matmul_size"] = args.matmul_size

    def log(message: str) -> None:
        print(message, flush=True)

    log(f"fresnet inference benchmark: {meta['cpu'] if device.type == 'cpu' else meta.get('gpu')}, "
        f"{threads} threads, torch {torch.__version__}, paths {', '.join(paths)}")
    peaks = {"fp32": matmul_gflops(torch.float32, args.matmul_size, device)}
    if native_bf16(device):
        peaks["bf16"] = matmul_gflops(torch.bfloat16, args.matmul_size, device)
    if device.type == "cuda":
        peaks["fp16"] = matmul_gflops(torch.float16, args.matmul_size, device)
    else:
        run = int8_gemm_runner(args.matmul_size)
        best = min(_seconds(run) for _ in range(3))
        peaks["int8"] = 2.0 * args.matmul_size ** 3 / best / 1e9
    log("matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))

    rows: list[dict] = []
    for model_name in [m for m in args.models.split(",") if m]:
        for batch in [int(b) for b in args.batches.split(",") if b]:
            log(f"{model_name} batch {batch}:")
            case = run_case(model_name, batch, args, device, peaks, log)
            rows.extend(case)
            if args.json:  # after every case, so a run cut short still leaves its results
                write_json(args.json, dict(meta=meta, peaks=peaks, rows=rows, partial=True))
            print_table(
                f"{model_name}, batch {batch}",
                [
                    "path",
                    "img/s",
                    "x eager",
                    "x arcface",
                    "GFLOP/s",
                    "% bf16 peak",
                    "% int8 peak",
                    "cosine",
                    "mean cos",
                    "max diff",
                ],
                [
                    [
                        r["path"],
                        r["images_per_s"],
                        r["speedup"],
                        r.get("speedup_vs_arcface") or 0,
                        r["gflops"],
                        100 * (r["fraction_bf16_peak"] or 0),
                        100 * (r.get("fraction_int8_peak") or 0),
                        r["cosine"],
                        r.get("mean_cosine", 1.0),
                        r["max_abs_diff"],
                    ]
                    for r in case
                ],
            )
    # the peak again at the end: load from elsewhere moves it, the higher one is the fairer ceiling
    end_peaks = {name: matmul_gflops(dtype, args.matmul_size, device) for name, dtype in peak_dtypes(device)
                 if dtype != torch.int8}
    meta["matmul_peak_start"], meta["matmul_peak_end"] = dict(peaks), end_peaks
    meta["load_average_end"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    verdict = targets(rows)
    for line in verdict:
        log(line)
    if args.json:
        write_json(args.json, dict(meta=meta, peaks=peaks, rows=rows, targets=verdict))
    if args.markdown:
        from fresnet.ioutil import atomic_write_text

        atomic_write_text(
            args.markdown, markdown(rows, peaks, meta) + "\n" + "\n".join(f"* {v}" for v in verdict) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
