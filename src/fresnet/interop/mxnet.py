"""Load and save InsightFace MXNet fresnet checkpoints (``prefix-symbol.json`` + ``prefix-0000.params``)
without MXNet.

``load_mxnet('models/r100/model')`` reads both files, infers the :class:`NetConfig` from the graph,
checks the graph is exactly what that config builds, and loads every array by its original name.
``save_mxnet(model, 'out/model')`` writes a pair that ``mx.model.load_checkpoint`` reads: the symbol
JSON is byte-identical to what the original ``get_symbol()`` writes for the same config.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from fresnet.errors import FresnetError
from fresnet.interop.mxnet_params import read_params, split_arg_aux, write_params
from fresnet.interop.mxnet_symbol import parse_symbol, read_symbol, to_json
from fresnet.interop.mxnet_symbol_build import build_graph
from fresnet.interop.mxnet_symbol_infer import check_fresnet_graph, infer_config
from fresnet.interop.names import fix_gamma_names, is_aux, mxnet_name_map
from fresnet.ioutil import atomic_write_text
from fresnet.network.config import NetConfig
from fresnet.network.size import check_declared_size

PathLike = Union[str, os.PathLike]
_PARAMS_FILE = re.compile(r"^(?P<prefix>.*)-(?P<epoch>\d+)\.params$")


def checkpoint_paths(prefix: PathLike, epoch: int = 0) -> tuple[Path, Path, int]:
    """``(symbol path, params path, epoch)`` for a prefix, a ``-symbol.json`` or a ``-NNNN.params`` path.

    A ``.params`` path fixes the epoch from its own name (``model-0012.params`` -> 12).
    """
    text = os.fspath(prefix)
    if text.endswith("-symbol.json"):
        text = text[: -len("-symbol.json")]
    else:
        match = _PARAMS_FILE.match(text)
        if match:
            text, epoch = match.group("prefix"), int(match.group("epoch"))
        elif text.endswith(".params"):
            raise FresnetError(
                f"{text}: a .params checkpoint must be named <prefix>-<epoch>.params (e.g. model-0000.params)"
            )
    if epoch < 0:
        raise FresnetError(f"epoch must be >= 0, got {epoch}")
    return Path(f"{text}-symbol.json"), Path(f"{text}-{epoch:04d}.params"), epoch


def _missing(path: Path, what: str) -> FresnetError:
    nearby = sorted(p.name for p in path.parent.glob("*-symbol.json")) + sorted(
        p.name for p in path.parent.glob("*.params")
    )
    hint = f"; files there: {', '.join(nearby[:8])}" if nearby else ""
    return FresnetError(
        f"{path}: no such file (the {what} of the checkpoint); give the prefix of a '<prefix>-symbol.json' + "
        f"'<prefix>-<epoch:04d>.params' pair{hint}"
    )


def load_mxnet(
    prefix: PathLike, epoch: int = 0, *, input_size: Optional[Union[int, Sequence[int]]] = None
):
    """Load an MXNet fresnet checkpoint: returns ``(model, config)``, the model in eval mode.

    Args:
        prefix: ``path/model`` for ``path/model-symbol.json`` + ``path/model-0000.params``, or the path of
            either file.
        epoch: the checkpoint epoch (ignored when ``prefix`` is a ``.params`` path).
        input_size: (H, W) the network was trained for. Only needed when the graph does not determine it:
            non-square inputs, and heads without a flattening FC (Z, GAP, GNAP; default 112x112).
    """
    from fresnet.network.model import FResNet

    symbol_path, params_path, epoch = checkpoint_paths(prefix, epoch)
    if not symbol_path.exists():
        raise _missing(symbol_path, "graph")
    if not params_path.exists():
        raise _missing(params_path, f"weights for epoch {epoch}")
    graph = read_symbol(symbol_path)
    arg, aux = split_arg_aux(read_params(params_path), params_path)
    shapes = {name: value.shape for name, value in arg.items()}
    config = infer_config(graph, shapes, input_size)
    check_declared_size(config, sum(int(v.size) for v in (*arg.values(), *aux.values())), str(params_path))
    check_fresnet_graph(graph, config)
    model = FResNet(config)
    load_mxnet_arrays(model, arg, aux, source=str(params_path))
    return model.eval(), config


def load_mxnet_arrays(model: torch.nn.Module, arg: dict, aux: dict, source: str = "<params>") -> None:
    """Copy ``arg``/``aux`` arrays (MXNet names, no prefix) into ``model``, strictly.

    Every array the model has must be present with its exact shape, in the right section, and no other
    array may be left over -- except the gammas of fix_gamma BatchNorms, which MXNet ignores (so do we).
    """
    names = mxnet_name_map(model)
    ignored = set(fix_gamma_names(model))
    state = model.state_dict()
    problems = []
    for name, key in names.items():
        section, other = (aux, arg) if is_aux(name) else (arg, aux)
        kind = "aux" if is_aux(name) else "arg"
        if name not in section:
            where = f" (found as {'arg' if kind == 'aux' else 'aux'}:{name})" if name in other else ""
            problems.append(f"missing {kind}:{name}{where}")
            continue
        value = section[name]
        target = state[key]
        if tuple(value.shape) != tuple(target.shape):
            problems.append(f"{kind}:{name} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}")
            continue
        if not np.issubdtype(value.dtype, np.floating):
            problems.append(f"{kind}:{name} has dtype {value.dtype}; weights must be float16, float32 or float64")
            continue
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(target.dtype))
    extra = [f"arg:{n}" for n in arg if n not in names and n not in ignored]
    extra += [f"aux:{n}" for n in aux if n not in names]
    if extra:
        problems.append(f"unexpected arrays {extra[:6]}{' ...' if len(extra) > 6 else ''}")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else "")
        raise FresnetError(f"{source}: does not match the network its symbol describes: {shown}")



def mxnet_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """``{'arg:<name>': array, ..., 'aux:<name>': array}`` in the order ``save_checkpoint`` writes them
    (graph order of ``list_arguments()``, then of ``list_auxiliary_states()``); fix_gamma gammas are ones."""
    names = mxnet_name_map(model)
    state = model.state_dict()
    graph = build_graph(model.config)
    fixed = set(fix_gamma_names(model))
    out: dict[str, np.ndarray] = {}

    def numpy(key: str) -> np.ndarray:
        tensor = state[key].detach().cpu()
        if tensor.dtype == torch.bfloat16:  # MXNet 1.x .params has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()

    for kind, listed in (("arg", graph.arg_names), ("aux", graph.aux_names)):
        for name in listed:
            if name in fixed:
                bn_key = names[f"{name[: -len('_gamma')]}_beta"]
                out[f"{kind}:{name}"] = np.ones_like(numpy(bn_key))
            elif name in names:
                out[f"{kind}:{name}"] = numpy(names[name])
            else:
                raise FresnetError(f"the model has no array for MXNet {kind}:{name}; was it built from model.config?")
    return out


def save_mxnet(model: torch.nn.Module, prefix: PathLike, epoch: int = 0, overwrite: bool = True) -> tuple[Path, Path]:
    """Write ``prefix-symbol.json`` and ``prefix-<epoch:04d>.params`` (atomically); returns both paths.

    ``prefix`` may also be the path of either file. The symbol is what the original ``get_symbol()``
    builds for ``model.config`` (byte-identical); the params hold ``arg:``/``aux:`` arrays like
    ``mx.model.save_checkpoint``, with the ignored fix_gamma gammas written as ones.

    The symbol is shared by every epoch of the prefix: a prefix whose symbol describes another
    network and that holds other epochs is refused (replacing the symbol would break them), whatever
    ``overwrite`` says. ``overwrite=False`` also refuses an existing params file of this epoch, or
    another network's symbol.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, NetConfig):
        raise FresnetError("save_mxnet needs a fresnet model (an FResNet with a .config)")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise FresnetError(f"epoch must be an integer from 0 to {MAX_EPOCH} (it is written as 4 digits), got {epoch!r}")
    symbol_path, params_path, _ = checkpoint_paths(prefix, epoch)
    arrays = mxnet_arrays(model)
    text = to_json(build_graph(config))
    _check_reads_back(text, arrays, config, str(symbol_path))
    _check_prefix_is_free(symbol_path, params_path, text, overwrite)
    atomic_write_text(symbol_path, text)
    write_params(params_path, arrays)
    return symbol_path, params_path


MAX_EPOCH = 9999


def _check_prefix_is_free(symbol_path: Path, params_path: Path, text: str, overwrite: bool) -> None:
    """Refuse a write that would break the epochs already saved under the prefix, or replace files
    without ``overwrite``."""
    if not overwrite and os.path.lexists(params_path):
        raise FresnetError(f"{params_path} already exists; choose another prefix or epoch, or pass --overwrite")
    if not os.path.lexists(symbol_path):
        return
    try:
        same = symbol_path.read_bytes().decode("utf-8", errors="replace") == text
    except OSError:
        same = False
    if same:
        return
    base = symbol_path.name[: -len("-symbol.json")]
    pattern = f"{base}-[0-9][0-9][0-9][0-9].params"
    epochs = sorted(
        p.name[len(base) + 1 : -len(".params")] for p in symbol_path.parent.glob(pattern) if p != params_path
    )
    if epochs:
        raise FresnetError(
            f"{symbol_path} describes another network, and epochs {', '.join(epochs[:6])} use it; writing this "
            "network's symbol would break them (they would read as edited, damaged or crafted). Choose another prefix"
        )
    if not overwrite:
        raise FresnetError(f"{symbol_path} already exists and describes another network; choose another prefix, "
                           "or pass --overwrite")
_STRUCTURE = ("units", "filter_list", "net_unit", "net_se", "net_act", "net_input", "net_output", "emb_size",
              "bottle_neck", "input_size")


def _check_reads_back(text: str, arrays: dict, config: NetConfig, path: str) -> None:
    """What :func:`load_mxnet` would refuse or read differently is not written: the symbol is parsed
    and its config inferred again (with the input size, which a symbol may not fix) before any file
    is touched."""
    graph = parse_symbol(text, path)
    shapes = {name[len("arg:"):]: value.shape for name, value in arrays.items() if name.startswith("arg:")}
    try:
        again = infer_config(graph, shapes, config.input_size)
        check_fresnet_graph(graph, again)
    except FresnetError as exc:
        raise FresnetError(
            f"{path}: this model cannot be written as an MXNet checkpoint that reads back: {exc}"
        ) from None
    different = [key for key in _STRUCTURE if getattr(again, key) != getattr(config, key)]
    if different:
        key = different[0]
        raise FresnetError(
            f"{path}: this model cannot be written as an MXNet checkpoint that reads back: its {key} is "
            f"{getattr(config, key)!r} but the written graph would read as {getattr(again, key)!r}"
        )
