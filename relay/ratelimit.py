"""Per-client request rate limits: one token bucket per client IP, in bounded memory.

Each IP may make ``burst`` requests at once and ``per_second`` a second on average. The table
of buckets holds at most ``max_clients`` IPs; when it is full the least recently seen IP is
forgotten (it comes back with a full bucket). That bounds memory under a flood from many
addresses at the price of letting an address that was quiet long enough start afresh.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .schema import ConfigError


@dataclass(kw_only=True)
class RateLimitConfig:
    per_second: float  # sustained requests per second from one client IP
    burst: int = 0  # requests at once; 0: the same as per_second, at least 1
    max_clients: int = 100_000  # IPs remembered (about 260 bytes each, key included)

    def __post_init__(self) -> None:
        if not self.per_second > 0:
            raise ConfigError("per_second", f"must be above 0, got {self.per_second}")
        if self.burst < 0:
            raise ConfigError("burst", f"must be 0 or more, got {self.burst}")
        if self.max_clients < 1:
            raise ConfigError("max_clients", f"must be 1 or more, got {self.max_clients}")
        if self.burst == 0:
            self.burst = max(1, math.ceil(self.per_second))


class RateLimiter:
    """Token buckets by key (a client IP). ``take(key)`` → 0 when allowed, else the seconds
    until a token is back (the Retry-After)."""

    def __init__(
        self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(config.per_second)
        self.burst = float(config.burst)
        self.max_clients = config.max_clients
        self._clock = clock
        # key → (tokens, at); ordered from least to most recently seen.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        now = self._clock()
        buckets = self._buckets
        found = buckets.pop(key, None)
        if found is None:
            tokens = self.burst
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)
        else:
            tokens, at = found
            tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


__all__ = ["RateLimitConfig", "RateLimiter"]
