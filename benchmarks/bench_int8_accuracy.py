#!/usr/bin/env python
"""int8 accuracy as users care about it: verification accuracy on a ``.bin`` pack, float32 vs int8.

For a trained model (``fresnet train`` output, the demo's model, any file ``fresnet.load`` reads) it
evaluates the same pack (10-fold LFW protocol, flip-summed embeddings, as ``fresnet eval --bin``)
with: the float32 model; ``optimize_for_inference(dtype='int8')`` (this CPU's default backend, or
either backend with 8- or 7-bit int8 forced); and the int8 ONNX export run by onnxruntime (what
``fresnet export --int8`` writes and ``fresnet eval model-int8.onnx --bin`` evaluates). It prints
each accuracy, the difference to float32 (target: within 0.2 points) and the per-embedding cosine
to float32 (min, mean). Use a pack of a few thousand pairs: on 600, one pair is 0.17 points.

    python benchmarks/bench_int8_accuracy.py --model run/model.safetensors --bin run/data/synthetic_val.bin \\
        --calibration run/data            # a RecordIO dataset, an image folder or another .bin
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch

from common import set_threads

TARGET_POINTS = 0.2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a trained model file (.safetensors, .pth, MXNet prefix, ...)")
    p.add_argument("--bin", required=True, help="verification pack to evaluate")
    p.add_argument("--calibration", default=None,
                   help="calibration images (.bin, RecordIO, image folder); default: the --bin pack's images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=50, help="images per forward pass (default 50)")
    p.add_argument("--paths", default="torch-int8,onnxruntime-int8",
                   help="int8 paths to evaluate, comma-separated: torch-int8 (optimize_for_inference(dtype='int8'): "
                        "this CPU's default backend), torch-int8-8bit / torch-int8-7bit (PT2E with 8- or 7-bit "
                        "activations), int8-onnxruntime (optimize_for_inference's onnxruntime backend), "
                        "onnxruntime-int8 (the fresnet export --int8 file), onnxruntime-int8-7bit (the same with "
                        "reduce_range: 7-bit weights)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


class Embedder:
    """What ``fresnet.eval`` needs: ``input_size`` and ``embed(float NCHW 0..255) -> (N, D)``."""

    def __init__(self, run, input_size):
        self.run, self.input_size = run, tuple(input_size)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(self.run(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))), np.float32)


def build_int8(model, path: str, calibration):
    """optimize_for_inference(dtype='int8') for one of the torch-int8* / int8-onnxruntime paths."""
    from fresnet.inference.fast import optimize_for_inference

    if path == "int8-onnxruntime":
        return optimize_for_inference(model, dtype="int8", calibration=calibration, int8_backend="onnxruntime")
    if path == "torch-int8":
        return optimize_for_inference(model, dtype="int8", calibration=calibration)
    seven = {"torch-int8-8bit": False, "torch-int8-7bit": True}[path]
    return optimize_for_inference(model, dtype="int8", calibration=calibration, int8_backend="pytorch",
                                  reduce_range=seven)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    from fresnet.data.verification_bin import load_bin
    from fresnet.eval.embed import embed_images
    from fresnet.eval.verification import verify
    from fresnet.interop.formats import load
    from fresnet.interop.onnx_int8 import export_onnx_int8, onnx_session

    model = load(args.model).eval()
    size = tuple(model.config.input_size)
    images, issame = load_bin(args.bin, image_size=size)
    calibration = args.calibration or args.bin
    print(f"{args.model}: {model.config.short_name()}; {args.bin}: {len(issame)} pairs; calibration: {calibration}")
    runs = {"float32": lambda x: model(x).numpy()}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as workdir:
        warnings.simplefilter("ignore")
        paths = args.paths.split(",")
        for path in paths:
            if path.startswith("torch-int8") or path == "int8-onnxruntime":
                fast = build_int8(model, path, calibration)
                runs[path] = (lambda f: (lambda x: f(x).numpy()))(fast)
                print(f"{path}: {fast.choice.describe()}")
            elif path in ("onnxruntime-int8", "onnxruntime-int8-7bit"):
                onnx_path = Path(workdir) / f"{path}.onnx"
                export_onnx_int8(model, onnx_path, calibration, reduce_range=path.endswith("7bit"))
                session = onnx_session(onnx_path, threads=args.threads)
                runs[path] = (lambda s: (lambda x: s.run(None, {"input": x.numpy()})[0]))(session)
            else:
                raise SystemExit(f"unknown path {path!r}; see --paths")
        embeddings = {}
        results = {}
        for name, run in runs.items():
            emb = embed_images(Embedder(run, size), images, batch_size=args.batch_size, flip=True)
            embeddings[name] = emb
            result = verify(emb, issame, nfolds=10)
            results[name] = dict(accuracy=float(result.accuracy), accuracy_std=float(result.accuracy_std))
    base = results["float32"]["accuracy"]
    ref = torch.from_numpy(embeddings["float32"])
    for name, result in results.items():
        cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(embeddings[name]), ref, dim=1)
        result.update(points_vs_float32=100 * (result["accuracy"] - base), cosine_min=cosine.min().item(),
                      cosine_mean=cosine.mean().item())
        verdict = (
            ""
            if name == "float32"
            else (
                f"  ({'within' if abs(result['points_vs_float32']) <= TARGET_POINTS else 'NOT within'} "
                f"{TARGET_POINTS} points)"
            )
        )
        print(f"{name:17s} accuracy {100 * result['accuracy']:.2f}% +- {100 * result['accuracy_std']:.2f}, "
              f"{result['points_vs_float32']:+.2f} points vs float32{verdict}; cosine to float32 min "
              f"{result['cosine_min']:.5f}, mean {result['cosine_mean']:.5f}")
    if args.json:
        from common import write_json

        write_json(args.json, dict(model=args.model, bin=args.bin, calibration=str(calibration), results=results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
