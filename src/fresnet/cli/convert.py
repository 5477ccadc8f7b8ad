"""``fresnet convert SRC DST`` (any format to any format) and ``fresnet export SRC [DST.onnx]``.

Formats come from the file names (:mod:`fresnet.interop.formats`); both commands print what they
inferred before doing anything, and ONNX output is checked in onnxruntime against PyTorch.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from fresnet.cli import args as A
from fresnet.errors import FresnetError

FORMATS_HELP = (
    "formats by name: X.safetensors (fresnet), X.pth / X.pt (arcface_torch iresnet), X-symbol.json, "
    "X-0000.params or the bare prefix X (MXNet), X.onnx (export only)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert weights between fresnet .safetensors, arcface_torch .pth, MXNet and ONNX",
        description="Convert a model file. " + FORMATS_HELP + ".",
        epilog="examples:\n  fresnet convert model-0000.params model.safetensors\n"
        "  fresnet convert backbone.pth model.safetensors\n  fresnet convert model.safetensors exported/model\n"
        "  fresnet convert model.safetensors model.onnx --fold-bn\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="model file to read")
    p.add_argument("dst", metavar="DST", help="model file to write (the format follows from its name)")
    _add_source_args(p)
    p.add_argument("--dst-epoch", type=A.epoch, default=None, help="epoch of an MXNet destination (default 0)")
    _add_onnx_args(p)
    p.set_defaults(func=run_convert)

    p = sub.add_parser(
        "export",
        help="export a model to ONNX (checked against PyTorch in onnxruntime)",
        description="Export to ONNX. SRC is a model file (" + FORMATS_HELP + ") or a preset name such as "
        "r50 (random weights, for speed tests; use --set to change it).",
        epilog="examples:\n  fresnet export model.safetensors\n  fresnet export backbone.pth r100.onnx --fold-bn\n"
        "  fresnet export r50 r50-gdc.onnx --set net_output=GDC --static-batch\n"
        "  fresnet export model.safetensors model-int8.onnx --int8 --calibration train_dir\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="model file, or a preset name (see `fresnet list`)")
    p.add_argument("dst", metavar="DST", nargs="?", default=None, help="output .onnx (default: SRC with .onnx)")
    _add_source_args(p)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override when SRC is a preset name, e.g. --set net_output=GDC (repeatable)",
    )
    _add_onnx_args(p)
    p.add_argument("--insightface", action="store_true",
                   help="write the graph for InsightFace's ArcFaceONNX / FaceAnalysis: raw RGB 0..255 in, its first "
                        "nodes named _minusscalar0/_mulscalar0 so InsightFace feeds raw pixels (docs/faces.md)")
    g = p.add_argument_group("int8 (static quantisation, onnxruntime QDQ)")
    g.add_argument("--int8", action="store_true",
                   help="write an int8 model: per-channel int8 weights, uint8 activations calibrated on --calibration; "
                        "stem, first unit and residual stream stay float32 (docs/performance.md)")
    g.add_argument("--calibration", metavar="DATA", default=None,
                   help="face images for the int8 ranges: a verification .bin, a RecordIO dataset or an image folder "
                        "(a few hundred images are used; default: synthetic faces, for speed tests only)")
    g.add_argument("--weight-bits", choices=("auto", "7", "8"), default="auto",
                   help="int8 weight range: 7 bits keeps AVX2's int16 pair sums (vpmaddubsw) from saturating, "
                        "which costs accuracy on CPUs without VNNI; 8 bits uses the full range where the CPU has "
                        "VNNI/AMX (default auto: this CPU's class, as optimize_for_inference picks it)")
    p.set_defaults(func=run_export)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epoch", type=A.epoch, default=None, help="epoch of an MXNet source given as a prefix")
    p.add_argument("--num-layers", type=A.positive_int, default=None, help=".pth source: depth (default: from the block counts)")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help=".pth/MXNet source: input size when the file does not fix it (default: from the FC width, "
                        "112x112 for a 7x7 trunk)")


def _add_onnx_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ONNX output")
    g.add_argument("--opset", type=A.positive_int, default=17, help="ONNX opset, 17 or newer (default 17)")
    g.add_argument("--static-batch", action="store_true", help="fix the batch size at 1 (default: dynamic)")
    g.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into conv/FC for deployment")
    g.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter (default torchscript: opset 17, fast)")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the onnxruntime-versus-PyTorch check of the written file")
    g.add_argument("--tolerance", type=A.nonnegative_float, default=1e-4,
                   help="largest accepted max abs difference, relative to max(1, |output|) (default 1e-4)")


def _parse_size(text):
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise FresnetError(f"--input-size expects HxW or N, e.g. 112x112, got {text!r}") from None
    return tuple(sizes * 2 if len(sizes) == 1 else sizes)


def _read(args: argparse.Namespace):
    from fresnet.interop.formats import detect_source, read_model

    source = detect_source(args.src, epoch=args.epoch)
    print(f"source:      {source.describe()}")
    return read_model(source, num_layers=args.num_layers, input_size=_parse_size(args.input_size))


def _write(model, destination, args: argparse.Namespace) -> int:
    from rich.console import Console

    from fresnet.interop.formats import Kind, write_model

    print(f"destination: {destination.describe()}")
    print(f"model:       {model.config.short_name()} units={list(model.config.units)} "
          f"input={model.config.input_size[0]}x{model.config.input_size[1]}")
    onnx = destination.kind is Kind.ONNX
    options = dict(dynamic_batch=not args.static_batch, opset=args.opset, fold_bn=args.fold_bn,
                   exporter=args.exporter) if onnx else {}
    console = Console(stderr=True)
    with console.status(f"writing {destination.kind.value} ..."):
        write_model(model, destination, **options)
    print(f"wrote        {destination.path if destination.kind is not Kind.MXNET else destination.describe()}")
    if onnx and args.verify:
        return _verify(model, destination.path, args, console)
    return 0


def _verify(model, path: str, args: argparse.Namespace, console) -> int:
    import torch

    from fresnet.interop.onnx_export import verify_onnx

    batches = (1,) if args.static_batch else (1, 7)
    with console.status("checking the ONNX file in onnxruntime ..."):
        diff = verify_onnx(model, path, batch_sizes=batches)
        with torch.no_grad():
            h, w = model.config.input_size
            scale = float(model.eval()(torch.full((1, 3, h, w), 127.0)).abs().max())
    limit = args.tolerance * max(1.0, scale)
    verdict = "ok" if diff <= limit else "FAILED"
    print(f"onnxruntime: max abs diff {diff:.3g} vs PyTorch over batch sizes {list(batches)} ({verdict}, limit {limit:.3g})")
    return 0 if diff <= limit else 1


def run_convert(args: argparse.Namespace) -> int:
    from fresnet.interop.formats import detect_destination

    destination = detect_destination(args.dst, epoch=args.dst_epoch)  # fail on a bad name before reading
    model = _read(args)
    return _write(model, destination, args)


def run_export(args: argparse.Namespace) -> int:
    from fresnet.interop.formats import Kind, detect_destination

    dst = args.dst
    if dst is None:
        base = args.src[: -len("-symbol.json")] if args.src.endswith("-symbol.json") else args.src
        dst = str(Path(base).with_suffix(".onnx")) if Path(base).suffix in (".safetensors", ".pth", ".pt", ".params") \
            else base + ".onnx"
    destination = detect_destination(dst)
    if destination.kind is not Kind.ONNX:
        raise FresnetError(f"fresnet export writes ONNX; name the output X.onnx (got {dst!r}), or use fresnet convert")
    if _is_preset(args.src):
        from fresnet.network.config import parse_assignments
        from fresnet.network.model import create_model

        print(f"source:      preset {args.src} with random weights")
        model = create_model(args.src, **parse_assignments(args.overrides)).eval()
    else:
        if args.overrides:
            raise FresnetError("--set only applies when SRC is a preset name; a file carries its own config")
        model = _read(args)
    if args.insightface:
        from fresnet.cli.export_insightface import write_insightface

        return write_insightface(model, destination.path, args)
    if args.int8:
        return _write_int8(model, destination.path, args)
    if args.calibration is not None:
        raise FresnetError("--calibration is for --int8 exports; add --int8 (or drop --calibration)")
    if args.weight_bits != "auto":
        raise FresnetError("--weight-bits is for --int8 exports; add --int8 (or drop --weight-bits)")
    return _write(model, destination, args)


def _write_int8(model, path: str, args: argparse.Namespace) -> int:
    import warnings

    from rich.console import Console

    from fresnet.inference.calibration import CalibrationWarning
    from fresnet.inference.int8 import reduce_range_for_this_cpu
    from fresnet.interop.onnx_int8 import export_onnx_int8, verify_onnx_int8

    reduce_range = reduce_range_for_this_cpu() if args.weight_bits == "auto" else args.weight_bits == "7"
    bits = f"{7 if reduce_range else 8}-bit weights"
    if args.weight_bits == "auto":
        bits += " (this CPU " + ("has no" if reduce_range else "has an") + " int8 dot product, VNNI/AMX)"
    print(f"destination: ONNX int8 (QDQ) {path}, {bits}")
    print(f"calibration: {args.calibration or 'synthetic faces (pass --calibration DATA for a trained model)'}")
    console = Console(stderr=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CalibrationWarning)
        with console.status("calibrating and quantising (a minute or more for r50) ..."):
            export_onnx_int8(model.eval(), path, args.calibration, dynamic_batch=not args.static_batch, opset=args.opset,
                             reduce_range=reduce_range)
    for warning in caught:
        if issubclass(warning.category, CalibrationWarning):
            print(f"warning:     {warning.message}")
    print(f"wrote        {path}")
    if not args.verify:
        return 0
    with console.status("checking the int8 file in onnxruntime against PyTorch float32 ..."):
        worst, mean = verify_onnx_int8(model, path, batch=1 if args.static_batch else 8)
    from fresnet.inference.fast import INT8_CALIBRATION_COSINE

    verdict = "ok" if worst >= INT8_CALIBRATION_COSINE else "FAILED"
    print(f"onnxruntime: cosine to PyTorch float32 min {worst:.5f}, mean {mean:.5f} on synthetic faces "
          f"({verdict}, bound {INT8_CALIBRATION_COSINE})")
    return 0 if verdict == "ok" else 1


def _is_preset(name: str) -> bool:
    from fresnet.network.presets import PRESETS

    return name in PRESETS and not os.path.exists(name)
