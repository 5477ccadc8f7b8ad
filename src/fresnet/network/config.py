"""``NetConfig``: the single, frozen, validated description of one fresnet network.

It accepts the original ``config`` key names (``num_layers``, ``net_unit``, ``net_se``, ``net_act``,
``net_input``, ``net_output``, ``emb_size``, ``bn_mom``) and a few friendlier aliases, resolved here
and nowhere else. Where the original crashes, building the config raises :class:`FresnetError`
with the bad value and the valid choices.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import fresnet.validate as V
from fresnet.errors import FresnetError
from fresnet.limits import check
from fresnet.network.layers import ACTIVATIONS
from fresnet.network.presets import BASIC_FILTERS, BOTTLENECK_FILTERS, BOTTLENECK_MIN_DEPTH, UNITS_BY_DEPTH

HEADS = ("Z", "E", "FC", "SFC", "GAP", "GNAP", "GDC", "F", "G", "H", "I", "J")
UNIT_VERSIONS = (1, 2, 3, "3x")
INPUT_MODES = (0, 1, 2)

# friendly name -> original key
ALIASES = {
    "depth": "num_layers",
    "layers": "num_layers",
    "unit": "net_unit",
    "se": "net_se",
    "act": "net_act",
    "activation": "net_act",
    "stem": "net_input",
    "input": "net_input",
    "head": "net_output",
    "output": "net_output",
    "embedding_size": "emb_size",
    "emb": "emb_size",
    "bn_momentum": "bn_mom",
    "image_size": "input_size",
}


class _CoercedOnConstruction(type):
    """``NetConfig(...)`` passes its arguments through :func:`coerce_options` before the dataclass
    stores them, so every instance holds canonical values and ``__post_init__`` only checks the
    invariants between them."""

    def __call__(cls, *args: Any, **options: Any) -> Any:
        options.update(zip((f.name for f in dataclasses.fields(cls)), args))
        return super().__call__(**coerce_options(options))


@dataclass(frozen=True)
class NetConfig(metaclass=_CoercedOnConstruction):
    """One fresnet network. Field names are the original ``config`` keys.

    Args:
        num_layers: depth, a key of the original units table (18 ... 269). May be None when
            ``units`` is given.
        net_unit: residual unit: 1 (post-activation; v1 with input 0, v1_L otherwise), 2 (pre-activation),
            3 (the "IR" unit, default) or '3x' (ResNeXt, 32 groups, bottleneck only). The original
            treats any other int except 4 as 3; so does this (with a warning). 4 is refused: the
            original calls ``residual_unit_v4``, which does not exist.
        net_se: 1 adds squeeze-and-excitation to every unit.
        net_act: prelu, relu, sigmoid, tanh, softrelu or softsign.
        net_input: stem: 0 (7x7/2 conv, halves resolution), 1 (3x3 conv, default), 2 (``bn_data``
            on raw pixels, then 3x3 conv). Other non-negative values behave as 1, like the original.
        net_output: head, one of Z E FC SFC GAP GNAP GDC F G H I J.
        emb_size: embedding size.
        bn_mom: BatchNorm momentum in MXNet's convention (weight of the old statistic); trunk only.
        input_size: (H, W) of the input images.
        units: units per stage (overrides the depth table).
        filter_list: stem width then each stage's width.
        bottle_neck: None applies the original rule (bottleneck iff num_layers >= 500).
    """

    num_layers: Optional[int] = 100
    net_unit: Union[int, str] = 3
    net_se: int = 0
    net_act: str = "prelu"
    net_input: int = 1
    net_output: str = "E"
    emb_size: int = 512
    bn_mom: float = 0.9
    input_size: tuple[int, int] = (112, 112)
    units: Optional[tuple[int, ...]] = None
    filter_list: Optional[tuple[int, ...]] = None
    bottle_neck: Optional[bool] = None

    def __post_init__(self) -> None:
        check_invariants(self)

    # ---- derived facts -------------------------------------------------------------------
    @property
    def trunk_hw(self) -> tuple[int, int]:
        """Spatial size of the trunk output: every stage starts with a stride-2 unit (ceil(h/2) each
        for 3x3/pad 1 and 1x1/pad 0 convs); net_input 0 adds a stride-2 7x7 stem."""
        halvings = len(self.units) + (1 if self.net_input == 0 else 0)
        h, w = self.input_size
        for _ in range(halvings):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    @property
    def trunk_channels(self) -> int:
        return 512 if self.bottle_neck else self.filter_list[-1]

    # ---- conversions -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("input_size", "units", "filter_list"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> NetConfig:
        return cls(**normalize_options(options))

    def replace(self, **options: Any) -> NetConfig:
        merged = self.to_dict()
        merged.update(normalize_options(options))
        return NetConfig(**merged)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> NetConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> NetConfig:
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise FresnetError(f"a NetConfig YAML must be a mapping of keys to values, got {type(data).__name__}")
        return cls.from_dict(data)

    def short_name(self) -> str:
        """``r50-u3-E512``: depth, unit, head and embedding size. The depth is named only when the
        units are that depth's; custom units are spelt out (``r[1,1,1,1]-u3-E512``)."""
        named = self.num_layers is not None and UNITS_BY_DEPTH.get(self.num_layers) == self.units
        depth = f"r{self.num_layers}" if named else "r[" + ",".join(map(str, self.units)) + "]"
        return f"{depth}-u{self.net_unit}-{self.net_output}{self.emb_size}"


FIELDS = tuple(f.name for f in dataclasses.fields(NetConfig))


def normalize_options(options: dict[str, Any]) -> dict[str, Any]:
    """Map aliases to original names and refuse unknown keys (with the list of valid ones)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise FresnetError(
                f"unknown option {key!r}; valid options are {', '.join(FIELDS)} (aliases: {', '.join(ALIASES)})"
            )
        if name in out:
            raise FresnetError(f"option {name!r} given twice (as {key!r} and under another name)")
        out[name] = value
    return out


def coerce_options(options: dict[str, Any], where: str = "") -> dict[str, Any]:
    """The canonical value of every :class:`NetConfig` field from ``options`` (original names; the
    fields left out take their defaults): each value checked for type and range (``where`` names
    the source in messages) and coerced (lists to tuples, '3x' spellings, the original's fallbacks,
    with a warning), the depth turned into units and the bottleneck rule applied. Keys that are not
    fields are passed through (the dataclass refuses them). Pure: ``options`` is not modified."""
    values = {f.name: f.default for f in dataclasses.fields(NetConfig)}
    values.update(options)
    values["units"] = _sizes(values["units"], "units", where)
    values["filter_list"] = _sizes(values["filter_list"], "filter_list", where)
    values["input_size"] = _input_size(values["input_size"], where)
    values["net_unit"] = _net_unit(values["net_unit"], where)
    values["net_input"] = _net_input(values["net_input"], where)
    values["net_se"] = _net_se(values["net_se"], where)
    prefix = f"{where}: " if where else ""
    if not isinstance(values["net_act"], str) or values["net_act"] not in ACTIVATIONS:
        raise FresnetError(f"{prefix}unknown net_act {V.describe(values['net_act'])}; "
                           f"choose one of {', '.join(ACTIVATIONS)}")
    if not isinstance(values["net_output"], str) or values["net_output"] not in HEADS:
        raise FresnetError(f"{prefix}unknown head {V.describe(values['net_output'])}; choose one of {', '.join(HEADS)}")
    values["emb_size"] = V.as_int(values["emb_size"], "emb_size", where, minimum=1)
    values["bn_mom"] = V.as_float(values["bn_mom"], "bn_mom", where, minimum=0.0, below=1.0,
                                  fix="bn_mom is MXNet's momentum, the weight of the old statistic, e.g. 0.9")
    depth = values["num_layers"]
    if depth is not None:
        depth = values["num_layers"] = V.as_int(depth, "num_layers", where, minimum=1,
                                                fix="give a depth such as 50, or leave it out and give units")
    if values["units"] is None:
        values["units"] = _units_of_depth(depth)
    check("max_units", sum(values["units"]), f"units={list(values['units'])}: residual units in all", where)
    if values["bottle_neck"] is None:  # the original's rule
        values["bottle_neck"] = depth is not None and depth >= BOTTLENECK_MIN_DEPTH
    values["bottle_neck"] = V.as_bool(values["bottle_neck"], "bottle_neck", where)
    if values["filter_list"] is None:
        values["filter_list"] = BOTTLENECK_FILTERS if values["bottle_neck"] else BASIC_FILTERS
    return values


def _sizes(value: Any, key: str, where: str) -> Optional[tuple]:
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and tensors
        value = value.tolist()
    return V.as_int_tuple(value, key, where, minimum=1, fix=f"give {key} as a list of positive integers")


def _input_size(size: Any, where: str) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if hasattr(size, "tolist") and not isinstance(size, (str, bytes)):
        size = size.tolist()
    return V.as_int_tuple(size, "input_size", where, minimum=1, length=2,
                          fix="give (H, W) with positive values, e.g. [112, 112]")


def _net_unit(given: Any, where: str) -> Union[int, str]:
    """The original dispatcher's rules: '3x' spellings, digits as text, other ints behave as 3."""
    unit = given
    if isinstance(unit, str) and unit.strip().lower() in ("3x", "x", "resnext"):
        unit = "3x"
    elif isinstance(unit, str) and unit.strip().lstrip("-").isdigit() and len(unit) < 20:
        unit = int(unit)
    if unit == 4 and not isinstance(unit, bool):
        raise FresnetError(
            "net_unit=4 is not supported: the original dispatcher calls residual_unit_v4, which does not "
            "exist (NameError in fresnet.py); choose one of 1, 2, 3, '3x'"
        )
    if isinstance(unit, bool) or not (unit == "3x" or isinstance(unit, int)):
        raise FresnetError(f"{where + ': ' if where else ''}unknown net_unit {V.describe(given)}; "
                           "choose one of 1, 2, 3, '3x'")
    if unit not in UNIT_VERSIONS:
        warnings.warn(f"net_unit={unit} behaves as 3 in the original fresnet; building unit 3", stacklevel=4)
        unit = 3
    return unit


def _net_input(given: Any, where: str) -> int:
    net_input = V.as_int(given, "net_input", where, minimum=0, fix="choose 0, 1 or 2 (the original asserts >= 0)")
    if net_input not in INPUT_MODES:
        warnings.warn(f"net_input={net_input} behaves as 1 in the original fresnet; building input 1", stacklevel=4)
        net_input = 1
    return net_input


def _net_se(se: Any, where: str) -> int:
    if isinstance(se, (int, float)) and not isinstance(se, bool) and se == se and se >= 0:
        se = bool(se)  # the original tests `if use_se:`, so any positive number switches SE on
    return int(V.as_bool(se, "net_se", where, fix="give 0 or 1"))


def _units_of_depth(depth: Optional[int]) -> tuple[int, ...]:
    """Depth -> units per stage, like ``get_symbol()``."""
    if depth is None:
        raise FresnetError("give num_layers (e.g. 50) or units (e.g. [3, 4, 14, 3])")
    if depth not in UNITS_BY_DEPTH:
        raise FresnetError(
            f"unknown num_layers {depth!r} (the original: 'no experiments done on num_layers "
            f"{depth}'); choose one of {', '.join(map(str, UNITS_BY_DEPTH))}, or pass units=[...]"
        )
    return UNITS_BY_DEPTH[depth]


def check_invariants(config: NetConfig, where: str = "") -> None:
    """What must hold between the (canonical) fields of ``config`` for the network to be built:
    one width per stage plus the stem, the widths each unit needs, the GDC head's 7x7 trunk, and
    the whole network against :mod:`fresnet.limits`."""
    if len(config.filter_list) != len(config.units) + 1:
        raise FresnetError(f"filter_list needs {len(config.units) + 1} entries (stem + one per stage), "
                           f"got {list(config.filter_list)}")
    if config.net_unit == "3x" and not config.bottle_neck:
        raise FresnetError(
            "net_unit='3x' (ResNeXt, residual_unit_v3_x) needs a bottleneck: set bottle_neck=True and "
            "filter_list=[64, 256, 512, 1024, 2048] (the original asserts bottle_neck)"
        )
    _check_widths(config, where)
    if config.net_output == "GDC" and config.trunk_hw != (7, 7):
        raise FresnetError(
            f"head GDC needs a 7x7 trunk (its depthwise conv is 7x7, pad 0), but input_size={config.input_size} with "
            f"net_input={config.net_input} gives {config.trunk_hw[0]}x{config.trunk_hw[1]}; use 112x112 with net_input "
            "1/2, 224x224 with net_input 0, or another head (E, GNAP, ...)"
        )
    from fresnet.network.size import check_network_size

    check_network_size(config, where)


def _check_widths(config: NetConfig, where: str) -> None:
    """Widths the layers can be built with: the original would fail on these inside MXNet."""
    prefix = f"{where}: " if where else ""
    stages = config.filter_list[1:]
    if config.net_unit == "3x" and (config.filter_list[0] % 32 or any(w % 64 for w in stages)):
        raise FresnetError(
            f"{prefix}net_unit='3x' runs 32-group convolutions on the stem width and on half of each stage width: "
            f"filter_list={list(config.filter_list)} needs a stem divisible by 32 and stage widths divisible by 64, "
            "e.g. [64, 256, 512, 1024, 2048]"
        )
    if config.bottle_neck and min(stages) < 4:
        raise FresnetError(f"{prefix}a bottleneck unit is a quarter of its stage width: filter_list="
                           f"{list(config.filter_list)} needs stage widths >= 4")
    if config.net_se and min(stages) < 16:
        raise FresnetError(f"{prefix}squeeze-and-excitation reduces a stage's width 16 times: filter_list="
                           f"{list(config.filter_list)} needs stage widths >= 16 with net_se=1")


def parse_value(text: str) -> Any:
    """Parse a ``--set key=value`` value: YAML scalars and lists (``[3,4,14,3]``, ``112x96``)."""
    if "x" in text and all(part.strip().isdigit() for part in text.lower().split("x")) and text.count("x") == 1:
        return [int(part) for part in text.lower().split("x")]
    return V.load_yaml(text, f"the value {V.describe(text)}")


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise FresnetError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = parse_value(value.strip())
    return out
