"""Dedup and first-exposure keys as one process sees them: stored plus pending commit.

The keys themselves live in the spool (``seen_keys`` / ``enqueue(rows, state_keys)``) so they
survive restarts and are committed with the events they let through. Concurrent requests read
the spool before any of them commits, so a key that another request has let through but not yet
committed must count as seen too: that is the pending set. One ledger per process, kept across
config reloads; callers check and claim with no ``await`` in between.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .spool.base import Spool


class KeyLedger:
    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._pending: set[str] = set()

    async def seen(self, keys: Sequence[str], now_ms: int) -> set[str]:
        """Keys stored and unexpired, or let through by a request still committing."""
        if not keys:
            return set()
        seen = await self._spool.seen_keys(keys, now_ms)
        pending = self._pending
        if pending:
            seen.update(key for key in keys if key in pending)
        return seen

    def claim(self, key: str) -> None:
        """This request lets ``key`` through; others treat it as seen until released."""
        self._pending.add(key)

    def release(self, keys: Iterable[tuple[str, int]]) -> None:
        """The commit carrying these (key, expiry) pairs finished or failed."""
        self._pending.difference_update(key for key, _ in keys)
