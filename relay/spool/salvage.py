"""``statsig-relay spool salvage``: copy what is readable of a damaged spool file (queued rows
and dead letters) into a new spool file, reading the old one read-only.

How: ids are gathered from the table's index and from its own b-tree, each scanned in id order
and resumed past a damaged stretch; each row is then read alone, so one bad page loses only the
rows on it. Dedup and first-exposure keys are not copied (an event the old file had seen may
pass once more within its window).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .integrity import read_only
from .records import DeadRow, NewRow
from .sqlite_file import SpoolFile, Write

_BATCH_ROWS = 500  # rows per commit into the new file

_QUEUE = "target, route, body, count, first_received, attempts, last_error"
_DEAD = "target, route, body, count, first_received, attempts, dead_at, reason"
_SKIP_LIMIT = 1 << 40  # ids past a damaged stretch are looked for up to this far


@dataclass(slots=True)
class Salvaged:
    queued_rows: int = 0
    queued_events: int = 0
    dead_rows: int = 0
    dead_events: int = 0
    unreadable: int = 0  # rows listed by an index or a scan whose record could not be read
    bad_bodies: int = 0  # rows read whose body is not a JSON array: kept as dead letters


def readable_ids(db: sqlite3.Connection, table: str, index: str) -> list[int]:
    """Every id that the table's index or its own b-tree still lists: each is scanned in id
    order, and past a damaged stretch the scan starts again further on."""
    found: set[int] = set()
    for how in (f"INDEXED BY {index}", "NOT INDEXED"):
        last, skip = -1, 1
        while last < _SKIP_LIMIT:
            try:
                for (row_id,) in db.execute(
                    f"SELECT id FROM {table} {how} WHERE id > ? ORDER BY id", (last,)
                ):
                    found.add(row_id)
                    last, skip = row_id, 1
                break
            except sqlite3.DatabaseError:
                last, skip = last + skip, skip * 2
    return sorted(found)


def salvage_into(source: Path | str, to: Path | str) -> Salvaged:
    """Copy what is readable of ``source`` into the new spool file ``to`` (which must not
    exist: a salvage never mixes into a spool in use)."""
    if Path(to).exists():
        raise FileExistsError(f"{to} exists; salvage writes a new file")
    new = SpoolFile(str(to), "full", lock=True)
    new.open()
    pending: list[Write] = []

    def write(rows: list[NewRow], dead: list[DeadRow]) -> None:
        pending.append(Write(rows, dead=dead))
        if len(pending) >= _BATCH_ROWS:
            new.write_group(pending)
            pending.clear()

    try:
        result = salvage(source, write)
        new.write_group(pending)
    finally:
        new.close()
    return result


def salvage(source: Path | str, write: Callable[[list[NewRow], list[DeadRow]], None]) -> Salvaged:
    """Read what is readable of ``source`` (read-only) and hand each row to ``write``."""
    result = Salvaged()
    db = read_only(source)
    try:
        for row_id in readable_ids(db, "queue", "queue_meta"):
            try:
                row = db.execute(f"SELECT {_QUEUE} FROM queue WHERE id = ?", (row_id,)).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is None:
                result.unreadable += 1
                continue
            target, route, body, count, first, attempts, error = row
            if not _json_array(body):
                result.bad_bodies += 1
                reason = "salvaged: the body is not readable JSON"
                now = int(time.time() * 1000)
                write(
                    [],
                    [DeadRow(0, target, route, bytes(body), count, first, attempts, now, reason)],
                )
                continue
            write([NewRow(target, route, bytes(body), count, first, attempts, 0, error)], [])
            result.queued_rows += 1
            result.queued_events += count
        for row_id in readable_ids(db, "dead", "dead_target"):
            try:
                row = db.execute(f"SELECT {_DEAD} FROM dead WHERE id = ?", (row_id,)).fetchone()
            except sqlite3.DatabaseError:
                row = None
            if row is None:
                result.unreadable += 1
                continue
            target, route, body, count, first, attempts, dead_at, reason = row
            write(
                [],
                [DeadRow(0, target, route, bytes(body), count, first, attempts, dead_at, reason)],
            )
            result.dead_rows += 1
            result.dead_events += count
    finally:
        db.close()
    return result


def _json_array(body: object) -> bool:
    try:
        return isinstance(json.loads(bytes(body)), list)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
