"""One name per verification target, unique: the key of ``results.json`` and of training's
``val_<name>`` log columns.

The rule: a pack is named by its file name without ``.bin`` (``lfw.bin`` -> ``lfw``); packs that
share that name are named by their paths from the folder they all share (``mine.bin`` and
``sub/mine.bin`` -> ``mine`` and ``sub/mine``); the same file given again gets ``#2``, ``#3``.
``synthetic`` (training's held-out identities) is named ``synthetic``.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import PurePath
from typing import Union

SYNTHETIC = "synthetic"


def _parts(target: Union[str, os.PathLike]) -> tuple[str, ...]:
    """The folders and the stem of a pack's absolute path."""
    path = PurePath(os.path.abspath(os.fspath(target)))
    stem = path.name[: -len(".bin")] if path.name.lower().endswith(".bin") else path.name
    return (*path.parent.parts, stem)


def target_names(targets: Sequence[Union[str, os.PathLike]]) -> list[str]:
    """Unique names for ``targets`` (paths of ``.bin`` packs, or ``synthetic``), in their order."""
    parts = [(SYNTHETIC,) if os.fspath(t) == SYNTHETIC else _parts(t) for t in targets]
    groups = defaultdict(list)
    for i, p in enumerate(parts):
        groups[p[-1]].append(i)
    names = [p[-1] for p in parts]
    for members in groups.values():
        if len({parts[i] for i in members}) < 2:
            continue  # one file (perhaps given twice)
        shared = 0  # folders every member's path starts with
        while all(len(parts[i]) > shared + 1 and parts[i][shared] == parts[members[0]][shared] for i in members):
            shared += 1
        for i in members:
            names[i] = "/".join(parts[i][shared:])
    seen: Counter = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


__all__ = ["target_names"]
