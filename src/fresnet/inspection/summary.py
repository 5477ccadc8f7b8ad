"""``summarize``: per-layer table and true totals (parameters, MXNet arg/aux counts, MACs, FLOPs).

MXNet's ``print_summary`` under-reports fresnet badly (11,440,704 for r18 instead of 24,025,600):
it takes the fan-in of ``pre_fc1`` as the previous layer's *channel* count (512) instead of the
flattened 512x7x7, and it counts PReLU gammas as 0. The totals here come from the tensors themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fresnet.network.config import NetConfig
from fresnet.network.layers import MXBatchNorm


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: tuple
    params: int


@dataclass
class Summary:
    config: NetConfig
    input_shape: tuple
    output_shape: tuple
    trunk_shape: tuple
    layers: list[LayerRow]
    trainable_params: int
    mxnet_args: int  # trainable + the fixed gammas of fix_gamma BNs, as MXNet's list_arguments() counts
    mxnet_aux: int  # BatchNorm moving_mean + moving_var
    macs: int
    flops: int
    size_mb: float  # float32 bytes of params + aux / 2**20
    flops_by_op: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "trunk_shape": list(self.trunk_shape),
            "trainable_params": self.trainable_params,
            "mxnet_args": self.mxnet_args,
            "mxnet_aux": self.mxnet_aux,
            "macs": self.macs,
            "flops": self.flops,
            "size_mb": round(self.size_mb, 3),
            "flops_by_op": self.flops_by_op,
            "layers": [
                {"name": r.name, "type": r.type, "output_shape": list(r.output_shape), "params": r.params}
                for r in self.layers
            ],
        }

    def render(self, console=None, max_rows: Optional[int] = None) -> None:
        """Print the table with rich."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"fresnet {self.config.short_name()}  input {tuple(self.input_shape)}")
        table.add_column("layer")
        table.add_column("type")
        table.add_column("output shape")
        table.add_column("params", justify="right")
        rows = self.layers if max_rows is None else self.layers[:max_rows]
        for row in rows:
            table.add_row(row.name, row.type, "x".join(map(str, row.output_shape)), f"{row.params:,}")
        if max_rows is not None and len(self.layers) > max_rows:
            table.add_row("...", f"{len(self.layers) - max_rows} more", "", "")
        console.print(table)
        console.print(f"output shape      {tuple(self.output_shape)}   trunk {tuple(self.trunk_shape)}")
        console.print(f"trainable params  {self.trainable_params:,}")
        console.print(f"mxnet_args        {self.mxnet_args:,}   (adds the fixed gammas of fix_gamma BNs)")
        console.print(f"mxnet_aux         {self.mxnet_aux:,}   (BN moving mean/var)")
        console.print(f"MACs              {self.macs / 1e9:.3f} G   FLOPs {self.flops / 1e9:.3f} G")
        console.print(f"size              {self.size_mb:.2f} MB (float32)")


def count_parameters(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters())
    fixed_gammas = sum(m.num_features for m in model.modules() if isinstance(m, MXBatchNorm) and m.fix_gamma)
    aux = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules() if isinstance(m, MXBatchNorm))
    return {"trainable": trainable, "mxnet_args": trainable + fixed_gammas, "mxnet_aux": aux}


def summarize(
    model_or_config: Union[nn.Module, NetConfig, str, dict], input_size: Optional[Sequence[int]] = None
) -> Summary:
    """Summarise a fresnet model (or a config, a preset name, or an options dict) at batch 1.

    ``input_size`` is (H, W); it defaults to the config's. The model is run once on the CPU in eval
    mode; a config or name is built on the ``meta`` device, so even r269 summarises in a second.
    """
    from fresnet.network.model import FResNet, create_model

    # anything that is not a model yet is built on the meta device: shapes and counts, no memory
    if isinstance(model_or_config, str):
        with torch.device("meta"):
            model = create_model(model_or_config)
    elif isinstance(model_or_config, dict):
        with torch.device("meta"):
            model = create_model(**model_or_config)
    elif isinstance(model_or_config, NetConfig):
        with torch.device("meta"):
            model = FResNet(model_or_config)
    else:
        model = model_or_config
    config: NetConfig = model.config
    h, w = input_size if input_size is not None else config.input_size
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, h, w, device=device)

    rows: list[LayerRow] = []
    handles = []
    trunk_shape: list[tuple] = []

    def record(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                own = sum(p.numel() for p in module.parameters(recurse=False))
                rows.append(LayerRow(name, type(module).__name__, tuple(output.shape), own))

        return hook

    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            features = model.forward_features(x)
            trunk_shape.append(tuple(features.shape))
            out = model.forward_head(features)
    finally:
        for h_ in handles:
            h_.remove()
        model.train(was_training)
    flops = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    counts = count_parameters(model)
    size_mb = 4 * (counts["mxnet_args"] + counts["mxnet_aux"]) / 2**20
    return Summary(
        config=config,
        input_shape=tuple(x.shape),
        output_shape=tuple(out.shape),
        trunk_shape=trunk_shape[0],
        layers=rows,
        trainable_params=counts["trainable"],
        mxnet_args=counts["mxnet_args"],
        mxnet_aux=counts["mxnet_aux"],
        macs=flops // 2,
        flops=flops,
        size_mb=size_mb,
        flops_by_op=by_op,
    )
