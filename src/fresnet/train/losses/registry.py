"""``build_margin(name, **options)``: every margin loss by name, with its authors' defaults.

The table :data:`MARGIN_LOSSES` maps a name to its class, its defaults (the options a user may set,
exactly these), the fixed arguments the name implies, and the reference it follows.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from fresnet.errors import FresnetError
from fresnet.train.losses.adaface import AdaFace
from fresnet.train.losses.biased import SphereFace2, UniFace
from fresnet.train.losses.curricularface import CurricularFace
from fresnet.train.losses.margins import (
    GRAD_MODES,
    CombinedMargin,
    ElasticFace,
    MagFace,
    SFace,
    SphereFace,
    SubcenterArcFace,
)

MXNET = "InsightFace MXNet train.py (margin_softmax)"


@dataclass(frozen=True)
class MarginEntry:
    """One name of :func:`build_margin`."""

    cls: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    reference: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # arguments the name implies
    rename: Mapping[str, str] = field(default_factory=dict)  # option -> constructor argument
    extra: tuple[str, ...] = ()  # accepted options without a default in the table
    requires_num_classes: bool = False

    def accepted(self) -> tuple[str, ...]:
        return tuple(self.defaults) + ("num_classes",) + self.extra


_COMBINED_EXTRA = ("continuation",)

MARGIN_LOSSES: dict[str, MarginEntry] = {
    "combined": MarginEntry(
        CombinedMargin,
        {"s": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2, "grad": "exact", "interclass_filtering_threshold": 0.0},
        MXNET,
        extra=_COMBINED_EXTRA,
    ),
    "arcface": MarginEntry(
        CombinedMargin,
        {"s": 64.0, "m": 0.5, "grad": "exact", "interclass_filtering_threshold": 0.0},
        MXNET + "; grad='straight_through' is arcface_torch's ArcFace",
        fixed={"m1": 1.0, "m3": 0.0},
        rename={"m": "m2"},
        extra=_COMBINED_EXTRA,
    ),
    "cosface": MarginEntry(
        CombinedMargin,
        {"s": 64.0, "m": 0.35, "interclass_filtering_threshold": 0.0},
        MXNET + " (m1=1, m2=0), = arcface_torch's CosFace",
        fixed={"m1": 1.0, "m2": 0.0},
        rename={"m": "m3"},
    ),
    "subcenter_arcface": MarginEntry(
        SubcenterArcFace, {"s": 64.0, "m": 0.5, "K": 3}, "InsightFace subcenter_arcface/train_parall.py"
    ),
    "adaface": MarginEntry(
        AdaFace,
        {"m": 0.4, "h": 0.333, "s": 64.0, "t_alpha": 0.01},
        "mk-minchul/AdaFace head.py (AdaFace)",
        extra=("process_group",),
    ),
    "magface": MarginEntry(
        MagFace,
        {"s": 64.0, "l_a": 10.0, "u_a": 110.0, "l_m": 0.45, "u_m": 0.8, "lambda_g": 35.0, "easy_margin": True},
        "IrvingMeng/MagFace models/magface.py (MagLinear, MagLoss), run/run.sh values",
    ),
    "curricularface": MarginEntry(
        CurricularFace,
        {"m": 0.5, "s": 64.0, "alpha": 0.01},
        "HuangYG123/CurricularFace head/metrics.py; alpha=0.1 is Tencent TFace's",
        extra=("process_group",),
    ),
    "elasticface_arc": MarginEntry(
        ElasticFace,
        {"s": 64.0, "m": 0.5, "std": 0.05},
        "fdbtrs/ElasticFace utils/losses.py (ElasticArcFace), config.py values",
        fixed={"kind": "arc", "plus": False},
    ),
    "elasticface_arc_plus": MarginEntry(
        ElasticFace,
        {"s": 64.0, "m": 0.5, "std": 0.0175},
        "fdbtrs/ElasticFace (ElasticArcFace, plus=True), config.py values",
        fixed={"kind": "arc", "plus": True},
    ),
    "elasticface_cos": MarginEntry(
        ElasticFace,
        {"s": 64.0, "m": 0.35, "std": 0.05},
        "fdbtrs/ElasticFace (ElasticCosFace), config.py values",
        fixed={"kind": "cos", "plus": False},
    ),
    "elasticface_cos_plus": MarginEntry(
        ElasticFace,
        {"s": 64.0, "m": 0.35, "std": 0.02},
        "fdbtrs/ElasticFace (ElasticCosFace, plus=True), config.py values",
        fixed={"kind": "cos", "plus": True},
    ),
    "sphereface": MarginEntry(SphereFace, {"s": 30.0, "m": 1.7}, "ydwen/opensphere head/sphereface.py"),
    "sphereface2": MarginEntry(
        SphereFace2,
        {"alpha": 0.7, "r": 40.0, "m": 0.4, "t": 3.0, "lw": 50.0},
        "ydwen/opensphere head/sphereface2.py (SphereFace2-C)",
        requires_num_classes=True,
    ),
    "uniface": MarginEntry(
        UniFace,
        {"m": 0.4, "s": 64.0, "l": 1.0, "r": 1.0},
        "CVI-SZU/UniFace head.py (Unified_Cross_Entropy_Loss)",
        requires_num_classes=True,
    ),
    "sface": MarginEntry(
        SFace, {"s": 64.0, "k": 80.0, "a": 0.8, "b": 1.23}, "zhongyy/SFace SFace_torch/head/metrics.py"
    ),
}

_CHOICES = {"grad": GRAD_MODES}
_BOOLS = ("easy_margin", "continuation")


def _checked(name: str, key: str, value: Any, default: Any) -> Any:
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise FresnetError(f"margin loss {name}: {key}={value!r} is not one of {', '.join(_CHOICES[key])}")
        return value
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise FresnetError(f"margin loss {name}: {key} must be true or false, got {value!r}")
        return value
    if key == "K":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FresnetError(f"margin loss {name}: K must be a positive integer, got {value!r}")
        return value
    if key == "num_classes":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FresnetError(f"margin loss {name}: num_classes must be a positive integer, got {value!r}")
        return value
    if key == "process_group":
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FresnetError(f"margin loss {name}: {key} must be a finite number, got {value!r}")
        return float(value)
    return value


def build_margin(name: str, **options: Any) -> nn.Module:
    """The margin loss ``name`` with ``options`` over its defaults: ``module(cos, labels, norms=None)``.

    Raises :class:`fresnet.errors.FresnetError` for an unknown name or option (the message lists the
    choices) and when a name that needs ``num_classes`` (sphereface2, uniface) does not get it."""
    entry = MARGIN_LOSSES.get(name)
    if entry is None:
        raise FresnetError(f"unknown margin loss {name!r}; choose one of {', '.join(MARGIN_LOSSES)}")
    accepted = entry.accepted()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FresnetError(f"margin loss {name}: unknown option(s) {', '.join(unknown)}; "
                           f"it takes {', '.join(accepted)}")
    if entry.requires_num_classes and options.get("num_classes") is None:
        raise FresnetError(f"margin loss {name} needs num_classes (the total number of classes)")
    values = dict(entry.defaults)
    values.update({k: _checked(name, k, v, entry.defaults.get(k)) for k, v in options.items()})
    kwargs = {entry.rename.get(k, k): v for k, v in values.items()}
    return entry.cls(**kwargs, **entry.fixed)


def describe_margins() -> list[tuple[str, str, str]]:
    """(name, 'key=default, ...', reference) per loss, for ``fresnet train --list-losses``."""
    rows = []
    for name, entry in MARGIN_LOSSES.items():
        options = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.defaults.items())
        if "continuation" in entry.extra:
            options += ", continuation=False (explicit option: a smooth target past pi, not the reference)"
        if "process_group" in entry.extra:
            options += ", process_group (API only: batch statistics over a group)"
        if entry.requires_num_classes:
            options += ", num_classes (required; the trainer passes it)"
        rows.append((name, options, entry.reference))
    return rows
