"""Building spool rows: a route's events for one request become one row, a JSON array.

The spool contract (base.py) stores each row as the JSON array a target that forwards events
unchanged splices into its request as is. Events the source kept as their bytes
(relay/raw.py) are spliced, not re-encoded; events held as dicts are encoded once. Either way the
row equals ``orjson.dumps`` of the events as dicts (bytes may differ only in what the sender
wrote: whitespace, escapes, number spelling). A row holds no line break outside its strings
(the raw path re-encodes an event sent with one), so line formats split rows without parsing
(``Batch.json_lines``).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from ..raw import RawEvents
from .records import NewRow


def build_row(
    target: str,
    route: str,
    events: RawEvents,
    indices: list[int],
    received_ms: int,
    new_name: Callable[[str], str | None] | None = None,
) -> NewRow:
    """The row of the events at ``indices``; ``new_name`` is the route's rename, if any."""
    return NewRow(target, route, json_array(events, indices, new_name), len(indices), received_ms)


def json_array(
    events: RawEvents, indices: list[int], new_name: Callable[[str], str | None] | None = None
) -> bytes:
    if new_name is None:
        raws = events.raws
        kept = [raws[i] for i in indices]
        as_dicts = kept.count(None)
        if not as_dicts:
            return b"[" + b",".join(kept) + b"]"
        if as_dicts == len(kept):
            dicts = events.dicts
            return orjson.dumps([dicts[i] for i in indices])
    return b"[" + b",".join([events.json(i, new_name) for i in indices]) + b"]"
