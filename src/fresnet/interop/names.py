"""fresnet ``state_dict`` keys <-> original MXNet array names, both ways.

The model's module names are the original graph's node names, so the mapping is mechanical:
drop a leading ``stem.`` / ``reduce.`` / ``head.``, join the rest with ``_``, and rename the
parameter suffix by layer type (BatchNorm ``weight`` is MXNet's ``gamma``, a PReLU ``weight`` is
its ``gamma`` too). ``stage1.unit1.se.conv1.bias`` <-> ``stage1_unit1_se_conv1_bias``,
``head.fc1.bias`` <-> ``fc1_beta``, ``stem.relu0.weight`` <-> ``relu0_gamma``.

BatchNorms with ``fix_gamma=True`` (``fc1``, ``bn_data``, ``bn6f``, ``bn6w``) have no scale here;
MXNet still stores a ``<name>_gamma`` for them, which it ignores (:func:`fix_gamma_names`).
"""
from __future__ import annotations

from torch import nn

from fresnet.errors import FresnetError
from fresnet.network.layers import MXBatchNorm

CONTAINERS = ("stem.", "reduce.", "head.")  # fresnet-only grouping modules, absent from MXNet names
AUX_SUFFIXES = ("_moving_mean", "_moving_var")

_BN_SUFFIXES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
_PRELU_SUFFIXES = {"weight": "gamma"}
_PLAIN_SUFFIXES = {"weight": "weight", "bias": "bias"}


def _suffixes(module: nn.Module) -> dict[str, str]:
    if isinstance(module, MXBatchNorm):
        return _BN_SUFFIXES
    if isinstance(module, nn.PReLU):
        return _PRELU_SUFFIXES
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return _PLAIN_SUFFIXES
    raise FresnetError(f"no MXNet name rule for a {type(module).__name__} holding parameters")


def layer_name(module_path: str) -> str:
    """``'stage1.unit1.se.conv1'`` -> ``'stage1_unit1_se_conv1'``; ``'head.fc1'`` -> ``'fc1'``."""
    for container in CONTAINERS:
        if module_path.startswith(container):
            module_path = module_path[len(container):]
            break
    return module_path.replace(".", "_")


def _entries(model: nn.Module):
    """(state_dict key, mxnet name, module) for every parameter and buffer, in module order."""
    for path, module in model.named_modules():
        local = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if not local:
            continue
        suffixes = _suffixes(module)
        for attr, _ in local:
            if attr not in suffixes:
                raise FresnetError(f"no MXNet name for {path}.{attr} ({type(module).__name__})")
            yield f"{path}.{attr}", f"{layer_name(path)}_{suffixes[attr]}", module


def mxnet_name_map(model: nn.Module) -> dict[str, str]:
    """``{mxnet_name: state_dict_key}`` for every array the model holds (args and aux), in module order."""
    out: dict[str, str] = {}
    for key, name, _ in _entries(model):
        if name in out:
            raise FresnetError(f"two state_dict keys map to MXNet name {name!r}: {out[name]!r} and {key!r}")
        out[name] = key
    return out


def state_dict_name_map(model: nn.Module) -> dict[str, str]:
    """``{state_dict_key: mxnet_name}``, the inverse of :func:`mxnet_name_map`."""
    return {key: name for name, key in mxnet_name_map(model).items()}


def to_mxnet_name(state_dict_key: str, model: nn.Module) -> str:
    """``'stage1.unit1.conv1.weight'`` -> ``'stage1_unit1_conv1_weight'``."""
    try:
        return state_dict_name_map(model)[state_dict_key]
    except KeyError:
        raise FresnetError(f"{state_dict_key!r} is not a state_dict key of this model") from None


def from_mxnet_name(mxnet_name: str, model: nn.Module) -> str:
    """``'stage1_unit1_conv1_weight'`` (an ``arg:``/``aux:`` prefix is allowed) -> ``'stage1.unit1.conv1.weight'``."""
    name = mxnet_name.split(":", 1)[1] if mxnet_name.startswith(("arg:", "aux:")) else mxnet_name
    try:
        return mxnet_name_map(model)[name]
    except KeyError:
        if name in fix_gamma_names(model):
            raise FresnetError(
                f"{mxnet_name!r} is the gamma of a fix_gamma BatchNorm: MXNet ignores it (treats it as 1) "
                "and fresnet has no parameter for it"
            ) from None
        raise FresnetError(f"{mxnet_name!r} is not an array of this model") from None


def is_aux(mxnet_name: str) -> bool:
    """MXNet keeps BatchNorm moving statistics as auxiliary states (``aux:``), everything else as args."""
    return mxnet_name.endswith(AUX_SUFFIXES)


def fix_gamma_names(model: nn.Module) -> list[str]:
    """The ``<bn>_gamma`` args MXNet stores for fix_gamma BatchNorms (and ignores), in module order."""
    return [
        f"{layer_name(path)}_gamma"
        for path, module in model.named_modules()
        if isinstance(module, MXBatchNorm) and module.fix_gamma
    ]
