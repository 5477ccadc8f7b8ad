"""Named networks, as data: the original units table and the named variants of ``sample_config``."""
from __future__ import annotations

import re
from typing import Any

# fresnet.get_symbol()'s units table (InsightFace repository version). The blog copy's
# 90: [3, 8, 35, 3] is a typo (it duplicates r99); the repository has [3, 8, 30, 3].
UNITS_BY_DEPTH: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    49: (3, 4, 14, 3),
    50: (3, 4, 14, 3),
    74: (3, 6, 24, 3),
    90: (3, 8, 30, 3),
    98: (3, 4, 38, 3),
    99: (3, 8, 35, 3),
    100: (3, 13, 30, 3),
    101: (3, 4, 23, 3),
    124: (3, 13, 40, 5),
    134: (3, 10, 50, 3),
    136: (3, 13, 48, 3),
    140: (3, 15, 48, 3),
    152: (3, 8, 36, 3),
    160: (3, 24, 49, 3),
    200: (3, 24, 36, 3),
    269: (3, 30, 48, 8),
}

BASIC_FILTERS = (64, 64, 128, 256, 512)
BOTTLENECK_FILTERS = (64, 256, 512, 1024, 2048)
BOTTLENECK_MIN_DEPTH = 500  # get_symbol() switches to bottleneck filters at num_layers >= 500

PRESETS: dict[str, dict[str, Any]] = {f"r{depth}": {"num_layers": depth} for depth in UNITS_BY_DEPTH}
# named variants from the original sample_config.py
PRESETS["r100fc"] = {"num_layers": 100, "net_output": "FC"}
PRESETS["r50v1"] = {"num_layers": 50, "net_unit": 1}


def list_models() -> list[str]:
    """Names accepted by :func:`fresnet.create_model`, shallowest first."""

    def order(name: str) -> tuple[int, str]:
        depth = re.match(r"r(\d+)", name)
        return int(depth.group(1)), name

    return sorted(PRESETS, key=order)


def preset_options(name: str) -> dict[str, Any]:
    from fresnet.errors import FresnetError

    try:
        return dict(PRESETS[name])
    except KeyError:
        raise FresnetError(f"unknown model {name!r}; choose one of {', '.join(list_models())}") from None
