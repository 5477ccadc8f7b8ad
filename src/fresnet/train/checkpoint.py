"""Resumable checkpoints: everything a run needs to continue exactly, as tensors and plain types.

``OUTPUT/checkpoint.pt`` (written atomically, read with ``torch.load(weights_only=True)``) holds:

* ``model``: the backbone state dict;
* ``fc``: the classifier gathered from all ranks (``weight``, ``bias``), so a resume may use another
  world size;
* ``momentum``: SGD momentum buffers by parameter name (the classifier's gathered too);
* ``scaler``: the GradScaler state (fp16), or None;
* ``rng``: every rank's torch CPU (and CUDA) generator state, in rank order;
* ``step``, ``elapsed_s``, ``world_size``, ``global_batch``, ``config``. The data position is the step:
  the sampler's order is a function of ``(seed, epoch)``.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional

import torch

from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fresnet-train-checkpoint-1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FresnetError(f"{path}: no checkpoint to resume from; run without resume (or check output=)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise FresnetError(f"{path}: not a readable fresnet training checkpoint ({type(exc).__name__}: {exc}); "
                           "delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FresnetError(f"{path}: not a fresnet training checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    return state


def momentum_by_name(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in named.items():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().clone()
    return out


def restore_momentum(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                     buffers: dict[str, torch.Tensor]) -> None:
    for name, param in named.items():
        if name in buffers:
            optimizer.state[param]["momentum_buffer"] = buffers[name].to(param.device, param.dtype).clone()


def rng_state(device: torch.device) -> dict[str, Optional[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}
