"""The type and range of every :class:`~fresnet.train.config.TrainConfig` key, checked on load.

Values come from YAML files, ``key=value`` overrides and configs stored in checkpoints; each is
converted to its field's type (``'5e-4'``, which YAML 1.1 reads as a string, becomes 0.0005) or
refused with the key, the value, where it came from and what is expected. A key without an entry in
:data:`RANGES` is checked by its annotation alone (``int``, ``float``, ``bool``, ``str``, ``list``,
``dict``, ``Optional[...]``), so new keys are typed from the start.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import fresnet.validate as V
from fresnet.errors import FresnetError
from fresnet.limits import check

MAX_STEPS = 1 << 40  # a step count far beyond any run, small enough for exact float arithmetic
MAX_SEED = (1 << 32) - 1

# key -> keyword arguments of the validate.as_* function its annotation selects
RANGES: dict[str, dict[str, Any]] = {
    "max_steps": dict(minimum=1, maximum=MAX_STEPS),
    "batch_size": dict(minimum=1, maximum=1 << 24),
    "val_pairs": dict(minimum=1, maximum=1 << 24),
    "val_batch_size": dict(minimum=1, maximum=1 << 24),
    "checkpoint_every": dict(minimum=0, maximum=MAX_STEPS),
    "verbose": dict(minimum=0, maximum=MAX_STEPS),
    "log_every": dict(minimum=0, maximum=MAX_STEPS),
    "num_workers": dict(minimum=0, maximum=1024),
    "seed": dict(minimum=0, maximum=MAX_SEED),
    "lr": dict(minimum=0.0),
    "momentum": dict(minimum=0.0, maximum=1.0),
    "wd": dict(minimum=0.0),
    "lr_factor": dict(minimum=0.0),
    "warmup_steps": dict(minimum=0.0, maximum=float(MAX_STEPS)),
    "fc7_lr_mult": dict(minimum=0.0),
    "fc7_wd_mult": dict(minimum=0.0),
    "sample_rate": dict(above=0.0, maximum=1.0),
    "clip_grad_norm": dict(minimum=0.0),
    "loss_s": dict(above=0.0),
}
FIXES = {
    "max_steps": "training length is a number of optimiser steps, e.g. max_steps: 1000",
    "batch_size": "the batch per process, e.g. batch_size: 128",
    "sample_rate": "the Partial FC sampling rate, e.g. sample_rate: 0.1 (1 = no sampling)",
    "lr_steps": "give steps as a list, e.g. lr_steps: [100000, 160000], or '100000,160000'",
    "val_targets": "give .bin paths and/or synthetic as a list, e.g. val_targets: [lfw.bin, synthetic]",
}


def _check(name: str, annotation: str, value: Any, where: str) -> Any:
    fix = FIXES.get(name, "")
    if annotation.startswith("Optional[") and annotation.endswith("]"):
        if value is None:
            return None
        annotation = annotation[len("Optional["):-1]
    extra = RANGES.get(name, {})
    if annotation == "int":
        return V.as_int(value, name, where, fix=fix, **extra)
    if annotation == "float":
        return V.as_float(value, name, where, fix=fix, **extra)
    if annotation == "bool":
        return V.as_bool(value, name, where, fix=fix)
    if annotation == "str":
        return V.as_str(value, name, where, fix=fix)
    if annotation == "dict":
        return V.as_mapping(value, name, where, fix=fix)
    if annotation == "list":
        if name in ("lr_steps", "val_targets") and isinstance(value, str):  # the original's "100000,160000"
            value = [item.strip() for item in value.split(",") if item.strip()]
        if name == "lr_steps" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        items = V.as_list(value, name, where, fix=fix, max_items=10_000)
        if name == "lr_steps":
            return [V.as_int(item, name, where, minimum=0, maximum=MAX_STEPS, fix=fix) for item in items]
        if name == "val_targets":
            return [V.as_str(item, name, where, fix=fix) for item in items]
        return items
    return value  # an annotation this module does not know: left to the key's own checks


def check_fields(cfg: Any, origins: Optional[Mapping[str, str]] = None, default: str = "training config") -> None:
    """Convert and check every field of ``cfg`` in place; ``origins`` maps keys to their source
    (a file, ``override``) for the messages."""
    origins = origins or {}
    for f in dataclasses.fields(cfg):
        where = origins.get(f.name, default)
        value = getattr(cfg, f.name)
        checked = _check(f.name, str(f.type), value, where)
        setattr(cfg, f.name, checked)
    synthetic = getattr(cfg, "synthetic", None) or {}
    where = origins.get("synthetic", default)
    for key, value in synthetic.items():
        if key in ("num_identities", "images_per_identity", "holdout_identities"):
            synthetic[key] = V.as_int(value, f"synthetic.{key}", where, minimum=1, maximum=1 << 24)
        elif key == "seed":
            synthetic[key] = V.as_int(value, "synthetic.seed", where, minimum=0, maximum=MAX_SEED)
        elif key == "nuisance":
            synthetic[key] = V.as_float(value, "synthetic.nuisance", where, minimum=0.0, maximum=100.0)


def check_net(cfg: Any, origins: Optional[Mapping[str, str]] = None, default: str = "training config"):
    """The :class:`NetConfig` of ``cfg``, its errors prefixed with where the network keys came from."""
    origins = origins or {}
    try:
        net = cfg.net_config()
    except FresnetError as exc:
        where = origins.get("net") or origins.get("network") or default
        raise FresnetError(f"{where}: network: {exc}") from None
    if str(cfg.dataset) == "synthetic":  # rendered once and kept in memory: bound it before rendering
        options = cfg.synthetic_options()
        side = cfg.synthetic_render_size(net.input_size)
        images = int(options["num_identities"]) * int(options["images_per_identity"])
        check("max_tensor_bytes", images * 3 * side * side,
              f"the synthetic set in memory ({images:,} images at {side}x{side})", origins.get("synthetic", default))
    return net
