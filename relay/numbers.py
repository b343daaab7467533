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
(relay/raw.py) asks :class:`NumberScreen` per body: cheap, never wrong in the direction that
matters (a body it passes holds none), and a body it flags takes the dict path.
"""

from __future__ import annotations

import json
from typing import Any

import simdjson

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


class NumberScreen:
    """The raw path's per-body question: may ``body`` hold a number beyond a double?

    simdjson (pysimdjson) parses the body into its own tape, builds no Python objects, and
    refuses any number it cannot hold as a 64-bit integer or a double: ~0.5 ns per byte, a
    third of what a pure-Python screen (a translate into character classes and a regex) cost
    here. It also refuses integers from 2**64 to 1e308, which are kept: such a body only takes
    the dict path, which decides exactly. A parser reuses its buffer; one per source, used on
    the event loop only.
    """

    def __init__(self) -> None:
        self._parser = simdjson.Parser()

    def may_hold_unrepresentable(self, body: bytes) -> bool:
        """False when every number in ``body`` (JSON) fits; True when one may not (or simdjson
        doubts the body for another reason: then the dict path decides too)."""
        try:
            self._parser.parse(body)  # the document proxy is dropped at once
        except Exception:  # NUMBER_ERROR, BIGINT_ERROR, or anything else simdjson refuses
            return True
        return False
