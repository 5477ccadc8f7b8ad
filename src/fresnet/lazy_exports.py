"""Lazy re-exports for a package's ``__init__``: public names are imported on first use, so
``import fresnet`` stays fast and optional parts (ONNX, plotting) load only when used."""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Iterable


def lazy_exports(package: str, exports: dict[str, str], extra: Iterable[str] = ()
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, whose ``exports`` map each public name
    to the module that defines it. A name is imported once, then cached in the package."""
    names = sorted(exports) + list(extra)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
