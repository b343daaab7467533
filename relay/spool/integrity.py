"""A damaged SQLite spool: recognise it before writing to it, report it read-only, and salvage
what is readable into a new file.

Why: a truncated copy or a file of other bytes at ``spool.path`` gave a 31-line traceback that
never named the file, and ``check`` said "ok". The relay now looks at the file's header before
it opens it for writing, answers in one line naming the file, and never writes to it; the
operator runs ``statsig-relay spool check`` and ``statsig-relay spool salvage``.

Imported by the spool's writer process: standard library only.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .records import DeadRow, NewRow

_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100


class SpoolDamaged(RuntimeError):
    """The spool file is not a usable SQLite database; the relay leaves it as it is."""

    def __init__(self, path: Path | str, damage: str) -> None:
        super().__init__(str(path), damage)
        self.path = str(path)
        self.damage = damage

    def __str__(self) -> str:
        if self.damage == NOT_SQLITE:
            return (
                f"spool {self.path} is {NOT_SQLITE} (left as it is): point spool.path at the"
                " spool file, or move this file away to start an empty spool"
            )
        return (
            f"spool {self.path} is damaged ({self.damage}; left as it is): run"
            " `statsig-relay spool check -c CONFIG`, then"
            " `statsig-relay spool salvage -c CONFIG --to NEW_FILE`"
        )


NOT_SQLITE = "not an SQLite database"


def verify_header(path: Path) -> None:
    """Raise :class:`SpoolDamaged` if ``path`` holds something other than a whole SQLite
    database (an absent or empty file is a new spool). Reads 100 bytes; writes nothing."""
    try:
        with open(path, "rb") as file:
            header = file.read(_HEADER_BYTES)
            size = file.seek(0, 2)
    except FileNotFoundError:
        return
    if size == 0:
        return
    if len(header) < _HEADER_BYTES or not header.startswith(_MAGIC):
        raise SpoolDamaged(path, NOT_SQLITE)
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The size in the header counts only when written by a version that keeps it (both
    # counters equal); then a shorter file lost its end.
    if pages and header[24:28] == header[92:96] and size < pages * page_size:
        raise SpoolDamaged(path, f"truncated: {size} bytes of the {pages * page_size} it had")


def damage_of(exc: sqlite3.DatabaseError) -> str | None:
    """What an SQLite error says about the file, or None when it is not about damage."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_NOTADB:
        return NOT_SQLITE
    if code == sqlite3.SQLITE_CORRUPT:
        return f"SQLite: {exc}"
    return None


def read_only(path: Path | str) -> sqlite3.Connection:
    """A connection that cannot change the file (its WAL, if any, is read, not checkpointed)."""
    uri = f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


@dataclass(slots=True)
class Report:
    """What ``spool check`` found: ``damage`` is "" for a sound file."""

    path: str
    damage: str = ""
    queued_rows: int = 0
    queued_events: int = 0
    dead_rows: int = 0
    dead_events: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.damage:
            return str(SpoolDamaged(self.path, self.damage))
        return (
            f"spool {self.path}: ok ({self.queued_events} events in {self.queued_rows} queued"
            f" rows, {self.dead_events} dead-lettered in {self.dead_rows} rows)"
        )


def check_file(path: Path | str) -> Report:
    """Check the whole file read-only (SQLite's quick_check reads every page)."""
    report = Report(str(path))
    try:
        verify_header(Path(path))
        db = read_only(path)
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(20)")]
            if problems != ["ok"]:
                report.problems = problems
                more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
                report.damage = f"SQLite: {problems[0]}{more}"
                return report
            for table in ("queue", "dead"):
                rows, events = db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(count), 0) FROM {table}"
                ).fetchone()
                if table == "queue":
                    report.queued_rows, report.queued_events = rows, events
                else:
                    report.dead_rows, report.dead_events = rows, events
        finally:
            db.close()
    except SpoolDamaged as exc:
        report.damage = exc.damage
    except sqlite3.DatabaseError as exc:
        report.damage = damage_of(exc) or f"SQLite: {exc}"
    return report


# -- salvage --------------------------------------------------------------------------------
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
