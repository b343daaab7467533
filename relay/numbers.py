"""Numbers the relay can carry, and finding the ones it cannot.

Every target encodes numbers as IEEE doubles or 64-bit integers (orjson, SQLite, the targets'
own JSON parsers). A number beyond a double's range (``1e400``, an integer of 309 digits or
more) would reach them as infinity, which JSON cannot hold, so such an event is refused alone at
ingest, with a reason, on every path. Integers beyond 64 bits but within a double's range are
kept: the dict path reads them as the nearest double (as orjson does), the raw path forwards
them as written. ``-0`` and numbers that underflow to zero (``1e-400``) are kept.

orjson refuses a whole body that holds such a number; :func:`load_marking` then reads the body
again with Python's parser, putting an :class:`Unrepresentable` where each such number was, so
the source can refuse just the events that hold one (:func:`unrepresentable_at`). The raw path
(relay/raw.py) asks :func:`may_hold_unrepresentable` per body: cheap, never wrong in the
direction that matters (a body it passes holds none), and a body it flags takes the dict path.
"""

from __future__ import annotations

import json
import re
from typing import Any

# orjson's message for a number beyond a double (integers included).
ORJSON_OUT_OF_RANGE = "number is infinity"

_INF = float("inf")


class Unrepresentable:
    """Where a number beyond a double's range was; ``text`` is the number as sent."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def describe(self) -> str:
        digits = self.text.lstrip("-")
        if len(self.text) <= 24:
            shown = self.text
        elif digits.isdigit():
            shown = f"an integer of {len(digits)} digits"
        else:
            shown = f"a number of {len(self.text)} characters"
        return f"{shown} is beyond the range of a double (about ±1.8e308)"


def _parse_float(text: str) -> float | Unrepresentable:
    value = float(text)
    return Unrepresentable(text) if value in (_INF, -_INF) else value


def _parse_int(text: str) -> int | float | Unrepresentable:
    if len(text) - text.startswith("-") > 309:  # 310 digits or more: beyond a double
        return Unrepresentable(text)
    value = int(text)
    if -(2**63) <= value < 2**64:
        return value
    as_float = float(text)  # as orjson reads integers beyond 64 bits
    return Unrepresentable(text) if as_float in (_INF, -_INF) else as_float


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_marking(body: bytes) -> Any:
    """``body`` parsed with every number beyond a double as an :class:`Unrepresentable`.
    Raises ValueError (or RecursionError) when the body is not JSON for another reason."""
    return json.loads(
        body.decode(),
        parse_float=_parse_float,
        parse_int=_parse_int,
        parse_constant=_refuse_constant,
    )


def unrepresentable_at(value: Any, path: str = "") -> str | None:
    """Where in ``value`` an :class:`Unrepresentable` is, as a reason naming its path (e.g.
    ``metadata.price: 1e400 is beyond…``); None when it holds none. Iterative: the value may
    nest as deep as the parser allows."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, Unrepresentable):
            return f"{where or 'value'}: {item.describe()}"
        if isinstance(item, dict):
            for key, inner in item.items():
                stack.append((inner, f"{where}.{key}" if where else str(key)))
        elif isinstance(item, list):
            for index, inner in enumerate(item):
                stack.append((inner, f"{where}[{index}]"))
    return None


# The raw path's screen, on the body with digits as '0', e/E as 'e', the bytes that end a
# number (, } ] and whitespace) as ',', '+' deleted and everything else as 'x'. A number beyond
# a double has either an exponent of three or more digits (1e400, 1E+0400) or, with an
# exponent of two digits or less, over 200 digits before its point. Strings can look the same
# ("e123 "); such a body only takes the slower dict path, which decides exactly.
_CLASSES = bytearray(b"x" * 256)
for _byte in b"0123456789":
    _CLASSES[_byte] = ord("0")
for _byte in b"eE":
    _CLASSES[_byte] = ord("e")
for _byte in b",}] \t\r\n":
    _CLASSES[_byte] = ord(",")
_NUMBER_CLASSES = bytes(_CLASSES)
_LONG_DIGITS = b"0" * 200  # long enough for the two-way search; shorter needles scan slowly
# A literal prefix ("e000"): re scans for it quickly; hexadecimal IDs in strings match the
# prefix often, but then fail at once on the end byte.
_BIG_EXPONENT = re.compile(rb"e000+,")


def may_hold_unrepresentable(body: bytes) -> bool:
    """False when no number in ``body`` (JSON) can be beyond a double's range; True when one
    may be (then parse it on the dict path, which finds out exactly)."""
    classes = body.translate(_NUMBER_CLASSES, b"+")
    return _LONG_DIGITS in classes or _BIG_EXPONENT.search(classes) is not None
