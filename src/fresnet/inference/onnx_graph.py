"""The float ONNX graph of a fresnet network through the TorchScript exporter: one export shared by
``fresnet export`` (:mod:`fresnet.interop.onnx_export`, which adds checks, metadata and the dynamo
exporter) and the onnxruntime int8 backend (:mod:`fresnet.inference.onnxruntime_int8`, which
quantises it). It sits here, below both, because interop builds on inference and not the reverse.

The TorchScript exporter honours opset 17, takes well under a second for small networks and keeps
GNAP's batch-wide mean as one ``ReduceMean``.
"""
from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def example_input(input_size: Sequence[int], batch: int = 2) -> torch.Tensor:
    """The traced input: ``batch`` random 0..255 RGB images of ``input_size`` (H, W), always the same."""
    return torch.rand(batch, 3, *input_size, generator=torch.Generator().manual_seed(0)) * 255


def torchscript_graph(net: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = True, opset: int = 17):
    """``net`` (float32, CPU, eval) as an ``onnx.ModelProto`` traced on ``example``: input ``input``,
    output ``embedding``, the batch dimension symbolic (``batch``) when ``dynamic_batch``."""
    import onnx

    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(
            net,
            (example,),
            buffer,
            dynamo=False,
            opset_version=int(opset),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())
