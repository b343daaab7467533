"""The SQLite spool's schedule in memory: which queued rows are ready, waiting or leased.

Why: a claim used to ask SQLite for due rows, and a row's scheduling columns sit after its body
in the record, so filtering on them walked every queued body's overflow pages: each claim cost
I/O in proportion to the backlog (most of the relay's time at 50k events/s). The relay owns its
spool file (an exclusive lock), so it can keep the schedule in memory instead, loaded from the
table at open: a claim is then a few heap operations, and SQLite is asked only for bodies.

Leases live here too. A claimed row leaves the ready heap until it is acked, retried or
settled, or until its lease runs out and it is ready again. After a crash every row left in the
table is due at once, which is what a lease stored in the file would give once it ran out.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass


@dataclass(slots=True)
class QueuedRow:
    """What the spool remembers about one queued row (everything but its body)."""

    id: int
    target: str
    route: str
    count: int
    size: int  # bytes of the body
    first_received: int
    attempts: int
    next_attempt: int
    lease_until: int = 0  # epoch ms; 0 when not claimed
    entry: int = -1  # sequence number of the row's one live heap entry


class DueIndex:
    """Per target: a ready heap (receive order = row id), a waiting heap (by next attempt), and
    one lease heap. A row has one live heap entry, the one whose sequence number it holds;
    entries of rows that were removed or rescheduled meanwhile are skipped when they come up, so
    removal never searches a heap. (The sequence number also orders entries with equal keys:
    SQLite reuses the id of a deleted last row.)"""

    def __init__(self) -> None:
        self.rows: dict[int, QueuedRow] = {}
        self._ready: dict[str, list[tuple[int, int, QueuedRow]]] = {}
        self._waiting: dict[str, list[tuple[int, int, QueuedRow]]] = {}
        self._leases: list[tuple[int, int, QueuedRow]] = []
        self._leased = 0  # live entries in _leases; the rest are acked rows, dropped lazily
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: QueuedRow) -> bool:
        """Track a newly committed row; False if its id is known already."""
        if row.id in self.rows:
            return False
        self.rows[row.id] = row
        self._schedule(row)
        return True

    def _schedule(self, row: QueuedRow) -> None:
        if row.lease_until:
            self._leased -= 1
        row.lease_until = 0
        row.entry = seq = next(self._seq)
        if row.next_attempt <= 0:
            heapq.heappush(self._ready.setdefault(row.target, []), (row.id, seq, row))
        else:
            heapq.heappush(self._waiting.setdefault(row.target, []), (row.next_attempt, seq, row))

    def _live(self, seq: int, row: QueuedRow) -> bool:
        return row.entry == seq and self.rows.get(row.id) is row

    def claim(
        self, target: str, max_events: int, max_bytes: int, lease_ms: int, now: int
    ) -> list[QueuedRow]:
        """Lease ready rows in receive order up to the limits (at least one row)."""
        self._expire_leases(now)
        ready = self._ready.get(target)
        waiting = self._waiting.get(target)
        if waiting:
            if ready is None:
                ready = self._ready[target] = []
            while waiting and waiting[0][0] <= now:
                _, seq, row = heapq.heappop(waiting)
                if self._live(seq, row):
                    row.entry = seq = next(self._seq)
                    heapq.heappush(ready, (row.id, seq, row))
        if not ready:
            return []
        picked: list[QueuedRow] = []
        events = size = 0
        while ready:
            _, seq, row = ready[0]
            if not self._live(seq, row):
                heapq.heappop(ready)  # removed or rescheduled meanwhile
                continue
            if picked and (events + row.count > max_events or size + row.size > max_bytes):
                break
            heapq.heappop(ready)
            picked.append(row)
            events += row.count
            size += row.size
        lease_until = now + lease_ms
        self._leased += len(picked)
        if len(self._leases) > 2 * self._leased + 1024:
            # Acked rows' entries would wait out their lease (minutes) holding memory: drop them.
            self._leases = [e for e in self._leases if self._live(e[1], e[2])]
            heapq.heapify(self._leases)
        for row in picked:
            row.lease_until = lease_until
            row.entry = seq = next(self._seq)
            heapq.heappush(self._leases, (lease_until, seq, row))
        return picked

    def renew(self, row_id: int, held_until: int, lease_until: int) -> bool:
        """Extend a live lease that still ends at ``held_until`` (the claimer's token)."""
        row = self.rows.get(row_id)
        if row is None or not row.lease_until or row.lease_until != held_until:
            return False
        row.lease_until = lease_until
        row.entry = seq = next(self._seq)  # the old lease entry is skipped when it comes up
        heapq.heappush(self._leases, (lease_until, seq, row))
        return True

    def _expire_leases(self, now: int) -> None:
        leases = self._leases
        while leases and leases[0][0] <= now:
            _, seq, row = heapq.heappop(leases)
            if self._live(seq, row):
                self._schedule(row)  # due again (a lapsed lease is not an attempt)

    def release(self, row: QueuedRow) -> None:
        """Give back a claimed row that was not handed out (its body could not be read)."""
        if self.rows.get(row.id) is row and row.lease_until:
            self._schedule(row)

    def retry(self, row_id: int, next_attempt: int) -> None:
        """Count an attempt, end the lease, make the row due at ``next_attempt``."""
        row = self.rows.get(row_id)
        if row is not None:
            row.attempts += 1
            row.next_attempt = next_attempt
            self._schedule(row)

    def remove(self, row_id: int) -> QueuedRow | None:
        row = self.rows.pop(row_id, None)
        if row is not None and row.lease_until:
            self._leased -= 1
        return row
