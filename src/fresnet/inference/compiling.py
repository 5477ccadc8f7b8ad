"""``torch.compile`` for the fast path and the trainer: the modes, whether a compiler is there, and
compiling one path with a fallback to eager when it fails.

:data:`COMPILE_MODES` is the one list of ``torch.compile`` modes fresnet accepts (the trainer's
``compile=`` setting imports it from here).
"""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Optional, Union

import torch
from torch import nn

from fresnet.inference.choice import FastChoice

# torch.compile's modes; optimize_for_inference also takes True (= 'default') and False
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # their outputs are overwritten by the next replay


def compiler_available(device: torch.device) -> bool:
    """Whether ``torch.compile``'s inductor backend can build code here: a C++ compiler on CPU,
    Triton on CUDA. Without one, compiling would fail at the first call."""
    if torch.device(device).type == "cuda":
        try:
            from torch.utils._triton import has_triton

            return bool(has_triton())
        except ImportError:
            return False
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return any(c and shutil.which(c) for c in candidates)


def default_compile(device: torch.device) -> Union[bool, str]:
    """``compile='auto'``: CUDA graphs on a GPU with Triton, else uncompiled."""
    # CPU: measured in benchmarks/RESULTS.md, inductor (with freezing) is not reliably faster than
    # the eager oneDNN kernels on this family's conv-dominated graph, and its first call costs ~1 min.
    if device.type == "cuda" and compiler_available(device):
        return "reduce-overhead"  # CUDA graphs: batch-1 inference is launch-bound on a GPU
    return False


def compile_path(net: nn.Module, choice: FastChoice):
    """``net`` (built for ``choice``) compiled as ``choice.compile`` says: inductor with weight
    freezing on CPU, the asked-for mode on CUDA."""
    if choice.int8 is not None:
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


def compiled_or_none(
    net: nn.Module, choice: FastChoice, x: torch.Tensor
) -> tuple[Optional[object], Optional[torch.Tensor]]:
    """(compiled runner, its output on x), or (None, None) with a warning when compiling fails."""
    try:
        runner = compile_path(net, choice)
        return runner, runner(x)
    except Exception as error:  # a missing compiler or an unsupported op: stay eager
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); "
                      f"running the {choice.name} path uncompiled", RuntimeWarning, stacklevel=4)
        return None, None


def owned(out: torch.Tensor, choice: FastChoice) -> torch.Tensor:
    """``out``, cloned where a CUDA graph would overwrite it at the next replay."""
    return out.clone() if choice.compile in CUDA_GRAPH_MODES else out
