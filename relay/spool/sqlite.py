"""The embedded spool: one SQLite file in WAL mode, owned by one relay process.

All statements run in one place (one connection, no lock juggling): the spool's writer process
by default, a thread for the DLQ commands (:mod:`relay.spool.file_host`; the statements are
:mod:`relay.spool.sqlite_file`). Every write
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
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..events import now_ms
from ..schema import ByteSize, ConfigError
from .base import GroupCommit, Spool, SpoolFull
from .due import DueIndex, QueuedRow
from .file_host import FileHost, ProcessHost, ThreadHost
from .records import DeadRow, NewRow, SpoolRow, SpoolStats
from .sqlite_file import Committed, Opened, Write, merge_ingest

logger = logging.getLogger(__name__)

# Bodies of rows enqueued by this process are kept until claimed, up to this many bytes: a
# deliverer that keeps up never reads a body back; beyond it, claims read them from the file.
# 8 MiB holds more than a 200 ms linger at 100k events/s; 16 MiB was no faster, only bigger.
_BODY_CACHE_BYTES = 8 * 1024**2
_SYNC_SECONDS = 1.0  # how often a claim checks for rows added by another process
_ROOM_SECONDS = 0.5  # while the disk is full: how often the file side looks for room again


@dataclass(kw_only=True)
class SqliteSpoolConfig:
    backend: Literal["sqlite"] = "sqlite"
    path: str = "./data/spool.db"
    max_size: ByteSize = ByteSize(1024**3)
    # full: fsync every group commit (survives power loss); normal: survives a crash of the
    # relay (kill -9) but a power cut may lose the last commits.
    synchronous: Literal["full", "normal"] = "full"
    # process: the statements run in a writer process of their own, so a commit never waits
    # for the event loop's GIL (the daemon's default); thread: on a thread of the relay (one
    # process fewer, slower commits under load; the DLQ commands always use it).
    writer: Literal["process", "thread"] = "process"

    def __post_init__(self) -> None:
        # A directory here passed every check, then `run` failed with "Is a directory" and the
        # DLQ and spool commands said the file did not exist: refuse it once, for all of them.
        if os.path.isdir(self.path):
            example = os.path.join(self.path, "spool.db")
            raise ConfigError("path", f"{self.path} is a directory; name a file, e.g. {example}")
        reserve = f"{self.path}.reserve"
        if os.path.isdir(reserve):
            raise ConfigError(
                "path",
                f"{reserve} is a directory; the relay keeps its disk-full reserve file there",
            )


class SqliteSpool(Spool):
    """Spool on SQLite; see the module docstring for the concurrency model."""

    checks_in_commit = True

    def __init__(self, config: SqliteSpoolConfig, lock: bool = True) -> None:
        super().__init__()
        self.config = config
        host = ProcessHost if lock and config.writer == "process" else ThreadHost
        self._host: FileHost = host(config.path, config.synchronous, lock)
        self._restarting = asyncio.Lock()
        self._bytes = 0
        self._group_commit = GroupCommit(self._commit_group)
        self._due = DueIndex()
        self._bodies: dict[int, bytes] = {}
        self._bodies_size = 0
        self._synced_at = 0.0
        self._max_id = 0  # the highest row id this relay has known (see _take_in)
        # Why the file side refuses new events ("" = it takes them): the disk is full. Deliveries
        # go on meanwhile (relay/spool/room.py), and a task looks for room again.
        self._disk_full = ""
        self._room_task: asyncio.Task[None] | None = None
        self._closing = False  # close() began: a writer that is gone stays gone

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the writer and open the file (also to replace a writer that died); a writer
        whose open failed is stopped again, so the next call starts a new one instead of
        using a writer with no file."""
        self._closing = False
        await self._host.start()
        try:
            self._take_in(await self._host.call("open", self._max_id + 1))
        except BaseException:
            await self._host.stop()
            raise

    def _take_in(self, opened: Opened) -> None:
        """The file's rows join the schedule (leases are kept in memory only: a previous
        process's claims are due again now); rows already known are left as they are.

        After a writer restart, a known row the file no longer holds was deleted by a commit
        whose answer was lost with the old writer (an ack): it leaves the schedule, and new
        ids start above every id known here, so no id names two rows."""
        self._bytes = opened.stats.bytes_used
        self._note_room(opened.full)
        in_file = {row[0] for row in opened.rows}
        self._removed([row_id for row_id in list(self._due.rows) if row_id not in in_file])
        targets = set()
        for row in opened.rows:
            self._max_id = max(self._max_id, row[0])
            if self._due.add(QueuedRow(*row)):
                targets.add(row[1])
        self._notify(targets)

    async def close(self, grace: float | None = None) -> None:
        self._closing = True
        await self._group_commit.idle(grace)
        if self._room_task is not None:
            self._room_task.cancel()
            await asyncio.gather(self._room_task, return_exceptions=True)
            self._room_task = None
        await self._host.stop()

    def _note_room(self, full: str) -> None:
        """Take in the file side's word on room; while the disk is full, look again often."""
        if full and not self._disk_full:
            logger.error(
                "spool: the disk of %s is full: new events are answered 503 until there is"
                " room again; deliveries go on and free it",
                self.config.path,
            )
            if self._room_task is None or self._room_task.done():
                self._room_task = asyncio.create_task(self._look_for_room(), name="spool-room")
        elif self._disk_full and not full:
            logger.warning(
                "spool: the disk of %s has room again; taking new events", self.config.path
            )
        self._disk_full = full

    async def _look_for_room(self) -> None:
        while self._disk_full:
            await asyncio.sleep(_ROOM_SECONDS)
            try:
                self._note_room(await self._call("room"))
            except Exception:
                logger.exception("spool: looking for room on the disk failed")

    async def _call(self, operation: str, *args: Any) -> Any:
        """``operation`` on the file; a writer process that died is started again first (its
        calls under way failed: their callers answered 503 or will retry)."""
        if not self._host.running:
            if self._closing:  # a late write of a shutdown: refused (503), no new writer
                raise RuntimeError("spool is not open")
            async with self._restarting:
                if not self._host.running:
                    await self._host.stop()
                    await self.open()
                    logger.warning("spool: a new writer process took over the file")
        return await self._host.call(operation, *args)

    # -- ingest ----------------------------------------------------------------------------
    def is_full(self) -> bool:
        return self._bytes >= self.config.max_size or bool(self._disk_full)

    def write_problem(self) -> tuple[str, str]:
        if self._disk_full:
            return "disk_full", f"spool is full: the disk of {self.config.path} has no room"
        return super().write_problem()

    async def enqueue(
        self, rows: Sequence[NewRow], state_keys: Sequence[tuple[str, int]] = ()
    ) -> None:
        if not rows and not state_keys:
            return
        if self.is_full():
            raise SpoolFull(f"spool is over its size limit of {self.config.max_size} bytes")
        await self._submit(Write(list(rows), True, list(state_keys), ingest=True))

    async def enqueue_unless_seen(
        self,
        key: str,
        now_ms: int,
        rows: Sequence[NewRow],
        state_keys: Sequence[tuple[str, int]] = (),
    ) -> bool:
        """The look-up runs in the commit itself: one round trip to the writer, not two."""
        if self.is_full():
            raise SpoolFull(f"spool is over its size limit of {self.config.max_size} bytes")
        write = Write(list(rows), True, list(state_keys), ingest=True, unless_seen=key, now=now_ms)
        await self._submit(write)
        return not write.duplicate

    async def _submit(self, write: Write) -> None:
        await self._group_commit.submit(write)
        if write.refused:
            raise SpoolFull(f"the disk of {self.config.path} has no room for new events")

    async def _commit_group(self, group: list[Write]) -> None:
        """One transaction for the group (where the file lives), then the in-memory schedule.
        Writes refused for a full disk or left out as duplicates are marked so; the rest were
        committed, their rows merged as the file side merged them.

        The writes with no key to check are merged here already: fewer objects to send."""
        sent = merge_ingest(group, keyed=False)
        result: Committed = await self._call("write_group", sent)
        self._note_room(result.full)
        for index in result.refused:
            sent[index].refused = True
        for index in result.duplicates:
            sent[index].duplicate = True
        if result.refused and len(sent) < len(group):
            known = {id(w) for w in group}
            if any(w.refused for w in sent if id(w) not in known):  # the merged write
                for w in group:  # each request it stands for hears of the refusal
                    w.refused = w.refused or (w.ingest and not w.unless_seen)
        written = merge_ingest([w for w in sent if not (w.refused or w.duplicate)])
        try:
            self._committed(written, result.ids)
        except Exception:
            logger.exception("spool: updating the schedule after a commit failed")

    def _committed(self, group: list[Write], ids: list[int]) -> None:
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
            self._max_id = max(self._max_id, row_id)
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
        return await self._call("seen_keys", list(keys), now_ms)

    async def expire_state(self, now: int) -> int:
        """Delete expired dedup / first-exposure keys; returns how many."""
        return await self._call("expire_state", now)

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
                bodies.update(await self._call("read_bodies", missing))
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

    async def _sync(self, force: bool = False) -> None:
        """Take in rows another process added (``dlq replay``) since we last looked.

        The byte count is left alone: a replay moves bytes from the dead letters to the queue,
        and the periodic :meth:`stats` recounts both anyway."""
        self._synced_at = time.monotonic()
        for row in await self._call("external_rows", force):
            if self._due.add(QueuedRow(*row)):
                self._notify([row[1]])

    async def ack(self, rows: Sequence[SpoolRow]) -> None:
        await self.settle(rows, (), ())

    async def retry(self, rows: Sequence[SpoolRow], next_attempt_ms: int, error: str) -> None:
        ids = [int(r.id) for r in rows]
        await self._group_commit.submit(
            Write(retry=ids, next_attempt=next_attempt_ms, error=error[:500])
        )

    async def settle(
        self, rows: Sequence[SpoolRow], requeue: Sequence[NewRow], dead: Sequence[DeadRow]
    ) -> None:
        ids = [int(r.id) for r in rows]
        await self._group_commit.submit(Write(list(requeue), delete=ids, dead=list(dead)))

    # -- observation and the dead-letter queue ---------------------------------------------
    async def stats(self) -> SpoolStats:
        stats: SpoolStats = await self._call("stats")
        # Recounted from the file: the DLQ commands may have changed it from outside.
        self._bytes = stats.bytes_used
        return stats

    async def dead_rows(
        self, target: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadRow]:
        return await self._call("dead_rows", target, limit, after_id)

    async def replay_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        moved, targets = await self._call("replay_dead", target, list(ids))
        await self._sync(force=True)  # the replayed rows join the schedule
        self._notify(targets)
        return moved

    async def purge_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        events, size = await self._call("purge_dead", target, list(ids))
        self._bytes -= size
        return events

    async def split_dead(
        self, dead_id: int | str, requeue: Sequence[NewRow], remainder: Sequence[DeadRow]
    ) -> bool:
        done, added = await self._call("split_dead", int(dead_id), list(requeue), list(remainder))
        if done:
            self._bytes += added
            if requeue:
                await self._sync(force=True)  # the requeued rows join the schedule
                self._notify({r.target for r in requeue})
        return bool(done)
