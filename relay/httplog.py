"""The logger a listener hands to aiohttp's protocol: malformed HTTP is counted, not flooded.

aiohttp answers a request it cannot parse (bad request line, header bytes, framing, length)
with a 400 and logs it through the protocol's logger, at ERROR with a traceback (or at DEBUG
for a bad method on a connection's first request). A scanner or fuzzer could then fill the log,
and the exception text quotes request bytes, which can hold a secret. This adapter counts
every such request in ``relay_bad_http_requests_total{listener}`` and logs at most one short
WARNING per interval (exception class and peer only); everything else, a 500 from a handler
with its traceback included, goes to the logger unchanged.

A body that cannot be decoded (corrupt gzip, deflate or brotli, broken chunked framing) is
answered 400/415 by the handler, then aiohttp reads what is left of it before reusing the
connection, meets the same error again and logs it as an "Unhandled exception" with a
traceback. That ``RequestPayloadError`` is counted and rate-limited the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import Counter

logger = logging.getLogger(__name__)

WARN_INTERVAL_S = 60.0


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's ``logger=`` for one listener; see the module docstring."""

    def __init__(
        self,
        listener: str,
        counter: Counter,
        interval_s: float = WARN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.listener = listener
        self.bad_requests = counter.labels(listener)  # exported at 0 from start-up
        self.interval_s = interval_s
        self.clock = clock
        self._next_warning = float("-inf")
        self._suppressed = 0

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            peer = args[0] if args else None
            self._bad_request(
                f"malformed HTTP request from {peer or 'unknown peer'} answered {exc.code} "
                f"({type(exc).__name__})"
            )
            return
        if isinstance(exc, RequestPayloadError):
            cause = exc.__cause__ or exc.__context__ or exc
            self._bad_request(f"request body that cannot be decoded ({type(cause).__name__})")
            return
        super().log(level, msg, *args, **kwargs)

    def _bad_request(self, what: str) -> None:
        self.bad_requests.inc()
        now = self.clock()
        if now < self._next_warning:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next_warning = now + self.interval_s
        logger.warning(
            "%s listener: %s; %d more bad requests since the last warning; next warning in %ds "
            "at the earliest",
            self.listener,
            what,
            suppressed,
            self.interval_s,
        )


__all__ = ["WARN_INTERVAL_S", "ProtocolLog"]
