"""arcface_torch ``iresnet`` weights <-> fresnet, exactly.

arcface_torch's ``IResNet`` (built from ``IBasicBlock``) is fresnet with unit 3, head E, input 1 and
PReLU, written in PyTorch. Four differences have to be absorbed for the outputs to match:

* **Input scale.** arcface_torch feeds ``(x/255 - 0.5)/0.5 = (x - 127.5)/127.5``; fresnet computes
  ``(x - 127.5)/128`` inside the network. The first conv has no bias and pads with zeros, so the
  factor 128/127.5 folds exactly into its weight.
* **BatchNorm eps.** arcface_torch uses PyTorch's 1e-5, fresnet MXNet's 2e-5 (1e-3 in GDC's BN). Only
  ``running_var + eps`` is ever used, so ``running_var`` is shifted by the eps difference.
  (A variance below 1e-5 becomes slightly negative; ``var + eps`` stays positive and exact.)
* **features.weight.** arcface_torch's final ``BatchNorm1d`` keeps its weight at 1 and never trains it;
  fresnet's ``fc1`` is fix_gamma and has no weight. A weight other than 1 is folded exactly into the FC
  before it (``w*fc(x) - w*mean == w*(fc(x) - mean)``), so nothing is lost.
* **Names.** ``layer1.0.conv1.weight`` <-> ``stage1.unit1.conv1.weight``; see :data:`BLOCK_NAMES`.

``load_arcface_torch(path)`` infers depth, widths, embedding size and input size from the tensors.
"""
from __future__ import annotations

import io
import math
import os
import re
from collections import OrderedDict
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from fresnet.errors import FresnetError
from fresnet.network.layers import INPUT_SCALE, MXBatchNorm
from fresnet.network.size import check_declared_size
from fresnet.validate import as_int, describe

ARCFACE_BN_EPS = 1e-5
ARCFACE_INPUT_SCALE = 1.0 / 127.5  # Normalize(mean=0.5, std=0.5) after ToTensor
# conv1 weight factor that makes fresnet's 1/128 input scale behave like arcface_torch's 1/127.5
STEM_WEIGHT_FACTOR = ARCFACE_INPUT_SCALE / INPUT_SCALE  # 128 / 127.5

# arcface_torch depth -> blocks per stage (iresnet18 ... iresnet200)
ARCFACE_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}

# arcface_torch top-level module -> fresnet module
TOP_NAMES = {
    "conv1": "stem.conv0",
    "bn1": "stem.bn0",
    "prelu": "stem.relu0",
    "bn2": "head.bn1",
    "fc": "head.pre_fc1",
    "features": "head.fc1",
}
# IBasicBlock module -> fresnet UnitV3 module
BLOCK_NAMES = {
    "bn1": "bn1",
    "conv1": "conv1",
    "bn2": "bn2",
    "prelu": "relu1",
    "conv2": "conv2",
    "bn3": "bn3",
    "downsample.0": "conv1sc",
    "downsample.1": "sc",
}
_TOP_INVERSE = {v: k for k, v in TOP_NAMES.items()}
_BLOCK_INVERSE = {v: k for k, v in BLOCK_NAMES.items()}
_ARC_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")
_FRES_UNIT = re.compile(r"^stage(\d+)\.unit(\d+)\.(.+)$")
# heads that compute what iresnet's bn2 -> dropout -> fc -> features computes (FC and I lack the dropout,
# which only matters in training)
COMPATIBLE_HEADS = ("E", "FC", "I")


# ---- names ---------------------------------------------------------------------------------------
def arcface_to_fresnet_key(key: str) -> str:
    """``layer1.0.prelu.weight`` -> ``stage1.unit1.relu1.weight``; ``fc.bias`` -> ``head.pre_fc1.bias``."""
    module, _, param = key.rpartition(".")
    if module in TOP_NAMES:
        return f"{TOP_NAMES[module]}.{param}"
    match = _ARC_BLOCK.match(module)
    if match and match.group(3) in BLOCK_NAMES:
        stage, block, rest = match.groups()
        return f"stage{stage}.unit{int(block) + 1}.{BLOCK_NAMES[rest]}.{param}"
    raise FresnetError(
        f"{key!r} is not an arcface_torch iresnet parameter name (expected e.g. 'layer1.0.conv1.weight')"
    )


def fresnet_to_arcface_key(key: str) -> str:
    """``stage1.unit1.relu1.weight`` -> ``layer1.0.prelu.weight``; the inverse of :func:`arcface_to_fresnet_key`."""
    module, _, param = key.rpartition(".")
    if module in _TOP_INVERSE:
        return f"{_TOP_INVERSE[module]}.{param}"
    match = _FRES_UNIT.match(module)
    if match and match.group(3) in _BLOCK_INVERSE:
        stage, unit, rest = match.groups()
        return f"layer{stage}.{int(unit) - 1}.{_BLOCK_INVERSE[rest]}.{param}"
    raise FresnetError(
        f"fresnet parameter {key!r} has no arcface_torch counterpart: iresnet is unit 3, head E, input 1, "
        "prelu, no SE, no bottleneck"
    )


# ---- reading ------------------------------------------------------------------------------------
TRAIN_CHECKPOINT_FORMAT = "fresnet-train-checkpoint"  # fresnet.train.checkpoint.FORMAT starts so

def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` with errors that name the file; unwraps training checkpoints."""
    from fresnet.interop.torch_files import load_weights

    path = os.fspath(path)
    obj = load_weights(path, "PyTorch weights file", "The file is corrupt, truncated, or holds pickled objects other "
                       "than tensors; re-save it with torch.save(model.state_dict(), path)")
    return unwrap_state_dict(obj, source=path)


def unwrap_state_dict(obj: Any, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Accept a bare state dict, an arcface_torch checkpoint (``state_dict_backbone``), or a
    ``{'state_dict': ...}`` wrapper; strip a ``module.`` (DDP) or ``backbone.`` prefix. fresnet's own
    training checkpoints and fresnet state dicts are refused with a pointer to what to load instead."""
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith(TRAIN_CHECKPOINT_FORMAT):
        model = os.path.join(os.path.dirname(source) or ".", "model.safetensors")
        where = "beside it" if os.path.isfile(model) else "by every checkpoint of the run"
        raise FresnetError(f"{source}: this is a fresnet training checkpoint (for `fresnet train ... --resume`), not a "
                           f"model file; load the run's model instead: {model} (written {where})")
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict_backbone", "state_dict", "model", "backbone"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise FresnetError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    from fresnet.interop.torch_files import check_tensor

    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise FresnetError(f"{source}: entry {describe(bad[0])} is not a named tensor; expected model.state_dict()")
    for key, value in obj.items():
        check_tensor(value, key, source)
        if not value.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise FresnetError(
                f"{source}: {key} has dtype {value.dtype}; weights must be floating point (float32, float16, bfloat16, "
                "float64); the file was edited or is not a weights file"
            )
    state = dict(obj)
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if "stem.conv0.weight" in state or any(k.startswith("stage1.unit1.") for k in state):
        raise FresnetError(
            f"{source}: this is a fresnet network's state dict (torch.save(model.state_dict())), which holds no "
            "config to rebuild the network from; save models with fresnet.save(model, 'model.safetensors') (a "
            "training run writes OUTPUT/model.safetensors), or load it into the network you build: "
            "model = fresnet.create_model(...); model.load_state_dict(torch.load(path, weights_only=True))"
        )
    return state


def _stage_counts(state: Mapping[str, torch.Tensor], source: str) -> tuple[int, ...]:
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _ARC_BLOCK.match(key.rpartition(".")[0])
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks or "conv1.weight" not in state or "fc.weight" not in state:
        raise FresnetError(
            f"{source}: this is not an arcface_torch iresnet state dict (no conv1.weight / layer1.0.* / fc.weight "
            f"keys; first keys: {list(state)[:4]}). Only IResNet (iresnet18/34/50/100/200) is supported"
        )
    stages = sorted(blocks)
    if stages != list(range(1, len(stages) + 1)):
        raise FresnetError(f"{source}: stages {stages} are not numbered layer1..layerN")
    counts = []
    for s in stages:
        if sorted(blocks[s]) != list(range(len(blocks[s]))):
            raise FresnetError(f"{source}: layer{s} blocks {sorted(blocks[s])} are not numbered 0..N-1")
        counts.append(len(blocks[s]))
    return tuple(counts)


def _infer_input_size(trunk_area: int, num_stages: int, source: str) -> tuple[int, int]:
    side = math.isqrt(trunk_area)
    if side * side != trunk_area:
        raise FresnetError(
            f"{source}: fc.weight implies a trunk of {trunk_area} positions, which is not square; "
            "pass input_size=(H, W) explicitly"
        )
    size = side * 2**num_stages  # the largest input with that trunk (112 for iresnet's 7x7)
    return size, size


def config_from_state_dict(
    state: Mapping[str, torch.Tensor],
    num_layers: Optional[int] = None,
    input_size: Optional[Union[int, Sequence[int]]] = None,
    net_output: str = "E",
    source: str = "state dict",
):
    """The :class:`NetConfig` of the fresnet equivalent to an arcface_torch iresnet state dict."""
    from fresnet.network.config import NetConfig
    from fresnet.network.presets import UNITS_BY_DEPTH

    if net_output not in COMPATIBLE_HEADS:
        raise FresnetError(f"an arcface_torch iresnet maps to head E (or FC/I), not {net_output!r}")
    counts = _stage_counts(state, source)
    if num_layers is not None:
        depths = ", ".join(map(str, ARCFACE_LAYERS))
        num_layers = as_int(num_layers, "num_layers", source, minimum=1,
                            fix=f"give a depth, one of {depths}, or leave it out to infer it from the blocks")
        expected = ARCFACE_LAYERS.get(num_layers) or UNITS_BY_DEPTH.get(num_layers)
        if expected is None:
            raise FresnetError(
                f"unknown num_layers {num_layers!r}; arcface_torch has {', '.join(map(str, ARCFACE_LAYERS))}"
            )
        if tuple(expected) != counts:
            raise FresnetError(
                f"{source}: num_layers={num_layers} means blocks {list(expected)}, but the file has {list(counts)}; "
                "leave num_layers out to infer it"
            )
    depth = num_layers
    if depth is None:
        depth = next((d for d, layers in ARCFACE_LAYERS.items() if layers == counts), None)
    # fresnet's table is the source of truth for its own depths; pass units only where they differ
    units = None if depth is not None and UNITS_BY_DEPTH.get(int(depth)) == counts else counts
    convs = ["conv1.weight"] + [f"layer{s}.0.conv1.weight" for s in range(1, len(counts) + 1)]
    for key, ndim in [(k, 4) for k in convs] + [("fc.weight", 2)]:
        shape = tuple(state[key].shape) if key in state else None
        if shape is None or len(shape) != ndim or min(shape) < 1:
            raise FresnetError(f"{source}: {key} has shape {list(shape) if shape is not None else 'none (missing)'}; "
                               f"an iresnet has a non-empty {ndim}-D tensor there")
    widths = [int(state[key].shape[0]) for key in convs]
    emb_size, fc_in = (int(v) for v in state["fc.weight"].shape)
    channels = widths[-1]
    if fc_in % channels:
        raise FresnetError(f"{source}: fc.weight has {fc_in} inputs, not a multiple of the trunk width {channels}")
    if input_size is None:
        input_size = _infer_input_size(fc_in // channels, len(counts), source)
    config = NetConfig(
        num_layers=depth,
        units=units,
        filter_list=widths,
        net_unit=3,
        net_input=1,
        net_act="prelu",
        net_se=0,
        net_output=net_output,
        emb_size=int(emb_size),
        input_size=input_size,
        bottle_neck=False,
    )
    h, w = config.trunk_hw
    if channels * h * w != fc_in:
        raise FresnetError(
            f"{source}: fc.weight has {fc_in} inputs but input_size={config.input_size} gives a "
            f"{channels}x{h}x{w} trunk ({channels * h * w}); fix input_size"
        )
    return config


@torch.no_grad()
def arcface_to_fresnet_state_dict(state: Mapping[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Rename and rescale an arcface_torch state dict for ``model`` (an FResNet of the right config)."""
    bns = {name: m for name, m in model.named_modules() if isinstance(m, MXBatchNorm)}
    out: dict[str, torch.Tensor] = {}
    features_weight = None
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # MXNet BN has no such counter (momentum is fixed)
        if key == "features.weight":
            features_weight = value.double()
            continue
        name = arcface_to_fresnet_key(key)
        tensor = value.detach().double()
        module = name.rpartition(".")[0]
        if name == "stem.conv0.weight":
            tensor = tensor * STEM_WEIGHT_FACTOR
        elif name.endswith("running_var") and module in bns:
            tensor = tensor + (ARCFACE_BN_EPS - bns[module].eps)
        out[name] = tensor
    if features_weight is not None and not torch.all(features_weight == 1):
        w = features_weight
        out["head.pre_fc1.weight"] = out["head.pre_fc1.weight"] * w[:, None]
        out["head.pre_fc1.bias"] = out["head.pre_fc1.bias"] * w
        out["head.fc1.running_mean"] = out["head.fc1.running_mean"] * w
    reference = model.state_dict()
    return {k: v.to(reference[k].dtype) if k in reference else v.float() for k, v in out.items()}


def load_arcface_torch(
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    num_layers: Optional[int] = None,
    *,
    input_size: Optional[Union[int, Sequence[int]]] = None,
    net_output: str = "E",
):
    """Import arcface_torch ``iresnet`` weights as the equivalent fresnet model (eval mode).

    Args:
        path_or_state_dict: a ``.pth``/``.pt`` file (read with ``weights_only=True``), a state dict, or an
            arcface_torch training checkpoint holding ``state_dict_backbone``.
        num_layers: 18, 34, 50, 100 or 200; inferred from the block counts when left out (and checked
            when given).
        input_size: (H, W); inferred from ``fc.weight`` (a 7x7 trunk means 112x112) when left out.
        net_output: 'E' (default), or 'FC'/'I' (the same without training-time dropout).

    The returned model takes 0..255 RGB input and reproduces iresnet applied to ``(x/255 - 0.5)/0.5``.
    """
    from fresnet.network.model import FResNet

    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        state = read_state_dict(source)
    else:
        source = "state dict"
        state = unwrap_state_dict(path_or_state_dict, source)
    config = config_from_state_dict(state, num_layers, input_size, net_output, source)
    check_declared_size(config, sum(int(v.numel()) for v in state.values()), source)
    model = FResNet(config)
    converted = arcface_to_fresnet_state_dict(state, model)
    _load_strict(model, converted, source)
    return model.eval()


def _load_strict(model, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [fresnet_to_arcface_key(k) for k in expected if k not in state]
    unexpected = [fresnet_to_arcface_key(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise FresnetError(f"{source}: not a complete iresnet state dict: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise FresnetError(
                f"{source}: {fresnet_to_arcface_key(key)} has shape {list(value.shape)}, but the inferred network "
                f"needs {list(expected[key].shape)}; the file mixes layer sizes or is not an IResNet"
            )
    model.load_state_dict(state)


# ---- writing ------------------------------------------------------------------------------------
def check_exportable(config) -> None:
    """Refuse configs iresnet cannot represent, naming every offending field."""
    problems = []
    if config.net_unit != 3:
        problems.append(f"net_unit={config.net_unit!r} (needs 3)")
    if config.bottle_neck:
        problems.append("bottle_neck=True (needs basic units)")
    if config.net_output not in COMPATIBLE_HEADS:
        problems.append(f"net_output={config.net_output!r} (needs E, FC or I)")
    if config.net_input != 1:
        problems.append(f"net_input={config.net_input} (needs 1)")
    if config.net_act != "prelu":
        problems.append(f"net_act={config.net_act!r} (needs prelu)")
    if config.net_se:
        problems.append("net_se=1 (iresnet has no SE)")
    if problems:
        raise FresnetError(f"this model has no arcface_torch iresnet equivalent: {', '.join(problems)}")


@torch.no_grad()
def export_arcface_torch(model, path: Optional[Union[str, os.PathLike]] = None) -> OrderedDict[str, torch.Tensor]:
    """The arcface_torch iresnet state dict equivalent to ``model``; also written to ``path`` if given.

    The inverse of :func:`load_arcface_torch`: ``conv1`` is divided by 128/127.5, running variances
    are shifted back to eps 1e-5, ``features.weight`` is 1, and ``num_batches_tracked`` is 0.
    Load it with ``iresnet100().load_state_dict(torch.load(path, weights_only=True))``.
    """
    check_exportable(model.config)
    bns = {name: m for name, m in model.named_modules() if isinstance(m, MXBatchNorm)}
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in model.state_dict().items():
        module = name.rpartition(".")[0]
        key = fresnet_to_arcface_key(name)
        tensor = value.detach().double()
        if name == "stem.conv0.weight":
            tensor = tensor / STEM_WEIGHT_FACTOR
        elif name.endswith("running_var") and module in bns:
            tensor = tensor + (bns[module].eps - ARCFACE_BN_EPS)
        if module == "head.fc1" and name.endswith(".bias"):
            out["features.weight"] = torch.ones_like(value)  # fix_gamma: iresnet keeps it at 1
        out[key] = tensor.to(value.dtype).cpu().contiguous()
        if name.endswith("running_var") and module in bns:
            out[key.rpartition(".")[0] + ".num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if path is not None:
        from fresnet.ioutil import atomic_write_bytes

        buffer = io.BytesIO()
        torch.save(out, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return out


__all__ = [
    "load_arcface_torch",
    "export_arcface_torch",
    "arcface_to_fresnet_key",
    "fresnet_to_arcface_key",
    "config_from_state_dict",
    "read_state_dict",
]
