"""A damaged SQLite spool: recognise it before writing to it, report it read-only, and salvage
what is readable into a new file.

Why: a truncated copy or a file of other bytes at ``spool.path`` gave a 31-line traceback that
never named the file, and ``check`` said "ok". The relay now looks at the file's header before
it opens it for writing, answers in one line naming the file, and never writes to it; the
operator runs ``statsig-relay spool check`` and ``statsig-relay spool salvage``
(:mod:`relay.spool.salvage`).

Imported by the spool's writer process: standard library only.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

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
    """A connection that cannot change the file. Without a WAL beside it the file is opened as
    immutable (SQLite then creates no -shm or -wal file next to it either); with one, the WAL
    is read too (not checkpointed). A database shorter than its header says is read as far as
    it goes (writable_schema only relaxes that check: the connection is read-only)."""
    resolved = Path(path).resolve()
    mode = "mode=ro" if Path(f"{resolved}-wal").exists() else "mode=ro&immutable=1"
    db = sqlite3.connect(f"file:{urllib.parse.quote(str(resolved))}?{mode}", uri=True)
    db.isolation_level = None
    db.execute("PRAGMA writable_schema=ON")
    return db


def quick_check(path: Path) -> str:
    """SQLite's quick_check of an existing file, read-only: "" when sound, else the damage.
    It reads every page (about a second per GiB): a spool written into while damaged could
    lose what it holds."""
    if not path.is_file() or path.stat().st_size == 0:
        return ""
    try:
        db = read_only(path)
        try:
            problems = [row[0] for row in db.execute("PRAGMA quick_check(20)")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return damage_of(exc) or f"SQLite: {exc}"
    if problems == ["ok"]:
        return ""
    # One problem may be several lines ("*** in database main ***" and one line per page when
    # the pointer map is damaged): keep the answer one line.
    lines = [
        line.strip()
        for problem in problems
        for line in str(problem).splitlines()
        if line.strip() and not line.startswith("*** in database")
    ] or ["quick_check failed"]
    more = f" and {len(lines) - 1} more" if len(lines) > 1 else ""
    return f"SQLite: {lines[0]}{more}"


@dataclass(slots=True)
class Report:
    """What ``spool check`` found: ``damage`` is "" for a sound file."""

    path: str
    damage: str = ""
    queued_rows: int = 0
    queued_events: int = 0
    dead_rows: int = 0
    dead_events: int = 0

    def line(self) -> str:
        if self.damage:
            return str(SpoolDamaged(self.path, self.damage))
        return (
            f"spool {self.path}: ok ({self.queued_events} events in {self.queued_rows} queued"
            f" rows, {self.dead_events} dead-lettered in {self.dead_rows} rows)"
        )


def _new_spool(path: Path) -> bool:
    """An empty file with no WAL holding anything: SQLite creates the file when it opens it,
    so a relay stopped before its first commit leaves one, and the relay starts on it."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0)


def check_file(path: Path | str) -> Report:
    """Check the whole file read-only (SQLite's quick_check reads every page)."""
    report = Report(str(path))
    try:
        verify_header(Path(path))
        if _new_spool(Path(path)):  # as the relay takes it: nothing in it yet
            return report
        report.damage = quick_check(Path(path))
        if report.damage:
            return report
        db = read_only(path)
        try:
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
