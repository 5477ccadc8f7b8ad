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
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from fresnet.errors import FresnetError
from fresnet.inference.mixed_precision import MixedPrecisionNet, dtype_name, onednn_can_pack

PROMISED_COSINE = 0.9995
CALIBRATION_COSINE = 0.9997  # checked on the first batch, with a margin for unseen inputs (module docs)
# int8 is not bf16: measured worst cosines are ~0.99 (random r50) and higher on trained networks;
# below this something is wrong (a calibration set unlike the inputs, a saturating kernel)
INT8_CALIBRATION_COSINE = 0.98
INT8_BACKENDS = ("pytorch", "onnxruntime")
# dtype='int8' on an x86 CPU without VNNI/AMX (AVX2 only), with a C++ compiler: see default_int8_backend.
# Measured on an AVX2-only EPYC (docs/performance.md): both backends meet the accuracy target with 7
# bits; onnxruntime was as fast or faster and builds once for every batch size
INT8_BACKEND_WITHOUT_VNNI = "onnxruntime"
INT8_WHY_WITHOUT_VNNI = ("no VNNI on this CPU, so 7-bit int8 (AVX2's int16 pair sums saturate at 8 bits); measured on "
                         "an AVX2-only CPU, onnxruntime was as accurate as PyTorch's PT2E kernels and faster (r50 batch "
                         "32: 2.26x vs 2.14x arcface_torch's eager), and it builds once for every batch size")
TIMED_ROUNDS = 2  # interleaved rounds per candidate on the first batch, after one untimed warm call
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "int8": torch.int8,
}


@dataclass(frozen=True)
class FastChoice:
    """One concrete way to run the network (and, after the first call with ``dtype='auto'``, why it
    was chosen)."""

    device: str
    dtype: torch.dtype
    channels_last: bool
    compile: Union[bool, str]
    fold_bn: bool
    residual_dtype: torch.dtype = torch.float32  # the stream between residual units
    float32_units: int = 0  # leading residual units kept entirely in float32
    reason: str = ""
    cosine: Optional[float] = None  # min cosine to float32 on the calibration batch
    eager: bool = False  # the model exactly as given (a copy), no fast-path change at all
    calibration_images: int = 0  # int8: how many images the activation ranges come from
    int8_backend: str = "pytorch"  # int8: 'pytorch' (PT2E, inductor) or 'onnxruntime' (QDQ session)
    reduce_range: bool = False  # int8: 7-bit activations (PyTorch) or weights (onnxruntime), no int16 saturation

    @property
    def name(self) -> str:
        """Short name: 'eager'; 'float32' ('float32/nchw' without channels_last); 'int8' (PyTorch),
        'int8/onnxruntime'; 'bfloat16' (float32 residual stream); 'bfloat16/bfloat16' (bf16 stream);
        'bfloat16+1' (float32 stream and first unit)."""
        if self.eager:
            return "eager"
        name = dtype_name(self.dtype)
        if self.dtype == torch.int8:
            return name + ("" if self.int8_backend == "pytorch" else f"/{self.int8_backend}")
        if self.dtype == torch.float32:
            return name + ("" if self.channels_last else "/nchw")
        if self.residual_dtype != torch.float32:
            name += "/" + dtype_name(self.residual_dtype)
        return name + (f"+{self.float32_units}" if self.float32_units else "")

    def describe(self) -> str:
        """What runs, and -- once chosen -- why (the reason, with the times measured)."""
        if self.eager:
            text = f"{self.device}, eager (the model as given)"
        else:
            text = ", ".join(self._parts())
        return text + (f"; {self.reason}" if self.reason else "")

    def _parts(self) -> list[str]:
        if self.dtype == torch.float32:
            precision = "float32"
        elif self.dtype == torch.int8:
            if self.int8_backend == "onnxruntime":
                how = "onnxruntime QDQ, " + ("7-bit weights" if self.reduce_range else "8-bit weights")
            else:
                how = "PT2E, " + ("7-bit activations" if self.reduce_range else "8-bit activations")
            precision = (f"int8 convolutions and FC ({how}, calibrated on {self.calibration_images} images), "
                         "float32 stem, first unit and residual stream")
        else:
            kept = "stem, first unit" if self.float32_units == 1 else (
                f"stem, first {self.float32_units} units" if self.float32_units else "stem")
            precision = (f"{dtype_name(self.dtype)} convolutions, "
                         f"{dtype_name(self.residual_dtype)} residual stream, float32 {kept} and head")
        parts = [self.device, precision]
        if self.dtype != torch.int8:
            parts.append("channels_last" if self.channels_last else "NCHW")
        if self.fold_bn:
            parts.append("BN folded")
        if self.compile:
            parts.append(f"compiled({self.compile})" if isinstance(self.compile, str) else "compiled")
        return parts


# ---------------------------------------------------------------------------------------------------
# the decision table


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 convolutions natively (AVX512-BF16 / AMX), not emulated."""
    return onednn_can_pack(torch.bfloat16)


def default_candidates(device: torch.device) -> list[tuple[torch.dtype, torch.dtype, int]]:
    """(convolution dtype, residual stream dtype, float32 units) in the order tried, fastest first;
    float32 always last (the fallback). On CUDA bfloat16 is not tried: it is no faster than float16
    there and has 3 fewer mantissa bits, so it cannot pass where float16 failed."""
    low = None
    if device.type == "cuda":
        low = torch.float16
    elif device.type == "cpu" and cpu_has_native_bf16():
        low = torch.bfloat16
    fp32 = (torch.float32, torch.float32, 0)
    return [fp32] if low is None else [(low, low, 0), (low, torch.float32, 0), (low, torch.float32, 1), fp32]


def compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile``'s inductor backend can build code here: a C++ compiler on CPU,
    Triton on CUDA. Without one, compiling would fail at the first call."""
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            return bool(has_triton())
        except ImportError:
            return False
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def default_compile(device: torch.device) -> Union[bool, str]:
    # CPU: measured in benchmarks/RESULTS.md, inductor (with freezing) is not reliably faster than
    # the eager oneDNN kernels on this family's conv-dominated graph, and its first call costs ~1 min.
    if device.type == "cuda" and compiler_available(device):
        return "reduce-overhead"  # CUDA graphs: batch-1 inference is launch-bound on a GPU
    return False


# ---------------------------------------------------------------------------------------------------
# building one path


def _is_fresnet(model: nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("stem", "stage_names", "reduce", "head"))


def build_path(model: nn.Module, choice: FastChoice, calibration: Optional[Sequence[torch.Tensor]] = None) -> nn.Module:
    """The network for one :class:`FastChoice` (not compiled), on its device, in eval mode.
    ``calibration``: the float batches an int8 path takes its activation ranges from."""
    from fresnet.inference.fuse import fold_batchnorm

    if choice.eager:
        net = copy.deepcopy(model).to(choice.device).eval()
    elif choice.dtype == torch.int8:
        if not calibration:
            raise FresnetError("an int8 path needs calibration images (calibration=...)")
        source = (fold_batchnorm(model) if choice.fold_bn else copy.deepcopy(model).eval()).float().cpu()
        if choice.int8_backend == "onnxruntime":
            from fresnet.inference.onnxruntime_int8 import OnnxRuntimeInt8Net

            net = OnnxRuntimeInt8Net(source, calibration, reduce_range=choice.reduce_range)
        else:
            from fresnet.inference.int8 import Int8Net, quantize_int8

            net = Int8Net(quantize_int8(source, calibration, reduce_range=choice.reduce_range),
                          sum(int(b.shape[0]) for b in calibration), reduce_range=choice.reduce_range)
    else:
        source = fold_batchnorm(model) if choice.fold_bn else copy.deepcopy(model).eval()
        # inductor packs weights itself (freezing); pre-packed oneDNN tensors are opaque to it
        net = MixedPrecisionNet(source.float(), choice.dtype, choice.residual_dtype, channels_last=choice.channels_last,
                                pack=not choice.compile, float32_units=choice.float32_units)
        net = net.to(choice.device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _compile(net: nn.Module, choice: FastChoice) -> nn.Module:
    if choice.dtype == torch.int8:
        return FrozenCompiled(net)
    mode = None if choice.compile in (True, "default") else choice.compile
    options = None
    if torch.device(choice.device).type == "cpu":
        # freezing turns weights into constants: conv-BN folding, weight prepacking for oneDNN
        options = {"freezing": True}
        mode = None  # modes are CUDA-graph / autotune knobs; options and mode are exclusive
    return torch.compile(net, mode=mode, options=options, dynamic=False)


class FrozenCompiled:
    """``torch.compile(net)`` called with inductor's ``freezing`` on. The int8 lowering (torchao's
    weight-prepack pass) reads the global setting, not ``torch.compile(options=...)``: with options
    the quantised graph fails to compile (``UnsupportedOperatorException: onednn.qconv_prepack``).
    Every call sets it, because a new batch size compiles again."""

    def __init__(self, net: nn.Module):
        self.compiled = torch.compile(net, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(x)


# ---------------------------------------------------------------------------------------------------
# the public module


class FastModel(nn.Module):
    """A faster, inference-only stand-in for a fresnet network: same input (float RGB NCHW, 0..255,
    any device), float32 output on the fast path's device. Gradients are never recorded.

    Attributes:
        choice: the :class:`FastChoice` in use (after the first call when choosing).
        config: the wrapped network's :class:`NetConfig`.
    """

    def __init__(self, model: nn.Module, candidates: Sequence[FastChoice], calibrate: bool,
                 extras: Sequence[FastChoice] = (), calibration: Optional[Sequence[torch.Tensor]] = None):
        super().__init__()
        self.config = getattr(model, "config", None)
        self._candidates = list(candidates)  # the precision ladder, float32 last
        self._extras = list(extras) if calibrate else []  # timed besides the ladder: eager, NCHW, int8
        self._calibrate = calibrate and (len(self._candidates) > 1 or bool(self._extras))
        self.choice = self._candidates[0]
        # a closure, not an attribute: the caller's model must not become a submodule of this one
        # (``fast.train()`` or ``fast.to()`` would reach it); dropped once the path is chosen
        self._build = (lambda choice: build_path(model, choice, calibration)) if self._calibrate else None
        self.net = build_path(model, self.choice, calibration)
        self._set_runner(self.net, compiled=False)

    def _set_runner(self, runner: nn.Module, compiled: bool) -> None:
        # plain attributes: the compiled wrapper would otherwise duplicate ``net`` in state_dict()
        object.__setattr__(self, "_runner", runner)
        object.__setattr__(self, "_compiled", compiled)

    # -- running ----------------------------------------------------------------------------
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.choice.compile and not self._compiled:
            runner, out = _compiled_or_none(self.net, self.choice, x)
            if runner is not None:
                self._set_runner(runner, compiled=True)
                return _own(out, self.choice)
            self.choice = replace(self.choice, compile=False)
        return _own(self._runner(x), self.choice)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.choice.device)
        if self._calibrate:
            return self._choose_on(x)
        with _exact_float32(self.choice):
            return self._run(x)

    def train(self, mode: bool = True) -> "FastModel":
        # inference only: BN must keep its (folded) moving statistics and dropout stays off
        return super().train(False)

    # -- choosing on the first batch ----------------------------------------------------------
    def _choose_on(self, x: torch.Tensor) -> torch.Tensor:
        """Run every candidate on ``x``, drop those that miss their accuracy gate, time the rest
        against eager and keep the fastest; returns the kept path's output on ``x``."""
        eager = replace(self.choice, dtype=torch.float32, residual_dtype=torch.float32, float32_units=0,
                        compile=False, fold_bn=False, channels_last=False, eager=True, reason="")
        paths: dict[str, tuple[FastChoice, nn.Module, Any]] = {}  # name -> (choice, net, runner)
        outputs: dict[str, torch.Tensor] = {}
        net = self._build(eager)
        with _exact_float32(replace(eager, eager=False)):
            reference = net(x)
        paths["eager"], outputs["eager"] = (eager, net, net), reference
        notes: list[str] = []
        low_kept = False
        for index, choice in enumerate(self._candidates):
            if choice.dtype != torch.float32 and low_kept:
                continue  # the ladder: only the first rung that passes is timed
            built = self.net if index == 0 else self._build(choice)
            if self._try(choice, built, x, reference, paths, outputs, notes):
                low_kept = low_kept or choice.dtype != torch.float32
        for choice in self._extras:
            self._try(choice, self._build(choice), x, reference, paths, outputs, notes)
        seconds = _time_paths({name: runner for name, (_, _, runner) in paths.items()}, x, self.choice.device)
        best = min(seconds, key=lambda name: (seconds[name], name != "eager"))
        timed = ", ".join(f"{name} {1e3 * t:.1f} ms" for name, t in sorted(seconds.items(), key=lambda kv: kv[1]))
        reason = (f"fastest on the first batch ({x.shape[0]} images), timed against eager: {timed}"
                  + (f" ({'; '.join(notes)})" if notes else ""))
        choice, net, runner = paths[best]
        cosine = _min_cosine(outputs[best], reference) if choice.dtype not in (torch.float32,) else None
        self.choice = replace(choice, reason=reason, cosine=cosine)
        self.net = net
        self._set_runner(runner, compiled=runner is not net)
        self._calibrate, self._build, self._candidates, self._extras = False, None, [self.choice], []
        return _own(outputs[best], self.choice)

    def _try(self, choice: FastChoice, net: nn.Module, x: torch.Tensor, reference: torch.Tensor,
             paths: dict, outputs: dict, notes: list[str]) -> bool:
        """Run one candidate (compiled first if it is compiled: int8's kernels need inductor) and
        keep it for timing when it passes its accuracy gate."""
        runner = net
        with _exact_float32(choice):
            # int8 is timed compiled (its int8 kernels come from inductor); the others are timed as
            # before, uncompiled, and the chosen one is compiled at the next call if asked
            if choice.compile and choice.dtype == torch.int8:
                compiled, out = _compiled_or_none(net, choice, x)
                if compiled is None:
                    choice = replace(choice, compile=False)
                    out = net(x)
                else:
                    runner = compiled
            else:
                out = net(x)
        finite = bool(torch.isfinite(out).all())
        bound = {torch.float32: None, torch.int8: INT8_CALIBRATION_COSINE}.get(choice.dtype, CALIBRATION_COSINE)
        cosine = _min_cosine(out, reference) if bound is not None else 1.0
        if not finite or (bound is not None and cosine < bound):
            why = "non-finite output" if not finite else f"min cosine {cosine:.6f} < {bound}"
            notes.append(f"{choice.name} rejected: {why}")
            return False
        if bound is not None:
            notes.append(f"{choice.name} min cosine {cosine:.6f}")
        paths[choice.name], outputs[choice.name] = (choice, net, runner), out
        return True

    def extra_repr(self) -> str:
        return self.choice.describe() + (" (calibrates on first call: times the candidates against eager)"
                                         if self._calibrate else "")


def _compiled_or_none(net: nn.Module, choice: FastChoice, x: torch.Tensor):
    """(compiled runner, its output on x), or (None, None) with a warning when compiling fails."""
    try:
        runner = _compile(net, choice)
        return runner, runner(x)
    except Exception as error:  # a missing compiler or an unsupported op: stay eager
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                      f"running the {choice.name} path uncompiled", RuntimeWarning, stacklevel=4)
        return None, None


def _time_paths(runners: dict[str, Any], x: torch.Tensor, device: str, rounds: int = TIMED_ROUNDS) -> dict[str, float]:
    """Best seconds per call of each runner on ``x``, timed interleaved (round-robin, the order
    rotated each round) so that load from elsewhere hits every candidate alike."""
    names = list(runners)
    best = dict.fromkeys(names, float("inf"))
    cuda = torch.device(device).type == "cuda"
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            runners[name](x)
            if cuda:
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@contextlib.contextmanager
def _exact_float32(choice: FastChoice):
    """On CUDA, PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa); a path
    called float32 should be float32, so TF32 is off while such a path runs."""
    if torch.device(choice.device).type != "cuda" or choice.dtype != torch.float32:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _own(out: torch.Tensor, choice: FastChoice) -> torch.Tensor:
    if choice.compile in ("reduce-overhead", "max-autotune"):
        return out.clone()  # CUDA-graph outputs are overwritten by the next replay
    return out


def _min_cosine(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.float().flatten(1), reference.float().flatten(1)
    return torch.nn.functional.cosine_similarity(out, reference, dim=1).min().item()


def _parse_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise FresnetError(f"dtype {dtype} is not supported; use float32, bfloat16, float16 or int8 (or 'auto')")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise FresnetError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16', 'float16' or 'int8'") from None


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
        residual_dtype: dtype of the residual stream between units when ``dtype`` is low precision:
            'float32' (the default for an explicit ``dtype``: more accurate, ~8% slower on CPU) or
            the same as ``dtype`` (fastest). With ``dtype='auto'`` both are candidates unless this
            is given.
        float32_units: how many residual units, from the input side, run entirely in float32 when
            ``dtype`` is bfloat16/float16 (default 0 for an explicit ``dtype``; 1 makes deep
            networks such as r100 meet the bound). With ``dtype='auto'`` 0 and 1 are candidates.
        calibration: images for int8's activation ranges: a float tensor (N, 3, H, W) of 0..255 RGB
            faces, an iterable of such tensors, or a path to a verification ``.bin``, a RecordIO
            dataset or an image folder (:mod:`fresnet.inference.calibration`). With ``dtype='auto'``
            int8 is a candidate only when this is given; ``dtype='int8'`` without it calibrates on
            synthetic faces (with a warning: fine for speed tests, not for a trained network).
        int8_backend: 'pytorch' (PT2E, inductor's oneDNN kernels) or 'onnxruntime' (a QDQ session
            behind the same module interface). Default: with ``dtype='int8'``, the per-CPU table of
            :func:`default_int8_backend`; with ``dtype='auto'``, every backend that can run here is
            a candidate, timed like the others.

    Returns:
        A :class:`FastModel`; ``fast(x)`` takes the same input as ``model(x)``.
    """
    if not _is_fresnet(model):
        raise FresnetError("optimize_for_inference takes a fresnet network (fresnet.create_model / fresnet.load); "
                           f"got {type(model).__name__}")
    if compile not in COMPILE_MODES and compile != "auto":
        raise FresnetError(f"unknown compile mode {compile!r}; choose one of 'auto', "
                           + ", ".join(repr(m) for m in COMPILE_MODES))
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FresnetError("device 'cuda' was asked for but CUDA is not available; use device='cpu'")
    int8_asked = dtype != "auto" and _parse_dtype(dtype) == torch.int8
    if dtype == "auto":
        ladder = default_candidates(device)
        reason = "decision table"
    else:
        low = _parse_dtype(dtype)
        ladder = [(low, torch.float32, 0)]
        reason = "requested"
        if low == torch.float16 and device.type == "cpu":
            raise FresnetError("float16 is a GPU path; on CPU use dtype='bfloat16' or 'float32'")
        if low == torch.int8 and device.type != "cpu":
            raise FresnetError("int8 is a CPU path (x86 oneDNN kernels); on a GPU use dtype='float16' or 'auto'")
        if low == torch.int8 and (residual_dtype is not None or float32_units is not None):
            raise FresnetError("residual_dtype and float32_units apply to bfloat16/float16; int8 keeps the residual "
                               "stream, the stem and the first unit in float32 by design")
    if residual_dtype is not None:
        stream = _parse_dtype(residual_dtype)
        if stream not in (torch.float32, ladder[0][0]) or stream == torch.int8:
            raise FresnetError(f"residual_dtype {dtype_name(stream)} must be float32 or the same as dtype "
                               f"({dtype}): the stream is never less precise than the convolutions")
        ladder = [(low, stream if low != torch.float32 else low, units) for low, _, units in ladder]
    if float32_units is not None:
        if isinstance(float32_units, bool) or not isinstance(float32_units, int) or float32_units < 0:
            raise FresnetError(f"float32_units must be a whole number >= 0; got {float32_units!r}")
        available = sum(len(getattr(model, stage)) for stage in model.stage_names)
        if float32_units > available:
            raise FresnetError(f"float32_units={float32_units}, but this network has {available} residual units")
        ladder = [(low, stream, float32_units if low != torch.float32 else 0) for low, stream, _ in ladder]
    ladder = list(dict.fromkeys(ladder))  # fixing an option collapses candidates that became equal
    if compile == "auto":
        compile = default_compile(device)
    elif compile and not compiler_available(device):
        warnings.warn("torch.compile needs a C++ compiler (CPU) or Triton (CUDA), and none was found; "
                      "running uncompiled", RuntimeWarning, stacklevel=2)
        compile = False
    candidates = [FastChoice(str(device), low, channels_last, compile, fold_bn, residual_dtype=stream,
                             float32_units=units, reason=reason) for low, stream, units in ladder]
    if calibrate is None:
        calibrate = dtype == "auto"
    batches = None
    extras: list[FastChoice] = []
    if int8_backend is not None and int8_backend not in INT8_BACKENDS:
        raise FresnetError(f"unknown int8_backend {int8_backend!r}; choose one of {', '.join(INT8_BACKENDS)}")
    if int8_backend is not None and not (int8_asked or dtype == "auto"):
        raise FresnetError(f"int8_backend applies to dtype='int8' or 'auto'; got dtype={dtype!r}")
    if int8_backend is not None:
        missing = int8_backends_unavailable()[int8_backend]
        if missing is not None:
            raise FresnetError(missing)
    if dtype == "auto":
        extras.append(replace(candidates[-1], dtype=torch.float32, channels_last=not channels_last,
                              residual_dtype=torch.float32, float32_units=0))
        if calibration is not None and device.type == "cpu":
            batches = _int8_calibration(model, calibration)
            extras += _int8_candidates(device, fold_bn, batches, reason, int8_backend)
    elif int8_asked:
        if calibration is None:
            warnings.warn("dtype='int8' without calibration=: calibrating on synthetic faces, which is fine for a "
                          "speed test but not for a trained network; pass real face crops (a tensor, or a .bin, "
                          "RecordIO or image folder path)", UserWarning, stacklevel=2)
        if int8_backend is None:
            int8_backend, why = default_int8_backend(device)
            reason = f"{reason}; {int8_backend} backend: {why}"
        batches = _int8_calibration(model, calibration)
        candidates = [_int8_choice(device, fold_bn, batches, reason, int8_backend)]
    return FastModel(model, candidates, calibrate=bool(calibrate), extras=extras, calibration=batches)


def _int8_calibration(model: nn.Module, calibration: Any) -> list[torch.Tensor]:
    from fresnet.inference.calibration import calibration_batches

    size = model.config.input_size if getattr(model, "config", None) is not None else (112, 112)
    return calibration_batches(calibration, size)


# ---------------------------------------------------------------------------------------------------
# int8: which backend, per CPU class


def int8_backends_unavailable() -> dict[str, Optional[str]]:
    """For each int8 backend, None when it can be built here, else the reason it cannot."""
    from fresnet.inference.int8 import int8_unavailable
    from fresnet.inference.onnxruntime_int8 import onnxruntime_int8_unavailable

    return {"pytorch": int8_unavailable(), "onnxruntime": onnxruntime_int8_unavailable()}


def default_int8_backend(device: torch.device) -> tuple[str, str]:
    """(backend, why) for ``dtype='int8'`` on this machine: the per-CPU decision table of
    ``docs/performance.md``. Both backends use the same recipe and, measured on the CPU class each
    is picked for, meet the accuracy target; what differs is speed and what they need.

    * no C++ compiler: onnxruntime (PyTorch's int8 kernels come from inductor; without it PyTorch
      runs reference kernels slower than float32);
    * an int8 dot product (VNNI, AMX): PyTorch (oneDNN's VNNI kernels, 8-bit activations);
    * neither (AVX2-only x86): :data:`INT8_BACKEND_WITHOUT_VNNI`, the faster one measured there.
    """
    from fresnet.inference.int8 import cpu_has_int8_dot_product

    missing = int8_backends_unavailable()
    if all(missing.values()):
        raise FresnetError("no int8 backend here: " + "; ".join(str(reason) for reason in missing.values()))
    for backend, reason in missing.items():
        if reason is not None:
            other = next(b for b in missing if b != backend)
            return other, f"the only int8 backend here ({reason})"
    if not compiler_available(device):
        return "onnxruntime", "no C++ compiler for PyTorch's int8 kernels (inductor)"
    if cpu_has_int8_dot_product():
        return "pytorch", "this CPU has VNNI/AMX int8 dot products (oneDNN kernels, 8-bit activations)"
    return INT8_BACKEND_WITHOUT_VNNI, INT8_WHY_WITHOUT_VNNI


def _int8_choice(device: torch.device, fold_bn: bool, batches: Sequence[torch.Tensor], reason: str,
                 backend: str, warn: bool = True) -> FastChoice:
    from fresnet.inference.int8 import reduce_range_for_this_cpu

    compiled = backend == "pytorch" and compiler_available(device)
    if backend == "pytorch" and not compiled and warn:
        warnings.warn("int8 without a C++ compiler runs PyTorch's reference quantised kernels, slower than "
                      "float32; install g++ (inductor builds the int8 kernels) or use int8_backend='onnxruntime'",
                      RuntimeWarning, stacklevel=3)
    images = sum(int(b.shape[0]) for b in batches)
    return FastChoice(str(device), torch.int8, False, compiled, fold_bn, reason=reason, calibration_images=images,
                      int8_backend=backend, reduce_range=reduce_range_for_this_cpu())


def _int8_candidates(device: torch.device, fold_bn: bool, batches: Sequence[torch.Tensor], reason: str,
                     backend: Optional[str]) -> list[FastChoice]:
    """auto's int8 candidates: every backend that can run here (or the one asked for). PyTorch
    without a compiler is left out when onnxruntime is there: its reference kernels are slower than
    float32, so timing them would only cost the first call."""
    missing = int8_backends_unavailable()
    if backend is None:
        backends = [b for b in INT8_BACKENDS if missing[b] is None]
        if "onnxruntime" in backends and not compiler_available(device):
            backends = [b for b in backends if b != "pytorch"]  # pytorch may be missing too (no torchao)
    else:
        backends = [backend]
    if not backends:
        raise FresnetError("no int8 backend here: " + "; ".join(str(reason) for reason in missing.values()))
    return [_int8_choice(device, fold_bn, batches, reason, b, warn=False) for b in backends]
