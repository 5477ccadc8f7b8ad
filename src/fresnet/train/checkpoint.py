"""Resumable checkpoints: everything a run needs to continue exactly, as tensors and plain types.

``OUTPUT/checkpoint.pt`` (written atomically, read with ``torch.load(weights_only=True)``) holds:

* ``model``: the backbone state dict;
* ``fc``: the classifier gathered from all ranks (``weight``, ``bias``), so a resume may use another
  world size;
* ``margin``: the margin loss's own state by name (a learned ``bias``, EMA buffers ``batch_mean``,
  ``batch_std``, ``t``), the same on every rank; empty for the losses without state;
* ``momentum``: SGD momentum buffers by parameter name (the classifier's gathered too);
* ``scaler``: the GradScaler state (fp16), or None;
* ``rng``: every rank's torch CPU (and CUDA) generator state, in rank order;
* ``step``, ``elapsed_s``, ``world_size``, ``global_batch``, ``config``. The data position is the step:
  the sampler's order is a function of ``(seed, epoch)``.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Optional

import torch

from fresnet.errors import FresnetError
from fresnet.ioutil import atomic_write_bytes
from fresnet.validate import as_float, as_int, describe

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fresnet-train-checkpoint-1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    from fresnet.interop.torch_files import load_weights

    if not os.path.lexists(path):
        raise FresnetError(f"{path}: no checkpoint to resume from; run without resume (or check output=)")
    state = load_weights(path, "fresnet training checkpoint", "Delete it to start over")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = describe(state.get("format")) if isinstance(state, dict) else type(state).__name__
        raise FresnetError(f"{path}: not a fresnet training checkpoint (format {found})")
    check_state(state, str(path))
    return state


def _tensors(value: Any, key: str, source: str, allow_none: bool = False) -> dict[str, torch.Tensor]:
    from fresnet.interop.torch_files import check_tensor

    if allow_none and value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise FresnetError(f"{source}: '{key}' is {describe(value)}, not a mapping of names to tensors; "
                           "the checkpoint is damaged; delete it to start over")
    for name, tensor in value.items():
        check_tensor(tensor, f"{key}.{name}", source)
    return value


def check_state(state: dict[str, Any], source: str) -> None:
    """Every entry a resume reads, with its type and range, before anything is restored: a
    checkpoint at step -5 would resume and drop log rows; one with a text step would fail later."""
    fix = "the checkpoint is damaged or was edited; delete it to start over"
    missing = [k for k in ("step", "elapsed_s", "world_size", "global_batch", "model", "fc", "momentum", "rng")
               if k not in state]
    if missing:
        raise FresnetError(f"{source}: the checkpoint has no {', '.join(map(repr, missing))}; {fix}")
    state["step"] = as_int(state["step"], "step", source, minimum=0, maximum=1 << 40, fix=fix)
    state["elapsed_s"] = as_float(state["elapsed_s"], "elapsed_s", source, minimum=0.0, fix=fix)
    state["world_size"] = as_int(state["world_size"], "world_size", source, minimum=1, maximum=1 << 20, fix=fix)
    state["global_batch"] = as_int(state["global_batch"], "global_batch", source, minimum=1, fix=fix)
    _tensors(state["model"], "model", source)
    fc = state["fc"]
    if not isinstance(fc, dict) or not isinstance(fc.get("weight"), torch.Tensor) or fc["weight"].dim() != 2:
        raise FresnetError(f"{source}: 'fc' is {describe(fc)}, not the classifier's 2-D weight (and bias); {fix}")
    bias = fc.get("bias")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != tuple(fc["weight"].shape[:1])):
        raise FresnetError(f"{source}: 'fc.bias' is {describe(bias)}, not one value per class; {fix}")
    _tensors({k: v for k, v in fc.items() if v is not None}, "fc", source)
    _tensors(state["momentum"], "momentum", source)
    _tensors(state.get("margin"), "margin", source, allow_none=True)
    rng = state["rng"]
    cpu = rng.get("cpu") if isinstance(rng, dict) else None
    if not isinstance(cpu, list) or len(cpu) != state["world_size"] or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in cpu):
        raise FresnetError(f"{source}: 'rng' is {describe(rng)}, not one CPU generator state per process "
                           f"({state['world_size']}); {fix}")
    cuda = rng.get("cuda")
    if cuda is not None and not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) for t in cuda)):
        raise FresnetError(f"{source}: 'rng.cuda' is {describe(cuda)}, not a list of generator states; {fix}")
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        raise FresnetError(f"{source}: 'scaler' is {describe(state['scaler'])}, not a GradScaler state; {fix}")


def momentum_by_name(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in named.items():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().clone()
    return out


def restore_momentum(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter],
                     buffers: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    for name, param in named.items():
        if name in buffers:
            if tuple(buffers[name].shape) != tuple(param.shape):
                raise FresnetError(
                    f"{source}: the momentum of {name} has shape {list(buffers[name].shape)}, the parameter "
                    f"{list(param.shape)}; the checkpoint belongs to another network; resume with its config"
                )
            optimizer.state[param]["momentum_buffer"] = buffers[name].to(param.device, param.dtype).clone()


def rng_state(device: torch.device) -> dict[str, Optional[torch.Tensor]]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


# ---- a training process's state <-> a checkpoint --------------------------------------------------


def training_state(parts: Any, step: int, elapsed: float, config: dict[str, Any],
                   info: Any) -> Optional[dict[str, Any]]:
    """The checkpoint of ``parts`` (:class:`~fresnet.train.components.Components`) at ``step``.
    Every rank must call this (the classifier, its momentum and the RNG states are gathered); rank 0
    gets the state, the others None."""
    from fresnet.train import distributed as D

    fc, optimizer, device = parts.classifier, parts.optimizer, info.device
    full_w, full_b = fc.full_weight(), fc.full_bias()
    momentum = momentum_by_name(optimizer, parts.named_params())
    for name, param in fc.named_parameters():
        buf = optimizer.state.get(param, {}).get("momentum_buffer")
        if buf is not None and name in ("weight", "bias"):  # sharded; the margin's are replicated
            momentum[f"fc.{name}"] = D.gather_rows(buf.detach(), fc.counts).cpu()
    rng = rng_state(device)
    cpu_states = [s.cpu() for s in D.gather_equal(rng["cpu"].to(device))]  # nccl needs CUDA tensors
    cuda_states = None if rng["cuda"] is None else [s.cpu() for s in D.gather_equal(rng["cuda"].to(device))]
    if not info.is_main:
        return None
    scaler = parts.scaler
    return {
        "step": step,
        "elapsed_s": elapsed,
        "world_size": info.world_size,
        "global_batch": config["batch_size"] * info.world_size,
        "config": _plain(config),
        "model": {k: v.detach().cpu().clone() for k, v in parts.model.state_dict().items()},
        "fc": {"weight": full_w.cpu(), "bias": None if full_b is None else full_b.cpu()},
        "margin": fc.margin_state() if hasattr(fc, "margin_state") else {},
        "momentum": momentum,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": {"cpu": cpu_states, "cuda": cuda_states},
    }


def restore_training_state(parts: Any, state: dict[str, Any], *, seed: int, global_batch: int, info: Any,
                           source: str) -> list[str]:
    """Load a checked ``state`` (:func:`load_checkpoint`) into ``parts``; returns notes for the user
    (a reseeded random stream, a changed global batch)."""
    from fresnet.interop.native import load_checked

    fc, weight = parts.classifier, state["fc"]["weight"]
    _same_network(state, parts.net_config, source)
    rows = int(getattr(fc, "num_rows", parts.num_classes))
    if weight.shape[0] != rows:
        per = rows // parts.num_classes
        raise FresnetError(f"{source}: the checkpoint has {weight.shape[0]} class centres, this run {rows} "
                           f"({parts.num_classes} classes" + (f" x {per} sub-centres" if per > 1 else "") +
                           "); resume with the same dataset and loss")
    load_checked(parts.model, state["model"], source)
    if tuple(weight.shape[1:]) != (parts.net_config.emb_size,):
        raise FresnetError(f"{source}: the checkpoint's classifier takes {weight.shape[1]}-d embeddings, the network "
                           f"{parts.net_config.emb_size}; the config changed: resume with the checkpoint's config")
    with torch.no_grad():
        fc.weight.copy_(fc.local_slice(weight))
        if fc.bias is not None and state["fc"].get("bias") is not None:
            fc.bias.copy_(fc.local_slice(state["fc"]["bias"]))
    _restore_margin(fc, state.get("margin") or {}, source)
    buffers = dict(state["momentum"])
    for key in ("fc.weight", "fc.bias"):
        if key in buffers:
            buffers[key] = fc.local_slice(buffers[key])
    restore_momentum(parts.optimizer, parts.named_params(), buffers)
    if parts.scaler is not None and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    notes = _restore_rng(state, seed, info, source)
    if int(state["global_batch"]) != global_batch:
        notes.append(f"the global batch changes from {state['global_batch']} to {global_batch}; "
                     "the data position is kept as a step count")
    return notes


def _restore_margin(fc: Any, saved: dict[str, torch.Tensor], source: str) -> None:
    """The margin loss's bias and EMA buffers, by name (a checkpoint of another loss is refused)."""
    margin = getattr(fc, "margin", None)
    expected = {} if margin is None else margin.state_dict()
    if set(saved) != set(expected):
        raise FresnetError(f"{source}: the checkpoint's loss state holds {sorted(saved) or 'nothing'}, this run's loss "
                           f"{sorted(expected) or 'nothing'}; resume with the checkpoint's loss and config")
    if margin is None:
        return
    for name, value in saved.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise FresnetError(f"{source}: the loss state {name} has shape {list(value.shape)}, expected "
                               f"{list(expected[name].shape)}; the checkpoint is damaged; delete it to start over")
    margin.load_state_dict({k: v.to(expected[k].device, expected[k].dtype) for k, v in saved.items()})


def _same_network(state: dict[str, Any], net_config: Any, source: str) -> None:
    """A resume with another network is a changed config (not a damaged file): say which keys differ."""
    from fresnet.train.config import TrainConfig

    saved = state.get("config")
    try:
        before = TrainConfig(network=str(saved["network"]), net=dict(saved.get("net") or {})).net_config()
    except Exception:  # an old or odd stored config: the tensors' own check follows
        return
    if before == net_config:
        return
    old, new = before.to_dict(), net_config.to_dict()
    changed = [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
               if old.get(key) != new.get(key)]
    raise FresnetError(f"{source}: the config changed: the checkpoint was trained with network {saved['network']} "
                       f"and this run asks for another ({'; '.join(changed[:6])}); resume with the checkpoint's "
                       "network keys, or start a new run (overwrite=true, or another output=)")


def _restore_rng(state: dict[str, Any], seed: int, info: Any, source: str) -> list[str]:
    """Take over this rank's random streams (dropout, class sampling); reseed from (seed, step, rank)
    when the checkpoint's world size differs or its saved state is not a valid generator state."""
    step, rng = int(state["step"]), state["rng"]
    reason = None
    if int(state["world_size"]) != info.world_size:
        reason = (f"resuming a {state['world_size']}-process run on {info.world_size} processes: dropout/sampling "
                  "random streams are reseeded")
    else:
        try:
            torch.set_rng_state(rng["cpu"][info.rank])
            if info.device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"][info.rank], info.device)
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            reason = (f"{source}: the saved random-generator state is not valid ({first}); dropout/sampling random "
                      "streams start fresh from (seed, step, rank)")
    if reason is None:
        return []
    torch.manual_seed(seed * 1000 + step * 7 + info.rank + 1)
    return [reason + " (weights, optimiser and data position are exact)"]


def _plain(value: Any) -> Any:
    """Config values as plain types (weights_only=True loads only those)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
