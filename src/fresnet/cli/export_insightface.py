"""``fresnet export SRC DST.onnx --insightface``: a graph that InsightFace's ArcFaceONNX reads right."""
from __future__ import annotations

import argparse

from fresnet.errors import FresnetError

COSINE_BOUND = 0.99999


def write_insightface(model, path: str, args: argparse.Namespace) -> int:
    from rich.console import Console

    from fresnet.interop.insightface_onnx import (
        MUL_NAME,
        SUB_NAME,
        export_insightface,
        verify_insightface,
    )

    if args.int8 or args.calibration is not None or args.weight_bits != "auto":
        raise FresnetError("--insightface writes a float32 graph; drop --int8/--calibration/--weight-bits "
                           "(InsightFace's ArcFaceONNX runs whatever graph it is given, but only float32 is checked here)")
    h, w = model.config.input_size
    print(f"destination: ONNX for InsightFace {path} (raw RGB 0..255 in; {SUB_NAME}/{MUL_NAME} first)")
    print(f"model:       {model.config.short_name()} units={list(model.config.units)} input={h}x{w}")
    console = Console(stderr=True)
    with console.status("writing ONNX ..."):
        export_insightface(model.eval(), path, opset=args.opset, dynamic_batch=not args.static_batch,
                           fold_bn=args.fold_bn, exporter=args.exporter)
    print(f"wrote        {path}")
    if not args.verify:
        return 0
    with console.status("checking the file as InsightFace's ArcFaceONNX feeds it ..."):
        cosine = verify_insightface(model, path, batch=1 if args.static_batch else 4)
    verdict = "ok" if cosine >= COSINE_BOUND else "FAILED"
    print(f"insightface: ArcFaceONNX feeds raw pixels; cosine to PyTorch min {cosine:.7f} ({verdict}, bound {COSINE_BOUND})")
    return 0 if verdict == "ok" else 1
