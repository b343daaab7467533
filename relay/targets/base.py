"""What every target shares: its config, the batch it sends, and how answers are read.

A target knows only its wire format: ``send(batch) -> Outcome``. Retrying, splitting and
dead-lettering are the deliverer's job (relay/deliver.py), driven by the :class:`Outcome`.
Transport errors and HTTP answers are translated to an Outcome in one place,
:func:`classify_response` / :meth:`Target.post`.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, ClassVar

import aiohttp
import msgspec
import orjson

from ..events import Event
from ..raw import lenient_loads
from ..schema import ByteSize, Duration

if TYPE_CHECKING:
    from ..metrics import RelayMetrics

logger = logging.getLogger(__name__)

_ROW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])  # a stored row's events, not parsed


@dataclass(kw_only=True)
class TargetConfig:
    """Settings every target has; a target's own config subclasses this."""

    type: str
    batch_max_events: int = 500
    batch_max_bytes: ByteSize = ByteSize(4 * 1024**2)
    linger: Duration = Duration(0.2)  # wait this long for a fuller batch
    concurrency: int = 4  # requests in flight at once
    timeout: Duration = Duration(10.0)  # per request
    retries_in_process: int = 3  # quick retries before the batch goes back to the spool
    retry_initial: Duration = Duration(1.0)  # spool backoff: initial, doubled each attempt
    retry_max: Duration = Duration(600.0)  # spool backoff cap
    max_attempts: int = 30  # then dead-letter
    max_age: Duration = Duration(7 * 86400.0)  # then dead-letter

    def __post_init__(self) -> None:
        from ..schema import ConfigError

        for name in ("batch_max_events", "concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.retries_in_process < 1:
            raise ConfigError("retries_in_process", "must be at least 1")


class Verdict(Enum):
    OK = "ok"
    RETRY = "retry"  # transient: try the same batch again later
    REJECT = "reject"  # permanent for (some of) these events: isolate them, dead-letter those
    TOO_LARGE = "too_large"  # split and resend; a single event this large is dead
    UNAUTHORIZED = "unauthorized"  # 401/403: the target refuses our credential, not the events
    FATAL = "fatal"  # the target is misconfigured (not its API): dead-letter without splitting


@dataclass(slots=True, frozen=True)
class Outcome:
    verdict: Verdict
    reason: str = ""
    retry_after: float | None = None  # seconds, from Retry-After
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


DELIVERED = Outcome(Verdict.OK)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_response(status: int, headers: Mapping[str, str], body: str = "") -> Outcome:
    """The one rule from an HTTP answer to a delivery verdict.

    2xx ok; 401 and 403 unauthorized (a property of the target: the deliverer holds the events
    and marks the target failing, for every target alike); 408, 429 and 5xx but 501 retry
    (Retry-After honoured); 413 split; other 4xx and 501 are permanent for the events sent.
    """
    if 200 <= status < 300:
        return DELIVERED
    reason = f"HTTP {status}" + (f": {body[:200]}" if body else "")
    if status in (401, 403):
        return Outcome(Verdict.UNAUTHORIZED, reason, status=status)
    if status in (408, 429) or (500 <= status < 600 and status != 501):
        return Outcome(Verdict.RETRY, reason, parse_retry_after(headers.get("Retry-After")), status)
    if status == 413:
        return Outcome(Verdict.TOO_LARGE, reason, status=status)
    return Outcome(Verdict.REJECT, reason, status=status)


class Batch:
    """Events for one request, kept as the spool's JSON arrays until someone needs dicts.

    A target that forwards events unchanged sends :meth:`json_array` or :meth:`json_lines`,
    spliced from the stored bytes without parsing; one that re-encodes calls :meth:`events`
    (parsed once, cached).
    """

    __slots__ = ("_bodies", "_counts", "_events", "count")

    def __init__(
        self,
        bodies: Sequence[bytes],
        count: int,
        events: list[Event] | None = None,
        counts: Sequence[int] | None = None,
    ):
        self._bodies = list(bodies)
        self._events = events
        self.count = count
        # Events per body, when known: lets chunks() split between bodies without parsing.
        self._counts = list(counts) if counts is not None else None

    @classmethod
    def of_events(cls, events: list[Event]) -> Batch:
        return cls((), len(events), events)

    def events(self) -> list[Event]:
        if self._events is None:
            events: list[Event] = []
            for body in self._bodies:
                try:
                    events.extend(orjson.loads(body))
                except orjson.JSONDecodeError:
                    events.extend(lenient_loads(body))
            self._events = events
        return self._events

    def json_array(self) -> bytes:
        if self._events is not None:
            return orjson.dumps(self._events)
        bodies = [body for body in self._bodies if len(body) > 2]  # skip empty arrays
        if len(bodies) <= 1:
            return bodies[0] if bodies else b"[]"
        # One copy of ~all the bytes: the first array keeps its "[", the last its "]".
        views = [memoryview(body)[1:-1] for body in bodies]
        views[0] = memoryview(bodies[0])[:-1]
        views[-1] = memoryview(bodies[-1])[1:]
        return b",".join(views)

    def stored_json(self) -> bytes:
        """The events as a JSON array to put back in the spool: never fails for an event
        read from it (nesting past orjson's 254 levels is written by the stdlib instead)."""
        try:
            return self.json_array()
        except orjson.JSONEncodeError:
            return json.dumps(self._events, separators=(",", ":"), ensure_ascii=False).encode()

    def json_lines(self) -> bytes:
        """The events one per line (no trailing newline), spliced from the stored arrays:
        rows hold no line breaks outside strings (relay/spool/rows.py)."""
        if self._events is not None:
            return b"\n".join([orjson.dumps(event) for event in self._events])
        return b"\n".join(
            [b"\n".join(_ROW_ITEMS.decode(body)) for body in self._bodies if len(body) > 2]
        )

    def size(self) -> int:
        """Bytes of the stored JSON (an estimate once events were changed in memory)."""
        if self._bodies:
            return sum(len(b) for b in self._bodies)
        return len(orjson.dumps(self._events))

    def halves(self) -> tuple[Batch, Batch]:
        events = self.events()
        middle = len(events) // 2
        return Batch.of_events(events[:middle]), Batch.of_events(events[middle:])

    def chunks(self, max_events: int, max_bytes: int) -> list[Batch]:
        """Split to respect a target's limits; no parsing when already within them."""
        if self.count <= max_events and (not self._bodies or self.size() <= max_bytes):
            return [self]
        if self._events is None:
            whole = self._split_between_bodies(max_events, max_bytes)
            if whole is not None:
                return whole
        events = self.events()
        out: list[Batch] = []
        current: list[Event] = []
        size = 2
        for event in events:
            try:
                event_size = len(orjson.dumps(event)) + 1
            except orjson.JSONEncodeError:  # alone, so the target's encode error isolates it
                out.append(Batch.of_events([event]))
                continue
            if current and (len(current) >= max_events or size + event_size > max_bytes):
                out.append(Batch.of_events(current))
                current, size = [], 2
            current.append(event)
            size += event_size
        if current:
            out.append(Batch.of_events(current))
        return out

    def _split_between_bodies(self, max_events: int, max_bytes: int) -> list[Batch] | None:
        """Pack whole stored bodies into batches within the limits; None if one body alone is
        over them (then the events must be split). Parsing and re-encoding a batch costs more
        than the rest of its delivery, so the common case — a few rows past the limit — avoids
        it."""
        counts = self._counts
        if counts is None or len(counts) != len(self._bodies):
            return None
        out: list[Batch] = []
        bodies: list[bytes] = []
        part_counts: list[int] = []
        size = 0  # of the spliced array: sum of body sizes - one per body + 1
        for body, count in zip(self._bodies, counts, strict=True):
            if count > max_events or len(body) > max_bytes:
                return None
            if bodies and (sum(part_counts) + count > max_events or size + len(body) > max_bytes):
                out.append(Batch(bodies, sum(part_counts), counts=part_counts))
                bodies, part_counts, size = [], [], 0
            bodies.append(body)
            part_counts.append(count)
            size += len(body) - 1
        out.append(Batch(bodies, sum(part_counts), counts=part_counts))
        return out


@dataclass
class TargetHealth:
    """What /readyz says about a target; set when the target refuses our credentials."""

    failing: bool = False
    reason: str = ""
    since: float = field(default_factory=time.time)


class Target(ABC):
    """A destination. Subclasses set ``config_class`` and implement :meth:`send`.

    Contract: ``send`` never raises for a transport or HTTP failure; it returns an Outcome.
    An exception from ``send`` means the events could not be encoded: the deliverer treats it
    as permanent for the events that cause it (isolated by bisection, dead-lettered with reason
    ``encode_error``), so a target — including one added later — needs no guard of its own.
    ``accepts(category)`` lets a target refuse kinds of events it cannot carry (counted drops).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[TargetConfig]]

    def __init__(self, name: str, config: TargetConfig) -> None:
        self.name = name
        self.config = config
        self.health = TargetHealth()
        self._session: aiohttp.ClientSession | None = None
        # Set by the deliverer, so a target can count events it deliberately does not send.
        self.metrics: RelayMetrics | None = None

    def accepts(self, category: str) -> bool:
        """Whether this target carries events of ``category`` at all."""
        return True

    async def open(self) -> None:
        """Open the HTTP session; called inside the running loop."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            connector=aiohttp.TCPConnector(limit=max(self.config.concurrency * 2, 4)),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"target {self.name} is not open")
        return self._session

    @abstractmethod
    async def send(self, batch: Batch) -> Outcome:
        """Deliver one batch (already within the configured limits)."""

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        """Read an answer; override for a service whose codes mean something else."""
        return classify_response(status, headers, body)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Outcome:
        """POST and translate every transport error and answer to an Outcome."""
        try:
            async with self.session.post(url, data=body, headers=headers) as response:
                text = ""
                if not 200 <= response.status < 300:
                    text = (await response.text(errors="replace"))[:500]
                else:
                    await response.read()
                return self.classify(response.status, response.headers, text)
        except TimeoutError:
            return Outcome(Verdict.RETRY, f"timeout after {self.config.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Outcome(Verdict.RETRY, f"network error: {type(exc).__name__}: {exc}"[:300])

    def describe(self) -> str:
        """One line for ``statsig-relay check``; never includes secrets."""
        return self.kind


def json_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if extra:
        headers.update(extra)
    return headers


def redact_url(url: str) -> str:
    """A URL fit for logs: the path's last segment (often a secret hook id) is hidden."""
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    if not path:
        return url
    return f"{scheme}://{host}/…"


Registry = dict[str, type[Target]]
