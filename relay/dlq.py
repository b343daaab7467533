"""Dead-letter queue tooling: select dead rows by filters, then export, replay or purge them.

Runs against the spool while the daemon runs (no lock taken). Filters narrow to events, not
only rows: when ``--event`` takes some of a row's events, replay and purge split the row and
leave the other events dead (the remainder gets a new id; ids are never reused). A split
writes the new rows before it deletes the old one, so a crash in between duplicates dead
letters rather than losing them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import orjson

from .schema import ConfigError, parse_duration
from .spool.base import Spool
from .spool.records import DeadRow, NewRow

PAGE_ROWS = 500  # dead rows read per query


class DlqError(Exception):
    """An operator error: unknown target or id, a purge without a filter; exits non-zero."""


@dataclass(frozen=True, kw_only=True)
class DeadFilter:
    """Which dead letters a command acts on; every given filter must match."""

    target: str | None = None
    ids: tuple[str, ...] = ()
    event: str | None = None  # glob on eventName
    reason: str | None = None  # glob, or a prefix of the reason
    route: str | None = None
    since_ms: int | None = None  # dead-lettered at or after
    until_ms: int | None = None  # dead-lettered before

    @property
    def narrows(self) -> bool:
        return bool(self.target or self.ids or self.event or self.reason or self.route) or (
            self.since_ms is not None or self.until_ms is not None
        )

    def takes_row(self, row: DeadRow) -> bool:
        if self.ids and str(row.id) not in self.ids:
            return False
        if self.route is not None and row.route != self.route:
            return False
        if self.reason is not None and not (
            fnmatchcase(row.reason, self.reason) or row.reason.startswith(self.reason)
        ):
            return False
        if self.since_ms is not None and row.dead_at_ms < self.since_ms:
            return False
        return self.until_ms is None or row.dead_at_ms < self.until_ms

    def takes_event(self, event: Any) -> bool:
        if self.event is None:
            return True
        name = event.get("eventName") if isinstance(event, dict) else None
        return isinstance(name, str) and fnmatchcase(name, self.event)


@dataclass
class Selected:
    """A dead row and the split of its events into those the filter takes and the rest.

    Without ``--event`` the row is taken whole and its body is parsed only when the events
    are needed (show, export), so listing or replaying a large DLQ stays cheap."""

    row: DeadRow
    split: tuple[list[Any], list[Any]] | None = None  # (taken, rest); None: the whole row

    @property
    def whole(self) -> bool:
        return self.split is None or not self.split[1]

    @property
    def count(self) -> int:
        return self.row.count if self.split is None else len(self.split[0])

    @property
    def taken(self) -> list[Any]:
        return orjson.loads(self.row.body) if self.split is None else self.split[0]

    @property
    def rest(self) -> list[Any]:
        return [] if self.split is None else self.split[1]


def parse_time(value: str, now: float | None = None) -> int:
    """``2026-12-01``, ``2026-12-01T10:00:00Z`` (UTC unless an offset is given), or a duration
    ago (``2h``, ``7d``) → epoch ms."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        try:
            ago = parse_duration(value, "time")
        except ConfigError:
            raise DlqError(
                f"cannot read time {value!r}: use 2026-12-01, 2026-12-01T10:00:00Z or 2h (ago)"
            ) from None
        return int(((time.time() if now is None else now) - ago) * 1000)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


async def select(
    spool: Spool,
    flt: DeadFilter,
    known_targets: Iterable[str],
    bodies: int | None = None,
    page_rows: int = PAGE_ROWS,
) -> list[Selected]:
    """The dead letters ``flt`` takes, in id order; DlqError for an unknown target or id.

    ``bodies``: how many of the first rows taken whole keep their events (None: all). The
    others keep only their metadata (list, replay and purge act on ids; show prints the first
    ``--limit``), so a large dead-letter queue is not held in memory. Rows split by
    ``--event`` keep their events either way.
    """
    chosen: list[Selected] = []
    async for page in pages(spool, flt, known_targets, page_rows):
        for picked in page:
            if picked.split is None and bodies is not None and len(chosen) >= bodies:
                picked.row.body = b""
            chosen.append(picked)
    return chosen


async def pages(
    spool: Spool, flt: DeadFilter, known_targets: Iterable[str], page_rows: int = PAGE_ROWS
) -> AsyncIterator[list[Selected]]:
    """What ``flt`` takes, a page of the queue (``page_rows`` rows) at a time, bodies kept;
    DlqError for an unknown target, and after the last page for an id no page held."""
    if flt.target is not None:
        stats = await spool.stats()
        known = set(known_targets) | set(stats.dead) | set(stats.queued)
        if flt.target not in known:
            names = ", ".join(sorted(known)) or "none"
            raise DlqError(f"no target named {flt.target!r} (targets: {names})")
    missing = set(flt.ids)
    after_id = 0
    while rows := await spool.dead_rows(flt.target, page_rows, after_id):
        after_id = int(rows[-1].id)
        missing.difference_update(str(row.id) for row in rows)
        yield [picked for row in rows if (picked := _pick(flt, row)) is not None]
    if missing:
        where = f" for target {flt.target!r}" if flt.target else ""
        raise DlqError(f"no dead-letter row with id {', '.join(sorted(missing))}{where}")


def _pick(flt: DeadFilter, row: DeadRow) -> Selected | None:
    """What ``flt`` takes of one dead row, if anything."""
    if not flt.takes_row(row):
        return None
    if flt.event is None:
        return Selected(row)
    taken: list[Any] = []
    rest: list[Any] = []
    for event in orjson.loads(row.body):
        (taken if flt.takes_event(event) else rest).append(event)
    row.body = b""  # the split holds the events now
    return Selected(row, (taken, rest)) if taken else None


class Pacer:
    """Paces work to ``rate`` units per second: ``await pacer.take(n)`` before doing n units
    returns once the units done so far fit the rate (the first call returns at once)."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._start: float | None = None
        self._done = 0

    async def take(self, units: int) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        wait = self._start + self._done / self._rate - now
        if wait > 0:
            await self._sleep(wait)
        self._done += units


async def replay(
    spool: Spool,
    chosen: list[Selected],
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Move the selected events back to the queue (attempts reset); returns the events moved.

    With ``rate`` (events/s) rows are moved one at a time, paced, so a recovered target is
    not flooded; a row is moved whole, so the pace is per row.
    """
    pacer = Pacer(rate) if rate else None
    moved = 0
    if pacer is None:  # whole rows in one go
        whole = [str(s.row.id) for s in chosen if s.whole]
        if whole:
            moved += await spool.replay_dead(None, whole)
        chosen = [s for s in chosen if not s.whole]
    for picked in chosen:
        if pacer is not None:
            await pacer.take(picked.count)
        if picked.whole:
            moved += await spool.replay_dead(None, [str(picked.row.id)])
        else:
            row = picked.row
            requeued = NewRow(
                row.target,
                row.route,
                orjson.dumps(picked.taken),
                picked.count,
                row.first_received_ms,
                last_error=f"replayed: {row.reason}"[:500],
            )
            if await spool.split_dead(row.id, [requeued], [_remainder(picked)]):
                moved += picked.count
        if progress is not None:
            progress(moved)
    return moved


async def purge(spool: Spool, chosen: list[Selected]) -> int:
    """Delete the selected events for good; returns the events deleted."""
    deleted = 0
    whole = [str(s.row.id) for s in chosen if s.whole]
    if whole:
        deleted += await spool.purge_dead(None, whole)
    for picked in chosen:
        if not picked.whole and await spool.split_dead(picked.row.id, [], [_remainder(picked)]):
            deleted += picked.count
    return deleted


def _remainder(picked: Selected) -> DeadRow:
    """The dead row cut down to the events the filter did not take."""
    return replace(picked.row, body=orjson.dumps(picked.rest), count=len(picked.rest))


def export_lines(chosen: list[Selected]) -> Iterator[bytes]:
    """One JSON line per selected event, with the row's target, route, reason and attempts."""
    for picked in chosen:
        row = picked.row
        for event in picked.taken:
            yield (
                orjson.dumps(
                    {
                        "id": str(row.id),
                        "target": row.target,
                        "route": row.route,
                        "reason": row.reason,
                        "attempts": row.attempts,
                        "dead_at": iso_time(row.dead_at_ms),
                        "first_received": iso_time(row.first_received_ms),
                        "event": event,
                    }
                )
                + b"\n"
            )


def iso_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
