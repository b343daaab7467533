"""The embedded spool: one SQLite file in WAL mode, owned by one relay process.

All statements run on one dedicated thread (one connection, no lock juggling). Every write
(ingest's rows, the deliverers' acks, retries and settles) that arrives while a commit is running
is gathered and written in the next transaction (group commit), so the fsync is paid per group,
not per request or per ack. An exclusive lock file keeps a second process from sharing the spool
by mistake; several replicas share a Redis spool instead.

Because the process owns the file, the schedule (which rows are due, which are leased) is kept
in memory (:mod:`relay.spool.due`) and claims do not query the table; recently enqueued bodies
are kept too (bounded), so a deliverer that keeps up never reads a body back. Rows another
process adds (``statsig-relay dlq replay``) are noticed through ``PRAGMA data_version``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..events import now_ms
from ..schema import ByteSize
from .base import (
    DeadRow,
    GroupCommit,
    NewRow,
    Spool,
    SpoolFull,
    SpoolRow,
    SpoolStats,
    TargetDepth,
)
from .due import DueIndex, QueuedRow

logger = logging.getLogger(__name__)

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
# Bodies of rows enqueued by this process are kept until claimed, up to this many bytes: a
# deliverer that keeps up never reads a body back; beyond it, claims read them from the file.
# 8 MiB holds more than a 200 ms linger at 100k events/s; 16 MiB was no faster, only bigger.
_BODY_CACHE_BYTES = 8 * 1024**2
_SYNC_SECONDS = 1.0  # how often a claim checks for rows added by another process
_MAX_PARAMS = 30_000  # bound parameters per statement (SQLite allows 32766)


@dataclass(slots=True, eq=False)
class _Write:
    """One caller's share of a group commit."""

    rows: list[NewRow] = field(default_factory=list)  # to queue
    cache: bool = False  # keep the bodies of ``rows`` for claims
    keys: list[tuple[str, int]] = field(default_factory=list)  # dedup keys and expiry
    delete: list[int] = field(default_factory=list)  # queue ids
    retry: list[int] = field(default_factory=list)  # queue ids
    next_attempt: int = 0  # of the ``retry`` ids
    error: str = ""
    dead: list[DeadRow] = field(default_factory=list)


@dataclass(kw_only=True)
class SqliteSpoolConfig:
    backend: Literal["sqlite"] = "sqlite"
    path: str = "./data/spool.db"
    max_size: ByteSize = ByteSize(1024**3)
    # full: fsync every group commit (survives power loss); normal: survives a crash of the
    # relay (kill -9) but a power cut may lose the last commits.
    synchronous: Literal["full", "normal"] = "full"


class SqliteSpool(Spool):
    """Spool on SQLite; see the module docstring for the concurrency model."""

    def __init__(self, config: SqliteSpoolConfig, lock: bool = True) -> None:
        super().__init__()
        self.config = config
        self._lock = lock
        self._path = Path(config.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-sqlite")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._bytes = 0
        self._group_commit = GroupCommit(self._commit_group)
        self._due = DueIndex()
        self._bodies: dict[int, bytes] = {}
        self._bodies_size = 0
        self._data_version = 0
        self._synced_at = 0.0
        # The id the next queued row gets (only the SQLite thread reads or writes it), so an
        # insert needs no query for its ids; 0 until the file is open. Not every id is below it:
        # a dead-letter replay in this process takes SQLite's MAX(id) + 1, and a clash makes
        # the one-statement insert fail whole and fall back to the transaction.
        self._next_id = 0

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._lock:
            self._take_lock()
        await self._run(self._open_db)

    def _take_lock(self) -> None:
        lock_path = str(self._path) + ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"spool {self._path} is in use by another relay process "
                "(use the redis backend to run several replicas)"
            ) from None
        self._lock_fd = fd

    def _open_db(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        # Checkpoint every ~16 MiB of WAL instead of 4: rows live briefly, so pages written and
        # freed within one window are copied to the database once or not at all (bench flat
        # out: +7% events/s); the file shrinks back to 64 MiB at most after a checkpoint.
        db.execute("PRAGMA wal_autocheckpoint=4000")
        db.execute(f"PRAGMA journal_size_limit={64 * 1024**2}")
        db.executescript(_SCHEMA)
        _migrate_dead_ids(db)
        self._db = db
        self._stats()
        # Leases are kept in memory (a previous process's claims are due again now); the
        # lease_until column stays for files written by older versions.
        self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
        for row in db.execute(_SELECT_META):
            self._due.add(QueuedRow(*row))
        self._next_id = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM queue").fetchone()[0]

    async def close(self) -> None:
        await self._group_commit.idle()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("spool is not open")
        return self._db

    # -- ingest ----------------------------------------------------------------------------
    def is_full(self) -> bool:
        return self._bytes >= self.config.max_size

    async def enqueue(
        self, rows: Sequence[NewRow], state_keys: Sequence[tuple[str, int]] = ()
    ) -> None:
        if not rows and not state_keys:
            return
        if self.is_full():
            raise SpoolFull(f"spool is over its size limit of {self.config.max_size} bytes")
        await self._group_commit.submit(_Write(list(rows), True, list(state_keys)))

    async def _commit_group(self, group: list[_Write]) -> None:
        """One transaction for the group (on the SQLite thread), then the in-memory schedule."""
        ids = await self._run(self._write_group, group)
        try:
            self._committed(group, ids)
        except Exception:
            logger.exception("spool: updating the schedule after a commit failed")

    def _write_group(self, group: list[_Write]) -> list[int]:
        """One transaction for the whole group, a few statements whatever its size. Returns
        the ids given to the inserted rows, in order.

        Each statement costs this thread a round trip for the GIL, which is slow to get back
        while the event loop is busy (up to the 5 ms switch interval each): at 8 connections a
        commit of four rows took 3 ms here, against 0.55 ms without a busy loop. So the common
        groups (only
        new rows: ingest; only deletions: acks) are one statement in autocommit mode, which is
        its own transaction; the rest take an explicit one.
        """
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

    def _committed(self, group: list[_Write], ids: list[int]) -> None:
        """Bring the schedule in line with a commit: removals first (SQLite may have given a
        deleted id to a new row), then retries, then the new rows; wake the deliverers."""
        for w in group:
            if w.delete:
                self._removed(w.delete)
            self._bytes += sum(len(d.body) for d in w.dead)
        woken: set[str] = set()
        for w in group:
            for row_id in w.retry:
                self._due.retry(row_id, w.next_attempt)
                row = self._due.rows.get(row_id)
                if row is not None:
                    woken.add(row.target)
        start = 0
        for w in group:
            if w.rows:
                self._added(w.rows, ids[start : start + len(w.rows)], w.cache)
                start += len(w.rows)
                woken.update(r.target for r in w.rows)
        self._notify(woken)

    def _added(self, rows: list[NewRow], ids: list[int], cache: bool) -> None:
        """Committed rows join the schedule (and their bodies the cache)."""
        for r, row_id in zip(rows, ids, strict=True):
            size = len(r.body)
            queued = QueuedRow(
                row_id,
                r.target,
                r.route,
                r.count,
                size,
                r.first_received_ms,
                r.attempts,
                r.next_attempt_ms,
            )
            if not self._due.add(queued):
                continue  # already loaded by a sync with the file
            self._bytes += size
            if cache and self._bodies_size + size <= _BODY_CACHE_BYTES:
                self._bodies[row_id] = r.body
                self._bodies_size += size

    def _removed(self, ids: Iterable[int]) -> None:
        for row_id in ids:
            row = self._due.remove(row_id)
            if row is not None:
                self._bytes -= row.size
            body = self._bodies.pop(row_id, None)
            if body is not None:
                self._bodies_size -= len(body)

    async def seen_keys(self, keys: Sequence[str], now_ms: int) -> set[str]:
        if not keys:
            return set()
        return await self._run(self._seen_keys, list(keys), now_ms)

    def _seen_keys(self, keys: list[str], now: int) -> set[str]:
        seen: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            cursor = self._conn.execute(
                f"SELECT key FROM state WHERE key IN ({marks}) AND expires > ?", (*chunk, now)
            )
            seen.update(key for (key,) in cursor)
        return seen

    async def expire_state(self, now: int) -> int:
        """Delete expired dedup / first-exposure keys; returns how many."""
        return await self._run(self._expire_state, now)

    def _expire_state(self, now: int) -> int:
        return self._conn.execute("DELETE FROM state WHERE expires <= ?", (now,)).rowcount

    # -- delivery --------------------------------------------------------------------------
    async def claim(
        self, target: str, max_events: int, max_bytes: int, lease_s: float
    ) -> list[SpoolRow]:
        if time.monotonic() - self._synced_at >= _SYNC_SECONDS:
            await self._sync()
        picked = self._due.claim(target, max_events, max_bytes, int(lease_s * 1000), now_ms())
        if not picked:
            return []
        bodies: dict[int, bytes] = {}
        for row in picked:
            body = self._bodies.pop(row.id, None)
            if body is not None:
                self._bodies_size -= len(body)
                bodies[row.id] = body
        missing = [row.id for row in picked if row.id not in bodies]
        if missing:
            try:
                bodies.update(await self._run(self._read_bodies, missing))
            except BaseException:
                for row in picked:
                    self._due.release(row)
                raise
        claimed = []
        for row in picked:
            body = bodies.get(row.id)
            if body is None:  # deleted by another process meanwhile
                self._removed([row.id])
                continue
            claimed.append(
                SpoolRow(
                    row.id,
                    row.target,
                    row.route,
                    body,
                    row.count,
                    row.first_received,
                    row.attempts,
                    row.lease_until,
                )
            )
        return claimed

    async def renew(self, rows: Sequence[SpoolRow], lease_s: float) -> int:
        lease_until = now_ms() + int(lease_s * 1000)
        renewed = 0
        for row in rows:
            if self._due.renew(int(row.id), row.lease_until_ms, lease_until):
                row.lease_until_ms = lease_until
                renewed += 1
        return renewed

    def _read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            cursor = self._conn.execute(f"SELECT id, body FROM queue WHERE id IN ({marks})", chunk)
            found.update(cursor)
        return found

    async def _sync(self, force: bool = False) -> None:
        """Take in rows another process added (``dlq replay``) since we last looked.

        The byte count is left alone: a replay moves bytes from the dead letters to the queue,
        and the periodic :meth:`stats` recounts both anyway."""
        self._synced_at = time.monotonic()
        for row in await self._run(self._external_rows, force):
            if self._due.add(QueuedRow(*row)):
                self._notify([row[1]])

    def _external_rows(self, force: bool) -> list[tuple[Any, ...]]:
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version and not force:
            return []
        self._data_version = version
        return self._conn.execute(_SELECT_META).fetchall()

    async def ack(self, rows: Sequence[SpoolRow]) -> None:
        await self.settle(rows, (), ())

    async def retry(self, rows: Sequence[SpoolRow], next_attempt_ms: int, error: str) -> None:
        ids = [int(r.id) for r in rows]
        await self._group_commit.submit(
            _Write(retry=ids, next_attempt=next_attempt_ms, error=error[:500])
        )

    async def settle(
        self, rows: Sequence[SpoolRow], requeue: Sequence[NewRow], dead: Sequence[DeadRow]
    ) -> None:
        ids = [int(r.id) for r in rows]
        await self._group_commit.submit(_Write(list(requeue), delete=ids, dead=list(dead)))

    # -- observation and the dead-letter queue ---------------------------------------------
    async def stats(self) -> SpoolStats:
        return await self._run(self._stats)

    def _stats(self) -> SpoolStats:
        # Recount the bytes too: the DLQ commands may have changed the file from outside.
        self._bytes = int(
            self._conn.execute(
                "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM queue)"
                " + (SELECT COALESCE(SUM(bytes), 0) FROM dead)"
            ).fetchone()[0]
        )
        stats = SpoolStats(bytes_used=self._bytes)
        for table, into in (("queue", stats.queued), ("dead", stats.dead)):
            cursor = self._conn.execute(
                f"SELECT target, COUNT(*), SUM(count), MIN(first_received) FROM {table}"
                " GROUP BY target"
            )
            for target, rows, events, oldest in cursor:
                into[target] = TargetDepth(rows, int(events or 0), oldest)
        return stats

    async def dead_rows(self, target: str | None = None, limit: int = 100) -> list[DeadRow]:
        return await self._run(self._dead_rows, target, limit)

    def _dead_rows(self, target: str | None, limit: int) -> list[DeadRow]:
        sql = (
            "SELECT id, target, route, body, count, first_received, attempts, dead_at, reason"
            " FROM dead"
        )
        params: tuple[Any, ...] = ()
        if target:
            sql += " WHERE target = ?"
            params = (target,)
        sql += " ORDER BY id LIMIT ?"
        return [DeadRow(*row) for row in self._conn.execute(sql, (*params, limit))]

    def _dead_where(self, target: str | None, ids: Iterable[str]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if target:
            clauses.append("target = ?")
            params.append(target)
        id_list = [int(i) for i in ids]
        if id_list:
            clauses.append(f"id IN ({','.join('?' * len(id_list))})")
            params.extend(id_list)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    async def replay_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        moved, targets = await self._run(self._replay_dead, target, list(ids))
        await self._sync(force=True)  # the replayed rows join the schedule
        self._notify(targets)
        return moved

    def _replay_dead(self, target: str | None, ids: list[str]) -> tuple[int, set[str]]:
        where, params = self._dead_where(target, ids)
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
            db.execute("ROLLBACK")
            raise
        return sum(n for _, n in rows), {t for t, _ in rows}

    async def purge_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        events, size = await self._run(self._purge_dead, target, list(ids))
        self._bytes -= size
        return events

    def _purge_dead(self, target: str | None, ids: list[str]) -> tuple[int, int]:
        where, params = self._dead_where(target, ids)
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
            db.execute("ROLLBACK")
            raise
        return int(events), int(size)


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


def _values(row_id: int, r: NewRow) -> tuple[Any, ...]:
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
