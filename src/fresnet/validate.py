"""One validation layer for every value that comes from outside: config files, ``key=value``
overrides, configs stored in model files and checkpoints, and file headers.

Each check takes the value, its key and where it came from, and returns the value in its proper
type or raises :class:`FresnetError` naming the key, the value, the source and the fix::

    config.yaml: batch_size = 'many': expected an integer >= 1; write e.g. batch_size: 128

Values are shown with :func:`describe`, which never recurses deeply nor prints huge numbers, so a
hostile value cannot turn the error message itself into a crash. Text formats are parsed here too,
with their depth and size bounded: :func:`load_json` and :func:`load_yaml` (no YAML aliases, no
Python tags).
"""
from __future__ import annotations

import json
import math
import numbers
import re
import reprlib
from typing import Any, Mapping, Optional, Sequence

from fresnet.errors import FresnetError

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def describe(value: Any) -> str:
    """A short, bounded ``repr`` (depth 3, 60 characters a string, 40 digits a number)."""
    try:
        return _REPR.repr(value)
    except Exception:  # a hostile object whose repr fails
        return f"<{type(value).__name__}>"


def _fail(key: str, value: Any, expected: str, where: str, fix: str = "") -> FresnetError:
    prefix = f"{where}: " if where else ""
    hint = f"; {fix}" if fix else ""
    return FresnetError(f"{prefix}{key} = {describe(value)}: expected {expected}{hint}")


def _range_text(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum:,}, {maximum:,}]" if isinstance(minimum, int) else f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def as_int(value: Any, key: str, where: str = "", minimum: Optional[int] = None, maximum: Optional[int] = None,
           fix: str = "") -> int:
    """An integer: ``int``, a numpy integer, an integral finite float (``16.0``) or decimal text (``'16'``)."""
    expected = "an integer" + _range_text(minimum, maximum)
    result: Optional[int] = None
    if isinstance(value, bool):
        result = None
    elif isinstance(value, numbers.Integral):
        result = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number) and number == int(number) and abs(number) <= 2**63:
            result = int(number)
    elif isinstance(value, str) and len(value) <= 40:
        text = value.strip()
        if _INTEGER_TEXT.fullmatch(text):
            result = int(text)
    if result is None or (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise _fail(key, value, expected, where, fix)
    return result


def as_float(value: Any, key: str, where: str = "", minimum: Optional[float] = None,
             maximum: Optional[float] = None, below: Optional[float] = None, above: Optional[float] = None,
             fix: str = "") -> float:
    """A finite float: a number or numeric text (``'5e-4'``, which YAML 1.1 reads as a string).

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones."""
    parts = []
    if minimum is not None:
        parts.append(f">= {minimum}")
    if above is not None:
        parts.append(f"> {above}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    if below is not None:
        parts.append(f"< {below}")
    expected = "a finite number" + (" " + " and ".join(parts) if parts else "")
    number: Optional[float] = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, numbers.Real):
        try:
            number = float(value)
        except (OverflowError, ValueError):
            number = None
    elif isinstance(value, str) and len(value) <= 60:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or (minimum is not None and number < minimum) or \
            (maximum is not None and number > maximum) or (above is not None and number <= above) or \
            (below is not None and number >= below):
        raise _fail(key, value, expected, where, fix)
    return number


def as_bool(value: Any, key: str, where: str = "", fix: str = "") -> bool:
    """``True``/``False``, 0/1, or the words true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    if getattr(getattr(value, "dtype", None), "kind", None) == "b" and getattr(value, "ndim", 1) == 0:
        return bool(value)  # a numpy bool
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise _fail(key, value, "true or false", where, fix)


def as_str(value: Any, key: str, where: str = "", choices: Optional[Sequence[str]] = None, fix: str = "") -> str:
    """A string (numbers are accepted and turned into text, as YAML may have parsed ``r50`` or ``0``)."""
    if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
        expected = f"one of {', '.join(map(str, choices))}" if choices else "a string"
        raise _fail(key, value, expected, where, fix)
    text = value if isinstance(value, str) else str(value)
    if choices is not None and text not in choices:
        raise _fail(key, value, f"one of {', '.join(map(str, choices))}", where, fix)
    return text


def as_choice(value: Any, key: str, choices: Sequence[Any], where: str = "", fix: str = "") -> Any:
    """One of ``choices``, compared as they are (only hashable scalars are looked at)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
    raise _fail(key, value, f"one of {', '.join(map(str, choices))}", where, fix)


def as_mapping(value: Any, key: str, where: str = "", fix: str = "") -> dict:
    """A mapping with string keys (``None`` is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(key, value, "a mapping of names to values", where, fix)
    return dict(value)


def as_list(value: Any, key: str, where: str = "", fix: str = "", max_items: Optional[int] = None) -> list:
    """A list or tuple (not a string, not a mapping)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise _fail(key, value, "a list", where, fix)
    if max_items is not None and len(value) > max_items:
        raise _fail(key, value, f"a list of at most {max_items} items", where, fix)
    return list(value)


def as_int_tuple(value: Any, key: str, where: str = "", minimum: Optional[int] = None,
                 maximum: Optional[int] = None, length: Optional[int] = None, max_items: int = 64,
                 fix: str = "") -> tuple[int, ...]:
    """A list of integers, each checked like :func:`as_int`."""
    expected = "a list of integers" + _range_text(minimum, maximum)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise _fail(key, value, expected, where, fix)
    if len(value) > max_items or (length is not None and len(value) != length) or not value:
        count = f"{length}" if length is not None else f"1 to {max_items}"
        raise _fail(key, value, f"{expected}, {count} of them", where, fix)
    out = []
    for item in value:
        try:
            out.append(as_int(item, key, where, minimum, maximum))
        except FresnetError:
            raise _fail(key, value, expected, where, fix) from None
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# text formats with bounded depth


def nesting_depth(text: str) -> int:
    """The deepest ``[``/``{`` nesting of JSON text (strings skipped), computed without recursion."""
    import numpy as np

    stripped = re.sub(r'"[^"\\]*(?:\\.[^"\\]*)*"', '""', text)
    codes = np.frombuffer(stripped.encode("utf-8", "replace"), dtype=np.uint8)
    if codes.size == 0:
        return 0
    steps = np.zeros(codes.shape, dtype=np.int64)
    steps[(codes == ord("[")) | (codes == ord("{"))] = 1
    steps[(codes == ord("]")) | (codes == ord("}"))] = -1
    return int(np.cumsum(steps).max(initial=0))


def load_json(text: str, source: str, what: str = "JSON") -> Any:
    """``json.loads`` with the depth bounded by ``max_nesting`` and every failure a FresnetError."""
    from fresnet.limits import current, raise_hint

    limit = current().max_nesting
    depth = nesting_depth(text)
    if depth > limit:
        raise FresnetError(
            f"{source}: the {what} is nested {depth} levels deep, above the limit max_nesting={limit}; "
            f"the file is damaged or crafted; if it is trusted, raise the limit: {raise_hint('max_nesting')}"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FresnetError(f"{source}: the {what} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg})") from None
    except (RecursionError, ValueError) as exc:  # ValueError: e.g. an integer of 5000 digits
        raise FresnetError(f"{source}: the {what} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` without aliases (a few hundred bytes of them expand to gigabytes), with
    the nesting bounded by ``max_nesting``; every failure is a FresnetError naming ``source``."""
    import yaml

    from fresnet.limits import current, raise_hint

    limit = current().max_nesting

    class _Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise FresnetError(
                    f"{source}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted in "
                    "fresnet files (a few of them can expand to gigabytes); write the values out in full"
                )
            self.depth += 1
            if self.depth > limit:
                raise FresnetError(f"{source}: the YAML is nested more than max_nesting={limit} levels deep; "
                                   "the file is damaged or crafted; if it is trusted, raise the limit: "
                                   f"{raise_hint('max_nesting')}")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except FresnetError:
        raise
    except yaml.YAMLError as exc:
        raise FresnetError(f"{source}: invalid YAML: {str(exc)[:400]}") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise FresnetError(f"{source}: the YAML cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None


__all__ = [
    "describe", "as_int", "as_float", "as_bool", "as_str", "as_choice", "as_mapping", "as_list", "as_int_tuple",
    "load_json", "load_yaml", "nesting_depth",
]
