"""The spool's file: every SQL statement the SQLite spool runs, on whichever side owns the
connection (the spool's writer process, or a thread of the relay for the DLQ commands).

It knows nothing of schedules or caches (:mod:`relay.spool.sqlite` keeps those); each method is
one short exchange with the file, and its arguments and results are plain data, so they cross a
process boundary as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .integrity import SpoolDamaged, damage_of, quick_check, verify_header
from .records import DeadRow, NewRow, SpoolStats, TargetDepth
from .room import PAGE_BYTES, Room
from .rows import merge_rows

# AUTOINCREMENT: a dead row's id is what an operator passes to `dlq replay/purge --id`; it must
# never name another row later (plain INTEGER PRIMARY KEY reuses the highest id once deleted).
_DEAD_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    route TEXT NOT NULL,
    body BLOB NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    first_received INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    dead_at INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""
_DEAD_INDEXES = (
    "CREATE INDEX IF NOT EXISTS dead_target ON dead (target, id)",
    # The stats (every few seconds) read these; without it they walk every dead body.
    "CREATE INDEX IF NOT EXISTS dead_meta ON dead (target, count, bytes, first_received)",
)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    route TEXT NOT NULL,
    body BLOB NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    first_received INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
-- Covers what the schedule and the stats read, so neither walks the bodies' overflow pages.
CREATE INDEX IF NOT EXISTS queue_meta
    ON queue (target, next_attempt, count, bytes, first_received, attempts, route);
DROP INDEX IF EXISTS queue_due;
"""
    + _DEAD_TABLE.format(name="dead")
    + "".join(f"{index};\n" for index in _DEAD_INDEXES)
    + """CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
-- Expiring dedup keys is a range delete, not a scan of a table that grows with traffic.
CREATE INDEX IF NOT EXISTS state_expires ON state (expires);
"""
)


_QUEUE_COLUMNS = (
    "id, target, route, body, count, bytes, first_received, attempts, next_attempt, last_error"
)
_QUEUE_WIDTH = len(_QUEUE_COLUMNS.split(","))
_INSERT_QUEUE = f"INSERT INTO queue ({_QUEUE_COLUMNS}) VALUES"
_DEAD_COLUMNS = "target, route, body, count, bytes, first_received, attempts, dead_at, reason"
_SELECT_META = (
    "SELECT id, target, route, count, bytes, first_received, attempts, next_attempt FROM queue"
)
_MAX_PARAMS = 30_000  # bound parameters per statement (SQLite allows 32766)
_INCREMENTAL = 2  # PRAGMA auto_vacuum
_VACUUM_STEPS = 8  # incremental vacuums per room() call
_VACUUM_COPY_BYTES = 64 * 1024**2  # the most live data a conversion copies in memory


@dataclass(slots=True, eq=False)
class Write:
    """One caller's share of a group commit."""

    rows: list[NewRow] = field(default_factory=list)  # to queue
    cache: bool = False  # keep the bodies of ``rows`` for claims
    keys: list[tuple[str, int]] = field(default_factory=list)  # dedup keys and expiry
    delete: list[int] = field(default_factory=list)  # queue ids
    retry: list[int] = field(default_factory=list)  # queue ids
    next_attempt: int = 0  # of the ``retry`` ids
    error: str = ""
    dead: list[DeadRow] = field(default_factory=list)
    ingest: bool = False  # new events (refused while the disk is full; the rest never is)
    # Written only if this key is not stored unexpired at ``now`` (nor claimed by an earlier
    # write of the group): a request's dedup key, checked in the commit itself.
    unless_seen: str = ""
    now: int = 0
    refused: bool = False  # set on the relay's side: not written, the disk is full
    duplicate: bool = False  # set on the relay's side: not written, ``unless_seen`` was stored


@dataclass(slots=True)
class Committed:
    """What a group commit did: the ids given to the written rows (in order, rows of the
    group as :func:`merge_ingest` merged them), the indexes of the writes refused because the
    disk is full, of the writes left out as duplicates (``Write.unless_seen``), and why writes
    are refused ("" if not)."""

    ids: list[int]
    refused: list[int]
    duplicates: list[int]
    full: str


# A second relay still running on the same file gets this long to let go (a restart right after
# a kill -9 finds the old writer process finishing its last commit).
_LOCK_WAIT_S = 3.0


@dataclass(slots=True)
class Opened:
    """What the spool needs from a freshly opened file: every queued row's schedule fields
    (``_SELECT_META`` order), the bytes used and the ``PRAGMA data_version`` seen."""

    rows: list[tuple[Any, ...]]
    stats: SpoolStats
    full: str = ""  # why ingest is refused ("" when the disk has room)


class SpoolFile:
    """One connection to the spool file; not thread-safe (one thread or process uses it)."""

    def __init__(self, path: str, synchronous: str, lock: bool) -> None:
        self._path = Path(path)
        self._synchronous = synchronous
        self._lock = lock
        self._lock_fd: int | None = None
        self._db: sqlite3.Connection | None = None
        self._data_version = 0
        # The id the next queued row gets, so an insert needs no query for its ids; 0 until the
        # file is open. Not every id is below it: a dead-letter replay takes SQLite's
        # MAX(id) + 1, and a clash makes the one-statement insert fail whole and fall back to
        # the transaction.
        self._next_id = 0
        self._room: Room | None = None
        self._full = ""  # why new events are refused: the disk has no room ("" = it has)

    def operations(self) -> dict[str, Any]:
        """The calls a writer process serves, by name (the names :class:`FileHost` sends)."""
        return {
            "open": self.open,
            "close": self.close,
            "write_group": self.write_group,
            "seen_keys": self.seen_keys,
            "expire_state": self.expire_state,
            "read_bodies": self.read_bodies,
            "external_rows": self.external_rows,
            "stats": self.stats,
            "dead_rows": self.dead_rows,
            "replay_dead": self.replay_dead,
            "purge_dead": self.purge_dead,
            "split_dead": self.split_dead,
            "room": self.room,
        }

    # -- lifecycle -------------------------------------------------------------------------
    def open(self, min_next_id: int = 1) -> Opened:
        """Open the file; new rows get ids of at least ``min_next_id`` (a restarted writer must
        not give an id the relay still knows, e.g. one whose deletion it never heard of)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Before anything can write to it: a file that is not a sound spool is left as it is.
        verify_header(self._path)
        damage = quick_check(self._path)
        if damage:
            raise SpoolDamaged(self._path, damage)
        if self._lock:
            self._take_lock()
        try:
            return self._open(min_next_id)
        except sqlite3.DatabaseError as exc:
            self.close()
            damage = damage_of(exc)
            if damage is None:
                raise
            raise SpoolDamaged(self._path, damage) from None

    def _open(self, min_next_id: int) -> Opened:
        # No statement cache: a cached statement keeps a copy of the blobs last bound to it
        # until it is used again, and multi-row INSERTs of every width 1..n each held their
        # last rows' bodies (+17 MB resident flat out). Compiling each statement anew costs
        # microseconds against a commit's fsync.
        db = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, cached_statements=0
        )
        self._db = db
        # A new file gives its free pages back to the filesystem on demand (see room.py); an
        # older file is converted the first time the disk fills (_give_back).
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        # Checkpoint every ~16 MiB of WAL instead of 4: rows live briefly, so pages written and
        # freed within one window are copied to the database once or not at all (bench flat
        # out: +7% events/s); the file shrinks back to 64 MiB at most after a checkpoint. On
        # a small filesystem, 1/32 of it (room.py: the WAL must never fill the disk).
        room = self._room = Room(self._path)
        db.execute(f"PRAGMA wal_autocheckpoint={room.wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={64 * 1024**2}")
        db.executescript(_SCHEMA)
        _migrate_dead_ids(db)
        self._full = "" if room.reserve() else "disk full"
        # Leases are kept in memory (a previous process's claims are due again now); the
        # lease_until column stays for files written by older versions.
        self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
        rows = db.execute(_SELECT_META).fetchall()
        first_free = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM queue").fetchone()[0]
        self._next_id = max(first_free, min_next_id)
        return Opened(rows, self.stats(), self._full)

    def _take_lock(self) -> None:
        lock_path = str(self._path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"spool {self._path} is in use by another relay process "
                        "(use the redis backend to run several replicas)"
                    ) from None
                time.sleep(0.05)
        self._lock_fd = fd

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("spool is not open")
        return self._db

    # -- writes ----------------------------------------------------------------------------
    def write_group(self, group: list[Write]) -> Committed:
        """Commit the group; while the disk is full, everything but new events (acks,
        retries, dead letters: what frees or moves rows). A commit that finds the disk full
        releases the reserve and is tried again without the new events."""
        refused = [i for i, w in enumerate(group) if w.ingest] if self._full else []
        duplicates = [] if refused else self._duplicates(group)
        try:
            ids = self._write(merge_ingest(_without(group, refused or duplicates)))
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            self._disk_full()
            refused, duplicates = [i for i, w in enumerate(group) if w.ingest], []
            ids = self._write(merge_ingest(_without(group, refused)))
        return Committed(ids, refused, duplicates, self._full)

    def _duplicates(self, group: list[Write]) -> list[int]:
        """Indexes of the writes whose ``unless_seen`` key is stored unexpired, or claimed by
        an earlier write of the group."""
        wanted = [w.unless_seen for w in group if w.unless_seen]
        if not wanted:
            return []
        stored = self.seen_keys(wanted, min(w.now for w in group if w.unless_seen))
        duplicates = []
        for i, w in enumerate(group):
            if w.unless_seen:
                if w.unless_seen in stored:
                    duplicates.append(i)
                stored.add(w.unless_seen)
        return duplicates

    def _disk_full(self) -> None:
        """Refuse new events; release the reserve and truncate the WAL, so the checkpoint
        can grow the database and the deletes that follow have room."""
        self._full = "disk full"
        if self._room is not None:
            self._room.release()
        with contextlib.suppress(sqlite3.OperationalError):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def room(self) -> str:
        """While the disk is full: give free pages back to the filesystem and take new events
        again once the reserve is allocated anew with a WAL budget to spare. Returns why new
        events are refused ("" when they are not)."""
        room = self._room
        if not self._full or room is None:
            return self._full
        with contextlib.suppress(sqlite3.OperationalError):
            self._give_back(room)
        if room.can_take_writes() and room.reserve():
            db = self._conn
            db.execute(f"PRAGMA wal_autocheckpoint={room.wal_pages}")
            self._full = ""
        return self._full

    def _give_back(self, room: Room) -> None:
        """Hand free pages back to the filesystem, a WAL budget at a time (bounded per call:
        acks wait behind it)."""
        db = self._conn
        if not db.execute("PRAGMA freelist_count").fetchone()[0]:
            return
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            step = max(1, room.wal_pages // 2)
            for _ in range(_VACUUM_STEPS):
                # executescript steps the pragma to the end (execute() frees one page)
                db.executescript(f"PRAGMA incremental_vacuum({step});")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                if not db.execute("PRAGMA freelist_count").fetchone()[0]:
                    break
            return
        # A file from before incremental vacuum: convert it once its live pages are few (the
        # copy is made in memory and written through the WAL).
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        live_bytes = (pages - db.execute("PRAGMA freelist_count").fetchone()[0]) * PAGE_BYTES
        if live_bytes <= min(room.free_bytes() // 2, _VACUUM_COPY_BYTES):
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute("VACUUM")
            db.execute("PRAGMA temp_store=DEFAULT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _write(self, group: list[Write]) -> list[int]:
        """One transaction for the whole group, a few statements whatever its size. Returns
        the ids given to the inserted rows, in order.

        The common groups (only new rows: ingest; only deletions: acks) are one statement in
        autocommit mode, which is its own transaction; the rest take an explicit one. (When
        this runs on a thread of the relay, each statement also costs a wait for the GIL, up to
        the 5 ms switch interval while the event loop is busy.)
        """
        if not group:
            return []
        db = self._conn
        delete = [i for w in group for i in w.delete]
        rows = [r for w in group for r in w.rows]
        keys = [k for w in group for k in w.keys]
        dead = [d for w in group for d in w.dead]
        # In a transaction (one a failed ROLLBACK left open), a lone statement would not be
        # committed by itself: only the explicit path may run then.
        alone = not (keys or dead or db.in_transaction or any(w.retry for w in group))
        if alone and rows and not delete and len(rows) * _QUEUE_WIDTH <= _MAX_PARAMS:
            ids = self._insert_alone(rows)
            if ids is not None:
                return ids
        elif alone and delete and not rows and len(delete) <= _MAX_PARAMS:
            db.execute(f"DELETE FROM queue WHERE id IN ({_marks(len(delete))})", delete)
            return []
        if db.in_transaction:
            db.execute("ROLLBACK")  # left open by a group whose callers were told it failed
        db.execute("BEGIN IMMEDIATE")
        try:
            for chunk in _chunks(delete, _MAX_PARAMS):
                db.execute(f"DELETE FROM queue WHERE id IN ({_marks(len(chunk))})", chunk)
            for w in group:
                if w.retry:
                    db.executemany(
                        "UPDATE queue SET attempts = attempts + 1, next_attempt = ?,"
                        " last_error = ? WHERE id = ?",
                        [(w.next_attempt, w.error, i) for i in w.retry],
                    )
            ids: list[int] = []
            if rows:
                # Ids are given here (past the largest, also one another process gave, as
                # this transaction holds the write lock): a multi-row INSERT does not report
                # them.
                first = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM queue").fetchone()[0]
                first = max(first, self._next_id)
                ids = list(range(first, first + len(rows)))
                params = [v for i, r in zip(ids, rows, strict=True) for v in _values(i, r)]
                _insert_many(db, _INSERT_QUEUE, _QUEUE_WIDTH, params)
            if dead:
                params = [v for d in dead for v in _dead_values(d)]
                _insert_many(db, f"INSERT INTO dead ({_DEAD_COLUMNS}) VALUES", 9, params)
            if keys:
                _insert_many(
                    db,
                    "INSERT INTO state (key, expires) VALUES",
                    2,
                    [v for k in keys for v in k],
                    " ON CONFLICT(key) DO UPDATE SET expires = excluded.expires",
                )
            db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (disk full): a ROLLBACK then would raise and
            # hide the error that matters.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if ids:
            self._next_id = ids[-1] + 1
        return ids

    def _insert_alone(self, rows: list[NewRow]) -> list[int] | None:
        """``rows`` in one INSERT, ids from the counter; None when another process (``dlq
        replay``) took one of those ids meanwhile (nothing was written then)."""
        ids = list(range(self._next_id, self._next_id + len(rows)))
        params = [v for i, r in zip(ids, rows, strict=True) for v in _values(i, r)]
        try:
            _insert_many(self._conn, _INSERT_QUEUE, _QUEUE_WIDTH, params)
        except sqlite3.IntegrityError:
            return None
        self._next_id = ids[-1] + 1
        return ids

    def expire_state(self, now: int) -> int:
        return self._conn.execute("DELETE FROM state WHERE expires <= ?", (now,)).rowcount

    # -- reads -----------------------------------------------------------------------------
    def seen_keys(self, keys: list[str], now: int) -> set[str]:
        seen: set[str] = set()
        for chunk in _chunks(keys, 500):
            cursor = self._conn.execute(
                f"SELECT key FROM state WHERE key IN ({_marks(len(chunk))}) AND expires > ?",
                (*chunk, now),
            )
            seen.update(key for (key,) in cursor)
        return seen

    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk in _chunks(ids, 500):
            cursor = self._conn.execute(
                f"SELECT id, body FROM queue WHERE id IN ({_marks(len(chunk))})", chunk
            )
            found.update(cursor)
        return found

    def external_rows(self, force: bool) -> list[tuple[Any, ...]]:
        """Every queued row's schedule fields if another connection wrote since we last looked
        (or ``force``); else nothing."""
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version and not force:
            return []
        self._data_version = version
        return self._conn.execute(_SELECT_META).fetchall()

    def stats(self) -> SpoolStats:
        # The bytes are recounted too: the DLQ commands may have changed the file from outside.
        db = self._conn
        used = db.execute(
            "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM queue)"
            " + (SELECT COALESCE(SUM(bytes), 0) FROM dead)"
        ).fetchone()[0]
        stats = SpoolStats(bytes_used=int(used))
        for table, into in (("queue", stats.queued), ("dead", stats.dead)):
            cursor = db.execute(
                f"SELECT target, COUNT(*), SUM(count), MIN(first_received) FROM {table}"
                " GROUP BY target"
            )
            for target, rows, events, oldest in cursor:
                into[target] = TargetDepth(rows, int(events or 0), oldest)
        return stats

    # -- the dead-letter queue -------------------------------------------------------------
    def dead_rows(self, target: str | None, limit: int, after_id: int) -> list[DeadRow]:
        sql = (
            "SELECT id, target, route, body, count, first_received, attempts, dead_at, reason"
            " FROM dead WHERE id > ?"
        )
        params: tuple[Any, ...] = (after_id,)
        if target:
            sql += " AND target = ?"
            params = (after_id, target)
        sql += " ORDER BY id LIMIT ?"
        return [DeadRow(*row) for row in self._conn.execute(sql, (*params, limit))]

    def replay_dead(self, target: str | None, ids: list[str]) -> tuple[int, set[str]]:
        """Move dead rows back to the queue; returns (events moved, their targets)."""
        where, params = _dead_where(target, ids)
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                f"SELECT target, COALESCE(SUM(count), 0) FROM dead{where} GROUP BY target", params
            ).fetchall()
            db.execute(
                "INSERT INTO queue (target, route, body, count, bytes, first_received, attempts,"
                " next_attempt, last_error) SELECT target, route, body, count, bytes,"
                f" first_received, 0, 0, 'replayed: ' || reason FROM dead{where} ORDER BY id",
                params,
            )
            db.execute(f"DELETE FROM dead{where}", params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return sum(n for _, n in rows), {t for t, _ in rows}

    def purge_dead(self, target: str | None, ids: list[str]) -> tuple[int, int]:
        """Delete dead rows; returns (events, bytes) deleted."""
        where, params = _dead_where(target, ids)
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            events, size = db.execute(
                f"SELECT COALESCE(SUM(count), 0), COALESCE(SUM(bytes), 0) FROM dead{where}",
                params,
            ).fetchone()
            db.execute(f"DELETE FROM dead{where}", params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return int(events), int(size)

    def split_dead(
        self, dead_id: int, requeue: list[NewRow], remainder: list[DeadRow]
    ) -> tuple[bool, int]:
        """:meth:`Spool.split_dead` in one transaction; returns (done, bytes added)."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("SELECT bytes FROM dead WHERE id = ?", (dead_id,)).fetchone()
            if found is None:
                db.execute("ROLLBACK")
                return False, 0
            db.execute("DELETE FROM dead WHERE id = ?", (dead_id,))
            if requeue:  # ids from SQLite: the relay's writer takes the next free ones
                params = [v for r in requeue for v in _values(None, r)]
                _insert_many(db, _INSERT_QUEUE, _QUEUE_WIDTH, params)
            if remainder:
                params = [v for d in remainder for v in _dead_values(d)]
                _insert_many(db, f"INSERT INTO dead ({_DEAD_COLUMNS}) VALUES", 9, params)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        added = sum(len(r.body) for r in requeue) + sum(len(d.body) for d in remainder)
        return True, added - int(found[0])


def _dead_where(target: str | None, ids: Iterable[str]) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if target:
        clauses.append("target = ?")
        params.append(target)
    id_list = [int(i) for i in ids]
    if id_list:
        clauses.append(f"id IN ({','.join('?' * len(id_list))})")
        params.extend(id_list)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _migrate_dead_ids(db: sqlite3.Connection) -> None:
    """Files from before AUTOINCREMENT: copy the dead letters into a table that has it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'dead'").fetchone()
        if "AUTOINCREMENT" not in sql.upper():
            db.execute(_DEAD_TABLE.format(name="dead_ids"))
            db.execute("INSERT INTO dead_ids SELECT * FROM dead")
            db.execute("DROP TABLE dead")
            db.execute("ALTER TABLE dead_ids RENAME TO dead")
            for statement in _SCHEMA.split(";"):
                if "INDEX IF NOT EXISTS dead_" in statement:
                    db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _values(row_id: int | None, r: NewRow) -> tuple[Any, ...]:
    return (
        row_id,
        r.target,
        r.route,
        r.body,
        r.count,
        len(r.body),
        r.first_received_ms,
        r.attempts,
        r.next_attempt_ms,
        r.last_error[:500],
    )


def _dead_values(d: DeadRow) -> tuple[Any, ...]:
    return (
        d.target,
        d.route,
        d.body,
        d.count,
        len(d.body),
        d.first_received_ms,
        d.attempts,
        d.dead_at_ms,
        d.reason,
    )


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def merge_ingest(group: list[Write], keyed: bool = True) -> list[Write]:
    """The requests' writes of a group as one, their small rows merged (rows.merge_rows), in
    the place of the first; the deliverers' writes as they are, and with ``keyed`` False also
    the writes whose key is still to be checked (``unless_seen``). The file side merges what
    it commits; the relay's side merges the same writes again to schedule the rows it was
    given ids for."""
    ingest = [w for w in group if w.ingest and (keyed or not w.unless_seen)]
    if len(ingest) < 2:
        return group
    one = Write(
        merge_rows([row for w in ingest for row in w.rows]),
        True,
        [key for w in ingest for key in w.keys],
        ingest=True,
    )
    first = ingest[0]
    merged = {id(w) for w in ingest}
    return [one if w is first else w for w in group if w is first or id(w) not in merged]


def _without(group: list[Write], left_out: list[int]) -> list[Write]:
    if not left_out:
        return group
    skip = set(left_out)
    return [w for i, w in enumerate(group) if i not in skip]


def _insert_many(
    db: sqlite3.Connection, head: str, width: int, params: list[Any], tail: str = ""
) -> None:
    """``head`` + one ``(?, …)`` per ``width`` params (+ ``tail``), in as few statements as
    the parameter limit allows."""
    row = "(" + _marks(width) + ")"
    per_statement = (_MAX_PARAMS // width) * width
    for start in range(0, len(params), per_statement):
        chunk = params[start : start + per_statement]
        db.execute(f"{head} {','.join([row] * (len(chunk) // width))}{tail}", chunk)
