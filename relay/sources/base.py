"""What every source shares: config, the parse contract and the errors it may raise.

A source owns HTTP paths. For each request the ingest handler (relay/ingest.py) reads the body
within the size limit, then calls :meth:`Source.authenticate` and :meth:`Source.parse`; the
source returns normalised Statsig events plus per-event errors. One bad event never fails the
batch: it becomes an entry in ``errors`` and the rest go on.
"""

from __future__ import annotations

import hmac
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ..cors import CorsConfig
from ..events import MAX_NESTING, Event
from ..numbers import ORJSON_OUT_OF_RANGE, load_marking, unrepresentable_at
from ..ratelimit import RateLimitConfig
from ..raw import RawEvents


@dataclass(kw_only=True)
class SourceConfig:
    type: str
    # Controls for a source browsers post to (relay/guard.py); all off by default.
    cors: CorsConfig | None = None
    rate_limit: RateLimitConfig | None = None  # per client IP
    max_events: int | None = None  # per request; more is refused with 413
    allowed_events: list[str] | None = None  # names to keep; "prefix*" matches a prefix
    user_ip: bool | None = None  # client IP into user.ip; None: on when cors is set


class SourceError(Exception):
    """A request-level refusal: the status to answer and a reason safe to show the sender."""

    def __init__(
        self, status: int, reason: str, metric_reason: str = "", close: bool = False
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.metric_reason = metric_reason or {
            400: "malformed",
            401: "unauthorized",
            403: "forbidden",
            408: "timeout",
            413: "too_large",
        }.get(status, "refused")
        # The body was not read to its end: the connection cannot carry another request.
        self.close = close


@dataclass(slots=True)
class Parsed:
    """The result of parsing one request."""

    events: list[Event] = field(default_factory=list)
    # The raw path (relay/raw.py): set instead of ``events`` by a source's parse_raw.
    raw: RawEvents | None = None
    errors: list[str] = field(default_factory=list)  # "event 3: reason", at most a few kept
    error_count: int = 0
    reply: web.StreamResponse | None = None  # answer at once, spool nothing (e.g. handshakes)
    # Source-level dedup (e.g. Segment messageId): one key or None per event, aligned with
    # ``events``; events whose key was seen within ``Source.dedup_window`` are dropped.
    dedup_keys: list[str | None] = field(default_factory=list)
    # Counted, not errors: messages deliberately not turned into events, by reason (e.g. Segment
    # identify calls), and events kept although they carry no user identifier.
    dropped: dict[str, int] = field(default_factory=dict)
    without_user: int = 0

    def reject(self, index: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < 10:
            self.errors.append(f"event {index}: {reason}")


@dataclass(slots=True, frozen=True)
class Endpoint:
    """One path a source answers; ``path`` may hold aiohttp placeholders like ``{tail:.*}``."""

    path: str
    method: str = "POST"
    kind: str = ""  # what the source should make of it (e.g. "track", "batch")


class Source(ABC):
    """An HTTP ingest endpoint. Subclasses set ``kind`` and ``config_class``."""

    kind: ClassVar[str]
    config_class: ClassVar[type[SourceConfig]]
    # Sources whose SDKs gzip their bodies; the ingest handler inflates within max_body.
    accepts_gzip: ClassVar[bool] = True
    # Seconds a dedup key (Parsed.dedup_keys) is remembered; None: no source-level dedup.
    dedup_window: float | None = None

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.name = name
        self.config = config

    @abstractmethod
    def endpoints(self) -> Sequence[Endpoint]:
        """The paths this source owns."""

    def authenticate(self, request: web.BaseRequest, endpoint: Endpoint, body: bytes) -> None:
        """Raise SourceError(401/403) unless the request is allowed. Default: open."""
        return None

    @abstractmethod
    def parse(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed:
        """Parse and normalise; raise SourceError(400) only when nothing in it is usable."""

    def parse_raw(
        self, request: web.BaseRequest, endpoint: Endpoint, body: bytes, received_ms: int
    ) -> Parsed | None:
        """The raw path (relay/raw.py): events kept as their JSON bytes, in ``Parsed.raw``.
        None: this body (or this source) takes :meth:`parse`, the dict path."""
        return None

    def answer(self, parsed: Parsed, accepted: int) -> web.Response:
        """The success answer; override to look like the service the sender expects."""
        payload: dict[str, Any] = {"accepted": accepted, "rejected": parsed.error_count}
        if parsed.errors:
            payload["errors"] = parsed.errors
        return web.Response(body=orjson.dumps(payload), content_type="application/json")

    def describe(self) -> str:
        """One line for ``statsig-relay check``; never includes secrets."""
        return ", ".join(f"{e.method} {e.path}" for e in self.endpoints())

    def warnings(self) -> list[str]:
        """Things a user should know at start-up (e.g. running without authentication)."""
        return []

    def credentials_are_public(self) -> bool:
        """True when what senders present is no secret (a browser key), so any web origin may
        post (``cors.origins: ["*"]``). Default: the credentials are secrets."""
        return False


def load_json(body: bytes) -> tuple[Any, bool]:
    """Parse JSON or raise SourceError(400) with the parser's reason. Returns the document and
    whether each event must pass :func:`event_problem`: it may nest too deep, or holds a number
    beyond a double (relay/numbers.py), marked where it was so that only its event is refused."""
    if not body.strip():
        raise SourceError(400, "empty body; expected JSON")
    try:
        return orjson.loads(body), may_nest_too_deep(body)
    except orjson.JSONDecodeError as exc:
        if ORJSON_OUT_OF_RANGE not in str(exc):
            raise SourceError(400, f"malformed JSON: {exc}") from None
    try:
        return load_marking(body), True
    except (ValueError, RecursionError) as exc:  # not JSON for another reason as well
        raise SourceError(400, f"malformed JSON: {str(exc)[:200]}") from None


def header_bytes(value: str) -> bytes | None:
    """A credential header's value as bytes, or None when it holds bytes that are not UTF-8
    (aiohttp keeps those as lone surrogates): no key or signature can match it, so the caller
    answers 401 instead of failing on the encode."""
    try:
        return value.encode()
    except UnicodeEncodeError:
        return None


_ORJSON_LEVELS = 254  # containers orjson encodes around a value (measured; 255 lists fit)


def may_nest_too_deep(body: bytes) -> bool:
    """Cheap per body: whether any value in it could nest deeper than MAX_NESTING (fewer
    brackets than that cannot)."""
    return len(body) > 2 * MAX_NESTING and body.count(b"[") + body.count(b"{") > MAX_NESTING


def event_problem(item: Any) -> str | None:
    """Why ``item`` cannot be relayed (nested deeper than MAX_NESTING, or holding a number
    beyond a double), or None. Costs one encode: callers ask only when :func:`load_json` says
    the body needs it."""
    probe: Any = item
    for _ in range(_ORJSON_LEVELS - MAX_NESTING):
        probe = [probe]
    try:
        orjson.dumps(probe)
    except orjson.JSONEncodeError as exc:
        problem = unrepresentable_at(item)
        if problem is not None:
            return problem
        if "Recursion" in str(exc):
            return f"nested deeper than {MAX_NESTING} levels"
        return f"cannot be encoded as JSON: {exc}"  # e.g. a lone surrogate Python's parser let by
    return None


def refuse_shared(value: dict[str, Any], field: str) -> None:
    """A part of the request that goes onto every event (a Segment batch's ``context``, a
    log_event request's ``user`` or ``statsigMetadata``) that no event could carry (a number
    beyond a double, nesting too deep, a lone surrogate) refuses the request with a 400 naming
    it, as a malformed body would be: the events were screened without it."""
    problem = unrepresentable_at(value, field)
    if problem is None and (problem := event_problem({field: value})) is not None:
        problem = f"{field}: {problem}"
    if problem is not None:
        raise SourceError(400, problem)


def key_matches(presented: str | None, keys: Sequence[str]) -> bool:
    """Constant-time membership test of a presented API key against the configured ones."""
    if not presented:
        return False
    candidate = header_bytes(presented)
    if candidate is None:
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key.encode())
    return found
