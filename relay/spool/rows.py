"""Building spool rows: a route's events for one request become one row, a JSON array.

The spool contract (base.py) stores each row as the JSON array a target that forwards events
unchanged can splice into its request as is; this is the one place rows are encoded.
"""

from __future__ import annotations

import orjson

from ..events import Event
from .base import NewRow


def row_of_events(target: str, route: str, events: list[Event], received_ms: int) -> NewRow:
    """A row holding ``events`` (dicts) encoded once."""
    return NewRow(target, route, orjson.dumps(events), len(events), received_ms)
