"""Dedup and first-exposure keys: how they are made, and the one step that admits events by them.

The keys themselves live in the spool (``seen_keys`` / ``enqueue(rows, state_keys)``) so they
survive restarts and are committed with the events they let through. Concurrent requests read
the spool before any of them commits, so a key that another request has let through but not yet
committed must count as seen too: that is the pending set. One ledger per process, kept across
config reloads. :meth:`KeyLedger.admit` is the only place that checks and claims keys (no
``await`` between the two); the caller releases what it claimed once the commit is done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .events import EXPOSURE_CATEGORIES, Event, category_of, exposure_metadata, unit_id
from .spool.base import GroupCall, Spool

# (key, expiry in epoch ms, why an event holding a key already seen is dropped)
StateKey = tuple[str, int, str]


def state_key(kind: str, scope: str, value: str) -> str:
    """A fixed-size stored key for ``value`` within ``scope`` (a route's name)."""
    digest = hashlib.blake2b(f"{scope}\0{value}".encode(), digest_size=16).hexdigest()
    return f"{kind}:{digest}"


def route_keys(
    route: str,
    dedup_window: float | None,
    first_exposure_window: float | None,
    event: Event,
    now_ms: int,
) -> list[StateKey]:
    """The keys a route's ``dedup`` (by timeUUID) and ``first_exposure_only`` give ``event``.

    ``event`` needs only eventName, timeUUID and the exposure and unit fields (``metadata``,
    ``statsigMetadata``, ``user``, ``userID``, ``unitID``).
    """
    keys: list[StateKey] = []
    if dedup_window is not None:
        time_uuid = event.get("timeUUID")
        if time_uuid:
            keys.append(
                (
                    state_key("dedup", route, str(time_uuid)),
                    now_ms + int(dedup_window * 1000),
                    "dedup",
                )
            )
    if first_exposure_window is not None:
        category = category_of(event["eventName"])
        if category in EXPOSURE_CATEGORIES:
            meta = exposure_metadata(event)
            subject = meta.get("gate") or meta.get("config") or ""
            unit = unit_id(event) or ""
            keys.append(
                (
                    state_key("first", route, f"{category}\0{subject}\0{unit}"),
                    now_ms + int(first_exposure_window * 1000),
                    "first_exposure",
                )
            )
    return keys


@dataclass(slots=True)
class Admission:
    """Which items passed, and how many were dropped for each reason."""

    kept: list[int] = field(default_factory=list)  # indices into the items, in order
    dropped: dict[str, int] = field(default_factory=dict)


class KeyLedger:
    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._pending: set[str] = set()
        # Requests that look keys up while a look-up is under way share the next one: one
        # round trip to the store per group of requests, not per request.
        self._lookups: GroupCall[tuple[Sequence[str], int], set[str]] = GroupCall(self._lookup)

    async def _lookup(self, calls: list[tuple[Sequence[str], int]]) -> list[set[str]]:
        if len(calls) == 1:
            keys, now_ms = calls[0]
            return [await self._spool.seen_keys(keys, now_ms)]
        every = list({key for keys, _ in calls for key in keys})
        # The earliest caller's clock: a key unexpired for any caller counts as seen.
        seen = await self._spool.seen_keys(every, min(now_ms for _, now_ms in calls))
        return [{key for key in keys if key in seen} for keys, _ in calls]

    async def seen(self, keys: Sequence[str], now_ms: int) -> set[str]:
        """Keys stored and unexpired, or let through by a request still committing."""
        if not keys:
            return set()
        seen = await self._lookups.submit((keys, now_ms))
        pending = self._pending
        if pending:
            seen.update(key for key in keys if key in pending)
        return seen

    async def admit(
        self,
        keys: Sequence[Sequence[StateKey]],
        now_ms: int,
        claimed: list[tuple[str, int]],
    ) -> Admission:
        """Admit items by their keys (one list per item): an item passes when none of its keys
        is stored, pending or held by an earlier item of the same call.

        The keys of items that pass are claimed and appended to ``claimed`` as (key, expiry):
        the caller stores them in the commit carrying the items, then :meth:`release`\\ s them,
        also when the commit fails.
        """
        admission = Admission()
        seen = await self.seen([key for item in keys for key, _, _ in item], now_ms)
        # No await from here on: checking and claiming a key is atomic.
        pending = self._pending
        kept = admission.kept
        dropped = admission.dropped
        for index, item in enumerate(keys):
            reason = next((why for key, _, why in item if key in seen), None)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            for key, expires, _ in item:
                seen.add(key)
                pending.add(key)
                claimed.append((key, expires))
            kept.append(index)
        return admission

    def claim(self, key: str, expires: int, claimed: list[tuple[str, int]]) -> bool:
        """Claim one key without a look-up (the commit checks the store, see
        Spool.enqueue_unless_seen): False when a request still committing holds it."""
        if key in self._pending:
            return False
        self._pending.add(key)
        claimed.append((key, expires))
        return True

    def release(self, keys: Iterable[tuple[str, Any]]) -> None:
        """The commit carrying these (key, expiry) pairs finished or failed."""
        self._pending.difference_update(key for key, _ in keys)
