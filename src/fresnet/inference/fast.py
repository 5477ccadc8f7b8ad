"""Inference fast path: ``optimize_for_inference(model)`` -> a module with the same input and output.

What it does to a copy of the network (the original is never modified):

* folds every BatchNorm that folds exactly (:func:`fresnet.inference.fuse.fold_batchnorm`);
* stores activations channels_last (NHWC), the layout oneDNN and cuDNN convolutions are fastest in;
* on CPU, reorders every convolution weight once into oneDNN's blocked layout (eager PyTorch
  repeats that reorder on every call: ~20% of an r50's time at batch 1);
* optionally runs the convolutions of the residual stages in bfloat16 (CPU, CUDA) or float16
  (CUDA), with the stem, the BatchNorm parameters, the head and -- by default -- the residual
  stream kept in float32 (:mod:`fresnet.inference.mixed_precision` says why, with measurements);
* optionally compiles it with ``torch.compile`` (inductor, with weight freezing on CPU; CUDA graphs
  on GPU with ``compile='reduce-overhead'``).

The batch is never split, padded or reordered, so GNAP's coupling of the samples of one batch
(its mean of L2 norms over the whole batch) is exactly that of the original.

**Defaults** (``dtype='auto'``, ``compile='auto'``): on the first call the fast model *times* the
paths that apply on that batch, interleaved, against plain eager (the model exactly as given), and
keeps the fastest; eager itself is a candidate, so the result is never slower than the model you
passed, on the CPU it runs on. The paths:

=====================  =====================================================  ======================
path                   when it is a candidate                                  accuracy gate
=====================  =====================================================  ======================
eager                  always (a copy of the model as given)                   -- (it is the reference)
float32                always: BN folded, channels_last and pre-packed, and    finite output
                       the same in NCHW
bf16 / fp16            CPU with native bf16 (AVX512-BF16 or AMX, as oneDNN     min cosine >=
                       reports), CUDA (fp16): the first rung of the ladder     :data:`CALIBRATION_COSINE`
                       (bf16, bf16) -> (bf16, fp32) -> (bf16, fp32) + 1
                       float32 unit that passes its gate
int8                   CPU, only when ``calibration=`` is given: PyTorch       min cosine >=
                       (:mod:`fresnet.inference.int8`, with a C++ compiler)    :data:`INT8_CALIBRATION_COSINE`
                       and onnxruntime (``inference.onnxruntime_int8``)
=====================  =====================================================  ======================

The low-precision ladder is the accuracy calibration it always was: a rung is kept only if every
embedding's cosine similarity to float32 is at least :data:`CALIBRATION_COSINE` on that batch and
all outputs are finite, else the next rung is tried. :data:`CALIBRATION_COSINE` (0.9997) is stricter
than the promised 0.9995 on purpose: the check sees one batch, and across batches the worst cosine
of one path varies by ~1e-4 (measured on r50 and r100), so the margin keeps the promise for inputs
the calibration did not see. Pass ``dtype='float32'`` when the bound must hold for every input with
certainty. Float32 paths are the same function as the eager model to float rounding (max abs diff
well under 1e-4). ``fast.choice.describe()`` says what was picked and why, with the times measured.

Why time at all: the fast float32 path is not faster than eager everywhere (on a 2-core AVX2 EPYC,
r50 at batch 1 it measured 0.87x eager once), and int8 is worth it or not depending on VNNI, the
batch and the compiler. Timing costs the first call about three passes of each candidate.

The code follows the seams of that description: :mod:`~fresnet.inference.options` checks the
arguments, :mod:`~fresnet.inference.candidates` is the table above (which paths, in which order,
which int8 backend, which gate), :mod:`~fresnet.inference.fast_model` builds, checks and times them,
and :mod:`~fresnet.inference.choice` is the record of one path.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from fresnet.inference.candidates import (
    CALIBRATION_COSINE,
    INT8_BACKEND_WITHOUT_VNNI,
    INT8_CALIBRATION_COSINE,
    INT8_WHY_WITHOUT_VNNI,
    PROMISED_COSINE,
    candidates_for,
    cpu_has_native_bf16,
    default_candidates,
    default_int8_backend,
    int8_backends_unavailable,
)
from fresnet.inference.choice import DTYPES, INT8_BACKENDS, FastChoice, Int8Settings
from fresnet.inference.compiling import COMPILE_MODES, compiler_available, default_compile
from fresnet.inference.fast_model import TIMED_ROUNDS, FastModel, build_path
from fresnet.inference.options import parse_options

__all__ = [  # the fast path's public names, importable from here whichever module defines them
    "CALIBRATION_COSINE", "COMPILE_MODES", "DTYPES", "INT8_BACKENDS", "INT8_BACKEND_WITHOUT_VNNI",
    "INT8_CALIBRATION_COSINE", "INT8_WHY_WITHOUT_VNNI", "PROMISED_COSINE", "TIMED_ROUNDS", "FastChoice",
    "FastModel", "Int8Settings", "build_path", "compiler_available", "cpu_has_native_bf16", "default_candidates",
    "default_compile", "default_int8_backend", "int8_backends_unavailable", "optimize_for_inference",
]

_compiler_available = compiler_available  # the old private name, for callers not yet moved to the public one


def optimize_for_inference(
    model: nn.Module,
    *,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype] = "auto",
    channels_last: bool = True,
    compile: Union[bool, str] = "auto",
    fold_bn: bool = True,
    calibrate: Optional[bool] = None,
    residual_dtype: Union[str, torch.dtype, None] = None,
    float32_units: Optional[int] = None,
    calibration: Any = None,
    int8_backend: Optional[str] = None,
    reduce_range: Optional[bool] = None,
) -> FastModel:
    """A fast inference module computing the same embeddings as ``model`` (which is not modified).

    Args:
        model: a fresnet network (:func:`fresnet.create_model`, :func:`fresnet.load`, ...).
        device: where to run; default: the model's device.
        dtype: 'auto' (time the candidates against eager on the first batch, see the module docs),
            or 'float32', 'bfloat16' (CPU with native bf16, or CUDA), 'float16' (CUDA), 'int8' (CPU).
        channels_last: store activations NHWC.
        compile: 'auto', False, True/'default', or a ``torch.compile`` mode ('reduce-overhead' uses
            CUDA graphs, 'max-autotune'). Falls back to eager, with a warning, if compiling fails.
            int8 is always compiled when a compiler is there (its int8 kernels come from inductor).
        fold_bn: fold BatchNorm into neighbouring conv/FC layers where exact.
        calibrate: with ``dtype='auto'``, choose on the first batch (accuracy gates, then timing
            against eager). Default: on when ``dtype='auto'``; off keeps the first candidate untried.
        residual_dtype: the residual stream between units for a bfloat16/float16 ``dtype``: 'float32'
            (the default for an explicit ``dtype``: more accurate, ~8% slower on CPU) or ``dtype``
            (fastest). With ``dtype='auto'`` both are candidates unless this is given.
        float32_units: residual units, from the input side, run entirely in float32 for a
            bfloat16/float16 ``dtype`` (default 0; 1 makes deep networks such as r100 meet the
            bound). With ``dtype='auto'`` 0 and 1 are candidates unless this is given.
        calibration: images for int8's activation ranges: a float tensor (N, 3, H, W) of 0..255 RGB
            faces, an iterable of such tensors, or a path to a verification ``.bin``, a RecordIO
            dataset or an image folder (:mod:`fresnet.inference.calibration`). With ``dtype='auto'``
            int8 is a candidate only when this is given; ``dtype='int8'`` without it calibrates on
            synthetic faces (with a warning: fine for speed tests, not for a trained network).
        int8_backend: 'pytorch' (PT2E, inductor's oneDNN kernels) or 'onnxruntime' (a QDQ session).
            Default: with ``dtype='int8'``, the per-CPU table of :func:`default_int8_backend`; with
            ``dtype='auto'``, every backend that can run here is a candidate, timed like the others.
        reduce_range: int8 in 7 bits (True: activations on PyTorch, weights on onnxruntime) or 8
            (False). Default: 7 bits on a CPU without VNNI/AMX, where AVX2's int16 sums saturate.

    Returns:
        A :class:`FastModel`; ``fast(x)`` takes the same input as ``model(x)``.
    """
    options = parse_options(model, device=device, dtype=dtype, channels_last=channels_last, compile=compile,
                            fold_bn=fold_bn, calibrate=calibrate, residual_dtype=residual_dtype,
                            float32_units=float32_units, calibration=calibration, int8_backend=int8_backend,
                            reduce_range=reduce_range)
    tried = candidates_for(model, options)
    return FastModel(model, tried.ladder, calibrate=options.calibrate, extras=tried.extras,
                     calibration=tried.calibration)
