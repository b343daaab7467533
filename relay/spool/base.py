"""The spool: the durable queue between ingest and delivery.

Contract every backend keeps:

* A row is a batch of events for one target (an orjson-encoded JSON array), never one row per
  event, with its attempt count, next-attempt time, claim lease and first receive time.
* :meth:`Spool.enqueue` returns only after the rows are durable; concurrent callers share one
  commit (group commit). The sender's 2xx is sent after it returns.
* A claimed row is leased: if the claimer dies, the lease runs out and the row is claimed again
  (at-least-once). Every claimed row ends in exactly one of ack, retry, settle or dead-letter.
* Dedup / first-exposure keys (:meth:`Spool.seen_keys`) live beside the rows and are written in
  the same commit as the rows they let through, so a crash never drops an unacknowledged event.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

from .records import DeadRow, NewRow, SpoolRow, SpoolStats, dead_from

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
W = TypeVar("W")


class GroupCall(Generic[I, R]):
    """Concurrent calls share one round trip: its cost (an fsync, an IPC to the writer, a
    network hop) is paid per group of callers, not per caller.

    Each caller adds its item and waits; one task hands everything pending to ``call`` in one
    go (which answers one result per item, in order), and repeats while more arrived
    meanwhile. A failed call fails every caller in it.
    """

    def __init__(self, call: Callable[[list[I]], Awaitable[Sequence[R]]]) -> None:
        self._call = call
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """Return ``item``'s result once its group's call is done (or raise why it failed)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await future

    async def idle(self, timeout: float | None = None) -> None:
        """Wait for the call under way, if any (before closing the store), at most
        ``timeout`` seconds: a stop does not wait past its deadline for a store that does not
        answer (its callers' requests go unanswered, so nothing is acknowledged)."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def _run(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending, []
                try:
                    results = await self._call([item for item, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None


class GroupCommit(GroupCall[W, None]):
    """Concurrent writes share one commit (see :class:`GroupCall`)."""

    def __init__(self, write: Callable[[list[W]], Awaitable[None]]) -> None:
        async def call(items: list[W]) -> list[None]:
            await write(items)
            return [None] * len(items)

        super().__init__(call)


class SpoolFull(Exception):
    """The spool is over its size limit; ingest answers 503 with Retry-After."""


class Spool(ABC):
    """The interface the router, the deliverers and the DLQ commands use."""

    # How long a claim holds its rows unless renewed. A deliverer renews the lease of a batch
    # while it is being sent, so a slow send is never taken over and sent twice.
    lease_s: float = 120.0
    # enqueue_unless_seen checks its key in the commit (one round trip, not two).
    checks_in_commit: bool = False

    def __init__(self) -> None:
        self._wakeups: dict[str, asyncio.Event] = {}

    # -- lifecycle -------------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self, grace: float | None = None) -> None:
        """Close the store, waiting at most ``grace`` seconds for a commit under way."""

    # -- ingest ----------------------------------------------------------------------------
    @abstractmethod
    def is_full(self) -> bool:
        """True when ingest must refuse new events (over ``max_size``)."""

    def write_problem(self) -> tuple[str, str]:
        """Why ingest refuses new events now, as (reason for the metric's label, text for
        /readyz); ("", "") when it takes them."""
        if self.is_full():
            return "size_limit", "spool is full (over spool.max_size)"
        return "", ""

    @abstractmethod
    async def enqueue(
        self, rows: Sequence[NewRow], state_keys: Sequence[tuple[str, int]] = ()
    ) -> None:
        """Durably add rows (and dedup keys with their expiry in epoch ms) in one commit.

        Raises :class:`SpoolFull` when over the size limit.
        """

    async def enqueue_unless_seen(
        self,
        key: str,
        now_ms: int,
        rows: Sequence[NewRow],
        state_keys: Sequence[tuple[str, int]] = (),
    ) -> bool:
        """:meth:`enqueue`, unless ``key`` is stored and unexpired at ``now_ms``: then nothing
        is written and the answer is False (a duplicate). ``state_keys`` should hold ``key``.
        The caller keeps concurrent requests with the same key apart (relay/state.py).

        A spool that checks the key in the commit itself sets :attr:`checks_in_commit`; here,
        a look-up and then the commit (ingest groups look-ups through its ledger instead)."""
        if await self.seen_keys([key], now_ms):
            return False
        await self.enqueue(rows, state_keys)
        return True

    @abstractmethod
    async def seen_keys(self, keys: Sequence[str], now_ms: int) -> set[str]:
        """Which of ``keys`` are stored and not yet expired."""

    # -- delivery --------------------------------------------------------------------------
    @abstractmethod
    async def claim(
        self, target: str, max_events: int, max_bytes: int, lease_s: float
    ) -> list[SpoolRow]:
        """Lease due rows of ``target`` in receive order, up to the limits (at least one row)."""

    @abstractmethod
    async def renew(self, rows: Sequence[SpoolRow], lease_s: float) -> int:
        """Extend the lease of claimed rows that are still held by this claim (their
        ``lease_until_ms`` unchanged in the store); update those rows' ``lease_until_ms`` and
        return how many were renewed. A row whose lease ran out and was claimed again, or that
        was settled meanwhile, is left alone."""

    async def release(self, rows: Sequence[SpoolRow]) -> None:
        """Give claimed rows back unsent, due at once and no attempt counted (a deliverer that
        claimed them as a stop began): a lease that lapses now, so a new deliverer (after a
        reload) or another replica need not wait the lease out."""
        await self.renew(rows, 0)

    @abstractmethod
    async def ack(self, rows: Sequence[SpoolRow]) -> None:
        """Delivered: remove the rows."""

    @abstractmethod
    async def retry(self, rows: Sequence[SpoolRow], next_attempt_ms: int, error: str) -> None:
        """Not delivered yet: count an attempt, release the lease, try again later."""

    @abstractmethod
    async def settle(
        self, rows: Sequence[SpoolRow], requeue: Sequence[NewRow], dead: Sequence[DeadRow]
    ) -> None:
        """Replace claimed rows atomically by what is left to retry and what is dead."""

    async def dead_letter(
        self, rows: Sequence[SpoolRow], reason: str, now_ms: int, attempts: int | None = None
    ) -> None:
        await self.settle(
            rows, (), [dead_from(row, reason, now_ms, attempts=attempts) for row in rows]
        )

    # -- observation and the dead-letter queue ---------------------------------------------
    @abstractmethod
    async def stats(self) -> SpoolStats: ...

    @abstractmethod
    async def dead_rows(
        self, target: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadRow]:
        """Up to ``limit`` dead rows with an id over ``after_id``, in id order (a page: the DLQ
        commands read a large queue page by page)."""

    @abstractmethod
    async def replay_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        """Move dead rows back to the queue (attempts reset); returns the events moved."""

    @abstractmethod
    async def purge_dead(self, target: str | None = None, ids: Iterable[str] = ()) -> int:
        """Delete dead rows for good; returns the events deleted."""

    @abstractmethod
    async def split_dead(
        self, dead_id: int | str, requeue: Sequence[NewRow], remainder: Sequence[DeadRow]
    ) -> bool:
        """Replace one dead row by ``remainder`` (the events that stay dead) and queue
        ``requeue`` (the events taken back), in one commit, so a crash never leaves an event
        both queued and dead, or dead twice. False, with nothing written, when the row is gone
        (another DLQ command took it)."""

    # -- wake-ups: deliverers sleep until ingest commits rows for their target --------------
    def wakeup(self, target: str) -> asyncio.Event:
        event = self._wakeups.get(target)
        if event is None:
            event = self._wakeups[target] = asyncio.Event()
        return event

    def _notify(self, targets: Iterable[str]) -> None:
        for target in targets:
            event = self._wakeups.get(target)
            if event is not None:
                event.set()
