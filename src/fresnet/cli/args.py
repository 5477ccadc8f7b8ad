"""Argument types for numeric options: a bad number is an argparse error (usage line, exit code 2)
naming the option, instead of a traceback from deep inside the command."""
from __future__ import annotations

import argparse
import math


def _int(text: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int(text, 1)


def nonnegative_int(text: str) -> int:
    return _int(text, 0)


def epoch(text: str) -> int:
    """An MXNet checkpoint epoch: the file name holds it in four digits."""
    return _int(text, 0, 9999)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite_float(text: str) -> float:
    return _float(text)


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def folds(text: str) -> int:
    """Cross-validation folds: at least 2 (one to tune the threshold on, one to test it)."""
    return _int(text, 2)
