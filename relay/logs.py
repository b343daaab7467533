"""Logging set-up: plain text for a terminal, JSON lines for journald or a log shipper."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import orjson

# Fields a log call may give in ``extra=`` (the text format keeps them in its sentence): the JSON
# format puts each in its own key, so a log store can filter by target or route.
FIELDS = ("target", "route", "source", "count", "reason", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then those of
    :data:`FIELDS` the call gave, and ``exc`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__
        for key in FIELDS:
            value = fields.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class LogThrottle:
    """At most one log line per ``interval_s`` for a failure that repeats (a store that is
    down fails every request and every claim): :meth:`due` says whether to log now and how
    many were left out since the last line."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.clock = clock
        self._next = float("-inf")
        self._suppressed = 0

    def due(self) -> int | None:
        """None: stay quiet (counted); else log, mentioning the returned number left out."""
        now = self.clock()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.interval_s
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
