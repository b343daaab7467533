"""A token bucket that keeps a target under a service's documented events-per-minute limit.

Heap (15,000 events/min per app_id) and Chronosphere (300 change events/min per tenant) refuse
traffic above their limits; waiting a little before sending is cheaper than a 429 and a retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; a caller takes ``n`` and waits.

    The balance may go negative: a caller reserves its tokens at once and sleeps until the
    debt is paid, so concurrent callers queue up in order without a lock and a request larger
    than the burst still goes through (later). Over any window of ``w`` seconds at most
    ``burst + rate * w`` tokens are spent; :meth:`per_minute` picks the rate so that this is
    never above the service's limit for a one-minute window.
    """

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    @classmethod
    def per_minute(
        cls, limit: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> TokenBucket:
        """A bucket that never spends more than ``limit`` tokens in any 60 seconds."""
        burst = max(1.0, min(burst, limit / 2))
        return cls((limit - burst) / 60.0, burst, clock)

    def reserve(self, n: float) -> float:
        """Take ``n`` tokens now; returns the seconds to wait before using them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self, n: float) -> float:
        """Wait until ``n`` tokens are ours; returns the seconds waited."""
        delay = self.reserve(n)
        if delay > 0:
            await asyncio.sleep(delay)
        return delay
