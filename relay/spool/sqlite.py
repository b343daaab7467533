"""The embedded spool: one SQLite file in WAL mode, owned by one relay process.

All statements run on one dedicated thread (one connection, no lock juggling). Ingest requests
that arrive while a commit is running are gathered and written together in the next transaction
(group commit), so the fsync cost is paid per group of requests, not per request. An exclusive
lock file keeps a second process from sharing the spool by mistake; several replicas share a
Redis spool instead.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..events import now_ms
from ..schema import ByteSize
from .base import (
    DeadRow,
    NewRow,
    Spool,
    SpoolFull,
    SpoolRow,
    SpoolStats,
    TargetDepth,
)

logger = logging.getLogger(__name__)

_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS queue_due ON queue (target, next_attempt);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY,
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
CREATE INDEX IF NOT EXISTS dead_target ON dead (target, id);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
"""

_CLAIM_SCAN = 500  # rows looked at per claim; enough for 1000-event batches of small rows


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
        self._pending: list[tuple[Sequence[NewRow], Sequence[tuple[str, int]]]] = []
        self._pending_futures: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

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
        db.executescript(_SCHEMA)
        if self._lock:
            # We own the file: leases of a previous process are void, its claims are due now.
            db.execute("UPDATE queue SET lease_until = 0 WHERE lease_until > 0")
        self._db = db
        self._stats()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
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
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, state_keys))
        self._pending_futures.append(future)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop())
        await future

    async def _flush_loop(self) -> None:
        """Commit everything pending in one transaction, repeat while more arrived meanwhile."""
        try:
            while self._pending:
                batch, futures = self._pending, self._pending_futures
                self._pending, self._pending_futures = [], []
                try:
                    added = await self._run(self._write_group, batch)
                except Exception as exc:
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._bytes += added
                for future in futures:
                    if not future.done():
                        future.set_result(None)
                self._notify({row.target for rows, _ in batch for row in rows})
        finally:
            self._flusher = None

    def _write_group(self, batch: list[tuple[Sequence[NewRow], Sequence[tuple[str, int]]]]) -> int:
        db = self._conn
        added = 0
        values = []
        keys: list[tuple[str, int]] = []
        for rows, state_keys in batch:
            for r in rows:
                size = len(r.body)
                added += size
                values.append(
                    (
                        r.target,
                        r.route,
                        r.body,
                        r.count,
                        size,
                        r.first_received_ms,
                        r.attempts,
                        r.next_attempt_ms,
                        r.last_error,
                    )
                )
            keys.extend(state_keys)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO queue (target, route, body, count, bytes, first_received, attempts,"
                " next_attempt, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            if keys:
                db.executemany(
                    "INSERT INTO state (key, expires) VALUES (?, ?) ON CONFLICT(key)"
                    " DO UPDATE SET expires = excluded.expires",
                    keys,
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

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
        return await self._run(self._claim, target, max_events, max_bytes, lease_s)

    def _claim(
        self, target: str, max_events: int, max_bytes: int, lease_s: float
    ) -> list[SpoolRow]:
        now = now_ms()
        db = self._conn
        cursor = db.execute(
            "SELECT id, route, body, count, first_received, attempts FROM queue"
            " WHERE target = ? AND next_attempt <= ? AND lease_until <= ?"
            " ORDER BY id LIMIT ?",
            (target, now, now, _CLAIM_SCAN),
        )
        rows: list[SpoolRow] = []
        events = size = 0
        for row_id, route, body, count, first, attempts in cursor:
            if rows and (events + count > max_events or size + len(body) > max_bytes):
                break
            rows.append(SpoolRow(row_id, target, route, body, count, first, attempts))
            events += count
            size += len(body)
        cursor.close()
        if rows:
            db.executemany(
                "UPDATE queue SET lease_until = ? WHERE id = ?",
                [(now + int(lease_s * 1000), r.id) for r in rows],
            )
        return rows

    async def ack(self, rows: Sequence[SpoolRow]) -> None:
        await self.settle(rows, (), ())

    async def retry(self, rows: Sequence[SpoolRow], next_attempt_ms: int, error: str) -> None:
        await self._run(self._retry, [r.id for r in rows], next_attempt_ms, error[:500])

    def _retry(self, ids: list[int], next_attempt: int, error: str) -> None:
        self._conn.executemany(
            "UPDATE queue SET attempts = attempts + 1, next_attempt = ?, lease_until = 0,"
            " last_error = ? WHERE id = ?",
            [(next_attempt, error, i) for i in ids],
        )

    async def settle(
        self, rows: Sequence[SpoolRow], requeue: Sequence[NewRow], dead: Sequence[DeadRow]
    ) -> None:
        delta = await self._run(self._settle, list(rows), list(requeue), list(dead))
        self._bytes += delta
        if requeue:
            self._notify({r.target for r in requeue})

    def _settle(self, rows: list[SpoolRow], requeue: list[NewRow], dead: list[DeadRow]) -> int:
        db = self._conn
        delta = sum(len(r.body) for r in requeue) + sum(len(d.body) for d in dead)
        delta -= sum(len(r.body) for r in rows)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM queue WHERE id = ?", [(r.id,) for r in rows])
            if requeue:
                db.executemany(
                    "INSERT INTO queue (target, route, body, count, bytes, first_received,"
                    " attempts, next_attempt, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
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
                        for r in requeue
                    ],
                )
            if dead:
                db.executemany(
                    "INSERT INTO dead (target, route, body, count, bytes, first_received,"
                    " attempts, dead_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
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
                        for d in dead
                    ],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return delta

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
