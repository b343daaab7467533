"""What every target shares: its config, the batch it sends, and how answers are read.

A target knows only its wire format: ``send(batch) -> Outcome``. Retrying, splitting, holding
and dead-lettering are the deliverer's job (relay/deliver.py), driven by the :class:`Outcome`.
Transport errors and HTTP answers are translated to an Outcome in one place,
:func:`classify_response` / :meth:`Target.post`, after the user's own ``delivered_on``,
``retry_on`` and ``fail_on`` status lists.

The contract, for every target including ones added later:

* ``send`` answers for the whole batch (one :class:`Verdict`) or, when the service says which
  events failed, for each event: ``Verdict.PARTIAL`` with ``Outcome.events`` mapping an event's
  index in the batch to its own outcome (``REJECT`` with the service's reason, or ``RETRY``),
  and ``others_delivered`` saying whether the events not named were taken (Mixpanel's strict
  import: never resend them) or refused because of the named ones (Amplitude's 400: resend
  them now). A target that sends one batch in several requests names the events of the
  requests not taken: ``RETRY`` to resend them later, ``UNAUTHORIZED``/``FATAL`` to hold them
  (the target turns failing).
* A batch-level ``REJECT`` from a target that cannot tell which events are bad is bisected by the
  deliverer, within a bounded number of requests; if nothing is delivered before that bound the
  target, not the events, is the problem and it is marked failing (relay/health.py).
* ``UNAUTHORIZED`` (401/403) and ``FATAL`` (not the service's API) mark the target failing: its
  events are held in the spool and probed with backoff, never dead-lettered before ``max_age``.
* ``send`` never raises for a transport or HTTP failure. An exception means the events could not
  be encoded: permanent for the events that cause it, isolated and dead-lettered with reason
  ``encode_error``, so a target needs no guard of its own.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import msgspec
import orjson

from .. import __version__
from ..events import Event
from ..health import TargetHealth
from ..raw import lenient_loads
from ..schema import ByteSize, Duration

if TYPE_CHECKING:
    from ..metrics import RelayMetrics

logger = logging.getLogger(__name__)

USER_AGENT = f"statsig-relay/{__version__}"

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
    failing_after: Duration = Duration(30.0)  # transient failures this long: target failing
    # HTTP statuses that override the built-in reading of an answer (relay/targets/base.py):
    delivered_on: list[int] = field(default_factory=list)  # e.g. 409: "already have it"
    retry_on: list[int] = field(default_factory=list)  # transient: retry with backoff
    fail_on: list[int] = field(default_factory=list)  # permanent for the events sent

    def __post_init__(self) -> None:
        from ..schema import ConfigError

        for name in ("batch_max_events", "concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1")
        if self.retries_in_process < 1:
            raise ConfigError("retries_in_process", "must be at least 1")
        if self.failing_after <= 0:
            raise ConfigError("failing_after", "must be more than 0s")
        seen: dict[int, str] = {}
        for name in ("delivered_on", "retry_on", "fail_on"):
            for status in getattr(self, name):
                if not 100 <= status <= 599:
                    raise ConfigError(name, f"{status} is not an HTTP status (100-599)")
                if status in seen:
                    raise ConfigError(name, f"{status} is also in {seen[status]}")
                seen[status] = name


class Verdict(Enum):
    OK = "ok"
    PARTIAL = "partial"  # the target answered per event: see Outcome.events
    RETRY = "retry"  # transient: try the same batch again later
    REJECT = "reject"  # permanent for (some of) these events: isolate them, dead-letter those
    TOO_LARGE = "too_large"  # split and resend; a single event this large is dead
    UNAUTHORIZED = "unauthorized"  # 401/403: the target refuses our credential, not the events
    FATAL = "fatal"  # the target is misconfigured (not its API): dead-letter without splitting


@dataclass(slots=True, frozen=True)
class Outcome:
    """A target's answer to ``send(batch)``: for the batch, or per event (``PARTIAL``)."""

    verdict: Verdict
    reason: str = ""
    retry_after: float | None = None  # seconds, from Retry-After
    status: int | None = None
    # PARTIAL only: index in the batch -> that event's outcome (REJECT or RETRY); the events not
    # named were delivered (others_delivered) or must be sent again now, without them.
    events: Mapping[int, Outcome] | None = None
    others_delivered: bool = True

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @classmethod
    def per_event(
        cls,
        events: Mapping[int, Outcome],
        *,
        others_delivered: bool,
        reason: str = "",
        status: int | None = None,
    ) -> Outcome:
        """The answer of a service that names the events it did not take."""
        return cls(Verdict.PARTIAL, reason, None, status, dict(events), others_delivered)


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


def override_status(
    config: TargetConfig, status: int, headers: Mapping[str, str], body: str
) -> Outcome | None:
    """The user's reading of a status (``delivered_on``, ``retry_on``, ``fail_on``), if any."""
    if status in config.delivered_on:
        return DELIVERED
    reason = f"HTTP {status}" + (f": {body[:200]}" if body else "")
    if status in config.retry_on:
        return Outcome(Verdict.RETRY, reason, parse_retry_after(headers.get("Retry-After")), status)
    if status in config.fail_on:
        return Outcome(Verdict.REJECT, reason, status=status)
    return None


async def read_answer(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, str]:
    """At most ``limit`` bytes of an answer, and why it was cut ("" when whole).

    The status is known before the body, so a body that is huge, endless or stops arriving is
    cut, never buffered or waited out: the caller decides from the status and what was read.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:  # one byte past the limit tells a full answer from a cut one
            chunk = await response.content.read(limit + 1 - size)
            if not chunk:
                return b"".join(chunks), ""
            chunks.append(chunk)
            size += len(chunk)
    except TimeoutError:
        return b"".join(chunks), "answer cut by the timeout"
    except aiohttp.ClientError as exc:
        return b"".join(chunks), f"answer cut: {type(exc).__name__}"
    return b"".join(chunks)[:limit], f"answer cut at {limit // 1024} KiB"


def for_the_rest(outcome: Outcome) -> Outcome:
    """What a batch sent in several requests answers for the events of the requests not taken
    after a failure: held with the target if it refused us (401/403, not the service's API),
    otherwise resent later, as a batch of their own."""
    if outcome.verdict in (Verdict.UNAUTHORIZED, Verdict.FATAL):
        return outcome
    return Outcome(Verdict.RETRY, outcome.reason, outcome.retry_after, outcome.status)


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


class UnreadableEvent(ValueError):
    """A stored event the relay cannot read back (a number no parser here holds, say)."""


class Batch:
    """Events for one request, kept as the spool's JSON arrays until someone needs dicts.

    A target that forwards events unchanged sends :meth:`json_array` or :meth:`json_lines`,
    spliced from the stored bytes without parsing; one that re-encodes calls :meth:`events`
    (parsed once, cached). Splitting (:meth:`chunks`, :meth:`halves`, :meth:`subset`) cuts the
    stored arrays between events without parsing them, so an event that cannot be read never
    travels with events that can.
    """

    __slots__ = ("_bodies", "_counts", "_events", "_items", "count")

    def __init__(
        self,
        bodies: Sequence[bytes],
        count: int,
        events: list[Event] | None = None,
        counts: Sequence[int] | None = None,
    ):
        self._bodies = list(bodies)
        self._events = events
        self._items: list[bytes] | None = None
        self.count = count
        # Events per body, when known: lets chunks() split between bodies without parsing.
        self._counts = list(counts) if counts is not None else None

    @classmethod
    def of_events(cls, events: list[Event]) -> Batch:
        return cls((), len(events), events)

    @classmethod
    def of_items(cls, items: Sequence[bytes]) -> Batch:
        """A batch of stored events, each one event's JSON."""
        batch = cls([b"[" + b",".join(items) + b"]"], len(items), counts=[len(items)])
        batch._items = list(items)
        return batch

    def events(self) -> list[Event]:
        if self._events is None:
            events: list[Event] = []
            for body in self._bodies:
                try:
                    events.extend(orjson.loads(body))
                except orjson.JSONDecodeError:
                    events.extend(_read_leniently(body))
            self._events = events
        return self._events

    def json_array(self) -> bytes:
        if self._events is not None:
            return orjson.dumps(self._events)
        return self._spliced()

    def stored_json(self) -> bytes:
        """The events as a JSON array to put back in the spool: the stored bytes as they are
        (never what a target made of them), and an in-memory event nested past orjson's 254
        levels written by the stdlib."""
        if self._bodies:
            return self._spliced()
        try:
            return orjson.dumps(self._events)
        except orjson.JSONEncodeError:
            return json.dumps(self._events, separators=(",", ":"), ensure_ascii=False).encode()

    def _spliced(self) -> bytes:
        bodies = [body for body in self._bodies if len(body) > 2]  # skip empty arrays
        if len(bodies) <= 1:
            return bodies[0] if bodies else b"[]"
        # One copy of ~all the bytes: the first array keeps its "[", the last its "]".
        views = [memoryview(body)[1:-1] for body in bodies]
        views[0] = memoryview(bodies[0])[:-1]
        views[-1] = memoryview(bodies[-1])[1:]
        return b",".join(views)

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

    # -- splitting -------------------------------------------------------------------------
    def items(self) -> list[bytes]:
        """Each stored event's JSON, cut from the arrays without parsing (cached)."""
        if self._items is None:
            if self._bodies:
                self._items = [
                    bytes(item) for body in self._bodies for item in _ROW_ITEMS.decode(body)
                ]
            else:
                self._items = [_dumps_event(event) for event in self.events()]
        return self._items

    def subset(self, indexes: Iterable[int]) -> Batch:
        """The events at ``indexes`` (in batch order), as a batch of their own."""
        wanted = sorted(set(indexes))
        if not self._bodies and self._events is not None:
            return Batch.of_events([self._events[i] for i in wanted])
        items = self.items()
        return Batch.of_items([items[i] for i in wanted])

    def halves(self) -> tuple[Batch, Batch]:
        middle = self.count // 2
        return self.subset(range(middle)), self.subset(range(middle, self.count))

    def singles(self) -> list[Batch]:
        return [self.subset((i,)) for i in range(self.count)]

    def readable(self) -> tuple[Batch, list[tuple[Batch, str]]]:
        """The events that can be read, and each one that cannot with why: a row that cannot be
        read as a whole is read event by event."""
        if not self._bodies:
            return self, []
        good: list[bytes] = []
        bad: list[tuple[Batch, str]] = []
        for item in self.items():
            try:
                orjson.loads(item)
            except orjson.JSONDecodeError:
                try:
                    _read_leniently(item)
                except UnreadableEvent as exc:
                    bad.append((Batch.of_items([item]), str(exc)))
                    continue
            good.append(item)
        if not bad:
            return self, []
        return Batch.of_items(good), bad

    def chunks(self, max_events: int, max_bytes: int) -> list[Batch]:
        """Split to respect a target's limits; no parsing when already within them."""
        if self.count <= max_events and (not self._bodies or self.size() <= max_bytes):
            return [self]
        if self._events is None:
            whole = self._split_between_bodies(max_events, max_bytes)
            if whole is not None:
                return whole
        out: list[Batch] = []
        current: list[bytes] = []
        size = 2
        for item in self.items():
            item_size = len(item) + 1
            if current and (len(current) >= max_events or size + item_size > max_bytes):
                out.append(Batch.of_items(current))
                current, size = [], 2
            current.append(item)
            size += item_size
        if current:
            out.append(Batch.of_items(current))
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


def _read_leniently(data: bytes) -> Any:
    """What orjson refuses but Python's parser reads (relay/raw.py), or UnreadableEvent."""
    try:
        return lenient_loads(data)
    except (ValueError, OverflowError, RecursionError) as exc:
        raise UnreadableEvent(f"unreadable event: {exc}") from exc


def _dumps_event(event: Event) -> bytes:
    try:
        return orjson.dumps(event)
    except orjson.JSONEncodeError:  # nesting past orjson's 254 levels
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


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
    # A target that carries config changes only (a change feed: Datadog, Slack, Grafana):
    # a route to it must filter to them, checked when the config is loaded.
    only_config_changes: ClassVar[bool] = False
    # Statsig's own log_event (the statsig target): Statsig-internal events, which may carry
    # the sender's server secret, go to it unless filtered, unredacted; to any other target
    # only when a route names them, with secret-… keys redacted (relay/router.py, redact.py).
    takes_statsig_internal: ClassVar[bool] = False
    # Bytes of an answer read for classify(); the rest is never read. A target whose service
    # lists refused events in its answer sets more (Mixpanel, Amplitude: up to 2000 events).
    answer_limit: ClassVar[int] = 64 * 1024

    def __init__(self, name: str, config: TargetConfig) -> None:
        self.name = name
        self.config = config
        self.health = TargetHealth(
            name,
            failing_after=config.failing_after,
            retry_initial=config.retry_initial,
            retry_max=config.retry_max,
        )
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
            # Every target names the relay and its version, so a vendor's logs can tell it apart.
            headers={"User-Agent": USER_AGENT},
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
        """POST and translate every transport error and answer to an Outcome.

        The answer is read up to :attr:`answer_limit`: a 2xx is delivered whatever its body; an
        error answer cut short is still read by its status, and its reason says it was cut.
        """
        try:
            async with self.session.post(url, data=body, headers=headers) as response:
                status, answer_headers = response.status, response.headers
                raw, cut = await read_answer(response, self.answer_limit)
        except TimeoutError:
            return Outcome(Verdict.RETRY, f"timeout after {self.config.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Outcome(Verdict.RETRY, f"network error: {type(exc).__name__}: {exc}"[:300])
        text = "" if 200 <= status < 300 else raw.decode(errors="replace")
        outcome = override_status(self.config, status, answer_headers, text) or self.classify(
            status, answer_headers, text
        )
        if cut and outcome.verdict is not Verdict.OK:
            outcome = replace(outcome, reason=f"{outcome.reason} ({cut})")
        return outcome

    def describe(self) -> str:
        """One line for ``statsig-relay check``; never includes secrets."""
        return self.kind


def basic_auth(user: str) -> str:
    """An ``Authorization`` value of HTTP Basic with ``user`` and an empty password (how
    Segment write keys and Mixpanel project tokens are sent)."""
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


def json_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if extra:
        headers.update(extra)
    return headers


def redact_url(url: str) -> str:
    """A URL fit for logs: the path's last segment (often a secret hook id) is hidden."""
    scheme, _, rest = hide_password(url).partition("://")
    host, _, path = rest.partition("/")
    if not path:
        return hide_password(url)
    return f"{scheme}://{host}/…"


def hide_password(url: str) -> str:
    """``url`` for ``check`` and /status with a password in it (``https://user:pw@host``)
    replaced by ``[redacted]``: a URL field is not a secret field, but its password is."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:[redacted]@{host}{slash}{path}"


Registry = dict[str, type[Target]]
