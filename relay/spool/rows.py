"""Building spool rows: a route's events for one request become one row, a JSON array; the
small rows of requests that commit together are merged (:func:`merge_rows`).

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
from typing import TYPE_CHECKING

import orjson

from .records import NewRow

if TYPE_CHECKING:  # the spool writer process merges rows and need not load the parsers
    from ..raw import RawEvents


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


# Rows of requests that commit together are merged up to this size: a browser's one-event
# request then costs the spool and the deliverer one row per group, not one per request,
# while a row stays far below any target's request size.
MERGE_MAX_BYTES = 64 * 1024


def merge_rows(rows: list[NewRow], max_bytes: int = MERGE_MAX_BYTES) -> list[NewRow]:
    """Fresh rows for the same target and route, concatenated in order while the result stays
    within ``max_bytes``; a merged row keeps the earliest receive time. Rows that carry an
    attempt, a schedule or an error (requeued by the deliverer) are kept as they are."""
    if len(rows) < 2:
        return rows
    # Each merged row's parts are joined once at the end (not copied again for every row).
    merged: list[NewRow | list[NewRow]] = []
    open_rows: dict[tuple[str, str], tuple[list[NewRow], int]] = {}  # parts, their bytes
    for row in rows:
        if row.attempts or row.next_attempt_ms or row.last_error or not row.count:
            merged.append(row)
            continue
        key = (row.target, row.route)
        parts, size = open_rows.get(key, (None, 0))
        if parts is not None and size + len(row.body) <= max_bytes:
            parts.append(row)
            open_rows[key] = (parts, size + len(row.body))
            continue
        parts = [row]
        open_rows[key] = (parts, len(row.body))
        merged.append(parts)
    return [_joined(item) if isinstance(item, list) else item for item in merged]


def _joined(parts: list[NewRow]) -> NewRow:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return NewRow(
        first.target,
        first.route,
        b"[" + b",".join([p.body[1:-1] for p in parts]) + b"]",
        sum(p.count for p in parts),
        min(p.first_received_ms for p in parts),
    )
