"""Where an event enters: the HTTP handler shared by every source.

Order of work for one request: refuse early when the spool is full (503 + Retry-After); read
the body within ``server.max_body`` (413; aiohttp inflates gzip within the same limit); let the
source authenticate (401/403) and parse (400 with the reason; bad events are skipped and
reported); drop the source's duplicates; let the router select events per route; admit them by
the routes' dedup / first-exposure keys (relay/state.py); build one row per route
(relay/spool/rows.py); commit rows and keys to the spool; only then answer 2xx. A store
failure is a 503 + Retry-After (safe to resend); anything else unexpected is a bug: a JSON 500,
logged with its traceback and counted in ``relay_internal_errors_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD
from aiohttp.web_protocol import RequestPayloadError

from .events import now_ms
from .logs import LogThrottle
from .metrics import RelayMetrics
from .raw import RawEvents
from .redact import redact_secrets
from .router import Router
from .sources.base import Endpoint, Parsed, Source, SourceError
from .spool.base import Spool, SpoolFull
from .spool.records import NewRow
from .spool.rows import build_row
from .state import KeyLedger, StateKey, route_keys

if TYPE_CHECKING:
    from .guard import Guard

logger = logging.getLogger(__name__)

# What aiohttp inflates while reading a body (br and zstd when their libraries are installed).
CONTENT_ENCODINGS = frozenset(
    ["gzip", "x-gzip", "deflate", *(["br"] if HAS_BROTLI else []), *(["zstd"] if HAS_ZSTD else [])]
)

NOT_COMPRESSED = "compressed bodies are not accepted here"

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class RowError(Exception):
    """Building a spool row failed: a bug (sources refuse what rows cannot hold), answered 500,
    not the 503 of a store failure that would make the sender resend the same events forever."""


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": reason}),
        content_type="application/json",
        headers=headers,
    )


class Ingest:
    """Builds the request handlers of all sources over one router and spool."""

    def __init__(
        self,
        router: Router,
        spool: Spool,
        ledger: KeyLedger,
        metrics: RelayMetrics,
        max_body: int,
        retry_after: float,
        body_timeout: float,
    ) -> None:
        self.router = router
        self.spool = spool
        self.ledger = ledger
        self.metrics = metrics
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.retry_after = str(max(1, round(retry_after)))
        self._routed = {r.name: metrics.events_routed.labels(r.name) for r in router.routes}
        # Sources a route with dedup / first-exposure keys takes from: their routes claim keys
        # while the request commits, so its own key is looked up first (a duplicate must not
        # hold another request's route key while it is still to be found out).
        self._stateful_sources = frozenset(
            source for r in router.routes if r.stateful for source in r.sources
        )
        self._commit_failures = LogThrottle()
        self._redacted = {
            r.name: metrics.secrets_redacted.labels(r.name)
            for r in router.routes
            if not r.to_statsig
        }

    def handler(self, source: Source, endpoint: Endpoint, guard: Guard | None = None) -> Handler:
        """The handler of one endpoint; ``guard`` holds a public source's controls
        (relay/guard.py: origin, rate limit, event count and names, client IP)."""
        m = self.metrics
        received = m.events_received.labels(source.name)
        latency = m.ingest_latency.labels(source.name)
        internal_errors = m.internal_errors.labels(source.name)  # exported at 0 from the start
        answered: dict[int, Any] = {}  # status: its counter child (a labels() look-up is dear)

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            started = time.perf_counter()
            try:
                if guard is None:
                    response = await self._handle(source, endpoint, request, received, None)
                else:
                    refused = guard.admit(request)
                    response = refused or await self._handle(
                        source, endpoint, request, received, guard
                    )
                    guard.decorate(request, response)
            except Exception:  # a bug: visible (log, metric), and a JSON answer, not aiohttp's
                logger.exception(
                    "source %s: internal error on %s",
                    source.name,
                    request.path,
                    extra={"source": source.name, "status": 500},
                )
                internal_errors.inc()
                response = error_response(500, "internal error; see the relay's log")
            status = response.status
            counter = answered.get(status)
            if counter is None:
                counter = answered[status] = m.requests.labels(source.name, str(status))
            counter.inc()
            latency.observe(time.perf_counter() - started)
            return response

        return handle

    async def _handle(
        self,
        source: Source,
        endpoint: Endpoint,
        request: web.BaseRequest,
        received_counter: object,
        guard: Guard | None,
    ) -> web.StreamResponse:
        rejected = self.metrics.events_rejected
        if self.spool.is_full():
            rejected.labels(source.name, "spool_full").inc()
            return error_response(
                503, "spool is full; retry later", {"Retry-After": self.retry_after}
            )
        try:
            body = await self._read_body(request, source)
            source.authenticate(request, endpoint, body)
            received_ms = now_ms()
            if guard is None:
                parsed = source.parse_raw(request, endpoint, body, received_ms) or source.parse(
                    request, endpoint, body, received_ms
                )
            else:  # the guard reads and edits event dicts: the dict path
                parsed = source.parse(request, endpoint, body, received_ms)
                guard.screen(request, parsed)
        except SourceError as exc:
            rejected.labels(source.name, exc.metric_reason).inc()
            if exc.status in (401, 403):
                logger.warning(
                    "source %s: refused request from %s: %s",
                    source.name,
                    request.remote,
                    exc.reason,
                    extra={"source": source.name, "status": exc.status, "reason": exc.reason},
                )
            response = error_response(exc.status, exc.reason)
            if exc.close:
                response.force_close()
            return response
        if parsed.reply is not None:
            return parsed.reply
        if parsed.error_count:
            rejected.labels(source.name, "malformed_event").inc(parsed.error_count)
        for reason, count in parsed.dropped.items():
            self.metrics.events_dropped.labels(f"source:{source.name}", reason).inc(count)
        if parsed.without_user:
            self.metrics.events_without_user.labels(source.name).inc(parsed.without_user)
        state_keys: list[tuple[str, int]] = []
        events = parsed.raw if parsed.raw is not None else RawEvents.of_dicts(parsed.events)
        unless_seen = ""  # the one event's dedup key, checked in the commit
        try:
            if parsed.dedup_keys and source.dedup_window:
                one = len(parsed.dedup_keys) == 1 and parsed.dedup_keys[0]
                if one and self._key_in_commit(source):
                    unless_seen = self._claim_one(source, parsed, received_ms, state_keys)
                else:
                    await self._drop_duplicates(source, parsed, received_ms, state_keys)
                events = RawEvents.of_dicts(parsed.events)
            rows, routed = await self._route(source, events, received_ms, state_keys)
            if not unless_seen:
                await self.spool.enqueue(rows, state_keys)
            elif not await self.spool.enqueue_unless_seen(
                unless_seen, received_ms, rows, state_keys
            ):
                self._dropped_duplicates(source, len(events))
                events, routed = RawEvents.of_dicts([]), []
            if events:
                received_counter.inc(len(events))  # type: ignore[attr-defined]
            for counter, count in routed:
                counter.inc(count)
        except SpoolFull:
            rejected.labels(source.name, "spool_full").inc(len(events))
            return error_response(
                503, "spool is full; retry later", {"Retry-After": self.retry_after}
            )
        except RowError:
            raise
        except Exception as exc:
            self.metrics.spool_commits.inc()
            left_out = self._commit_failures.due()
            if left_out is not None:  # a store that is down fails every request: one a minute
                logger.error(
                    "source %s: could not commit %d events to the spool (answered 503; %d more "
                    "such failures in the last minute, see relay_spool_commit_errors_total)",
                    source.name,
                    len(events),
                    left_out,
                    exc_info=exc,
                    extra={
                        "source": source.name,
                        "count": len(events),
                        "status": 503,
                        "reason": "spool_commit_failed",
                    },
                )
            return error_response(
                503, "could not store the events; retry later", {"Retry-After": self.retry_after}
            )
        finally:
            # Committed (the spool answers for the keys now) or failed (a retry must pass).
            self.ledger.release(state_keys)
        return source.answer(parsed, len(events))

    async def _drop_duplicates(
        self, source: Source, parsed: Parsed, now: int, claimed: list[tuple[str, int]]
    ) -> None:
        """Drop events whose source dedup key was seen; claim the new keys into ``claimed``."""
        prefix = f"src:{source.name}:"
        expires = now + int((source.dedup_window or 0) * 1000)
        keys: list[list[StateKey]] = [
            [(prefix + key, expires, "dedup")] if key else [] for key in parsed.dedup_keys
        ]
        admission = await self.ledger.admit(keys, now, claimed)
        events = parsed.events
        dropped = len(events) - len(admission.kept)
        if dropped:
            self._dropped_duplicates(source, dropped)
            parsed.events = [events[i] for i in admission.kept]
        parsed.dedup_keys = []

    def _key_in_commit(self, source: Source) -> bool:
        return self.spool.checks_in_commit and source.name not in self._stateful_sources

    def _claim_one(
        self, source: Source, parsed: Parsed, now: int, claimed: list[tuple[str, int]]
    ) -> str:
        """The key of a one-event request, claimed into ``claimed`` for the commit to check
        against the store; "" and the event dropped when a request still committing holds it.
        (One round trip to the spool instead of a look-up and then a commit.)"""
        key = f"src:{source.name}:{parsed.dedup_keys[0]}"
        parsed.dedup_keys = []
        expires = now + int((source.dedup_window or 0) * 1000)
        if self.ledger.claim(key, expires, claimed):
            return key
        self._dropped_duplicates(source, len(parsed.events))
        parsed.events = []
        return ""

    def _dropped_duplicates(self, source: Source, count: int) -> None:
        self.metrics.events_dropped.labels(f"source:{source.name}", "dedup").inc(count)

    async def _route(
        self, source: Source, events: RawEvents, now: int, claimed: list[tuple[str, int]]
    ) -> tuple[list[NewRow], list[tuple[Any, int]]]:
        """One row per route that keeps any of ``events``, and each route's counter with its
        count (for the caller to add once committed); the routes' new state keys are claimed
        into ``claimed``."""
        rows: list[NewRow] = []
        routed: list[tuple[Any, int]] = []
        for route, picked in self.router.select(source.name, events.names, events.event):
            if route.stateful:
                admission = await self.ledger.admit(
                    [
                        route_keys(
                            route.name,
                            route.dedup_window,
                            route.first_exposure_window,
                            events.key_fields(i),
                            now,
                        )
                        for i in picked
                    ],
                    now,
                    claimed,
                )
                for reason, count in admission.dropped.items():
                    self.metrics.events_dropped.labels(route.name, reason).inc(count)
                picked = [picked[i] for i in admission.kept]
                if not picked:
                    continue
            new_name = route.new_name if route.renames else None
            try:
                row = build_row(route.target, route.name, events, picked, now, new_name)
            except Exception as exc:
                raise RowError(f"route {route.name}: {exc}") from exc
            if not route.to_statsig:  # a server secret goes to Statsig only (relay/redact.py)
                row.body, redacted = redact_secrets(row.body)
                if redacted:
                    self._redacted[route.name].inc(redacted)
            rows.append(row)
            routed.append((self._routed[route.name], len(picked)))
        return rows, routed

    async def _read_body(self, request: web.BaseRequest, source: Source) -> bytes:
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        compressed = encoding not in ("", "identity")
        if compressed and source.accepts_gzip and encoding not in CONTENT_ENCODINGS:
            raise SourceError(
                415,
                f"Content-Encoding {encoding[:40]!r} is not supported; use one of "
                + ", ".join(sorted(CONTENT_ENCODINGS)),
                "unsupported",
            )
        if request.content_length is not None and request.content_length > self.max_body:
            raise SourceError(
                413,
                f"body of {request.content_length} bytes is over the {self.max_body} byte limit",
            )
        # aiohttp inflates the body itself while reading it, within client_max_size (so a
        # small body that inflates past the limit is a 413 here too).
        # A body that stops arriving is answered 408 after ``body_timeout``, not waited on for
        # ever: a slow client, or a chunked body whose framing breaks after its first chunk
        # (aiohttp's parser then never ends the body it handed us).
        try:
            if request.content.is_eof():  # all of it arrived with the head: nothing to wait for
                body = await request.read()
            else:
                async with asyncio.timeout(self.body_timeout):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise SourceError(413, f"body is over the {self.max_body} byte limit") from None
        except TimeoutError:
            raise SourceError(
                408, f"the body did not arrive within {self.body_timeout:g}s", close=True
            ) from None
        except ConnectionError:  # the sender hung up mid-body: its doing, not a relay bug
            raise SourceError(
                400, "the connection closed before the body was complete", "disconnected", True
            ) from None
        except RequestPayloadError as exc:
            if compressed and not source.accepts_gzip:
                raise SourceError(415, NOT_COMPRESSED, "unsupported", close=True) from None
            cause = exc.__cause__ or exc.__context__ or exc
            raise SourceError(
                400,
                f"could not decode the {encoding or 'request'} body: {str(cause)[:200]}",
                close=True,
            ) from None
        if compressed and not source.accepts_gzip:
            raise SourceError(415, NOT_COMPRESSED, "unsupported")
        if encoding == "x-gzip":  # gzip's old name, which aiohttp hands over undecoded
            return self._gunzip(body, encoding)
        if compressed and not body and request.content_length != 0:
            # A zstd or brotli stream cut short decodes to nothing rather than failing.
            raise SourceError(
                400, f"the {encoding} body decoded to nothing: truncated, or not {encoding}"
            )
        return body

    def _gunzip(self, body: bytes, encoding: str) -> bytes:
        """A gzip body inflated within ``max_body`` (a small body may inflate to gigabytes)."""
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, self.max_body + 1)
        except zlib.error as exc:
            raise SourceError(400, f"could not decode the {encoding} body: {exc}") from None
        if len(data) > self.max_body:
            raise SourceError(413, f"body is over the {self.max_body} byte limit")
        if not inflater.eof or inflater.unused_data:
            raise SourceError(400, f"could not decode the {encoding} body: not one whole gzip")
        return data


__all__ = ["Ingest", "Parsed", "error_response"]
